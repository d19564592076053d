"""Backbones: a keras.applications network without its top, its weights, and its input preprocessing.

`load_backbone` is called by `kubegraft_trainer.model` once per run. The backbone's name always chooses the
preprocessing (`PREPROCESS_MODES`: caffe, tf, torch or none, as its `preprocess_input` does); the weights come
from ImageNet (downloaded by Keras), nowhere (`none`, random initialisation), a saved backbone (`.keras`: the
file supplies architecture and input size) or a weights file for the named architecture (`.weights.h5`,
`.h5`).
`Preprocess` is the serialisable layer that applies the mode inside the model, so exported models take raw
RGB pixels (0..255).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras

from kubegraft.runtime import FailureReason
from kubegraft.spec import ModelSpec, StorageSpec
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.uris import fetch_file

log = logging.getLogger(__name__)

PreprocessMode = Literal["caffe", "tf", "torch", "none"]

# What each backbone's keras.applications preprocess_input does to RGB pixels in 0..255.
PREPROCESS_MODES: dict[str, PreprocessMode] = {
    "Xception": "tf",
    "VGG16": "caffe",
    "VGG19": "caffe",
    "ResNet50": "caffe",
    "ResNet101": "caffe",
    "ResNet152": "caffe",
    "ResNet50V2": "tf",
    "ResNet101V2": "tf",
    "ResNet152V2": "tf",
    "InceptionV3": "tf",
    "InceptionResNetV2": "tf",
    "MobileNet": "tf",
    "MobileNetV2": "tf",
    "MobileNetV3Small": "none",  # include_preprocessing=True: the model rescales itself
    "MobileNetV3Large": "none",
    "DenseNet121": "torch",
    "DenseNet169": "torch",
    "DenseNet201": "torch",
    **{f"EfficientNetB{i}": "none" for i in range(8)},
    **{f"EfficientNetV2{v}": "none" for v in ("B0", "B1", "B2", "B3", "S", "M", "L")},
    **{f"ConvNeXt{v}": "none" for v in ("Tiny", "Small", "Base", "Large", "XLarge")},
}

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_WEIGHTS_SUFFIXES = (".weights.h5", ".h5")


@keras.saving.register_keras_serializable(package="kubegraft")
class Preprocess(keras.layers.Layer):  # type: ignore[misc]
    """keras.applications `preprocess_input` as a layer: RGB pixels 0..255 in, backbone input out.

    Args:
        mode: caffe (RGB->BGR, ImageNet mean subtracted), tf (scaled to [-1, 1]), torch (scaled to [0, 1],
            then ImageNet mean and std normalised) or none (identity: the backbone rescales itself).
        **kwargs: Base layer arguments (name, dtype).
    """

    def __init__(self, mode: PreprocessMode, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch", "none"):
            raise ValueError(f"unknown preprocess mode {mode!r}")
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        """Apply the mode to a batch of RGB images."""
        ops = keras.ops
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=self.compute_dtype)
            return ops.flip(x, axis=-1) - mean
        return x

    def get_config(self) -> dict[str, Any]:
        """Layer config for saving."""
        return {**super().get_config(), "mode": self.mode}


@dataclass
class LoadedBackbone:
    """A backbone ready for a head: the Keras model, its input size and preprocessing, and its source."""

    model: keras.Model
    image_size: int
    preprocess_mode: PreprocessMode
    source: str


def weights_kind(weights: str) -> Literal["imagenet", "none", "saved", "weights"]:
    """Classify a ModelSpec.weights value.

    Args:
        weights: ``imagenet``, ``none`` or a URI / path.

    Returns:
        ``imagenet``, ``none``, ``saved`` (a .keras backbone) or ``weights`` (a weights file).

    Raises:
        TrainerError: The URI names neither a .keras file nor a weights file (InvalidSpec).
    """
    if weights in ("imagenet", "none"):
        return weights  # type: ignore[return-value]
    lowered = weights.lower()
    if lowered.endswith(".keras"):
        return "saved"
    if lowered.endswith(_WEIGHTS_SUFFIXES):
        return "weights"
    raise TrainerError(
        FailureReason.INVALID_SPEC,
        f"model.weights {weights!r} must be imagenet, none, a saved backbone (.keras) or a weights file "
        "(.weights.h5 or .h5)",
    )


def _application(name: str, image_size: int, weights: str | None) -> keras.Model:
    constructor = getattr(keras.applications, name, None)
    if constructor is None:
        raise TrainerError(FailureReason.INVALID_SPEC, f"unknown backbone {name!r}")
    return constructor(
        include_top=False, weights=weights, input_shape=(image_size, image_size, 3), pooling="avg"
    )


def _pooled(model: keras.Model) -> keras.Model:
    """The model itself if it outputs a feature vector, else the model followed by global average pooling."""
    if len(model.output.shape) == 2:
        return model
    if len(model.output.shape) != 4:
        raise TrainerError(
            FailureReason.INVALID_SPEC,
            f"the saved backbone's output has shape {tuple(model.output.shape)}; "
            "expected [N, D] or [N, H, W, D]",
        )
    inputs = keras.Input(model.input.shape[1:])
    outputs = keras.layers.GlobalAveragePooling2D()(model(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_pooled")


def load_backbone(
    spec: ModelSpec, image_size: int, storage: StorageSpec, workdir: Path | None = None
) -> LoadedBackbone:
    """Build the backbone a ModelSpec asks for.

    Args:
        spec: The model spec: backbone name and weights.
        image_size: The dataset's image size, used unless a saved backbone fixes its own input size.
        storage: Object storage settings for s3:// weights.
        workdir: Scratch directory for downloaded files; a temporary one if omitted.

    Returns:
        The backbone with its effective input size and preprocessing mode.

    Raises:
        TrainerError: Weights cannot be fetched (BackboneUnavailable, retryable for downloads) or do not fit
            the architecture (InvalidSpec).
    """
    mode = PREPROCESS_MODES[spec.backbone]
    kind = weights_kind(spec.weights)
    if kind == "none":
        return LoadedBackbone(_application(spec.backbone, image_size, None), image_size, mode, "none")
    if kind == "imagenet":
        try:
            model = _application(spec.backbone, image_size, "imagenet")
        except (OSError, ValueError) as exc:  # urllib errors are OSErrors
            raise TrainerError(
                FailureReason.BACKBONE_UNAVAILABLE,
                f"ImageNet weights for {spec.backbone} could not be downloaded ({type(exc).__name__})",
                retryable=True,
            ) from exc
        return LoadedBackbone(model, image_size, mode, "imagenet")

    scratch = Path(workdir or tempfile.mkdtemp(prefix="kubegraft-backbone-"))
    suffix = (
        ".keras" if kind == "saved" else (".weights.h5" if spec.weights.endswith(".weights.h5") else ".h5")
    )
    local = fetch_file(spec.weights, storage, scratch / f"backbone{suffix}")
    if kind == "saved":
        try:
            loaded = keras.models.load_model(local, compile=False)
        except Exception as exc:
            raise TrainerError(
                FailureReason.INVALID_SPEC, f"{spec.weights} is not a loadable Keras model: {exc}"
            ) from exc
        model = _pooled(loaded)
        height, width = model.input.shape[1], model.input.shape[2]
        if height is not None and (height != width):
            raise TrainerError(
                FailureReason.INVALID_SPEC, f"the saved backbone's input {height}x{width} is not square"
            )
        size = int(height) if height is not None else image_size
        if size != image_size:
            log.warning(
                "saved backbone fixes the input size to %d px (dataset.imageSize %d)", size, image_size
            )
        return LoadedBackbone(model, size, mode, spec.weights)

    model = _application(spec.backbone, image_size, None)
    try:
        model.load_weights(local)
    except Exception as exc:
        raise TrainerError(
            FailureReason.INVALID_SPEC, f"{spec.weights} does not hold weights for {spec.backbone}: {exc}"
        ) from exc
    return LoadedBackbone(model, image_size, mode, spec.weights)
