"""Export: the serving SavedModel and the other formats of one version, written into a local folder.

`kubegraft_trainer.run` calls `write_savedmodel` (and `write_keras`, `write_tflite` when asked) into a local
build folder next to the reports; `kubegraft_trainer.repository.publish` then publishes that folder as the
next numbered version ``<output.uri>/<n>/``.

The SavedModel's ``serving_default`` signature takes a batch of encoded images (``tf.string [None]``, JPEG,
PNG, BMP, GIF or WebP bytes) and decodes and resizes them with the very function training used
(`images.decode_and_resize`), so clients send files as they are. It returns, as TF Serving's classify API
does, ``classes`` (class names [None, C], most probable first) and ``scores`` (float32 [None, C], the same
ranking: ``scores[i][j]`` is the probability of ``classes[i][j]``), and beside them ``probabilities``
(float32 [None, C], columns in labels.txt order, unranked).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from kubegraft_trainer.images import decode_and_resize

log = logging.getLogger(__name__)

LABELS_FILE = "labels.txt"
SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "images"
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"


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
