"""Servable pixel models: the Keras model computes scikit-learn's probabilities; CV picks the family."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from kubegraft_trainer.export import SERVING_SIGNATURE, write_keras, write_savedmodel, write_tflite
from kubegraft_trainer.pixels import fit_pixel_candidate, keras_model
from tests.unit.quality.test_baseline import quadrant_images


def xor_images(
    per_class: int, seed: int, side: int = 24
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Two classes no linear model on pixels separates: two bright quadrants, in a row or column (class 0:
    top or bottom half) or diagonal (class 1); both classes light every quadrant equally often."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 100.0, size=(2 * per_class, side, side, 3))
    labels = np.repeat(np.arange(2), per_class)
    half = side // 2
    pairs = {0: [((0, 0), (0, 1)), ((1, 0), (1, 1))], 1: [((0, 0), (1, 1)), ((0, 1), (1, 0))]}
    for index, label in enumerate(labels):
        for row, col in pairs[int(label)][index % 2]:
            images[index, row * half : (row + 1) * half, col * half : (col + 1) * half] += 140.0
    images[..., 1] = images[..., 0]
    images[..., 2] = images[..., 0]
    order = rng.permutation(len(labels))
    return images[order], labels[order]


@pytest.mark.parametrize("colour", [False, True])
def test_keras_pixel_model_computes_the_fitted_pipelines_probabilities(colour: bool) -> None:
    x, y = quadrant_images(12, seed=0, side=32, colour=colour)
    test_x, _ = quadrant_images(5, seed=1, side=32, colour=colour)
    candidate = fit_pixel_candidate(x, y, seed=0, side=8)
    assert candidate.channels == (3 if colour else 1)

    served = keras_model(candidate, 32, 4).predict(test_x.astype("float32"), verbose=0)

    np.testing.assert_allclose(served, candidate.predict_proba(test_x), atol=2e-5)


def test_rbf_model_wins_by_cross_validation_where_pixels_are_not_linearly_separable() -> None:
    x, y = xor_images(40, seed=0)
    test_x, test_y = xor_images(30, seed=1)

    candidate = fit_pixel_candidate(x, y, seed=0, side=12)

    assert candidate.kind == "rbf"
    assert candidate.cv_accuracy["rbf"] > candidate.cv_accuracy["linear"]
    assert set(candidate.settings) == {"C", "gamma", "landmarks"}
    served = keras_model(candidate, 24, 2).predict(test_x.astype("float32"), verbose=0)
    np.testing.assert_allclose(
        served, candidate.predict_proba(test_x), atol=2e-5
    )  # binary: sigmoid as softmax
    assert float(np.mean(served.argmax(axis=1) == test_y)) > 0.8


def test_pixel_candidate_is_deterministic_for_a_seed() -> None:
    x, y = xor_images(20, seed=3)
    first, second = (fit_pixel_candidate(x, y, seed=4, side=12) for _ in range(2))
    assert (first.kind, first.settings, first.cv_accuracy) == (
        second.kind,
        second.settings,
        second.cv_accuracy,
    )
    np.testing.assert_array_equal(first.predict_proba(x), second.predict_proba(x))


def test_a_class_without_training_images_gets_no_probability() -> None:
    x, y = quadrant_images(10, seed=0, side=16)
    keep = y != 3

    candidate = fit_pixel_candidate(x[keep], y[keep], seed=0, side=8)
    served = keras_model(candidate, 16, 4).predict(x.astype("float32"), verbose=0)

    assert served.shape == (len(x), 4)
    assert float(served[:, 3].max()) < 1e-9
    np.testing.assert_allclose(served[:, :3], candidate.predict_proba(x), atol=2e-5)


def test_pixel_model_exports_as_savedmodel_keras_and_tflite_with_the_same_answers(tmp_path: Path) -> None:
    x, y = xor_images(20, seed=5, side=16)
    candidate = fit_pixel_candidate(x, y, seed=0, side=8)
    model = keras_model(candidate, 16, 2)
    pixels = np.round(x[:6]).clip(0, 255).astype("uint8")
    expected = candidate.predict_proba(pixels.astype("float64"))

    write_savedmodel(model, ["a", "b"], 16, tmp_path / "1")
    serve = tf.saved_model.load(str(tmp_path / "1")).signatures[SERVING_SIGNATURE]
    served = serve(images=tf.constant([tf.io.encode_png(p).numpy() for p in pixels]))["probabilities"]
    np.testing.assert_allclose(served.numpy(), expected, atol=2e-5)

    write_keras(model, tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(pixels.astype("float32"), verbose=0), expected, atol=2e-5)

    write_tflite(model, 16, tmp_path / "model.tflite")
    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice (LiteRT is not installed)
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "model.tflite"))
    lite = interpreter.get_signature_runner()(image=pixels[:1].astype("float32"))["probabilities"]
    np.testing.assert_allclose(lite, expected[:1], atol=2e-5)
