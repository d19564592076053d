"""kubegraft: the TransferJob contract (models, CRD generation, validation) and the `kubegraft` CLI."""

from kubegraft.spec import API_VERSION, GROUP, KIND, VERSION, TransferJob, TransferJobSpec

__all__ = ["API_VERSION", "GROUP", "KIND", "VERSION", "TransferJob", "TransferJobSpec"]
__version__ = "0.1.0"
