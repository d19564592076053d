"""The raw-pixel baseline: a logistic regression on downsampled pixels that every transfer run must beat.

On small data sets a pretrained backbone can do worse than no backbone at all (a collapsed backbone, a
backbone from an unrelated domain, a recipe that underfits): on a Fashion-MNIST task with 100 images per
class, logistic regression on raw pixels beats the tutorial transfer recipe by a wide margin
(docs/quality.md). `fit_pixel_baseline` fits that baseline in seconds on the training split only, so a run
(and the `auto` recipe search) can report `transfer_gain` and notice when transfer does not pay.

Images are area-downsampled to ``side x side`` (exact pixel-area averaging, any input size); images whose
channels are all equal (grayscale decoded as RGB, as the trainer does) are reduced to one channel. Pixels are
flattened, standardised per feature and classified by scikit-learn's multinomial `LogisticRegression`; the
inverse regularisation strength C is chosen from `C_GRID` by stratified cross-validation on the training
split, with folds shuffled from ``seed``. The same seed and data give the same model. BLAS runs
single-threaded during fitting and prediction: for a few hundred features its thread pool only adds overhead
(measured here: 20x the CPU time with the default pool on 2 busy cores).

Called by the trainer's run and recipe search (and bench/bench_quality.py); it needs numpy and scikit-learn,
not TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

__all__ = [
    "CV_FOLDS",
    "C_GRID",
    "DEFAULT_C",
    "PixelBaseline",
    "area_downsample",
    "fit_pixel_baseline",
    "pixel_features",
    "training_features",
    "transfer_gain",
]

# Inverse regularisation strengths tried by cross-validation. Standardised pixels of a few hundred images are
# nearly separable, so the useful range is strong to moderate regularisation; larger C only slows lbfgs down.
C_GRID = (0.001, 0.01, 0.1, 1.0)
# The C used when some class has too few images for two folds.
DEFAULT_C = 0.1
CV_FOLDS = 3
MAX_ITER = 3000

FloatArray = npt.NDArray[np.float64]


def _area_matrix(source: int, target: int) -> FloatArray:
    """Weights [target, source]: row i averages the source pixels that target pixel i covers, by overlap."""
    edges = np.linspace(0.0, float(source), target + 1)
    starts = np.arange(source, dtype=np.float64)
    overlap = np.clip(
        np.minimum(edges[1:, None], starts[None, :] + 1.0) - np.maximum(edges[:-1, None], starts[None, :]),
        0.0,
        None,
    )
    weights: FloatArray = overlap / overlap.sum(axis=1, keepdims=True)
    return weights


def _as_nhwc(images: npt.ArrayLike) -> FloatArray:
    array = np.asarray(images, dtype=np.float64)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[0] == 0 or min(array.shape[1:]) == 0:
        raise ValueError(
            f"images must be a non-empty [N, H, W] or [N, H, W, C] array, got shape {np.shape(images)}"
        )
    return array


def area_downsample(images: npt.ArrayLike, side: int) -> FloatArray:
    """Resize images to ``side x side`` by pixel-area averaging (exact for any sizes, no aliasing).

    Args:
        images: [N, H, W] (grayscale) or [N, H, W, C] pixels.
        side: Output height and width; at most H and W.

    Returns:
        float64 [N, side, side, C] (C = 1 for grayscale input).

    Raises:
        ValueError: The array is not a non-empty batch of images, or ``side`` is not in 1..min(H, W).
    """
    array = _as_nhwc(images)
    height, width = array.shape[1], array.shape[2]
    if not 1 <= side <= min(height, width):
        raise ValueError(f"side must be between 1 and {min(height, width)} for {height}x{width} images")
    rows = _area_matrix(height, side)
    cols = _area_matrix(width, side)
    result: FloatArray = np.einsum("ih,nhwc,jw->nijc", rows, array, cols, optimize=True)
    return result


def pixel_features(images: npt.ArrayLike, side: int, channels: int) -> FloatArray:
    """Flat area-downsampled pixels [N, side * side * channels], row-major (height, width, channel).

    A grayscale model (``channels`` 1) averages the channels of its input; a colour model repeats a
    single-channel input.

    Raises:
        ValueError: The images are malformed, or have a channel count the model cannot use.
    """
    small = area_downsample(images, side)
    if channels == 1:
        small = small.mean(axis=-1, keepdims=True)
    elif small.shape[-1] == 1:
        small = np.repeat(small, channels, axis=-1)
    elif small.shape[-1] != channels:
        raise ValueError(f"the model was fitted on {channels}-channel images, got {small.shape[-1]}")
    return small.reshape(len(small), -1)


def training_features(train_x: npt.ArrayLike, side: int) -> tuple[FloatArray, int]:
    """Training images as flat downsampled pixels, and their channel count (1 when all channels are equal).

    Raises:
        ValueError: The images are malformed, or ``side`` is not in 1..min(H, W).
    """
    features = area_downsample(train_x, side)
    if features.shape[-1] > 1 and bool(np.all(features == features[..., :1])):
        features = features[..., :1]
    return features.reshape(len(features), -1), int(features.shape[-1])


@dataclass(frozen=True)
class PixelBaseline:
    """A fitted raw-pixel logistic regression; `fit_pixel_baseline` builds it.

    Attributes:
        side: Images are area-downsampled to ``side x side`` before classification.
        channels: Colour channels the model was fitted on: 1 for grayscale input, including RGB images whose
            channels are all equal.
        c: The inverse regularisation strength chosen by cross-validation.
        cv_accuracy: Mean cross-validated accuracy of each C tried (empty when CV was skipped).
        pipeline: The fitted scikit-learn pipeline (StandardScaler, LogisticRegression).
    """

    side: int
    channels: int
    c: float
    cv_accuracy: dict[float, float]
    pipeline: Pipeline = field(repr=False)

    @property
    def classes(self) -> npt.NDArray[Any]:
        """The labels seen in training, in the column order of `predict_proba`."""
        return np.asarray(self.pipeline.classes_)

    def features(self, images: npt.ArrayLike) -> FloatArray:
        """The flat downsampled pixels [N, side * side * channels] the classifier sees (before scaling).

        Raises:
            ValueError: The images are malformed, or have a channel count the model cannot use.
        """
        return pixel_features(images, self.side, self.channels)

    def predict_proba(self, images: npt.ArrayLike) -> FloatArray:
        """Class probabilities [N, classes] of images shaped like the training images (any H, W).

        Args:
            images: Pixels [N, H, W] or [N, H, W, C], on the scale used in training (0..255).

        Returns:
            Probabilities whose columns follow `classes`.
        """
        features = self.features(images)
        with threadpool_limits(limits=1, user_api="blas"):
            probabilities: FloatArray = self.pipeline.predict_proba(features)
        return probabilities

    def predict(self, images: npt.ArrayLike) -> npt.NDArray[Any]:
        """The most probable label of each image."""
        labels: npt.NDArray[Any] = self.classes[np.argmax(self.predict_proba(images), axis=1)]
        return labels

    def score(self, images: npt.ArrayLike, labels: npt.ArrayLike) -> float:
        """Accuracy on labelled images.

        Raises:
            ValueError: ``labels`` does not have one entry per image.
        """
        truth = np.asarray(labels)
        predicted = self.predict(images)
        if truth.shape != predicted.shape:
            raise ValueError(f"{len(predicted)} images but labels of shape {truth.shape}")
        return float(np.mean(predicted == truth))


def _pipeline(c: float, seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed))


def fit_pixel_baseline(
    train_x: npt.ArrayLike, train_y: npt.ArrayLike, *, seed: int, side: int = 16
) -> PixelBaseline:
    """Fit the raw-pixel logistic-regression baseline on the training split only.

    C is chosen from `C_GRID` by `CV_FOLDS`-fold stratified cross-validation (folds shuffled from ``seed``;
    ties go to the smaller C), then the model is refit on all training images. When some class has fewer than
    `CV_FOLDS` images, CV is skipped and `DEFAULT_C` is used.

    Args:
        train_x: Training pixels, [N, H, W] grayscale or [N, H, W, C] (e.g. RGB floats 0..255).
        train_y: Training labels [N] (any sortable labels; at least two classes).
        seed: Seed of the fold shuffling (and of the solver, for solvers that use one).
        side: Side in pixels that images are area-downsampled to before classification.

    Returns:
        The fitted `PixelBaseline`.

    Raises:
        ValueError: Malformed images, labels not one per image, fewer than two classes, or a bad ``side``.
    """
    flat, channels = training_features(train_x, side)
    labels = np.asarray(train_y)
    if labels.shape != (len(flat),):
        raise ValueError(f"{len(flat)} images but labels of shape {labels.shape}")
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2:
        raise ValueError("the baseline needs images of at least two classes")

    cv_accuracy: dict[float, float] = {}
    best_c = DEFAULT_C
    with threadpool_limits(limits=1, user_api="blas"):
        if counts.min() >= CV_FOLDS:
            folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
            for c in C_GRID:
                cv_accuracy[c] = float(cross_val_score(_pipeline(c, seed), flat, labels, cv=folds).mean())
            best_c = max(C_GRID, key=lambda c: (cv_accuracy[c], -c))
        pipeline = _pipeline(best_c, seed).fit(flat, labels)
    return PixelBaseline(side=side, channels=channels, c=best_c, cv_accuracy=cv_accuracy, pipeline=pipeline)


def transfer_gain(model_accuracy: float, baseline_accuracy: float) -> float:
    """How much the transfer model beats the raw-pixel baseline: the accuracy difference, in [-1, 1].

    Negative means the pretrained backbone and its recipe did worse than a logistic regression on pixels, a
    sign of a broken backbone (see `kubegraft_trainer.health`) or of a recipe that does not suit the data.

    Args:
        model_accuracy: Test (or validation) accuracy of the transfer model, in [0, 1].
        baseline_accuracy: Accuracy of the baseline on the same images, in [0, 1].

    Returns:
        ``model_accuracy - baseline_accuracy``.

    Raises:
        ValueError: An accuracy is outside [0, 1] (or not a number).
    """
    for name, value in (("model_accuracy", model_accuracy), ("baseline_accuracy", baseline_accuracy)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(model_accuracy - baseline_accuracy)
