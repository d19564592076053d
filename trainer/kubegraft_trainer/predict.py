"""Predictions from a published model, through its serving signature only (as TF Serving would run it).

`kubegraft predict MODEL_URI IMAGE...` calls `load_published` and `predict_files`. A model URI is a model
repository (``<output.uri>``: the latest complete version, or ``version``) or one version folder
(``<output.uri>/<n>``). Only complete versions (with their ``_COMPLETE`` marker) are ever read.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from kubegraft.runtime import FailureReason
from kubegraft.spec import StorageSpec
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.export import LABELS_FILE, SERVING_INPUT, SERVING_SIGNATURE
from kubegraft_trainer.repository import COMPLETE_MARKER, complete_versions
from kubegraft_trainer.storage import Storage, open_storage
from kubegraft_trainer.uris import split_uri


@dataclass
class PublishedModel:
    """A loaded version: its serving signature, class names, version number and local copy."""

    signature: Any
    class_names: list[str]
    version: int
    uri: str
    local_dir: Path

    def predict_bytes(self, encoded: Sequence[bytes]) -> np.ndarray[Any, Any]:
        """Probabilities [N, C] for encoded images, through ``serving_default``."""
        outputs = self.signature(**{SERVING_INPUT: tf.constant(list(encoded), dtype=tf.string)})
        return np.asarray(outputs["probabilities"])

    def close(self) -> None:
        """Remove the local copy."""
        shutil.rmtree(self.local_dir, ignore_errors=True)


def _resolve(uri: str, storage: StorageSpec, version: int | None) -> tuple[Storage, int]:
    """The storage rooted at the version folder's parent, and the version to read."""
    parent, last = split_uri(uri)
    if last.isdigit() and version is None:
        repo = open_storage(parent, storage, not_found_reason=FailureReason.DATASET_NOT_FOUND)
        if not repo.exists(f"{last}/{COMPLETE_MARKER}"):
            raise TrainerError(FailureReason.DATASET_NOT_FOUND, f"{uri} is not a complete published version")
        return repo, int(last)
    repo = open_storage(uri, storage, not_found_reason=FailureReason.DATASET_NOT_FOUND)
    versions = complete_versions(repo)
    if not versions:
        raise TrainerError(FailureReason.DATASET_NOT_FOUND, f"no complete model version under {uri}")
    if version is None:
        return repo, versions[-1]
    if version not in versions:
        raise TrainerError(
            FailureReason.DATASET_NOT_FOUND,
            f"version {version} is not a complete version under {uri} (complete: {versions})",
        )
    return repo, version


def load_published(
    uri: str, storage: StorageSpec | None = None, version: int | None = None
) -> PublishedModel:
    """Fetch a complete published version and load its SavedModel's serving signature.

    Args:
        uri: A model repository or a version folder, local path or s3://.
        storage: S3 settings (endpoint); default AWS with the ambient credentials.
        version: The version to load; default the latest complete one.

    Returns:
        The loaded model; call `PublishedModel.close` when done.

    Raises:
        TrainerError: No such (complete) version.
    """
    spec = storage or StorageSpec()
    repo, chosen = _resolve(uri, spec, version)
    local = Path(tempfile.mkdtemp(prefix="kubegraft-model-"))
    for info in repo.list(f"{chosen}/"):
        repo.download_file(info.key, local / info.key)
    folder = local / str(chosen)
    loaded = tf.saved_model.load(str(folder))
    names = (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    return PublishedModel(loaded.signatures[SERVING_SIGNATURE], names, chosen, repo.join(str(chosen)), local)


def top_k(probabilities: np.ndarray[Any, Any], class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable classes of one image, as (name, probability rounded to 3 places)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(class_names[i], round(float(probabilities[i]), 3)) for i in order]


def predict_probabilities(model: PublishedModel, paths: Sequence[str | Path]) -> np.ndarray[Any, Any]:
    """Class probabilities of image files, one row per file, columns in ``model.class_names`` order.

    Raises:
        TrainerError: A file cannot be read (DatasetNotFound).
    """
    encoded: list[bytes] = []
    for path in paths:
        try:
            encoded.append(Path(path).read_bytes())
        except OSError as exc:
            raise TrainerError(FailureReason.DATASET_NOT_FOUND, f"cannot read image {path}: {exc}") from exc
    if not encoded:
        return np.zeros((0, len(model.class_names)), "float32")
    return model.predict_bytes(encoded)


def predict_files(
    model: PublishedModel, paths: Sequence[str | Path], k: int = 3
) -> list[list[tuple[str, float]]]:
    """Top-``k`` predictions for image files.

    Args:
        model: A loaded published model.
        paths: Local image files.
        k: Classes per image.

    Returns:
        One list of (class, probability) per file, most probable first.

    Raises:
        TrainerError: A file cannot be read (DatasetNotFound).
    """
    return [top_k(row, model.class_names, k) for row in predict_probabilities(model, paths)]
