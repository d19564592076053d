"""Servable pixel models: the baseline's classifiers on downsampled raw pixels, as Keras models.

On small data sets a model that uses no backbone can beat every transfer recipe (docs/quality.md), so the
``auto`` search lets one compete (`kubegraft_trainer.selection`). `fit_pixel_candidate` fits two models on
the training split only, both on the pixel baseline's features (`baseline.pixel_features`: area-downsampled
to 16 px, grayscale when the channels are equal, standardised):

- ``linear``: the pixel baseline itself (`baseline.fit_pixel_baseline`, C by cross-validation);
- ``rbf``: kernel logistic regression, an RBF kernel against up to `KERNEL_LANDMARKS` training images (the
  Nystroem map; all of them on small data sets, which makes it exact), then a multinomial logistic regression;
  C and gamma by the same stratified 3-fold cross-validation (the scikit-learn analogue of an RBF SVM, but
  with probabilities that a softmax layer reproduces).

The candidate is the one with the better cross-validated accuracy (ties: ``linear``). Choosing the family by
cross-validation on the training split, like C, rather than on the validation split, keeps the validation
split for the one choice that needs it (pixels against transfer) and is less noisy: on the developers' task
the two families' validation accuracies on 75 images ranked them the other way round from their test
accuracies on 1,000, while the 3-fold CV on 425 images ranked them as the test did (docs/quality.md).

`keras_model` turns a fitted model into a Keras model with the transfer model's input (raw RGB pixels, 0..255,
float32 [N, S, S, 3]) and output (probabilities [N, classes]), made only of built-in layers with fixed
weights: area downsampling (average pooling, or two fixed matrix products where the side does not divide the
input), channel mean, standardisation, then the classifier
(for ``rbf`` the kernel as one Dense layer on [z, z*z] and an exponential). It computes what scikit-learn's
``predict_proba`` computes, in float32, so the exported SavedModel serves it through the same signature
(bytes in, `images.decode_and_resize`, probabilities out). The same seed and data give the same model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from kubegraft_trainer.baseline import (
    CV_FOLDS,
    MAX_ITER,
    PixelBaseline,
    _area_matrix,
    area_downsample,
    fit_pixel_baseline,
    pixel_features,
    training_features,
)
from kubegraft_trainer.stages import ImageSource

__all__ = [
    "KERNEL_C_GRID",
    "KERNEL_GAMMA_FACTORS",
    "KERNEL_LANDMARKS",
    "KERNEL_MAX_TRAIN",
    "PixelCandidate",
    "fit_pixel_candidate",
    "keras_model",
    "split_pixels",
]

KERNEL_C_GRID = (1.0, 10.0, 100.0)
# gamma = factor / features: the "scale" heuristic on standardised features, a third of it and three times it.
KERNEL_GAMMA_FACTORS = (1.0 / 3.0, 1.0, 3.0)
# Landmarks of the Nystroem map (all training images below this: the exact kernel) and training images the
# kernel model is fitted on: 9 settings x 3 folds of logistic regressions on [N, landmarks] features.
KERNEL_LANDMARKS = 1000
KERNEL_MAX_TRAIN = 2000
_ABSENT_LOGIT = -30.0  # a class without training images: probability ~1e-13 of the others'

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PixelCandidate:
    """A fitted pixel model; `fit_pixel_candidate` builds it.

    Attributes:
        kind: ``linear`` (the pixel baseline's logistic regression) or ``rbf`` (kernel logistic regression).
        side: Images are area-downsampled to ``side x side``.
        channels: 1 (grayscale, also RGB with equal channels) or the images' channel count.
        settings: The chosen hyperparameters (``C``; for ``rbf`` also ``gamma`` and ``landmarks``).
        cv_accuracy: Cross-validated accuracy of each family's best setting (``linear``, ``rbf``).
        train_images: Images the model was fitted on.
        pipeline: The fitted scikit-learn pipeline (StandardScaler, [Nystroem], LogisticRegression).
    """

    kind: str
    side: int
    channels: int
    settings: dict[str, float]
    cv_accuracy: dict[str, float]
    train_images: int
    pipeline: Pipeline = field(repr=False)

    def describe(self) -> str:
        """The model in short form, e.g. ``rbf kernel logistic regression on 16 px pixels (C=100, ...)``."""
        family = "logistic regression" if self.kind == "linear" else "rbf kernel logistic regression"
        settings = ", ".join(f"{k}={v:.3g}" for k, v in self.settings.items())
        return f"{family} on {self.side} px pixels ({settings})"

    def predict_proba(self, images: npt.ArrayLike) -> FloatArray:
        """Probabilities [N, classes seen in training] of images of any size, raw pixels 0..255."""
        with threadpool_limits(limits=1, user_api="blas"):
            probabilities: FloatArray = self.pipeline.predict_proba(
                pixel_features(images, self.side, self.channels)
            )
        return probabilities

    def record(self) -> dict[str, Any]:
        """JSON-ready description (metrics.json's ``selection.pixels``)."""
        return {
            "model": self.kind,
            "description": self.describe(),
            "side": self.side,
            "channels": self.channels,
            "settings": self.settings,
            "cv_accuracy": self.cv_accuracy,
            "train_images": self.train_images,
        }


def _kernel_pipeline(c: float, gamma: float, landmarks: int, seed: int) -> Pipeline:
    return make_pipeline(
        StandardScaler(),
        Nystroem(kernel="rbf", gamma=gamma, n_components=landmarks, random_state=seed),
        LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed),
    )


def _fit_kernel(
    flat: FloatArray, labels: npt.NDArray[Any], seed: int, folds: StratifiedKFold
) -> tuple[dict[str, float], float, Pipeline]:
    # As many landmarks as the smallest fold's training part holds (up to KERNEL_LANDMARKS).
    landmarks = min([KERNEL_LANDMARKS, *(len(part) for part, _ in folds.split(flat, labels))])
    scores: dict[tuple[float, float], float] = {}
    for c in KERNEL_C_GRID:
        for factor in KERNEL_GAMMA_FACTORS:
            gamma = factor / flat.shape[1]
            pipeline = _kernel_pipeline(c, gamma, landmarks, seed)
            scores[(c, gamma)] = float(cross_val_score(pipeline, flat, labels, cv=folds).mean())
    # Ties: the smaller C, then the smaller gamma (the smoother model).
    c, gamma = max(scores, key=lambda k: (scores[k], -k[0], -k[1]))
    landmarks = min(len(flat), KERNEL_LANDMARKS)
    pipeline = _kernel_pipeline(c, gamma, landmarks, seed).fit(flat, labels)
    return {"C": c, "gamma": gamma, "landmarks": landmarks}, scores[(c, gamma)], pipeline


def fit_pixel_candidate(
    train_x: npt.ArrayLike, train_y: npt.ArrayLike, *, seed: int, side: int = 16
) -> PixelCandidate:
    """Fit the linear and the RBF pixel models on the training split; keep the better by cross-validation.

    Args:
        train_x: Training pixels [N, H, W, C] (raw, 0..255), any size of at least ``side``.
        train_y: Training labels [N] (at least two classes).
        seed: Seed of the folds, the Nystroem landmarks and the solver.
        side: Side the images are area-downsampled to.

    Returns:
        The chosen `PixelCandidate`; when some class has fewer images than folds, the linear model with the
        baseline's default C (nothing to cross-validate on).

    Raises:
        ValueError: Malformed images, labels not one per image, fewer than two classes, or a bad ``side``.
    """
    baseline = fit_pixel_baseline(train_x, train_y, seed=seed, side=side)
    linear = _from_baseline(baseline, len(np.asarray(train_y)))
    if not baseline.cv_accuracy:
        return linear
    labels = np.asarray(train_y)[:KERNEL_MAX_TRAIN]
    flat, channels = training_features(np.asarray(train_x)[:KERNEL_MAX_TRAIN], side)
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        # A fold's last lbfgs steps, or a Nystroem map as wide as its data, are no reason to stop a run.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="n_components")
        settings, cv, pipeline = _fit_kernel(flat, labels, seed, folds)
    cv_accuracy = {"linear": linear.cv_accuracy["linear"], "rbf": cv}
    if cv <= cv_accuracy["linear"]:
        return PixelCandidate(**{**linear.__dict__, "cv_accuracy": cv_accuracy})
    return PixelCandidate("rbf", side, channels, settings, cv_accuracy, len(labels), pipeline)


def _from_baseline(baseline: PixelBaseline, images: int) -> PixelCandidate:
    cv = max(baseline.cv_accuracy.values()) if baseline.cv_accuracy else float("nan")
    return PixelCandidate(
        "linear",
        baseline.side,
        baseline.channels,
        {"C": baseline.c},
        {"linear": cv},
        images,
        baseline.pipeline,
    )


def _fixed_dense(
    x: Any, kernel: npt.ArrayLike, bias: npt.ArrayLike | None, name: str, activation: str | None = None
) -> Any:
    """A Dense layer with given, frozen weights (float32 even under mixed precision)."""
    weights = np.asarray(kernel, dtype="float32")
    layer = keras.layers.Dense(
        weights.shape[1],
        activation=activation,
        use_bias=bias is not None,
        trainable=False,
        dtype="float32",
        name=name,
    )
    out = layer(x)
    layer.set_weights([weights] if bias is None else [weights, np.asarray(bias, dtype="float32")])
    return out


def _flat_pixels(inputs: Any, image_size: int, side: int, channels: int) -> Any:
    """[N, S, S, 3] raw pixels -> [N, side * side * channels], as `baseline.pixel_features` computes it.

    Where ``side`` divides S the area average is an average pooling (exact, and a TFLite builtin); other
    sizes take the area matrix as two fixed matrix products over the width and the height.
    """
    if image_size % side == 0:
        pool = image_size // side
        x = keras.layers.AveragePooling2D(pool, dtype="float32", name="pixels_area")(inputs)
    else:
        area = _area_matrix(image_size, side)  # [side, S]: row i averages the pixels target pixel i covers
        x = keras.layers.Permute((3, 1, 2), dtype="float32", name="pixels_chw")(inputs)  # [N, C, H, W]
        x = _fixed_dense(x, area.T, None, "pixels_resize_width")  # [N, C, H, side]
        x = keras.layers.Permute((1, 3, 2), dtype="float32", name="pixels_cwh")(x)  # [N, C, side, H]
        x = _fixed_dense(x, area.T, None, "pixels_resize_height")  # [N, C, side(w), side(h)]
        x = keras.layers.Permute((3, 2, 1), dtype="float32", name="pixels_hwc")(x)  # [N, side, side, C]
    if channels == 1:
        gray = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, dtype="float32", name="pixels_gray")
        x = gray(x)
        gray.set_weights([np.full((1, 1, 3, 1), 1.0 / 3.0, dtype="float32")])
    return keras.layers.Flatten(dtype="float32", name="pixels_flat")(x)


def _softmax_weights(
    classifier: LogisticRegression, mapping: npt.NDArray[np.float64], num_classes: int
) -> tuple[FloatArray, FloatArray]:
    """Kernel [features, num_classes] and bias of the softmax that reproduces ``predict_proba``.

    ``mapping`` [features, classifier inputs] is the linear map in front of the classifier (identity for
    the linear model, the Nystroem normalisation for the kernel model).
    """
    coef = np.asarray(classifier.coef_, dtype=np.float64)
    intercept = np.asarray(classifier.intercept_, dtype=np.float64)
    if len(classifier.classes_) == 2 and coef.shape[0] == 1:  # binary: softmax([0, z]) = sigmoid(z)
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    kernel = np.zeros((mapping.shape[0], num_classes))
    bias = np.full(num_classes, _ABSENT_LOGIT)
    for row, label in enumerate(np.asarray(classifier.classes_, dtype=int)):
        kernel[:, label] = mapping @ coef[row]
        bias[label] = intercept[row]
    return kernel, bias


def keras_model(candidate: PixelCandidate, image_size: int, num_classes: int) -> keras.Model:
    """The fitted pixel model as a Keras model: raw RGB pixels [N, S, S, 3] in, probabilities out.

    Args:
        candidate: The fitted model.
        image_size: The transfer model's input side S (at least ``candidate.side``).
        num_classes: Output width; labels are 0..num_classes-1 (a class without training images gets
            probability ~0).

    Returns:
        A functional model of built-in layers with frozen weights, named ``pixels``.
    """
    inputs = keras.Input((image_size, image_size, 3), name="image")
    flat = _flat_pixels(inputs, image_size, candidate.side, candidate.channels)
    scaler: StandardScaler = candidate.pipeline[0]
    z = keras.layers.Normalization(
        mean=np.asarray(scaler.mean_, "float32"),
        variance=np.asarray(scaler.scale_, "float64") ** 2,
        dtype="float32",
        name="pixels_standardise",
    )(flat)
    classifier: LogisticRegression = candidate.pipeline[-1]
    if candidate.kind == "linear":
        kernel, bias = _softmax_weights(classifier, np.eye(z.shape[-1]), num_classes)
        outputs = _fixed_dense(z, kernel, bias, "probabilities", activation="softmax")
        return keras.Model(inputs, outputs, name="pixels")
    nystroem: Nystroem = candidate.pipeline[1]
    landmarks = np.asarray(nystroem.components_, dtype=np.float64)  # [m, d], standardised
    gamma = float(nystroem.gamma)
    # exp(-gamma * |z - l|^2) = exp(2 gamma z.l - gamma |z|^2 - gamma |l|^2): one Dense on [z, z*z].
    both = keras.layers.Concatenate(dtype="float32", name="pixels_z_zz")(
        [z, keras.layers.Multiply(dtype="float32", name="pixels_zz")([z, z])]
    )
    distance = np.vstack([2.0 * gamma * landmarks.T, np.full(landmarks.T.shape, -gamma)])
    similarity = _fixed_dense(
        both, distance, -gamma * np.sum(landmarks**2, axis=1), "pixels_kernel", activation="exponential"
    )
    mapping = np.asarray(nystroem.normalization_, dtype=np.float64).T  # transform: K @ normalization_.T
    kernel, bias = _softmax_weights(classifier, mapping, num_classes)
    outputs = _fixed_dense(similarity, kernel, bias, "probabilities", activation="softmax")
    return keras.Model(inputs, outputs, name="pixels")


def split_pixels(
    source: ImageSource, split: str, limit: int, side: int | None = None
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The first ``limit`` raw images of a split (area-downsampled to ``side`` per batch when given)."""
    images: list[np.ndarray[Any, Any]] = []
    labels: list[np.ndarray[Any, Any]] = []
    count = 0
    for batch, batch_labels in source.images(split, 256, shuffle=False, seed=0):
        array = np.asarray(batch)[: limit - count]
        images.append(area_downsample(array, side).astype("float32") if side else array)
        labels.append(np.asarray(batch_labels)[: limit - count])
        count += len(array)
        if count >= limit:
            break
    if not images:
        return np.zeros((0,), "float32"), np.zeros((0,), "int32")
    return np.concatenate(images), np.concatenate(labels)
