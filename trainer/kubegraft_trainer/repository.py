"""The model repository's layout: numbered versions under ``output.uri``, everything else in a work area.

TF Serving and KServe take ``output.uri`` as a model base path: TF Serving serves the highest numbered folder,
and KServe's storage initializer copies *every* object whose key starts with the URI's key (a plain string
prefix: ``models/cars`` also matches ``models/cars-runs/...``). So the base path holds nothing but versions
``<n>/``, and what a run writes besides (checkpoints, the staged upload, the report of a run that published
nothing, TensorBoard's event files) lives in the work area `work_uri`: ``.kubegraft/<name>/`` beside the
output, in its parent folder.

Publishing (`publish`) is crash-safe for servers: on S3 the version is uploaded into the work area first
(the slow part), then copied inside the object store into ``<n>/`` (variables first, ``saved_model.pb``
after every other file, the ``_COMPLETE`` marker last). A crash can leave a partial ``<n>/`` only during
that copy (seconds); the run's claim (``publishing/<run id>.json`` in the work area) names it, and the next
attempt deletes it before it picks a number, as it deletes any other incomplete version older than
`STALE_SECONDS`. So the highest numbered folder is a complete version, or one being copied right now. On a
local filesystem the version is assembled in the work area and renamed to ``<n>/`` in one step.

`kubegraft_trainer.run` calls `publish` and `work_storage`; `kubegraft_trainer.checkpoints`,
`kubegraft_trainer.gate` and `kubegraft_trainer.predict` read the layout from here.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

from kubegraft.runtime import FailureReason
from kubegraft.spec import StorageSpec
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.storage import LocalStorage, S3Storage, Storage, open_storage

log = logging.getLogger(__name__)

COMPLETE_MARKER = "_COMPLETE"
WORK_DIR = ".kubegraft"
CHECKPOINTS = "checkpoints"
STAGING = "staging"
CLAIMS = "publishing"
REPORTS = "reports"
TENSORBOARD = "tensorboard"
# An incomplete version this old is a crashed copy of another run (a server-side copy takes seconds).
STALE_SECONDS = 600.0
_LAST_MODEL_FILE = "saved_model.pb"
_VARIABLES = "variables/"


def work_uri(output_uri: str) -> str:
    """The work area of an output: ``<parent>/.kubegraft/<name>``, outside the served base path.

    ``s3://b/models/cars/`` gives ``s3://b/models/.kubegraft/cars``; a bucket-root output ``s3://b`` (which
    has no parent) gives ``s3://b/.kubegraft``, inside the base path: TF Serving ignores that folder (not a
    number) but KServe's storage initializer copies it.

    Args:
        output_uri: The spec's output.uri (s3://, file:// or a path).

    Returns:
        The work area's URI, without a trailing slash.
    """
    if output_uri.startswith("s3://"):
        bucket, _, key = output_uri.removeprefix("s3://").partition("/")
        parent, _, name = key.strip("/").rpartition("/")
        if not name:
            return f"s3://{bucket}/{WORK_DIR}"
        return f"s3://{bucket}/{parent + '/' if parent else ''}{WORK_DIR}/{name}"
    scheme = "file://" if output_uri.startswith("file://") else ""
    path = PurePosixPath(output_uri.removeprefix(scheme))
    return f"{scheme}{path.parent / WORK_DIR / path.name}"


def tensorboard_uri(output_uri: str, run_id: str) -> str:
    """A run's TensorBoard folder, ``<work area>/tensorboard/<run id>`` (`kubegraft_trainer.tensorboard_log`).

    ``tensorboard --logdir <work area>/tensorboard`` shows every run of the output, one folder per run id.
    """
    return f"{work_uri(output_uri)}/{TENSORBOARD}/{run_id}"


def work_storage(output_uri: str, storage: StorageSpec) -> Storage:
    """The work area of ``output_uri`` as a storage root (missing buckets fail as OutputNotWritable)."""
    return open_storage(work_uri(output_uri), storage, not_found_reason=FailureReason.OUTPUT_NOT_WRITABLE)


def _versions(storage: Storage) -> tuple[dict[int, float], set[int]]:
    """Every version number present with its newest write time (0 when unknown), and the complete ones."""
    present: dict[int, float] = {}
    complete: set[int] = set()
    for info in storage.list(""):
        head, _, rest = info.key.partition("/")
        if head.isdigit() and rest:
            number = int(head)
            present[number] = max(present.get(number, 0.0), info.modified or 0.0)
            if rest == COMPLETE_MARKER:
                complete.add(number)
    return present, complete


def complete_versions(storage: Storage) -> list[int]:
    """The published versions readers may use (those with their ``_COMPLETE`` marker), ascending."""
    return sorted(_versions(storage)[1])


def next_version(storage: Storage) -> int:
    """One more than the highest version number present, complete or not (a number in use is never taken)."""
    present, _ = _versions(storage)
    return max(present, default=0) + 1


def read_marker(storage: Storage, version: int) -> dict[str, Any]:
    """The ``_COMPLETE`` marker of a version as a mapping ({} when unreadable)."""
    try:
        data = json.loads(storage.read_bytes(f"{version}/{COMPLETE_MARKER}").decode())
    except (TrainerError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def published_by(storage: Storage, run_id: str, *, newest: int = 20) -> int | None:
    """The version run ``run_id`` already published (its marker names it), among the ``newest`` complete ones.

    A retried pod whose previous attempt published but died before it exited finds its version here instead of
    publishing a second one (or, with ifBetter, comparing the model with itself).
    """
    for version in reversed(complete_versions(storage)[-newest:]):
        if read_marker(storage, version).get("runId") == run_id:
            return version
    return None


def remove_incomplete(
    output: Storage, work: Storage, run_id: str, *, now: float | None = None, stale: float = STALE_SECONDS
) -> list[int]:
    """Delete the versions without their marker that a crashed copy left: this run's claim, or stale ones.

    Args:
        output: The model repository (output.uri).
        work: Its work area.
        run_id: The run about to publish (an incomplete version its claim names is its own crashed copy).
        now: The current time (seconds since the epoch); default the clock.
        stale: Age in seconds after which another writer's incomplete version counts as crashed.

    Returns:
        The deleted version numbers.
    """
    now = time.time() if now is None else now
    present, complete = _versions(output)
    claimed = _claimed_version(work, run_id)
    removed = []
    for number, written in sorted(present.items()):
        if number in complete:
            continue
        if number == claimed or (written and now - written >= stale):
            log.warning(
                "deleting %s: an incomplete version left by a crashed publish", output.join(str(number))
            )
            output.delete_prefix(f"{number}/")
            removed.append(number)
    return removed


def _claimed_version(work: Storage, run_id: str) -> int | None:
    key = f"{CLAIMS}/{run_id}.json"
    if not work.exists(key):
        return None
    try:
        value = json.loads(work.read_bytes(key).decode()).get("version")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def copy_order(keys: list[str]) -> list[str]:
    """The order a version's files are copied in: ``variables/`` first, ``saved_model.pb`` after the rest."""

    def rank(key: str) -> tuple[int, str]:
        if key.startswith(_VARIABLES):
            return 0, key
        if key == _LAST_MODEL_FILE:
            return 2, key
        return 1, key

    return sorted((k for k in keys if k != COMPLETE_MARKER), key=rank)


def publish(
    build_dir: Path, output: Storage, work: Storage, run_id: str, *, record: dict[str, Any] | None = None
) -> int:
    """Publish the files under ``build_dir`` as the next version ``<n>/`` of the output.

    Args:
        build_dir: A complete local version folder (SavedModel at its root, reports beside it).
        output: The model repository (its root is output.uri).
        work: The output's work area (`work_storage`): the staged upload and the run's claim.
        run_id: The run's id, written into the marker.
        record: Extra facts for the marker (e.g. test accuracy).

    Returns:
        The version number published.

    Raises:
        TrainerError: The output cannot be written (OutputNotWritable).
    """
    marker = {
        "runId": run_id,
        "publishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(record or {}),
    }
    if isinstance(output, LocalStorage) and isinstance(work, LocalStorage):
        return _publish_local(build_dir, output, work, run_id, marker)
    staging = f"{STAGING}/{run_id}"
    work.delete_prefix(f"{staging}/")
    work.upload_dir(build_dir, staging)
    remove_incomplete(output, work, run_id)
    version = next_version(output)
    marker["version"] = version
    claim = f"{CLAIMS}/{run_id}.json"
    work.write_bytes(claim, json.dumps({"version": version, "runId": run_id}).encode())
    files = copy_order([p.relative_to(build_dir).as_posix() for p in build_dir.rglob("*") if p.is_file()])
    for key in files:
        if isinstance(output, S3Storage) and isinstance(work, S3Storage):
            output.copy_from(work, f"{staging}/{key}", f"{version}/{key}")
        else:  # storages that cannot copy inside the server: upload again from the local build
            output.upload_file(build_dir / key, f"{version}/{key}")
    output.write_bytes(f"{version}/{COMPLETE_MARKER}", json.dumps(marker).encode())
    work.delete_prefix(claim)
    work.delete_prefix(f"{staging}/")
    log.info("published version %d to %s", version, output.join(str(version)))
    return version


def _publish_local(
    build_dir: Path, output: LocalStorage, work: LocalStorage, run_id: str, marker: dict[str, Any]
) -> int:
    root = output.root
    staging = work.root / STAGING / run_id
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(build_dir, staging)
        remove_incomplete(output, work, run_id)
        for _ in range(100):  # another writer may take a number between listing and renaming
            version = next_version(output)
            marker["version"] = version
            (staging / COMPLETE_MARKER).write_text(json.dumps(marker))
            try:
                staging.rename(root / str(version))
            except OSError as exc:
                if exc.errno == errno.EXDEV:  # the work area is on another filesystem: stage inside root
                    inside = root / f".staging-{run_id}"
                    shutil.rmtree(inside, ignore_errors=True)
                    shutil.move(staging, inside)
                    staging = inside
                    continue
                if (root / str(version)).exists():
                    continue
                raise
            _remove_empty(staging.parent, work.root)
            return version
    except OSError as exc:
        raise TrainerError(
            FailureReason.OUTPUT_NOT_WRITABLE, f"cannot publish to {root}: {exc.strerror or exc}"
        ) from exc
    raise TrainerError(FailureReason.OUTPUT_NOT_WRITABLE, f"cannot find a free version number under {root}")


def _remove_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to and including ``stop`` while they are empty."""
    for path in (folder, *folder.parents):
        if not path.is_relative_to(stop.parent):
            return
        try:
            path.rmdir()
        except OSError:
            return
        if path == stop:
            return


def save_report(build_dir: Path, work: Storage, run_id: str, names: list[str]) -> str:
    """Store a run's report files (those of ``names`` present in ``build_dir``) in ``reports/<run id>/``.

    For a run that published no version, so that its metrics.json is still found.

    Returns:
        The URI of the report folder.
    """
    prefix = f"{REPORTS}/{run_id}"
    for name in names:
        if (build_dir / name).is_file():
            work.upload_file(build_dir / name, f"{prefix}/{name}")
    return work.join(prefix) + "/"
