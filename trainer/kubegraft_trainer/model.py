"""The transfer model: raw RGB pixels -> [augmentation] -> preprocessing -> backbone -> head -> softmax.

Called by `kubegraft_trainer.run` once per run (`build_transfer_model`) and by `kubegraft_trainer.stages` per
stage (`set_trainable`, `compile_for_stage`). Following the Keras fine-tuning guide, the backbone is always
called with ``training=False``, so BatchNormalization keeps its moving statistics in inference mode even when
layers are unfrozen, and BatchNormalization layers themselves stay frozen. The head is a model of its own,
shared by the full model and by the bottleneck path (`stages`), so training it on cached features trains the
very layers the full model uses. Everything here is built under the run's strategy scope (`devices`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from kubegraft.spec import Augmentation, Head, Stage
from kubegraft_trainer.backbones import LoadedBackbone, Preprocess

log = logging.getLogger(__name__)

INPUT_NAME = "image"
HEAD_NAME = "head"
AUGMENTATION_NAME = "augmentation"
PREPROCESS_NAME = "preprocess"


@dataclass
class TransferModel:
    """The parts of a transfer model; `model` is what trains (fine-tune stages) and what is exported.

    Attributes:
        model: The full Keras model, raw RGB pixels (0..255, float32 [N, S, S, 3]) to class probabilities.
        backbone: The pretrained feature extractor inside `model`.
        head: The classifier on the backbone's features, a model of its own shared with `model`.
        features: Raw pixels to backbone features (preprocessing + backbone, inference mode, no augmentation).
        image_size: Input side in pixels.
        feature_dim: Width of the backbone's feature vector.
    """

    model: keras.Model
    backbone: keras.Model
    head: keras.Model
    features: keras.Model
    image_size: int
    feature_dim: int
    pretrained: bool = True


def augmentation_layers(spec: Augmentation, seed: int) -> keras.Sequential | None:
    """The random transforms the spec turns on, as layers active only while training.

    Args:
        spec: The augmentation spec.
        seed: Seed of the random transforms.

    Returns:
        A Sequential of Keras preprocessing layers, or None when everything is off.
    """
    if not spec.enabled:
        return None
    layers: list[keras.layers.Layer] = []
    if spec.horizontal_flip or spec.vertical_flip:
        mode = (
            "horizontal_and_vertical"
            if spec.horizontal_flip and spec.vertical_flip
            else ("horizontal" if spec.horizontal_flip else "vertical")
        )
        layers.append(keras.layers.RandomFlip(mode, seed=seed))
    if spec.rotation:
        layers.append(keras.layers.RandomRotation(spec.rotation / 360.0, seed=seed + 1))
    if spec.zoom:
        layers.append(keras.layers.RandomZoom((-spec.zoom, spec.zoom), seed=seed + 2))
    if spec.shear:
        layers.append(keras.layers.RandomShear(x_factor=spec.shear, y_factor=spec.shear, seed=seed + 3))
    if spec.brightness:
        layers.append(keras.layers.RandomBrightness(spec.brightness, value_range=(0, 255), seed=seed + 4))
    if spec.contrast:
        layers.append(keras.layers.RandomContrast(spec.contrast, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(layers, name=AUGMENTATION_NAME)


def build_head(spec: Head, feature_dim: int, num_classes: int, *, linear: bool = False) -> keras.Model:
    """The classification head: [Dropout -> Dense ReLU -> (BatchNorm)]* -> Dropout -> Dense softmax.

    Args:
        spec: Hidden layer widths, dropout rate and whether to add BatchNormalization.
        feature_dim: Width of the backbone's features.
        num_classes: Number of classes (softmax width).
        linear: Build the linear classifier instead (one Dense softmax, no hidden layers, no dropout).

    Returns:
        A Keras model from features [N, feature_dim] to probabilities [N, num_classes] (float32).
    """
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    if not linear:
        for i, units in enumerate(spec.hidden):
            if spec.dropout:
                x = keras.layers.Dropout(spec.dropout, name=f"dropout_{i}")(x)
            x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
            if spec.batch_norm:
                x = keras.layers.BatchNormalization(name=f"batch_norm_{i}")(x)
        if spec.dropout:
            x = keras.layers.Dropout(spec.dropout, name="dropout_out")(x)
    # Softmax in float32 even under mixed precision, for a numerically sound loss.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=HEAD_NAME)


def build_transfer_model(
    loaded: LoadedBackbone,
    head: Head,
    num_classes: int,
    augmentation: Augmentation,
    *,
    linear: bool = False,
    seed: int = 42,
) -> TransferModel:
    """Assemble the full model around a backbone.

    Args:
        loaded: The backbone with its input size and preprocessing mode.
        head: The head spec.
        num_classes: Number of classes.
        augmentation: The augmentation spec (layers active only in training).
        linear: Use the linear classifier head.
        seed: Seed of augmentation.

    Returns:
        The model and its parts.
    """
    size = loaded.image_size
    backbone = loaded.model
    feature_dim = int(backbone.output.shape[-1])
    preprocess = Preprocess(loaded.preprocess_mode, name=PREPROCESS_NAME)
    head_model = build_head(head, feature_dim, num_classes, linear=linear)

    inputs = keras.Input((size, size, 3), name=INPUT_NAME)
    x = inputs
    augment = augmentation_layers(augmentation, seed)
    if augment is not None:
        x = augment(x)
    # Pretrained: training=False keeps BatchNormalization in inference mode even when layers are unfrozen.
    # From scratch (weights none) there are no statistics to protect: BatchNormalization trains normally.
    pretrained = loaded.source != "none"
    features = backbone(preprocess(x), training=False) if pretrained else backbone(preprocess(x))
    outputs = head_model(features)
    model = keras.Model(inputs, outputs, name="transfer_model")

    feature_inputs = keras.Input((size, size, 3), name=INPUT_NAME)
    extractor = keras.Model(
        feature_inputs, backbone(preprocess(feature_inputs), training=False), name="feature_extractor"
    )
    return TransferModel(model, backbone, head_model, extractor, size, feature_dim, pretrained)


def backbone_layers(backbone: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's leaf layers in order (nested models flattened, input layers left out)."""

    def walk(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                yield from walk(inner)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer

    return list(walk(backbone))


@dataclass
class FrozenPrefix:
    """A fine-tune stage's model cut where everything below is frozen and deterministic.

    The prefix's output for an image never changes during the stage, so it is computed once per image and
    the stage trains ``suffix`` on it: the frozen bottom of the backbone is not run again every epoch.

    Attributes:
        prefix: Raw pixels to the cut's activations (preprocessing and the frozen bottom, inference mode).
        suffix: The cut's activations to class probabilities (the backbone's top and the head; the very
            layers `TransferModel.model` uses, so training it trains the full model).
        cut: Name of the backbone layer whose output is the cut.
    """

    prefix: keras.Model
    suffix: keras.Model
    cut: str


# Layers that compute differently in training, weights or not: a frozen prefix holding one is not cacheable.
_STOCHASTIC_LAYERS: tuple[type, ...] = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)


def frozen_prefix(parts: TransferModel) -> FrozenPrefix | None:
    """Split the model below its lowest trainable backbone layer, at a single tensor, after `set_trainable`.

    The cut is the output of the deepest frozen layer that every later layer reaches only through it (a
    block boundary in residual networks); when the lowest trainable layer sits inside a block, the cut
    moves down to the block's input and the frozen rest of the block runs in the suffix.

    Args:
        parts: The transfer model, its trainable flags set for the stage.

    Returns:
        The split, or None when nothing is gained or it would not be exact: every backbone layer trains,
        no trainable layer exists, the backbone nests models or shares layers, or the prefix holds a layer
        that behaves differently in training (dropout, noise, BatchNormalization that trains).
    """
    backbone = parts.backbone
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    if any(isinstance(layer, keras.Model) or len(layer._inbound_nodes) != 1 for layer in layers):
        return None
    trainable = [i for i, layer in enumerate(layers) if layer.trainable and layer.weights]
    if not trainable:
        return None
    for start in range(trainable[0], 0, -1):
        top = layers[start:]
        produced = {id(t) for layer in top for t in layer._inbound_nodes[0].output_tensors}
        external = {
            id(t): t for layer in top for t in layer._inbound_nodes[0].input_tensors if id(t) not in produced
        }
        if len(external) == 1:
            (cut,) = external.values()
            break
    else:
        return None
    bottom = layers[:start]
    if any(_changes_in_training(layer) for layer in bottom):
        return None
    preprocess = parts.model.get_layer(PREPROCESS_NAME)
    inputs = keras.Input((parts.image_size, parts.image_size, 3), name=INPUT_NAME)
    below = keras.Model(backbone.input, cut, name="frozen_bottom")
    prefix = keras.Model(inputs, below(preprocess(inputs), training=False), name="frozen_prefix")
    above = keras.Model(cut, backbone.output, name="backbone_top")
    cut_inputs = keras.Input(tuple(cut.shape[1:]), name="cut")
    features = above(cut_inputs, training=False) if parts.pretrained else above(cut_inputs)
    suffix = keras.Model(cut_inputs, parts.head(features), name="trainable_suffix")
    return FrozenPrefix(prefix, suffix, cut._keras_history.operation.name)


def _changes_in_training(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` may compute differently when the model trains (so its output cannot be cached)."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return bool(layer.trainable)  # frozen, it normalises with its moving statistics either way
    if isinstance(layer, _STOCHASTIC_LAYERS) or type(layer).__name__.startswith("Random"):
        return True
    # A layer from outside Keras that takes `training` may do anything with it (stochastic depth, noise).
    takes_training = bool(getattr(layer, "_call_has_training_arg", False))
    return takes_training and not type(layer).__module__.startswith("keras.")


def _unfreeze_models(model: keras.Model) -> None:
    model.trainable = True
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _unfreeze_models(layer)


def set_trainable(parts: TransferModel, trainable: int | str) -> int:
    """Unfreeze the top ``trainable`` backbone layers (or all), freeze the rest; the head always trains.

    In a pretrained backbone, BatchNormalization layers stay frozen wherever they are (the Keras fine-tuning
    guide's rule); they still count towards ``trainable``. A backbone trained from scratch (weights none)
    trains its BatchNormalization layers like any other. Recompile afterwards.

    Args:
        parts: The transfer model.
        trainable: Number of top backbone layers to unfreeze, or ``"all"``.

    Returns:
        The number of backbone layers left trainable (BatchNormalization excluded).
    """
    layers = backbone_layers(parts.backbone)
    count = len(layers) if trainable == "all" else min(int(trainable), len(layers))
    parts.head.trainable = True
    if count == 0:
        parts.backbone.trainable = False
        return 0
    parts.backbone.trainable = True
    _unfreeze_models(parts.backbone)
    unfrozen = 0
    for index, layer in enumerate(layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        train = index >= len(layers) - count and not (is_bn and parts.pretrained)
        layer.trainable = train
        unfrozen += int(train and bool(layer.weights))
    return unfrozen


def make_optimizer(stage: Stage) -> keras.optimizers.Optimizer:
    """The stage's optimizer with its learning rate and momentum or weight decay.

    Args:
        stage: The stage spec.

    Returns:
        A fresh Keras optimizer.
    """
    lr = stage.learning_rate
    if stage.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if stage.optimizer == "adamw":
        decay = 0.004 if stage.weight_decay is None else stage.weight_decay
        return keras.optimizers.AdamW(lr, weight_decay=decay)
    if stage.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9 if stage.momentum is None else stage.momentum)
    return keras.optimizers.RMSprop(lr, momentum=0.0 if stage.momentum is None else stage.momentum)


def compile_for_stage(model: keras.Model, stage: Stage) -> None:
    """(Re)compile ``model`` for a stage: its optimizer, sparse categorical cross-entropy, accuracy.

    Args:
        model: The full model or the head.
        stage: The stage spec.
    """
    model.compile(
        optimizer=make_optimizer(stage),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def trainable_summary(parts: TransferModel) -> dict[str, Any]:
    """Counts of trainable and frozen weights, for logs and metrics.json."""
    trainable = sum(int(tf.size(w)) for w in parts.model.trainable_weights)
    frozen = sum(int(tf.size(w)) for w in parts.model.non_trainable_weights)
    return {"trainable_params": trainable, "frozen_params": frozen}
