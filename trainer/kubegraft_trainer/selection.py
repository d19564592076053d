"""Which model strategy ``auto`` publishes: the best transfer recipe, a pixel model or their ensemble.

`kubegraft_trainer.search.search_recipe` calls `select_published` once its transfer candidates are decided.
Three contenders, all trained on the training split only, are compared on the validation split only (never
the test split), in this order, ties going to the earlier one:

1. ``transfer``: the search's best transfer recipe (the model ``recipe.yaml`` pins);
2. ``pixels``: a servable pixel model (`kubegraft_trainer.pixels`: the pixel baseline's logistic regression or
   an RBF kernel logistic regression on the same pixels, whichever cross-validates better on train);
3. ``ensemble``: ``w * transfer + (1 - w) * pixels`` probabilities, w from `ENSEMBLE_WEIGHTS` by the smallest
   validation log loss (a proper scoring rule: smoother than accuracy on a small split; ties: the larger w).
   An ensemble whose w is 0 or 1 would be one of its parts and does not compete.

Every contender is one Keras model with the transfer model's input and output (raw RGB pixels in,
probabilities out), so the exporter serves the winner through the same signature. Without validation images
there is nothing to choose on that the transfer candidates did not fit: the transfer model is published and
the record says why. Everything here is deterministic for a seed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kubegraft_trainer.pixels import PixelCandidate, fit_pixel_candidate, keras_model, split_pixels
from kubegraft_trainer.stages import ImageSource, predict_split

log = logging.getLogger(__name__)

__all__ = [
    "ENSEMBLE_WEIGHTS",
    "PIXEL_MAX_TRAIN",
    "PIXEL_SIDE",
    "Contender",
    "Selection",
    "ensemble_model",
    "ensemble_weight",
    "select_published",
]

ENSEMBLE_WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 21))  # weight of the transfer model
PIXEL_SIDE = 16  # as the pixel baseline (kubegraft_trainer.run.BASELINE_SIDE)
PIXEL_MAX_TRAIN = 5000  # as the pixel baseline


@dataclass
class Contender:
    """One model that competes for publication."""

    name: str  # the transfer candidate's name, "pixels" or "ensemble"
    kind: str  # transfer, pixels, ensemble
    description: str
    validation_accuracy: float
    model: keras.Model = field(repr=False)

    def record(self) -> dict[str, Any]:
        """JSON-ready (metrics.json's ``selection.contenders`` entry)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "validation_accuracy": self.validation_accuracy,
        }


@dataclass
class Selection:
    """The choice: every contender, the published one, and what it was chosen on."""

    contenders: list[Contender]
    published: Contender
    selected_on: str
    seconds: float
    pixels: PixelCandidate | None = None
    ensemble: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def transfer(self) -> Contender:
        """The best transfer recipe's contender (always the first)."""
        return self.contenders[0]

    def margin(self) -> float:
        """Validation accuracy of the published model minus the best other contender's (0 when alone)."""
        others = [c.validation_accuracy for c in self.contenders if c is not self.published]
        return self.published.validation_accuracy - max(others) if others else 0.0

    def summary(self) -> str:
        """One sentence for RecipeChosen: what won on which split, against what, by how much."""
        won = self.published
        head = f"published {won.name} ({won.description}) with {self.selected_on} accuracy "
        head += f"{won.validation_accuracy:.3f}"
        others = [c for c in self.contenders if c is not won]
        if not others:
            return head + (f" ({self.reason})" if self.reason else "")
        against = ", ".join(f"{c.name} {c.validation_accuracy:.3f}" for c in others)
        return f"{head}, {self.margin():+.3f} over the best other contender ({against})"

    def record(self) -> dict[str, Any]:
        """metrics.json's ``selection`` entry."""
        return {
            "published": self.published.name,
            "kind": self.published.kind,
            "description": self.published.description,
            "validation_accuracy": self.published.validation_accuracy,
            "selected_on": self.selected_on,
            "margin": self.margin(),
            "margin_over_transfer": self.published.validation_accuracy - self.transfer.validation_accuracy,
            "contenders": [c.record() for c in self.contenders],
            "pixels": self.pixels.record() if self.pixels is not None else None,
            "ensemble": self.ensemble,
            "reason": self.reason,
            "seconds": self.seconds,
        }


def _log_loss(probabilities: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))


def _accuracy(probabilities: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels)) if len(labels) else 0.0


def ensemble_weight(
    transfer: np.ndarray[Any, Any], pixels: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]
) -> tuple[float, float]:
    """The transfer model's weight in the mix with the smallest log loss on ``labels``, and that loss.

    Args:
        transfer: The transfer model's validation probabilities [N, C].
        pixels: The pixel model's validation probabilities [N, C].
        labels: Validation labels [N].

    Returns:
        ``(w, loss)``, w from `ENSEMBLE_WEIGHTS` (ties: the larger w, the transfer model).
    """
    losses = {w: _log_loss(w * transfer + (1.0 - w) * pixels, labels) for w in ENSEMBLE_WEIGHTS}
    # Rounded: mixes of equal probabilities differ only by float rounding, and are ties.
    weight = min(losses, key=lambda w: (round(losses[w], 9), -w))
    return weight, losses[weight]


def ensemble_model(transfer: keras.Model, pixels: keras.Model, weight: float) -> keras.Model:
    """``weight * transfer(x) + (1 - weight) * pixels(x)`` as one Keras model with the same input."""
    inputs = keras.Input(tuple(transfer.inputs[0].shape[1:]), name="image")
    mixed = keras.layers.Add(dtype="float32", name="probabilities")(
        [
            keras.layers.Rescaling(weight, dtype="float32", name="transfer_weight")(transfer(inputs)),
            keras.layers.Rescaling(1.0 - weight, dtype="float32", name="pixels_weight")(pixels(inputs)),
        ]
    )
    return keras.Model(inputs, mixed, name="ensemble")


def select_published(
    transfer_name: str,
    transfer_description: str,
    transfer_model: keras.Model,
    source: ImageSource,
    *,
    split: str,
    num_classes: int,
    seed: int,
) -> Selection:
    """Fit the pixel model, build the ensemble, and pick the contender with the best ``split`` accuracy.

    Args:
        transfer_name: The search's best transfer candidate.
        transfer_description: Its recipe in short form.
        transfer_model: Its trained full model (raw pixels in).
        source: The images; only the train and ``split`` splits are read.
        split: What the search chose on: ``validation``, or ``train`` when there is no validation data
            (then only the transfer model competes).
        num_classes: Number of classes.
        seed: Seed of the pixel model's folds and landmarks.

    Returns:
        The `Selection`.
    """
    started = time.monotonic()
    image_size = int(transfer_model.inputs[0].shape[1])
    transfer_p, labels = predict_split(transfer_model, source, split)
    labels = np.asarray(labels, dtype=int)
    transfer = Contender(
        transfer_name, "transfer", transfer_description, _accuracy(transfer_p, labels), transfer_model
    )
    if split != "validation":
        reason = "no validation images: only the transfer model competes"
        return Selection([transfer], transfer, split, time.monotonic() - started, reason=reason)
    side = min(PIXEL_SIDE, image_size)
    train_x, train_y = split_pixels(source, "train", PIXEL_MAX_TRAIN, side)
    if len(np.unique(train_y)) < 2:
        reason = "fewer than two classes in the training split: no pixel model"
        return Selection([transfer], transfer, split, time.monotonic() - started, reason=reason)
    candidate = fit_pixel_candidate(train_x, train_y, seed=seed, side=side)
    pixel_model = keras_model(candidate, image_size, num_classes)
    val_x, _ = split_pixels(source, split, source.count(split), side)
    pixel_p = np.zeros((len(val_x), num_classes))
    pixel_p[:, np.asarray(candidate.pipeline.classes_, dtype=int)] = candidate.predict_proba(val_x)
    pixels = Contender("pixels", "pixels", candidate.describe(), _accuracy(pixel_p, labels), pixel_model)
    contenders = [transfer, pixels]
    weight, loss = ensemble_weight(transfer_p, pixel_p, labels)
    ensemble: dict[str, Any] = {"transfer_weight": weight, "validation_log_loss": loss}
    if 0.0 < weight < 1.0:
        mixed = weight * transfer_p + (1.0 - weight) * pixel_p
        description = f"{weight:.2f} x {transfer_name} + {1.0 - weight:.2f} x pixels"
        model = ensemble_model(transfer_model, pixel_model, weight)
        contenders.append(Contender("ensemble", "ensemble", description, _accuracy(mixed, labels), model))
    else:
        ensemble["competed"] = False
        ensemble["reason"] = (
            f"weight {weight:g}: the ensemble would be {transfer_name if weight else 'pixels'}"
        )
    published = contenders[0]
    for contender in contenders[1:]:
        if contender.validation_accuracy > published.validation_accuracy:
            published = contender
    selection = Selection(
        contenders, published, split, time.monotonic() - started, pixels=candidate, ensemble=ensemble
    )
    log.info("selection: %s", selection.summary())
    return selection
