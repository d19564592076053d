"""The linear classifier's fit and its transfer into a Dense softmax layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kubegraft_trainer.stages import fit_linear_classifier


def _softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _blobs(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(classes, dim)) + 10.0  # far from zero and unscaled, like ReLU features
    labels = rng.integers(0, classes, size=n)
    return (centers[labels] + rng.normal(0, 1.0, size=(n, dim)) * rng.uniform(0.1, 5, size=dim)), labels


@pytest.mark.parametrize("classes", [2, 4])
def test_dense_layer_weights_reproduce_the_fitted_logistic_regression(classes: int) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(300, classes, 12, seed=classes)
    vx, vy = _blobs(100, classes, 12, seed=classes + 10)
    kernel, bias, record = fit_linear_classifier((x, y), (vx, vy), classes, seed=0)
    assert kernel.shape == (12, classes) and bias.shape == (classes,)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    reference = LogisticRegression(C=record["C"], max_iter=1000, random_state=0).fit((x - mean) / scale, y)
    expected = reference.predict_proba((vx - mean) / scale)
    np.testing.assert_allclose(_softmax(vx @ kernel + bias), expected, atol=1e-4)
    assert record["validation_accuracy_by_C"][str(record["C"])] == max(
        record["validation_accuracy_by_C"].values()
    )


def test_class_without_training_images_is_never_predicted() -> None:
    x, y = _blobs(200, 3, 6, seed=1)
    kernel, bias, _ = fit_linear_classifier((x, y), (x[:0], y[:0]), 4, seed=0)
    assert (_softmax(x @ kernel + bias).argmax(axis=1) != 3).all()
