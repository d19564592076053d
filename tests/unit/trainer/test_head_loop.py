"""HeadLoop: a whole epoch in one call, every row once, the input dropout drawn per block of rows."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import pytest

from kubegraft.spec import Head
from kubegraft_trainer import head_loop
from kubegraft_trainer.head_loop import HeadLoop, input_dropout
from kubegraft_trainer.model import build_head


def _linear(width: int, rate: float, lr: float) -> keras.Model:
    inputs = keras.Input((width,))
    x = keras.layers.Dropout(rate)(inputs) if rate else inputs
    outputs = keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(lr), "sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("hidden", [[], [16]])
def test_the_heads_first_dropout_is_the_input_dropout(hidden: list[int]) -> None:
    head = build_head(Head(hidden=hidden, dropout=0.25), 12, 3)

    found = input_dropout(head)

    assert found is not None
    assert found.name == ("dropout_0" if hidden else "dropout_out")


def test_no_input_dropout_where_the_input_feeds_more_than_a_plain_dropout() -> None:
    inputs = keras.Input((6,))
    shared = keras.Model(
        inputs, keras.layers.Concatenate()([keras.layers.Dropout(0.2)(inputs), keras.layers.Dense(2)(inputs)])
    )
    inputs = keras.Input((6,))
    channels = keras.Model(inputs, keras.layers.Dropout(0.2, noise_shape=(1, 6))(inputs))

    assert input_dropout(shared) is None
    assert input_dropout(channels) is None
    assert input_dropout(build_head(Head(hidden=[], dropout=0.0), 6, 2)) is None
    assert input_dropout(_linear(6, 0.0, 0.1)) is None


def test_each_epoch_visits_every_row_once_across_blocks(monkeypatch: Any) -> None:
    monkeypatch.setattr(head_loop, "_BLOCK_BYTES", 256)  # 4 features x 4 bytes x 8 rows x 2 steps per block
    model = _linear(4, 0.0, 0.0)  # nothing learns: every row's loss is ln 2 and class 0 wins the tie
    rng = np.random.default_rng(0)
    x = rng.normal(size=(101, 4)).astype("float32")
    y = rng.integers(0, 2, 101).astype("int32")
    logs: list[dict[str, float]] = []

    class Record(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, epoch_logs: Any = None) -> None:
            logs.append(dict(epoch_logs))

    HeadLoop(model, 8).fit((x, y), epochs=2, callbacks=[Record()])

    assert [round(entry["loss"], 6) for entry in logs] == [round(math.log(2), 6)] * 2
    assert [entry["accuracy"] for entry in logs] == pytest.approx([float(np.mean(y == 0))] * 2)


def _one_step_update(rate: float, seed: int) -> np.ndarray:
    keras.utils.set_random_seed(0)
    model = _linear(4, rate, 1.0)
    rows = 4000
    HeadLoop(model, rows).fit((np.ones((rows, 4), "float32"), np.zeros(rows, "int32")), epochs=1, seed=seed)
    # One SGD step from a zero kernel on all-zero labels: kernel[:, 0] = 0.5 * mean of the dropped inputs.
    return np.asarray(model.layers[-1].kernel.numpy()[:, 0])


def test_input_dropout_drops_and_rescales_like_keras_and_follows_the_seed() -> None:
    plain = _one_step_update(0.0, seed=1)
    dropped = _one_step_update(0.5, seed=1)

    np.testing.assert_allclose(plain, 0.5, rtol=1e-5)
    # Kept inputs are doubled (rate 0.5), so their mean stays 1: within 0.05 of 0.5, but not exactly it.
    np.testing.assert_allclose(dropped, 0.5, atol=0.05)
    assert np.abs(dropped - 0.5).max() > 1e-4
    np.testing.assert_array_equal(_one_step_update(0.5, seed=1), dropped)
    assert not np.array_equal(_one_step_update(0.5, seed=2), dropped)
