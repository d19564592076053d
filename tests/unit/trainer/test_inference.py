"""The traced inference graph: Keras' own call in inference mode, with 4-D batch norms as one fused op."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kubegraft_trainer.inference import inference_fn, run_inference


def _randomise_batch_norm_statistics(model: keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            width = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 1.0, width).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, width).astype("float32"))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, width).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(0.0, 0.5, width).astype("float32"))


def _nested_model() -> keras.Model:
    inner_inputs = keras.Input((8, 8, 6))
    y = keras.layers.DepthwiseConv2D(3, padding="same")(inner_inputs)
    y = keras.layers.BatchNormalization(scale=False, epsilon=1e-5)(y)
    inner = keras.Model(inner_inputs, keras.layers.ReLU(6.0)(y), name="inner")

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization(center=False)(x)
    x = keras.layers.Dropout(0.5)(x)  # inference: identity
    x = inner(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4)(x)
    outputs = keras.layers.BatchNormalization()(x)  # 2-D: Keras' own
    model = keras.Model(inputs, outputs)
    _randomise_batch_norm_statistics(model)
    return model


def _op_types(model: keras.Model) -> list[str]:
    graph = inference_fn(model).get_concrete_function().graph
    return [op.type for op in graph.get_operations()]


def test_fused_graph_computes_what_keras_computes_in_inference_mode() -> None:
    model = _nested_model()
    pixels = np.random.default_rng(1).uniform(0, 1, (5, 16, 16, 3)).astype("float32")

    ours = run_inference(model, pixels, batch_size=2)

    np.testing.assert_allclose(ours, model(pixels, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_four_dimensional_batch_norms_become_one_op_each_and_others_stay_keras() -> None:
    types = _op_types(_nested_model())

    assert types.count("FusedBatchNormV3") == 2  # the outer and the nested block's; the 2-D one is Keras'
    assert "Rsqrt" in types  # Keras' own spelling of the 2-D batch norm


def test_a_subclassed_model_inside_is_called_as_it_is() -> None:
    class Scaled(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.conv = keras.layers.Conv2D(2, 1)
            self.norm = keras.layers.BatchNormalization()

        def call(self, inputs: Any, training: Any = None) -> Any:
            return self.norm(self.conv(inputs), training=training) * 2.0

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, Scaled()(inputs))
    _randomise_batch_norm_statistics(model)
    pixels = np.random.default_rng(3).uniform(0, 1, (2, 4, 4, 3)).astype("float32")

    ours = run_inference(model, pixels, batch_size=2)

    np.testing.assert_allclose(ours, model(pixels, training=False).numpy(), rtol=1e-6)
    assert "FusedBatchNormV3" not in _op_types(model)


def test_half_precision_policy_keeps_keras_dtypes_and_values() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        x = keras.layers.BatchNormalization()(x)
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    finally:
        keras.config.set_dtype_policy(previous)
    _randomise_batch_norm_statistics(model)
    pixels = tf.constant(np.random.default_rng(2).uniform(0, 1, (3, 8, 8, 3)).astype("float32"))

    ours = inference_fn(model)(pixels)
    keras_own = model(pixels, training=False)

    assert ours.dtype == keras_own.dtype
    np.testing.assert_allclose(
        tf.cast(ours, tf.float32).numpy(), tf.cast(keras_own, tf.float32).numpy(), rtol=2e-2, atol=2e-2
    )
    assert "FusedBatchNormV3" in _op_types(model)


def test_several_arrays_go_through_in_equal_calls_and_come_back_split(monkeypatch: Any) -> None:
    from kubegraft_trainer import inference

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    traced = inference.inference_fn(model)
    calls: list[int] = []

    def recording(_: keras.Model) -> Any:
        def call(batch: tf.Tensor) -> tf.Tensor:
            calls.append(int(batch.shape[0]))
            return traced(batch)

        return call

    monkeypatch.setattr(inference, "inference_fn", recording)
    rng = np.random.default_rng(4)
    arrays = [rng.normal(size=(n, 3)).astype("float32") for n in (1680, 300, 20, 0)]

    outputs = inference.run_inference_many(model, arrays, batch_size=1024)

    assert calls == [1000, 1000]
    assert [len(o) for o in outputs] == [1680, 300, 20, 0]
    for array, output in zip(arrays, outputs, strict=True):
        expected = model(array).numpy() if len(array) else np.zeros((0, 2))
        np.testing.assert_allclose(output, expected, rtol=1e-5)
