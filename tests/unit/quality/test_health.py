"""Backbone health on tiny conv + BN models: detection, exact re-estimation, no side effects."""

from __future__ import annotations

import json
from typing import Any

import keras
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from kubegraft_trainer.health import (
    COLLAPSE_THRESHOLD,
    batchnorm_layers,
    check_backbone_health,
    feature_spread,
    is_collapsed,
    reestimate_batchnorm_statistics,
    spread_of_features,
)

SIDE = 12
CLASSES = 3


def pattern_images(per_class: int, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Noisy horizontal stripes, vertical stripes and checkerboards: separable by random conv features."""
    rng = np.random.default_rng(seed)
    grid = np.indices((SIDE, SIDE))
    patterns = [grid[0] % 2, grid[1] % 2, (grid[0] + grid[1]) % 2]
    images, labels = [], []
    for label, pattern in enumerate(patterns):
        base = np.repeat(pattern[..., None].astype("float32"), 3, axis=-1)
        for _ in range(per_class):
            images.append(base * rng.uniform(0.5, 1.5) + rng.normal(0.0, 0.4, base.shape))
            labels.append(label)
    order = rng.permutation(len(images))
    return np.stack(images).astype("float32")[order], np.array(labels)[order]


def tiny_backbone(seed: int = 0, *, dropout: float = 0.0) -> keras.Model:
    """Two conv + BN + ReLU blocks and global average pooling: a backbone in miniature."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = inputs
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, padding="same")(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, outputs, name="tiny_backbone")


def make_stale(model: keras.Model) -> None:
    """Moving statistics far from the activations, as a short schedule with a slow BN momentum leaves them."""
    for layer in batchnorm_layers(model):
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 50.0, dtype="float32"))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1e-3, dtype="float32"))


def probe_accuracy(model: keras.Model, seed: int = 1) -> float:
    train_x, train_y = pattern_images(40, seed)
    test_x, test_y = pattern_images(40, seed + 100)
    train_f = model.predict(train_x, verbose=0)
    test_f = model.predict(test_x, verbose=0)
    probe = LogisticRegression(max_iter=2000).fit(train_f, train_y)
    return float(probe.score(test_f, test_y))


def test_spread_is_zero_for_identical_features_and_one_for_centred_features() -> None:
    same = np.tile(np.array([[3.0, 0.0, 7.0]]), (10, 1))
    centred = np.array([[1.0, -2.0], [-1.0, 2.0]])
    assert spread_of_features(same) == 0.0
    assert spread_of_features(centred) == pytest.approx(1.0)


def test_spread_does_not_depend_on_feature_scale() -> None:
    features = np.random.default_rng(0).gamma(2.0, size=(50, 20))
    assert spread_of_features(features * 1000.0) == pytest.approx(spread_of_features(features))


def test_spread_of_all_zero_or_non_finite_features_is_zero() -> None:
    assert spread_of_features(np.zeros((5, 4))) == 0.0
    assert spread_of_features(np.array([[1.0, np.nan], [2.0, 3.0]])) == 0.0


def test_spread_needs_at_least_two_images() -> None:
    with pytest.raises(ValueError, match="at least two"):
        spread_of_features(np.ones((1, 4)))


def test_stale_batchnorm_statistics_are_detected_as_collapsed() -> None:
    images, _ = pattern_images(20, seed=0)
    model = tiny_backbone()
    make_stale(model)
    assert feature_spread(model, images) < COLLAPSE_THRESHOLD
    assert is_collapsed(model, images)


def test_healthy_model_is_not_flagged_and_health_check_leaves_it_untouched() -> None:
    images, _ = pattern_images(20, seed=0)
    model = tiny_backbone()
    reestimate_batchnorm_statistics(model, images)
    before = [v.numpy().copy() for v in model.weights]
    report = check_backbone_health(model, images)
    assert not report.collapsed
    assert not report.repaired
    assert report.healthy
    assert report.spread_after == report.spread_before > COLLAPSE_THRESHOLD
    for old, variable in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, variable.numpy())


def test_reestimation_repairs_stale_statistics_and_linear_probe_accuracy_rises() -> None:
    images, _ = pattern_images(40, seed=0)
    model = tiny_backbone()
    make_stale(model)
    stale_probe = probe_accuracy(model)

    report = check_backbone_health(model, images, batch_size=16)

    assert report.collapsed
    assert report.repaired
    assert report.layers_updated == 2
    assert report.images == len(images)
    assert report.spread_before < COLLAPSE_THRESHOLD < report.spread_after
    assert report.healthy
    assert stale_probe < 0.5  # chance is 1/3
    assert probe_accuracy(model) > 0.9


def test_reestimation_changes_no_trainable_weight_and_restores_flags_and_momentum() -> None:
    images, _ = pattern_images(20, seed=0)
    inner = tiny_backbone()
    inner.trainable = False  # a frozen backbone: Keras runs frozen BN in inference mode unless told otherwise
    inputs = keras.Input((SIDE, SIDE, 3))
    classifier = keras.Model(inputs, keras.layers.Dense(CLASSES)(inner(inputs)))
    make_stale(classifier)
    trainable_before = [v.numpy().copy() for v in classifier.trainable_weights]
    frozen_before = [v.numpy().copy() for v in inner.weights if "moving" not in v.path]
    bn = batchnorm_layers(classifier)

    assert reestimate_batchnorm_statistics(classifier, images, batch_size=8) == 2

    for old, variable in zip(trainable_before, classifier.trainable_weights, strict=True):
        np.testing.assert_array_equal(old, variable.numpy())
    for old, variable in zip(
        frozen_before, [v for v in inner.weights if "moving" not in v.path], strict=True
    ):
        np.testing.assert_array_equal(old, variable.numpy())
    assert all(not layer.trainable for layer in bn)
    assert all(layer.momentum == 0.99 for layer in bn)
    assert all("call" not in vars(layer) for layer in bn)
    assert not np.allclose(bn[0].moving_mean.numpy(), 50.0)
    assert not is_collapsed(inner, images)


def test_reestimated_statistics_are_the_size_weighted_average_of_batch_statistics_with_dropout_off() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(9, 5)).astype("float32")
    inputs = keras.Input((5,))
    bn_layer = keras.layers.BatchNormalization()
    # Dropout before BN: it must stay off, or the variance would come out inflated and random.
    model = keras.Model(inputs, bn_layer(keras.layers.Dropout(0.5)(inputs)))

    reestimate_batchnorm_statistics(model, data, batch_size=4)

    batches = [data[:4], data[4:]]  # the last single image is folded into the second batch
    sizes = np.array([len(b) for b in batches], dtype="float64")
    expected_mean = sum(n * b.mean(axis=0) for n, b in zip(sizes, batches, strict=True)) / sizes.sum()
    expected_var = sum(n * b.var(axis=0) for n, b in zip(sizes, batches, strict=True)) / sizes.sum()
    np.testing.assert_allclose(bn_layer.moving_mean.numpy(), expected_mean, rtol=1e-5)
    np.testing.assert_allclose(bn_layer.moving_variance.numpy(), expected_var, rtol=1e-5)


def test_batchnorm_layers_are_found_once_in_nested_models() -> None:
    inner = tiny_backbone()
    inputs = keras.Input((SIDE, SIDE, 3))
    features = inner(inputs)
    outer = keras.Model(inputs, keras.layers.BatchNormalization()(features))
    assert len(batchnorm_layers(outer)) == 3
    assert len(batchnorm_layers(inner)) == 2


def test_model_without_batchnorm_is_left_alone() -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    data = np.ones((6, 4), dtype="float32")
    assert reestimate_batchnorm_statistics(model, data) == 0
    report = check_backbone_health(model, data)
    assert report.collapsed  # identical inputs give identical features
    assert not report.repaired
    assert not report.healthy


@pytest.mark.parametrize(("count", "batch_size"), [(1, 64), (10, 1)])
def test_reestimation_rejects_too_few_images_or_a_batch_of_one(count: int, batch_size: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        reestimate_batchnorm_statistics(
            tiny_backbone(), np.zeros((count, SIDE, SIDE, 3)), batch_size=batch_size
        )


def test_health_report_serialises_to_json_with_its_verdict() -> None:
    images, _ = pattern_images(10, seed=0)
    model = tiny_backbone()
    make_stale(model)
    record = json.loads(json.dumps(check_backbone_health(model, images).to_dict()))
    assert record["repaired"] is True
    assert record["healthy"] is True
    assert set(record) == {
        "spread_before",
        "spread_after",
        "threshold",
        "collapsed",
        "repaired",
        "layers_updated",
        "images",
        "healthy",
    }
