"""Single-file URIs: fetch one object named by a full URI (s3://bucket/key, file:///path or a path).

The backbone loader (`backbones`) and `predict` use this for files the spec or the user names directly; whole
trees (datasets, outputs, checkpoints) go through `storage.open_storage` with a root URI instead.
"""

from __future__ import annotations

from pathlib import Path

from kubegraft.runtime import FailureReason
from kubegraft.spec import StorageSpec
from kubegraft_trainer.storage import open_storage


def split_uri(uri: str) -> tuple[str, str]:
    """Split a file URI into (parent URI, file name).

    Args:
        uri: ``s3://bucket/dir/name``, ``file:///dir/name`` or ``dir/name``.

    Returns:
        The parent as a storage root URI and the last path segment as its key.
    """
    head, _, name = uri.rstrip("/").rpartition("/")
    if uri.startswith("s3://") and head in ("s3:", "s3:/"):
        return uri, ""
    return (head or "."), name


def fetch_file(
    uri: str, storage: StorageSpec, dest: Path, *, not_found_reason: str = FailureReason.BACKBONE_UNAVAILABLE
) -> Path:
    """Make the file at ``uri`` available locally.

    Local paths are used in place; s3:// objects are downloaded to ``dest``.

    Args:
        uri: The file's URI.
        storage: S3 endpoint settings.
        dest: Where to download a remote object.
        not_found_reason: The `FailureReason` if the file does not exist.

    Returns:
        The local path of the file.

    Raises:
        TrainerError: The file is missing or unreadable.
    """
    parent, name = split_uri(uri)
    store = open_storage(parent, storage, not_found_reason=not_found_reason)
    if not uri.startswith("s3://"):
        local = Path(store.join(name).removeprefix("file://"))
        if not local.is_file():
            from kubegraft_trainer.errors import TrainerError

            raise TrainerError(not_found_reason, f"{uri} does not exist")
        return local
    store.download_file(name, dest)
    return dest
