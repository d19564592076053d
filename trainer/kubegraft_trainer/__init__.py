"""kubegraft's trainer: a TransferJob spec in, a published model version out.

Modules, in the order a run uses them: `run` (entry point) -> `dataset`, `pipeline`, `sources` (data) ->
`backbones`, `model` (network) -> `stages`, `checkpoints` (training) -> `report`, `export` (results), with
`storage`, `progress` and `errors` beside them; `predict` reads published versions. This package never imports
kubernetes or kopf.
"""

import contextlib

# libcurl for batched S3 reads (`multiget`) has to load before TensorFlow: TensorFlow puts its own, older
# libcurl's symbols in the process's global scope, and pycurl imported after it refuses to start ("link-time
# version older than compile-time version"). Importing the trainer's package first gets the order right.
with contextlib.suppress(ImportError):
    import pycurl  # noqa: F401
