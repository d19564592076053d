"""Inference passes that trace a model once per process: feature extraction, evaluation, health checks.

`inference_fn` keeps one batch-agnostic `tf.function` per Keras model, so every pass over the same model (the
backbone health check before the stages, the bottleneck features, a frozen prefix) reuses one graph instead
of tracing its own, as Keras' ``predict`` would.
"""

from __future__ import annotations

import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "EXTRACT_PIXELS",
    "WARM_UP_IMAGES",
    "extract_arrays",
    "extract_features",
    "extraction_batch",
    "inference_fn",
    "run_inference",
    "warm_inference",
]

_EXTRACT_BATCH = 256
_EXTRACT_BATCH_MAX = 1024
EXTRACT_PIXELS = 1 << 22  # pixels per extraction call below which small images get bigger batches
WARM_UP_IMAGES = 1  # blank images `warm_inference` runs through a model before a pass over the data


# One inference function per model, traced once for any batch size (a Keras predict_on_batch retraces on the
# last, smaller batch: about a second each time on two cores).
_INFERENCE: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()


def inference_fn(model: keras.Model) -> Any:
    """``model`` in inference mode as a `tf.function` with a batch-agnostic input signature."""
    fn = _INFERENCE.get(model)
    if fn is None:
        shape = (None, *tuple(model.inputs[0].shape[1:]))
        dtype = model.inputs[0].dtype
        # No autograph: a Keras model's call has no tensor-dependent Python control flow, and converting
        # its layers' code doubled the trace time of a MobileNetV2 (0.75 s instead of 1.2 s here).
        fn = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec(shape, dtype)],
            autograph=False,
        )
        _INFERENCE[model] = fn
    return fn


def extraction_batch(model: keras.Model) -> int:
    """Images per extraction call for ``model``'s input size: 256, and up to 1,024 for small images.

    Small images leave a CPU's kernels underfed: 2,000 images of 32 px through a MobileNetV2 took 0.22 s in
    batches of 256 and 0.16 s in batches of 1,000. The cap on pixels per call keeps memory as it was for
    images of 128 px and more.
    """
    side = model.inputs[0].shape[1]
    if not side:
        return _EXTRACT_BATCH
    return max(_EXTRACT_BATCH, min(_EXTRACT_BATCH_MAX, EXTRACT_PIXELS // (int(side) * int(side))))


def warm_inference(model: keras.Model) -> None:
    """Trace ``model``'s inference function and run it once on `WARM_UP_IMAGES` blank image(s).

    The first call of a traced function optimises its graph and builds its kernels (0.2 s for a
    MobileNetV2 here); paying that on a blank image lets it overlap other work, such as decoding. (An empty
    batch would not do: oneDNN's convolutions refuse it.)
    """
    fn = inference_fn(model)
    shape = tuple(model.inputs[0].shape[1:])
    if all(shape):
        fn(tf.zeros((WARM_UP_IMAGES, *shape), model.inputs[0].dtype))
    else:
        fn.get_concrete_function()


def _empty_outputs(model: keras.Model) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    shape = tuple(int(d) for d in model.output.shape[1:])
    return np.zeros((0, *shape), dtype="float32"), np.zeros((0,), dtype="int32")


def extract_features(
    extractor: keras.Model, dataset: tf.data.Dataset
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Run ``extractor`` once over every batch of ``dataset``.

    Args:
        extractor: Pixels to features (or probabilities), inference mode.
        dataset: Batches of (pixels, labels).

    Returns:
        The outputs [N, D] and the labels [N], in dataset order.
    """
    fn = inference_fn(extractor)
    outputs: list[np.ndarray[Any, Any]] = []
    labels: list[np.ndarray[Any, Any]] = []
    for pixels, batch_labels in dataset:
        outputs.append(np.asarray(fn(pixels)))
        labels.append(np.asarray(batch_labels))
    if not outputs:
        return _empty_outputs(extractor)
    return np.concatenate(outputs).astype("float32"), np.concatenate(labels).astype("int32")


def extract_arrays(
    extractor: keras.Model,
    pixels: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    batch_size: int = _EXTRACT_BATCH,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Run ``extractor`` over in-memory pixels in batches, without a tf.data pipeline.

    Args:
        extractor: Pixels to features (or probabilities), inference mode.
        pixels: Raw pixels [N, S, S, 3].
        labels: Labels [N] (returned as int32).
        batch_size: Images per call.

    Returns:
        The outputs [N, D] and the labels [N].
    """
    if len(pixels) == 0:
        return _empty_outputs(extractor)
    return run_inference(extractor, pixels, batch_size), np.asarray(labels).astype("int32")


def run_inference(model: keras.Model, inputs: np.ndarray[Any, Any], batch_size: int) -> np.ndarray[Any, Any]:
    """``model``'s inference-mode outputs (float32) for in-memory ``inputs``, through `inference_fn`."""
    fn = inference_fn(model)
    outputs = [
        np.asarray(fn(tf.convert_to_tensor(inputs[i : i + batch_size], dtype=tf.float32)))
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outputs).astype("float32")
