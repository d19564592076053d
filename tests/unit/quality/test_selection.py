"""What strategy auto publishes: contenders compared on validation only, ties to the earlier; the mix."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kubegraft_trainer.selection import ENSEMBLE_WEIGHTS, ensemble_model, ensemble_weight, select_published
from kubegraft_trainer.sources import ArraySource
from tests.unit.quality.test_baseline import quadrant_images


def _constant_model(probabilities: list[float], side: int) -> keras.Model:
    """Ignores its image: the same probabilities for every input (a transfer model that learnt nothing)."""
    inputs = keras.Input((side, side, 3))
    zeros = keras.layers.Dense(1, kernel_initializer="zeros", use_bias=False)(keras.layers.Flatten()(inputs))
    layer = keras.layers.Dense(len(probabilities), activation="softmax")
    outputs = layer(zeros)
    layer.set_weights(
        [np.zeros((1, len(probabilities)), "float32"), np.log(np.asarray(probabilities, "float32"))]
    )
    return keras.Model(inputs, outputs)


def _source(seed: int = 0) -> ArraySource:
    x, y = quadrant_images(15, seed=seed, side=16)
    vx, vy = quadrant_images(6, seed=seed + 1, side=16)
    tx, ty = quadrant_images(6, seed=seed + 2, side=16)
    as_split = lambda a, b: (a.astype("float32"), b.astype("int32"))  # noqa: E731
    return ArraySource({"train": as_split(x, y), "validation": as_split(vx, vy), "test": as_split(tx, ty)})


def test_pixel_model_beats_a_useless_transfer_model_on_validation_and_is_published() -> None:
    source = _source()
    transfer = _constant_model([0.4, 0.2, 0.2, 0.2], 16)

    selection = select_published(
        "head", "head 1e-3", transfer, source, split="validation", num_classes=4, seed=0
    )

    assert selection.published.name == "pixels"
    assert selection.transfer.validation_accuracy == pytest.approx(0.25)
    assert selection.published.validation_accuracy > 0.9
    record = selection.record()
    assert record["published"] == "pixels"
    assert record["margin_over_transfer"] == pytest.approx(selection.published.validation_accuracy - 0.25)
    assert [c["name"] for c in record["contenders"]][:2] == ["head", "pixels"]
    assert "pixels" in selection.summary() and "head 0.250" in selection.summary()
    # The published model takes the transfer model's raw pixels and serves the pixel model's answers.
    test_x, test_y = source.in_memory("test")
    served = selection.published.model.predict(test_x, verbose=0)
    assert float(np.mean(served.argmax(axis=1) == test_y)) > 0.9


def test_without_validation_images_only_the_transfer_model_competes() -> None:
    source = _source()
    transfer = _constant_model([0.4, 0.2, 0.2, 0.2], 16)

    selection = select_published("head", "head 1e-3", transfer, source, split="train", num_classes=4, seed=0)

    assert selection.published.kind == "transfer"
    assert [c.name for c in selection.contenders] == ["head"]
    assert "no validation images" in selection.record()["reason"]


def test_selection_is_deterministic_for_a_seed() -> None:
    transfer = _constant_model([0.4, 0.2, 0.2, 0.2], 16)
    runs = [
        select_published("head", "h", transfer, _source(), split="validation", num_classes=4, seed=3).record()
        for _ in range(2)
    ]
    for run in runs:
        run.pop("seconds")
    assert runs[0] == runs[1]


def test_ensemble_weight_minimises_validation_log_loss_and_prefers_the_transfer_model_on_ties() -> None:
    labels = np.array([0, 1, 0, 1])
    good = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.2, 0.8]])
    bad = np.full((4, 2), 0.5)
    assert ensemble_weight(good, bad, labels)[0] == 1.0
    assert ensemble_weight(bad, good, labels)[0] == 0.0
    assert ensemble_weight(good, good, labels)[0] == 1.0  # every weight ties: the transfer model's
    # Two models each right where the other is unsure: a mix beats both.
    left = np.array([[0.99, 0.01], [0.45, 0.55], [0.99, 0.01], [0.45, 0.55]])
    right = np.array([[0.55, 0.45], [0.01, 0.99], [0.55, 0.45], [0.01, 0.99]])
    weight, loss = ensemble_weight(left, right, labels)
    assert 0.0 < weight < 1.0
    assert weight in ENSEMBLE_WEIGHTS
    assert loss < min(ensemble_weight(left, left, labels)[1], ensemble_weight(right, right, labels)[1])


def test_ensemble_model_mixes_both_models_probabilities() -> None:
    first = _constant_model([0.7, 0.3], 8)
    second = _constant_model([0.1, 0.9], 8)
    mixed = ensemble_model(first, second, 0.25).predict(np.zeros((2, 8, 8, 3), "float32"), verbose=0)
    np.testing.assert_allclose(mixed, [[0.25 * 0.7 + 0.75 * 0.1, 0.25 * 0.3 + 0.75 * 0.9]] * 2, atol=1e-6)
