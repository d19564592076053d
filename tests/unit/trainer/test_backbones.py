"""Backbone preprocessing and weights parsing."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kubegraft.runtime import FailureReason
from kubegraft_trainer.backbones import PREPROCESS_MODES, Preprocess, weights_kind
from kubegraft_trainer.errors import TrainerError

# One keras.applications module per preprocessing family, with a backbone that uses it.
_REFERENCE = {
    "ResNet50": keras.applications.resnet50.preprocess_input,
    "VGG16": keras.applications.vgg16.preprocess_input,
    "MobileNetV2": keras.applications.mobilenet_v2.preprocess_input,
    "ResNet50V2": keras.applications.resnet_v2.preprocess_input,
    "InceptionV3": keras.applications.inception_v3.preprocess_input,
    "DenseNet121": keras.applications.densenet.preprocess_input,
    "EfficientNetB0": keras.applications.efficientnet.preprocess_input,
    "ConvNeXtTiny": keras.applications.convnext.preprocess_input,
}


@pytest.mark.parametrize("backbone", sorted(_REFERENCE))
def test_preprocess_layer_matches_the_backbones_own_preprocess_input(backbone: str) -> None:
    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    expected = _REFERENCE[backbone](pixels.copy())
    got = np.asarray(Preprocess(PREPROCESS_MODES[backbone])(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_every_backbone_in_the_contract_has_a_preprocess_mode() -> None:
    from typing import get_args

    from kubegraft.spec import Backbone

    assert set(get_args(Backbone)) == set(PREPROCESS_MODES)


def test_preprocess_layer_survives_keras_serialisation() -> None:
    layer = Preprocess("caffe", name="pre")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, Preprocess) and restored.mode == "caffe"


@pytest.mark.parametrize(
    ("weights", "kind"),
    [
        ("imagenet", "imagenet"),
        ("none", "none"),
        ("s3://models/backbones/mnv2.keras", "saved"),
        ("file:///w/resnet.weights.h5", "weights"),
        ("weights/legacy.h5", "weights"),
    ],
)
def test_weights_values_are_classified_by_kind(weights: str, kind: str) -> None:
    assert weights_kind(weights) == kind


def test_weights_uri_of_unknown_format_is_an_invalid_spec() -> None:
    with pytest.raises(TrainerError) as caught:
        weights_kind("s3://models/backbone.pt")
    assert caught.value.reason == FailureReason.INVALID_SPEC
    assert not caught.value.retryable
