"""Fixtures of the trainer's integration tests: data sets on disk, a tiny counting backbone, spec builders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import pytest

from kubegraft.spec import TransferJobSpec
from kubegraft_trainer.inference import WARM_UP_IMAGES
from tests.harness.fashion import write_class_folders

TRANSFER_CLASSES = (0, 1, 2, 3, 4)


@keras.saving.register_keras_serializable(package="kubegraft_tests")
class CallCounter(keras.layers.Layer):  # type: ignore[misc]
    """Identity layer that counts the images passing through it (in a non-trainable weight)."""

    def build(self, input_shape: Any) -> None:
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="count", dtype="float32"
        )

    def call(self, inputs: Any) -> Any:
        self.count.assign_add(keras.ops.cast(keras.ops.shape(inputs)[0], "float32"))
        return inputs


def counted_images(model: keras.Model) -> int:
    """Images that went through the CallCounter inside ``model``'s backbone."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, CallCounter):
            return int(layer.count.numpy())
    raise AssertionError("no CallCounter in the model")


def health_check_images(metrics: dict[str, Any]) -> int:
    """Images the backbone health check before training ran: the blank image that warms the extractor (which
    the feature pass then reuses warm), and its sample (twice when it re-estimated BN)."""
    health = metrics["health"]["before_training"]
    if not health["checked"]:
        return WARM_UP_IMAGES
    return WARM_UP_IMAGES + int(health["sample"]) * (2 if health.get("repaired") else 1)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small conv backbone (.keras, 32 px, two Conv-BN-ReLU blocks) whose first layer counts its images."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3))
    x = CallCounter(name="counter")(inputs)
    for i, filters in enumerate((8, 16)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"conv_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.ReLU(name=f"relu_{i}")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    path = tmp_path_factory.mktemp("tiny-backbone") / "tiny.keras"
    keras.Model(inputs, outputs, name="tiny").save(path)
    return path


@pytest.fixture(scope="session")
def transfer_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST classes 0-4 as class folders: 125 train-split images per class (100 after splits)."""
    root = tmp_path_factory.mktemp("transfer-images")
    return write_class_folders(root, TRANSFER_CLASSES, 125, split="train", seed=0)


@pytest.fixture(scope="session")
def one_class_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data set whose only class folder is T-shirt_top."""
    root = tmp_path_factory.mktemp("one-class")
    return write_class_folders(root, (0,), 20, split="train", seed=0)


SpecFactory = Callable[..., TransferJobSpec]


def build_spec(
    data: str | Path,
    weights: str | Path,
    stages: list[dict[str, Any]] | None,
    output: dict[str, Any],
    **overrides: Any,
) -> TransferJobSpec:
    """A TransferJobSpec for the tests' 32 px images; dict overrides merge into the defaults' sections."""
    body: dict[str, Any] = {
        "dataset": {
            "uri": str(data),
            "imageSize": 32,
            "validationSplit": 0.12,
            "testSplit": 0.08,
            "seed": 7,
        },
        "model": {
            "backbone": "MobileNetV2",
            "weights": str(weights),
            "head": {"hidden": [64], "dropout": 0.2},
        },
        "output": output,
    }
    if stages is not None:
        body["stages"] = stages
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return TransferJobSpec.model_validate(body)


@pytest.fixture
def make_spec(tmp_path: Path) -> SpecFactory:
    """Build a TransferJobSpec for 32 px images: ``make_spec(data, weights, stages=[...], **overrides)``."""

    def build(
        data: str | Path, weights: str | Path, stages: list[dict[str, Any]] | None, **overrides: Any
    ) -> TransferJobSpec:
        return build_spec(data, weights, stages, {"uri": str(tmp_path / "models")}, **overrides)

    return build


def stage(name: str, trainable: int | str, epochs: int, **extra: Any) -> dict[str, Any]:
    """A stage manifest entry with early stopping off (so epoch counts are exact) unless given."""
    return {
        "name": name,
        "trainable": trainable,
        "epochs": epochs,
        "earlyStopping": {"enabled": False},
        **extra,
    }
