"""Inference passes that trace a model once per process: feature extraction, evaluation, health checks.

`inference_fn` keeps one batch-agnostic `tf.function` per Keras model, so every pass over the same model (the
backbone health check before the stages, the bottleneck features, a frozen prefix) reuses one graph instead
of tracing its own, as Keras' ``predict`` would. The traced graph is Keras' own call in inference mode with
one difference: a BatchNormalization layer on 4-D inputs becomes one fused TensorFlow op (see
`inference_call`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "EXTRACT_PIXELS",
    "WARM_UP_IMAGES",
    "extract_arrays",
    "extract_features",
    "extraction_batch",
    "inference_call",
    "inference_fn",
    "plain_functional",
    "run_inference",
    "run_inference_many",
    "warm_inference",
    "warm_while",
]

_T = TypeVar("_T")

log = logging.getLogger(__name__)

_EXTRACT_BATCH = 256
_EXTRACT_BATCH_MAX = 1024
EXTRACT_PIXELS = 1 << 22  # pixels per extraction call below which small images get bigger batches
WARM_UP_IMAGES = 1  # blank images `warm_inference` runs through a model before a pass over the data


# One inference function per model, traced once for any batch size (a Keras predict_on_batch retraces on the
# last, smaller batch: about a second each time on two cores).
_INFERENCE: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()
_WARMED: weakref.WeakSet[keras.Model] = weakref.WeakSet()


def inference_fn(model: keras.Model) -> Any:
    """``model`` in inference mode as a `tf.function` with a batch-agnostic input signature."""
    fn = _INFERENCE.get(model)
    if fn is None:
        shape = (None, *tuple(model.inputs[0].shape[1:]))
        dtype = model.inputs[0].dtype
        # No autograph: a Keras model's call has no tensor-dependent Python control flow, and converting
        # its layers' code doubled the trace time of a MobileNetV2 (0.75 s instead of 1.2 s here).
        fn = tf.function(
            lambda x: inference_call(model, x),
            input_signature=[tf.TensorSpec(shape, dtype)],
            autograph=False,
        )
        _INFERENCE[model] = fn
    return fn


_FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32)


def _fused_batch_norm(layer: keras.layers.BatchNormalization) -> Callable[..., Any]:
    """``layer`` in inference mode, as one ``FusedBatchNormV3`` op where its input is a 4-D channels-last map.

    Keras 3 spells an inference batch normalisation as about ten ops (variable reads, casts, rsqrt, multiply,
    add). The fused op computes the same ``(x - mean) / sqrt(var + eps) * gamma + beta`` (in float32, as
    Keras does for half-precision inputs), and TensorFlow's graph optimiser folds it into the convolution
    before it. Any other input goes through the layer itself.
    """

    def call(inputs: Any, training: Any = None, mask: Any = None) -> Any:
        del training  # always inference
        axis = layer.axis if isinstance(layer.axis, int) else None
        fusable = inputs.shape.rank == 4 and axis in (-1, 3) and inputs.dtype in _FUSED_DTYPES
        if mask is not None or not fusable:
            return layer(inputs, training=False, mask=mask)
        mean = tf.cast(tf.convert_to_tensor(layer.moving_mean), tf.float32)
        variance = tf.cast(tf.convert_to_tensor(layer.moving_variance), tf.float32)
        gamma = tf.cast(tf.convert_to_tensor(layer.gamma), tf.float32) if layer.scale else tf.ones_like(mean)
        beta = tf.cast(tf.convert_to_tensor(layer.beta), tf.float32) if layer.center else tf.zeros_like(mean)
        outputs = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=gamma,
            offset=beta,
            mean=mean,
            variance=variance,
            epsilon=float(layer.epsilon),
            is_training=False,
            data_format="NHWC",
        )[0]
        return tf.cast(outputs, layer.compute_dtype)

    return call


def plain_functional(model: Any) -> bool:
    """Whether ``model`` is a functional Keras model whose call is Keras' own (not a subclass's)."""
    try:
        from keras.src.models.functional import Functional
    except ImportError:  # a Keras whose internals moved: callers then call models whole
        return False
    return isinstance(model, Functional) and type(model).call is Functional.call


def _run_inference_graph(model: keras.Model, inputs: Any) -> Any:
    from keras.src.models.functional import operation_fn, unpack_singleton

    def operation(op: Any) -> Callable[..., Any]:
        if type(op) is keras.layers.BatchNormalization:
            return _fused_batch_norm(op)
        if plain_functional(op):
            nested = op

            def call(*args: Any, **kwargs: Any) -> Any:
                kwargs.pop("training", None)
                if kwargs.get("mask", False) is None:
                    del kwargs["mask"]
                if len(args) != 1 or kwargs:
                    return nested(*args, training=False, **kwargs)
                return _run_inference_graph(nested, args[0])

            return call
        return operation_fn(op, training=False)  # type: ignore[no-any-return]

    outputs = model._run_through_graph(model._standardize_inputs(inputs), operation_fn=operation)
    return unpack_singleton(outputs)


def inference_call(model: keras.Model, inputs: Any) -> Any:
    """``model(inputs, training=False)``, with 4-D BatchNormalization layers fused (see `_fused_batch_norm`).

    The layers of a functional model (nested ones too) are called one by one as Keras' own call does, so
    dtype policies and every other layer behave as in ``model(inputs, training=False)``. The fused graph
    traces in about 60% of the time (0.18 s instead of 0.29 s for a MobileNetV2 here), TensorFlow optimises
    it faster on its first call, and it runs about 15% faster on a CPU. A model that is not plainly
    functional, or whose graph cannot be walked this way, is called as it is.
    """
    if not plain_functional(model):
        return model(inputs, training=False)
    try:
        return _run_inference_graph(model, inputs)
    except Exception:  # a Keras whose internals moved: its own call is always right
        log.debug("walking %s layer by layer failed; calling it whole", model.name, exc_info=True)
        return model(inputs, training=False)


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
    """Trace ``model``'s inference function and run it on `WARM_UP_IMAGES` blank image(s), once per model.

    The first call of a traced function optimises its graph and builds its kernels (0.14 s for a
    MobileNetV2 here); paying that on a blank image lets it overlap other work, such as decoding. (An empty
    batch would not do: oneDNN's convolutions refuse it.) A model already warmed is left alone: the health
    check warms the extractor the feature pass then uses.
    """
    if model in _WARMED:
        return
    fn = inference_fn(model)
    shape = tuple(model.inputs[0].shape[1:])
    if all(shape):
        fn(tf.zeros((WARM_UP_IMAGES, *shape), model.inputs[0].dtype))
    else:
        fn.get_concrete_function()
    _WARMED.add(model)


def warm_while(model: keras.Model, work: Callable[[], _T]) -> _T:
    """Run ``work`` (e.g. decoding the images) while ``model``'s inference graph warms up; its result.

    The trace runs first and alone: it is Python, like most of decoding, and run together they held each
    other up at the GIL (1.3 s instead of 0.85 s for 2,000 small PNGs on two cores). The first call
    (`warm_inference`: graph optimisation in TensorFlow's own threads) then overlaps ``work``.
    """
    inference_fn(model).get_concrete_function()
    with ThreadPoolExecutor(1, thread_name_prefix="kubegraft-warm") as pool:
        warming = pool.submit(warm_inference, model)
        result = work()
        warming.result()
    return result


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
    return run_inference_many(model, [inputs], batch_size)[0]


def run_inference_many(
    model: keras.Model, inputs: Sequence[np.ndarray[Any, Any]], batch_size: int
) -> list[np.ndarray[Any, Any]]:
    """`run_inference` over several arrays (e.g. the splits) as one run of calls of equal size.

    Every call but the last takes the same number of images, at most ``batch_size``, however the arrays
    are cut: on a CPU each new input shape costs oneDNN set-up (0.04 s for the first batch of 1,024 small
    images through a MobileNetV2 here), so splits of 1,680, 300 and 20 images go through as two calls of
    1,000 rather than four calls of four sizes.

    Returns:
        One float32 array of outputs per input array, in order.
    """
    fn = inference_fn(model)
    counts = [len(array) for array in inputs]
    total = sum(counts)
    if total == 0:
        return [_empty_outputs(model)[0] for _ in inputs]
    calls = -(-total // batch_size)
    size = -(-total // calls)
    outputs: list[np.ndarray[Any, Any]] = []
    pending: list[np.ndarray[Any, Any]] = []
    filled = 0

    def flush() -> None:
        chunk = pending[0] if len(pending) == 1 else np.concatenate(pending)
        outputs.append(np.asarray(fn(tf.convert_to_tensor(chunk, dtype=tf.float32))))
        pending.clear()

    for array in inputs:
        start = 0
        while start < len(array):
            take = min(size - filled, len(array) - start)
            pending.append(array[start : start + take])
            filled, start = filled + take, start + take
            if filled == size:
                flush()
                filled = 0
    if pending:
        flush()
    everything = np.concatenate(outputs).astype("float32", copy=False)
    return np.split(everything, np.cumsum(counts)[:-1])
