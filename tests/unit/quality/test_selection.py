"""What strategy auto publishes: contenders compared on validation only, ties to the earlier; the mix."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kubegraft_trainer.selection import (
    ENSEMBLE_WEIGHTS,
    Contender,
    Selection,
    choose,
    ensemble_model,
    ensemble_weight,
    paired_test,
    select_published,
)
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


def _contender(name: str, kind: str, correct: list[bool]) -> Contender:
    """A contender with given per-image validation results (the rule looks at nothing else)."""
    right = np.asarray(correct, dtype=bool)
    return Contender(name, kind, name, float(right.mean()), _constant_model([0.5, 0.5], 4), right)


def _results(both: int, only_first: int, only_second: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Paired per-image results of two models on the same images, from the four cell counts."""
    first = [True] * both + [True] * only_first + [False] * only_second + [False] * neither
    second = [True] * both + [False] * only_first + [True] * only_second + [False] * neither
    return first, second


def test_paired_test_is_the_exact_one_sided_binomial_tail_of_the_discordant_images() -> None:
    first, second = _results(100, 15, 5, 30)
    result = paired_test(np.asarray(first), np.asarray(second))
    assert (result.wins, result.losses) == (15, 5)
    # P(X >= 15), X ~ Binomial(20, 1/2) = (C(20,15) + ... + C(20,20)) / 2^20
    assert result.p_value == pytest.approx(21700 / 2**20)
    assert result.significant
    first, second = _results(100, 14, 6, 30)
    assert paired_test(np.asarray(first), np.asarray(second)).p_value == pytest.approx(60460 / 2**20)
    assert not paired_test(np.asarray(first), np.asarray(second)).significant
    same = np.array([True, False, True])
    assert paired_test(same, same).p_value == 1.0
    assert paired_test(np.array([False, False, True]), np.ones(3, bool)).p_value == 1.0  # only losses
    with pytest.raises(ValueError, match="paired test"):
        paired_test(same, same[:2])


def test_transfer_model_ahead_by_three_validation_images_is_not_published_over_the_pixel_model() -> None:
    # The 1,000-image miss of docs/quality.md: 150 validation images, transfer 0.860 against pixels 0.840.
    transfer_right, pixels_right = _results(117, 12, 9, 12)
    transfer = _contender("full-1e-3", "transfer", transfer_right)
    pixels = _contender("pixels", "pixels", pixels_right)
    assert transfer.validation_accuracy == pytest.approx(0.860)
    assert pixels.validation_accuracy == pytest.approx(0.840)

    published, reason = choose([transfer, pixels])

    assert published is pixels
    assert transfer.versus is not None and (transfer.versus.wins, transfer.versus.losses) == (12, 9)
    assert not transfer.versus.significant
    assert "full-1e-3's higher validation accuracy (+0.020) is no significant gain" in reason
    assert "12 images right that pixels got wrong, 9 the other way" in reason
    record = transfer.record()["versus_pixels"]
    assert record["significant"] is False and record["p_value"] == pytest.approx(transfer.versus.p_value)
    assert pixels.versus is None


def test_contender_that_beats_the_pixel_model_significantly_is_published() -> None:
    transfer_right, pixels_right = _results(100, 30, 2, 18)
    transfer = _contender("full-1e-3", "transfer", transfer_right)
    pixels = _contender("pixels", "pixels", pixels_right)

    published, reason = choose([transfer, pixels])

    assert published is transfer
    assert "beats pixels significantly" in reason and "30 images right that pixels got wrong" in reason


def test_of_the_significantly_better_contenders_the_most_accurate_wins_ties_to_the_earlier() -> None:
    pixels = [True] * 50 + [False] * 50
    strong = [True] * 50 + [True] * 40 + [False] * 10
    stronger = [True] * 50 + [True] * 45 + [False] * 5
    for transfer_right, ensemble_right, winner in (
        (strong, stronger, "ensemble"),
        (stronger, strong, "transfer"),
        (strong, strong, "transfer"),
    ):
        contenders = [
            _contender("transfer", "transfer", transfer_right),
            _contender("pixels", "pixels", pixels),
            _contender("ensemble", "ensemble", ensemble_right),
        ]
        assert choose(contenders)[0].name == winner


def test_a_contender_ahead_of_the_pixel_model_by_chance_does_not_compete() -> None:
    # The ensemble agrees with pixels but for three images (3 wins, no loss: p 0.125); the transfer model
    # gets 30 right that pixels got wrong and 10 the other way (p 0.001).
    pixels = [True] * 50 + [False] * 50
    ensemble = [True] * 53 + [False] * 47
    transfer = [True] * 40 + [False] * 10 + [True] * 30 + [False] * 20
    contenders = [
        _contender("transfer", "transfer", transfer),
        _contender("pixels", "pixels", pixels),
        _contender("ensemble", "ensemble", ensemble),
    ]

    published, _ = choose(contenders)

    assert published.name == "transfer"
    ensemble_test = contenders[2].versus
    assert ensemble_test is not None and (ensemble_test.wins, ensemble_test.losses) == (3, 0)
    assert ensemble_test.p_value == pytest.approx(0.125) and not ensemble_test.significant


def test_pixel_model_is_published_when_no_contender_is_ahead_on_validation() -> None:
    right = [True] * 8 + [False] * 2
    contenders = [_contender("head", "transfer", right), _contender("pixels", "pixels", right)]

    published, reason = choose(contenders)

    assert published.name == "pixels"
    assert reason == "no contender beats pixels on validation"


def test_summary_says_the_pixel_model_was_published_behind_a_contender_and_why() -> None:
    transfer_right, pixels_right = _results(117, 12, 9, 12)
    contenders = [
        _contender("full-1e-3", "transfer", transfer_right),
        _contender("pixels", "pixels", pixels_right),
    ]
    published, reason = choose(contenders)
    selection = Selection(contenders, published, "validation", 0.0, reason=reason)

    summary = selection.summary()

    assert summary.startswith("published pixels (pixels) with validation accuracy 0.840, 0.020 behind")
    assert "(full-1e-3 0.860): full-1e-3's higher validation accuracy (+0.020) is no significant" in summary
    assert selection.record()["margin"] == pytest.approx(-0.020)
    assert selection.record()["contenders"][0]["versus_pixels"]["wins"] == 12
