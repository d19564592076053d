"""Export and atomic publish: the serving SavedModel, other formats, numbered versions ``<output.uri>/<n>/``.

`kubegraft_trainer.run` calls `write_savedmodel` (and `write_keras`, `write_tflite` when asked) into a local
build folder next to the reports, then `publish`. `kubegraft_trainer.predict` and the next-version counter
read versions with `complete_versions` / `next_version`.

The SavedModel's ``serving_default`` signature takes a batch of encoded images (``tf.string [None]``, JPEG,
PNG, BMP, GIF or WebP bytes) and decodes and resizes them with the very function training used
(`images.decode_and_resize`), so clients send files as they are. It returns, as TF Serving's classify API
does, ``classes`` (class names [None, C], most probable first) and ``scores`` (float32 [None, C], the same
ranking: ``scores[i][j]`` is the probability of ``classes[i][j]``), and beside them ``probabilities``
(float32 [None, C], columns in labels.txt order, unranked).

Publishing is atomic for readers: a version counts only once its marker object ``<n>/_COMPLETE`` exists, and
the marker is written last, after every other file (``saved_model.pb`` just before it). On a local filesystem
the whole version is first assembled in ``<output>/.staging-<run id>/`` and renamed to ``<output>/<n>/`` in
one step. Version numbers are never reused: the next is one more than the highest number present, complete or
not.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from kubegraft.runtime import FailureReason
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.images import decode_and_resize
from kubegraft_trainer.storage import LocalStorage, Storage

log = logging.getLogger(__name__)

COMPLETE_MARKER = "_COMPLETE"
LABELS_FILE = "labels.txt"
SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "images"
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
_LAST_MODEL_FILE = "saved_model.pb"


def serving_function(model: keras.Model, class_names: Sequence[str], image_size: int) -> Any:
    """The serving computation: encoded image bytes in; ranked class names and scores, and probabilities out.

    ``classes`` and ``scores`` are ranked together (most probable first, ties in labels.txt order), so
    ``zip(classes[i], scores[i])`` pairs each name with its own probability; ``probabilities`` keeps the
    labels.txt column order.

    Args:
        model: The full model (raw RGB pixels to probabilities).
        class_names: Class names in output order.
        image_size: Side of the square input.

    Returns:
        A ``tf.function`` with input signature ``images: tf.string [None]``.
    """
    names = tf.constant(list(class_names), dtype=tf.string)

    def decode(encoded: tf.Tensor) -> tf.Tensor:
        return decode_and_resize(encoded, image_size)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            decode,
            images,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        )
        probabilities = tf.cast(model(pixels, training=False), tf.float32)
        order = tf.argsort(probabilities, axis=-1, direction="DESCENDING", stable=True)
        return {
            "probabilities": probabilities,
            "classes": tf.gather(names, order),
            "scores": tf.gather(probabilities, order, batch_dims=1),
        }

    # No Python control flow to convert: autograph off keeps tracing independent of source files.
    signature = [tf.TensorSpec([None], tf.string, name=SERVING_INPUT)]
    return tf.function(serve, input_signature=signature, autograph=False)


def write_savedmodel(
    model: keras.Model, class_names: Sequence[str], image_size: int, directory: Path
) -> None:
    """Write the SavedModel with its ``serving_default`` signature to ``directory``.

    Args:
        model: The full model.
        class_names: Class names in output order.
        image_size: Side of the square input.
        directory: Target folder (created; must not hold another SavedModel).
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_SIGNATURE, serving_function(model, class_names, image_size))
    archive.write_out(str(directory), verbose=False)


def write_keras(model: keras.Model, path: Path) -> None:
    """Save the full Keras model (raw pixels in) as a ``.keras`` file."""
    model.save(path)


def write_tflite(model: keras.Model, image_size: int, path: Path) -> None:
    """Convert the model to TFLite, taking decoded raw pixels (float32 [1, S, S, 3], 0..255).

    TFLite has no image decoders among its builtin ops, so this format takes pixels, not encoded bytes. The
    conversion goes through a temporary SavedModel: converting the concrete function directly
    (``from_concrete_functions`` with the Keras 3 model as its trackable) left the weights uninitialised,
    so the file computed garbage (found by the pixel model's export test).
    """

    def infer(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": tf.cast(model(image, training=False), tf.float32)}

    signature = [tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name="image")]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_SIGNATURE, tf.function(infer, input_signature=signature, autograph=False))
    with tempfile.TemporaryDirectory(prefix="kubegraft-tflite-") as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SERVING_SIGNATURE])
        path.write_bytes(converter.convert())


def write_labels(class_names: Sequence[str], path: Path) -> None:
    """Write labels.txt: one class name per line, in output order."""
    path.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")


def _versions(storage: Storage) -> tuple[set[int], set[int]]:
    """All version numbers present and those complete, from one listing."""
    present: set[int] = set()
    complete: set[int] = set()
    for info in storage.list(""):
        head, _, rest = info.key.partition("/")
        if head.isdigit() and rest:
            present.add(int(head))
            if rest == COMPLETE_MARKER:
                complete.add(int(head))
    return present, complete


def complete_versions(storage: Storage) -> list[int]:
    """The published versions readers may use (those with their ``_COMPLETE`` marker), ascending."""
    return sorted(_versions(storage)[1])


def next_version(storage: Storage) -> int:
    """One more than the highest version number present, complete or not (numbers are never reused)."""
    present, _ = _versions(storage)
    return max(present, default=0) + 1


def _upload_order(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)
    return sorted(files, key=lambda p: p.name == _LAST_MODEL_FILE)  # stable: saved_model.pb goes last


def publish(build_dir: Path, storage: Storage, run_id: str, *, record: dict[str, Any] | None = None) -> int:
    """Publish the files under ``build_dir`` as the next version ``<n>/`` of the output.

    Args:
        build_dir: A complete local version folder (SavedModel at its root, reports beside it).
        storage: The output storage (its root is output.uri).
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
    if isinstance(storage, LocalStorage):
        return _publish_local(build_dir, storage.root, run_id, marker)
    version = next_version(storage)
    marker["version"] = version
    for path in _upload_order(build_dir):
        storage.upload_file(path, f"{version}/{path.relative_to(build_dir).as_posix()}")
    storage.write_bytes(f"{version}/{COMPLETE_MARKER}", json.dumps(marker).encode())
    log.info("published version %d to %s", version, storage.join(str(version)))
    return version


def _publish_local(build_dir: Path, root: Path, run_id: str, marker: dict[str, Any]) -> int:
    staging = root / f".staging-{run_id}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(build_dir, staging)
        for _ in range(100):  # another writer may take a number between listing and renaming
            version = next_version(LocalStorage(str(root)))
            marker["version"] = version
            (staging / COMPLETE_MARKER).write_text(json.dumps(marker))
            try:
                staging.rename(root / str(version))
            except OSError:
                if (root / str(version)).exists():
                    continue
                raise
            return version
    except OSError as exc:
        raise TrainerError(
            FailureReason.OUTPUT_NOT_WRITABLE, f"cannot publish to {root}: {exc.strerror or exc}"
        ) from exc
    raise TrainerError(FailureReason.OUTPUT_NOT_WRITABLE, f"cannot find a free version number under {root}")
