"""The raw-pixel baseline on synthetic images: exact downsampling, determinism, channels, CV, guards."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kubegraft_trainer.baseline import DEFAULT_C, area_downsample, fit_pixel_baseline, transfer_gain


def quadrant_images(
    per_class: int, seed: int, *, side: int = 32, colour: bool = False
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Four classes, each a bright quadrant on noise (0..255); with ``colour`` each class also has a hue."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 120.0, size=(4 * per_class, side, side, 3))
    labels = np.repeat(np.arange(4), per_class)
    half = side // 2
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[index, row * half : (row + 1) * half, col * half : (col + 1) * half] += 120.0
    if not colour:
        images[..., 1] = images[..., 0]
        images[..., 2] = images[..., 0]
    order = rng.permutation(len(labels))
    return images[order], labels[order]


def test_area_downsample_averages_whole_pixel_blocks() -> None:
    image = np.arange(16, dtype="float64").reshape(1, 4, 4)
    small = area_downsample(image, 2)
    np.testing.assert_allclose(small[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_area_downsample_by_a_fractional_ratio_keeps_the_mean_and_weighs_by_overlap() -> None:
    image = np.arange(9, dtype="float64").reshape(1, 3, 3, 1)
    small = area_downsample(image, 2)
    assert small.mean() == pytest.approx(image.mean())
    # The top-left output covers pixel (0,0) fully, half of (0,1) and (1,0), a quarter of (1,1).
    expected = (0 * 1 + 1 * 0.5 + 3 * 0.5 + 4 * 0.25) / 2.25
    assert small[0, 0, 0, 0] == pytest.approx(expected)


@pytest.mark.parametrize("side", [0, 5])
def test_area_downsample_rejects_a_side_outside_the_image(side: int) -> None:
    with pytest.raises(ValueError, match="side must be"):
        area_downsample(np.zeros((1, 4, 4)), side)


def test_baseline_learns_synthetic_classes_and_scores_held_out_images() -> None:
    train_x, train_y = quadrant_images(30, seed=0)
    test_x, test_y = quadrant_images(30, seed=1)
    baseline = fit_pixel_baseline(train_x, train_y, seed=0)
    assert baseline.score(test_x, test_y) > 0.95
    probabilities = baseline.predict_proba(test_x)
    assert probabilities.shape == (len(test_x), 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert set(baseline.cv_accuracy) == {0.001, 0.01, 0.1, 1.0}
    assert baseline.c in baseline.cv_accuracy


def test_same_seed_and_data_give_the_same_model() -> None:
    train_x, train_y = quadrant_images(20, seed=0)
    test_x, _ = quadrant_images(10, seed=1)
    first = fit_pixel_baseline(train_x, train_y, seed=3)
    second = fit_pixel_baseline(train_x, train_y, seed=3)
    assert first.c == second.c
    assert first.cv_accuracy == second.cv_accuracy
    np.testing.assert_array_equal(first.predict_proba(test_x), second.predict_proba(test_x))


def test_grayscale_rgb_is_fitted_on_one_channel_and_scores_any_grayscale_form() -> None:
    train_x, train_y = quadrant_images(20, seed=0)
    test_x, test_y = quadrant_images(20, seed=1)
    baseline = fit_pixel_baseline(train_x, train_y, seed=0, side=8)
    assert baseline.channels == 1
    assert baseline.features(test_x).shape == (len(test_x), 64)
    rgb = baseline.score(test_x, test_y)
    assert baseline.score(test_x[..., 0], test_y) == rgb  # [N, H, W]
    assert baseline.score(test_x[..., :1], test_y) == rgb  # [N, H, W, 1]


def test_colour_baseline_keeps_channels_and_rejects_other_channel_counts() -> None:
    train_x, train_y = quadrant_images(20, seed=0, colour=True)
    baseline = fit_pixel_baseline(train_x, train_y, seed=0, side=8)
    assert baseline.channels == 3
    assert baseline.features(train_x[..., :1]).shape == (len(train_x), 8 * 8 * 3)
    with pytest.raises(ValueError, match="3-channel"):
        baseline.predict(train_x[..., :2])


def test_images_of_another_size_are_downsampled_to_the_fitted_side() -> None:
    train_x, train_y = quadrant_images(20, seed=0, side=32)
    test_x, test_y = quadrant_images(20, seed=1, side=48)
    assert fit_pixel_baseline(train_x, train_y, seed=0).score(test_x, test_y) > 0.95


def test_string_labels_come_back_as_predictions() -> None:
    train_x, train_y = quadrant_images(10, seed=0)
    names = np.array(["a", "b", "c", "d"])[train_y]
    baseline = fit_pixel_baseline(train_x, names, seed=0)
    assert list(baseline.classes) == ["a", "b", "c", "d"]
    assert set(baseline.predict(train_x[:8])) <= {"a", "b", "c", "d"}


def test_too_few_images_per_class_for_cross_validation_uses_the_default_c() -> None:
    train_x, train_y = quadrant_images(2, seed=0)
    baseline = fit_pixel_baseline(train_x, train_y, seed=0)
    assert baseline.c == DEFAULT_C
    assert baseline.cv_accuracy == {}


def test_baseline_rejects_one_class_and_mismatched_labels() -> None:
    images, _ = quadrant_images(5, seed=0)
    with pytest.raises(ValueError, match="two classes"):
        fit_pixel_baseline(images, np.zeros(len(images), dtype=int), seed=0)
    with pytest.raises(ValueError, match="labels of shape"):
        fit_pixel_baseline(images, np.zeros(3, dtype=int), seed=0)


def test_transfer_gain_is_the_accuracy_difference_and_rejects_non_accuracies() -> None:
    assert transfer_gain(0.95, 0.9) == pytest.approx(0.05)
    assert transfer_gain(0.47, 0.91) == pytest.approx(-0.44)
    with pytest.raises(ValueError, match="model_accuracy"):
        transfer_gain(1.2, 0.5)
    with pytest.raises(ValueError, match="baseline_accuracy"):
        transfer_gain(0.5, float("nan"))
