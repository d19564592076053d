"""Backbone health: detect and repair the BatchNormalization trap before any head is trained on a backbone.

A backbone whose BatchNormalization (BN) moving statistics lag its weights (pretrained from scratch on a short
schedule, or saved right after training with a slow BN momentum) gives nearly the same feature vector for
every image in inference mode, so every head trained on it stays at chance accuracy, whatever the recipe.
Measured here (docs/quality.md): a MobileNetV2 (alpha 0.35, 32 px) after two epochs on 1,500 Fashion-MNIST
images with Keras' default BN momentum had chance accuracy (0.20 on 5 classes) in inference mode and a
`feature_spread` of 1.6e-14; after `reestimate_batchnorm_statistics`, 0.69 and 0.80.

- `feature_spread` measures how much inference-mode features vary across images (scale-free, 0 = identical).
- `is_collapsed` compares it with `COLLAPSE_THRESHOLD`.
- `reestimate_batchnorm_statistics` repairs a backbone: each BN layer's moving mean and variance become the
  average of its batch statistics over the given images (BN layers in training mode, everything else in
  inference mode, no weight updated).
- `check_backbone_health` does the three in order and returns a `BackboneHealthReport` for metrics.json.

Preprocessing is the caller's job everywhere in this module: ``images`` must be what the backbone's input
expects (e.g. scaled to [-1, 1] for MobileNetV2's "tf" mode), or the measured spread and the re-estimated
statistics describe the wrong inputs. Called by the trainer's run before its first stage, and by the recipe
search and bench/bench_quality.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np
import numpy.typing as npt

from kubegraft_trainer.inference import extraction_batch, run_inference

__all__ = [
    "COLLAPSE_THRESHOLD",
    "SPREAD_SAMPLE",
    "BackboneHealthReport",
    "batchnorm_layers",
    "check_backbone_health",
    "feature_spread",
    "is_collapsed",
    "reestimate_batchnorm_statistics",
    "spread_of_features",
]

# Features whose across-image variance is below 1% of their mean squared magnitude count as collapsed.
# Measured on the 32 px MobileNetV2 (alpha 0.35) of the tests: healthy backbones score 0.64 to 0.83; stale-BN
# ones 1e-14 to 3e-14 (a freshly initialised one 4e-8 in one draw, 0.17 in another). The threshold sits orders
# of magnitude from both and leaves room for healthy backbones on homogeneous data sets. Not yet measured on
# ImageNet weights (none can be downloaded here).
COLLAPSE_THRESHOLD = 0.01
# Images used to measure the spread in `check_backbone_health` (a forward pass, so a sample is enough).
SPREAD_SAMPLE = 512


def spread_of_features(features: npt.ArrayLike) -> float:
    """The fraction of the features' energy that varies across images: ``sum_d Var_d / sum_d E[f_d^2]``.

    Equivalently ``1 - |mean feature|^2 / mean |feature|^2``: 0 when every image gets the same vector, 1 when
    the features have zero mean. It is invariant to scaling the features, and dimensions that are always zero
    (dead ReLUs) add nothing to either sum.

    Args:
        features: [N, ...] features of N >= 2 images (flattened per image).

    Returns:
        The spread in [0, 1]; 0.0 also for all-zero or non-finite features (a broken backbone).

    Raises:
        ValueError: Fewer than two images.
    """
    array = np.asarray(features, dtype=np.float64)
    if array.ndim < 1 or array.shape[0] < 2:
        raise ValueError(f"the spread needs the features of at least two images, got shape {array.shape}")
    flat = array.reshape(array.shape[0], -1)
    if not np.all(np.isfinite(flat)):
        return 0.0
    energy = float(np.mean(flat**2, axis=0).sum())
    if energy == 0.0:
        return 0.0
    variance = float(flat.var(axis=0).sum())
    return min(max(variance / energy, 0.0), 1.0)


def feature_spread(backbone: keras.Model, images: npt.ArrayLike, *, batch_size: int = 64) -> float:
    """`spread_of_features` of the backbone's inference-mode outputs on preprocessed images.

    Args:
        backbone: A Keras model taking one image tensor (its own preprocessing, if any, included).
        images: At least two images, preprocessed the way the backbone expects.
        batch_size: Images per forward pass.

    Returns:
        The spread in [0, 1]; below `COLLAPSE_THRESHOLD` means collapsed.

    Raises:
        ValueError: Fewer than two images.
    """
    array = np.asarray(images, dtype="float32")
    if array.shape[0] < 2:
        raise ValueError(f"the spread needs at least two images, got {array.shape[0]}")
    # The traced inference function the stages extract features with: one graph per model and process.
    return spread_of_features(run_inference(backbone, array, batch_size))


def is_collapsed(
    backbone: keras.Model,
    images: npt.ArrayLike,
    *,
    threshold: float = COLLAPSE_THRESHOLD,
    batch_size: int = 64,
) -> bool:
    """Whether the backbone's inference-mode features barely vary across the images (the BN trap).

    Args:
        backbone: The backbone.
        images: At least two images, preprocessed the way the backbone expects.
        threshold: Spread below which the features count as collapsed.
        batch_size: Images per forward pass.

    Returns:
        True when `feature_spread` is below ``threshold``.
    """
    return feature_spread(backbone, images, batch_size=batch_size) < threshold


def batchnorm_layers(model: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of ``model``, nested models included, each once, in layer order."""
    found: dict[int, keras.layers.BatchNormalization] = {}

    def walk(layer: keras.layers.Layer) -> None:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.setdefault(id(layer), layer)
        elif isinstance(layer, keras.Model):
            for inner in layer.layers:
                walk(inner)

    walk(model)
    return list(found.values())


@contextlib.contextmanager
def _batch_statistics_mode(layers: Sequence[keras.layers.BatchNormalization]) -> Iterator[None]:
    """Make ``layers`` normalise with batch statistics (and update their moving ones) whatever the call says.

    The rest of the model keeps the ``training`` flag it is called with, so dropout, stochastic depth and
    augmentation layers stay off. Frozen BN layers are made trainable for the duration (Keras runs a frozen BN
    in inference mode); `trainable`, `momentum` and `call` are restored afterwards.
    """
    saved = [(layer.trainable, layer.momentum, layer.__dict__.get("call")) for layer in layers]

    def forced(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs["training"] = True
            return original(*args, **kwargs)

        return call

    try:
        for layer in layers:
            layer.trainable = True
            # object.__setattr__: an instance attribute shadows the class's `call` without Keras tracking it.
            object.__setattr__(layer, "call", forced(layer.call))
        yield
    finally:
        for layer, (trainable, momentum, own_call) in zip(layers, saved, strict=True):
            if own_call is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own_call)
            layer.momentum = momentum
            layer.trainable = trainable


def reestimate_batchnorm_statistics(
    backbone: keras.Model, images: npt.ArrayLike, *, batch_size: int = 64
) -> int:
    """Set every BN layer's moving mean and variance to the average of its batch statistics over ``images``.

    The images go through the backbone once, in batches, with only the BN layers in training mode: each
    normalises with its batch mean and variance (as in training) and accumulates them. The momentum of batch
    ``k`` is ``seen / (seen + n_k)``, which makes the moving statistics the exact size-weighted average of the
    batch statistics, not an exponential moving average. No trainable weight changes, and each layer's
    `trainable` flag and momentum are restored. Nested models (keras.applications backbones inside a
    classifier) are searched for BN layers.

    Use the training images (or a few thousand of them), preprocessed the way the backbone expects; batches as
    large as the training batches give the statistics the weights were trained with.

    Args:
        backbone: The model whose BN statistics to re-estimate, taking one image tensor.
        images: At least two preprocessed images, [N, H, W, C].
        batch_size: Images per forward pass (at least 2: one image has no batch variance).

    Returns:
        The number of BN layers updated (0 for a backbone without BN, which is left untouched).

    Raises:
        ValueError: Fewer than two images, or a batch size below 2.
    """
    array = np.asarray(images, dtype="float32")
    if array.ndim < 2 or array.shape[0] < 2:
        raise ValueError(f"re-estimating BN statistics needs at least two images, got shape {array.shape}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2, got {batch_size}")
    layers = batchnorm_layers(backbone)
    if not layers:
        return 0
    # A last batch of one image has no variance: fold it into the previous batch.
    starts = list(range(0, len(array), batch_size))
    if len(array) - starts[-1] < 2:
        starts.pop()
    ends = [*starts[1:], len(array)]
    seen = 0
    with _batch_statistics_mode(layers):
        for start, end in zip(starts, ends, strict=True):
            count = end - start
            for layer in layers:
                layer.momentum = seen / (seen + count)
            backbone(array[start:end], training=False)
            seen += count
    return len(layers)


@dataclass(frozen=True)
class BackboneHealthReport:
    """What `check_backbone_health` found and did; `to_dict` is the record for metrics.json.

    Attributes:
        spread_before: Inference-mode feature spread as loaded.
        spread_after: The spread after re-estimation, or ``spread_before`` when nothing was re-estimated.
        threshold: The collapse threshold used.
        collapsed: Whether the backbone was collapsed as loaded (``spread_before < threshold``).
        repaired: Whether BN statistics were re-estimated.
        layers_updated: BN layers whose statistics were re-estimated.
        images: Images the statistics were re-estimated on (0 when not repaired).
    """

    spread_before: float
    spread_after: float
    threshold: float
    collapsed: bool
    repaired: bool
    layers_updated: int
    images: int

    @property
    def healthy(self) -> bool:
        """Whether the backbone is usable now: its final spread reaches the threshold."""
        return self.spread_after >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (spreads as floats, ``healthy`` included)."""
        record = asdict(self)
        record["healthy"] = self.healthy
        return record


def check_backbone_health(
    backbone: keras.Model,
    images: npt.ArrayLike,
    *,
    repair: bool = True,
    threshold: float = COLLAPSE_THRESHOLD,
    batch_size: int = 64,
    spread_sample: int = SPREAD_SAMPLE,
) -> BackboneHealthReport:
    """Measure the backbone's feature spread and, if it is collapsed, re-estimate its BN statistics.

    A healthy backbone is left untouched: re-estimating on the target images would also adapt the statistics
    to the new domain, a change of recipe that belongs to the caller, not to a health check.

    Args:
        backbone: The backbone (modified in place when repaired).
        images: Training images preprocessed the way the backbone expects (at least two).
        repair: Re-estimate BN statistics when collapsed; False only measures.
        threshold: Spread below which the features count as collapsed.
        batch_size: Images per forward pass of the re-estimation (its batch statistics depend on it); the
            spread is measured in the extraction's batches (`inference.extraction_batch`).
        spread_sample: The spread is measured on the first this-many images.

    Returns:
        The `BackboneHealthReport`.

    Raises:
        ValueError: Fewer than two images.
    """
    array = np.asarray(images, dtype="float32")
    sample = array[: max(2, spread_sample)]
    # Inference mode: the batch size does not change the features, so the spread takes the extraction's.
    spread_batch = extraction_batch(backbone)
    before = feature_spread(backbone, sample, batch_size=spread_batch)
    collapsed = before < threshold
    layers = 0
    after = before
    if collapsed and repair:
        layers = reestimate_batchnorm_statistics(backbone, array, batch_size=batch_size)
        if layers:
            after = feature_spread(backbone, sample, batch_size=spread_batch)
    return BackboneHealthReport(
        spread_before=before,
        spread_after=after,
        threshold=threshold,
        collapsed=collapsed,
        repaired=layers > 0,
        layers_updated=layers,
        images=len(array) if layers else 0,
    )
