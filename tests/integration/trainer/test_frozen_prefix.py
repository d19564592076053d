"""Fine-tunes of the backbone's top train on the frozen bottom's output, computed once per image."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

from kubegraft.spec import Augmentation, Head
from kubegraft_trainer.backbones import LoadedBackbone
from kubegraft_trainer.inference import WARM_UP_IMAGES
from kubegraft_trainer.model import TransferModel, build_transfer_model, frozen_prefix, set_trainable
from kubegraft_trainer.run import train
from tests.integration.trainer.conftest import SpecFactory, counted_images, health_check_images, stage


def _parts(backbone: keras.Model) -> TransferModel:
    loaded = LoadedBackbone(backbone, 32, "tf", "saved")
    return build_transfer_model(loaded, Head(hidden=[16], dropout=0.2), 3, Augmentation())


def _mobilenet() -> keras.Model:
    """A residual backbone with the real MobileNetV2 block structure (random weights, nothing downloaded)."""
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )


@pytest.mark.parametrize("trainable", [10, 30, 60])
def test_prefix_and_suffix_compose_to_the_full_model_and_hold_every_trainable_weight(trainable: int) -> None:
    parts = _parts(_mobilenet())
    set_trainable(parts, trainable)

    split = frozen_prefix(parts)

    assert split is not None
    assert split.prefix.trainable_weights == []
    assert {w.path for w in split.suffix.trainable_weights} == {w.path for w in parts.model.trainable_weights}
    # The cut is a block boundary: a residual Add's inputs never straddle it.
    cut_layer = parts.backbone.get_layer(split.cut)
    assert not cut_layer.trainable or not cut_layer.weights
    pixels = np.random.default_rng(1).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        split.suffix(split.prefix(pixels)).numpy(), parts.model(pixels, training=False).numpy(), atol=1e-5
    )


def test_no_prefix_when_every_layer_trains_or_only_the_head_does() -> None:
    parts = _parts(_mobilenet())

    set_trainable(parts, "all")
    assert frozen_prefix(parts) is None
    set_trainable(parts, 0)
    assert frozen_prefix(parts) is None


class _StochasticDepth(keras.layers.Layer):  # type: ignore[misc]
    """A custom layer that drops its input while training, as ConvNeXt's stochastic depth does."""

    def call(self, inputs: keras.KerasTensor, training: bool | None = None) -> keras.KerasTensor:
        return keras.random.dropout(inputs, 0.5) if training else inputs


@pytest.mark.parametrize(
    "make_layer",
    [lambda: keras.layers.Dropout(0.5), lambda: keras.layers.GaussianNoise(0.1), _StochasticDepth],
    ids=["dropout", "noise", "custom-training-arg"],
)
def test_no_prefix_when_the_frozen_bottom_behaves_differently_in_training(
    make_layer: Callable[[], keras.layers.Layer],
) -> None:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv_0")(inputs)
    x = make_layer()(x)  # active whenever the full model trains
    x = keras.layers.Conv2D(4, 3, name="conv_1")(x)
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x))
    parts = _parts(backbone)
    set_trainable(parts, 2)  # pool and conv_1

    assert frozen_prefix(parts) is None


def test_prefix_below_deterministic_frozen_layers_of_any_kind() -> None:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv_0")(x)
    x = keras.layers.BatchNormalization(name="bn_0")(x)
    x = keras.layers.Dense(4, name="pointwise")(x)  # takes `training`, ignores it
    x = keras.layers.Conv2D(4, 3, name="conv_1")(x)
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x))
    parts = _parts(backbone)
    set_trainable(parts, 2)  # pool and conv_1

    split = frozen_prefix(parts)

    assert split is not None and split.cut == "pointwise"


@pytest.mark.parametrize("augment", [False, True], ids=["prefix-cached", "augmented"])
def test_finetune_runs_the_frozen_bottom_once_per_image_unless_augmented(
    augment: bool, tiny_backbone: Path, transfer_images: Path, make_spec: SpecFactory
) -> None:
    epochs = 3
    spec = make_spec(
        transfer_images,
        tiny_backbone,
        [stage("head", 0, 2), stage("tune", 4, epochs, learningRate=1e-3)],
        augmentation={"horizontalFlip": augment},
    )

    result = train(spec, run_id=f"prefix-{augment}")

    _, tune = result.records
    counts = result.metrics["images"]
    seen = counts["train"] + counts["validation"]
    health_n = health_check_images(result.metrics)
    if augment:
        assert tune.frozen_prefix is None
        passes = 2 * seen + epochs * seen  # the head and every fine-tune epoch run the whole backbone
    else:
        # top 4 of the tiny backbone: pool, relu_1, bn_1, conv_1; the cut is relu_0's output
        assert tune.frozen_prefix == "relu_0"
        # The head's features (on the extractor the health check warmed), then the prefix (warmed on a
        # blank image of its own): once each.
        passes = 2 * seen + WARM_UP_IMAGES
    assert counted_images(result.parts.model) == passes + counts["test"] + health_n
    assert tune.epochs_run == epochs and len(tune.history["val_accuracy"]) == epochs
    assert result.model_uri is not None
    metrics = json.loads((Path(result.model_uri) / "metrics.json").read_text())
    assert {s["name"]: s["frozen_prefix"] for s in metrics["stages"]} == {
        "head": None,
        "tune": None if augment else "relu_0",
    }
