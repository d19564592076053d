"""Which model strategy ``auto`` publishes: the best transfer recipe, a pixel model or their ensemble.

`kubegraft_trainer.search.search_recipe` calls `select_published` once its transfer candidates are decided.
Three contenders, all trained on the training split only, are compared on the validation split only (never
the test split):

1. ``transfer``: the search's best transfer recipe (the model ``recipe.yaml`` pins);
2. ``pixels``: a servable pixel model (`kubegraft_trainer.pixels`: the pixel baseline's logistic regression or
   an RBF kernel logistic regression on the same pixels, whichever cross-validates better on train);
3. ``ensemble``: ``w * transfer + (1 - w) * pixels`` probabilities, w from `ENSEMBLE_WEIGHTS` by the smallest
   validation log loss (a proper scoring rule: smoother than accuracy on a small split; ties: the larger w).
   An ensemble whose w is 0 or 1 would be one of its parts and does not compete.

The pixel model is the reference (`choose`): it is the run's own pixel baseline, or a kernel model that
cross-validated better than it on the same training images, so publishing it does not lose to the baseline
the run reports except by the kernel model's own test noise. Another contender is published only when it
beats the pixel model on the same validation images by a significant margin: an exact one-sided McNemar test
on the images exactly one of the two gets right (`paired_test`, p below `SIGNIFICANCE`); of those that do,
the one with the best validation accuracy (ties: the earlier). A higher raw validation accuracy is not enough:
with 150 validation images one standard error of an accuracy is about 0.03, and a lead of three images turned
into a test deficit of four (docs/quality.md).

Every contender is one Keras model with the transfer model's input and output (raw RGB pixels in,
probabilities out), so the exporter serves the winner through the same signature. Without validation images
there is nothing to choose on that the transfer candidates did not fit: the transfer model is published and
the record says why. Everything here is deterministic for a seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
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
    "SIGNIFICANCE",
    "Contender",
    "PairedTest",
    "Selection",
    "choose",
    "ensemble_model",
    "ensemble_weight",
    "paired_test",
    "select_published",
]

ENSEMBLE_WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 21))  # weight of the transfer model
PIXEL_SIDE = 16  # as the pixel baseline (kubegraft_trainer.run.BASELINE_SIDE)
PIXEL_MAX_TRAIN = 5000  # as the pixel baseline
# One-sided level of the paired test a contender must pass to be published instead of the pixel model. With 20
# images that exactly one of the two gets right, a challenger needs 15 of them (p 0.021; 14 gives 0.058).
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class PairedTest:
    """A challenger against the reference on the same images: the exact one-sided McNemar test."""

    wins: int  # images the challenger gets right and the reference wrong
    losses: int  # images the reference gets right and the challenger wrong
    p_value: float  # P(at least `wins` of the wins + losses discordant images | neither is better)

    @property
    def significant(self) -> bool:
        """Whether the challenger is better at level `SIGNIFICANCE`."""
        return self.p_value < SIGNIFICANCE

    def describe(self, reference: str) -> str:
        """E.g. ``9 images right that pixels got wrong, 6 the other way, one-sided McNemar p 0.304``."""
        return (
            f"{self.wins} images right that {reference} got wrong, {self.losses} the other way, "
            f"one-sided McNemar p {self.p_value:.3g}"
        )

    def record(self) -> dict[str, Any]:
        """JSON-ready (a contender's ``versus_pixels`` in metrics.json)."""
        return {
            "wins": self.wins,
            "losses": self.losses,
            "p_value": self.p_value,
            "significant": self.significant,
            "level": SIGNIFICANCE,
        }


def paired_test(challenger: np.ndarray[Any, Any], reference: np.ndarray[Any, Any]) -> PairedTest:
    """Whether the challenger classifies the same images better: McNemar's exact test, one-sided.

    Only the discordant images count (right for one model, wrong for the other); under "neither is better"
    each falls either way with probability 1/2, so the p-value is a binomial tail, computed exactly.

    Args:
        challenger: Per image, whether the challenger is right [N] (booleans).
        reference: Per image, whether the reference is right [N].

    Returns:
        The `PairedTest` (p-value 1 without discordant images).

    Raises:
        ValueError: The two arrays do not have the same shape.
    """
    first, second = np.asarray(challenger, dtype=bool), np.asarray(reference, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"paired test on {first.shape} and {second.shape} results")
    wins, losses = int(np.sum(first & ~second)), int(np.sum(~first & second))
    total = wins + losses
    term, tail = 1, 0  # C(total, k) for k = total down to wins, exactly (ints)
    for k in range(total, wins - 1, -1):
        tail += term
        term = term * k // (total - k + 1)
    return PairedTest(wins, losses, min(1.0, tail / (1 << total)))


@dataclass
class Contender:
    """One model that competes for publication."""

    name: str  # the transfer candidate's name, "pixels" or "ensemble"
    kind: str  # transfer, pixels, ensemble
    description: str
    validation_accuracy: float
    model: keras.Model = field(repr=False)
    correct: np.ndarray[Any, Any] = field(default_factory=lambda: np.zeros(0, bool), repr=False)  # per image
    versus: PairedTest | None = None  # against the pixel model on the same validation images

    def record(self) -> dict[str, Any]:
        """JSON-ready (metrics.json's ``selection.contenders`` entry)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "validation_accuracy": self.validation_accuracy,
            "versus_pixels": self.versus.record() if self.versus is not None else None,
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
        """One sentence for RecipeChosen: what won on which split, against what, by how much, and why."""
        won = self.published
        head = f"published {won.name} ({won.description}) with {self.selected_on} accuracy "
        head += f"{won.validation_accuracy:.3f}"
        others = [c for c in self.contenders if c is not won]
        if not others:
            return head + (f" ({self.reason})" if self.reason else "")
        against = ", ".join(f"{c.name} {c.validation_accuracy:.3f}" for c in others)
        margin = self.margin()
        where = "over" if margin >= 0 else "behind"
        return f"{head}, {abs(margin):.3f} {where} the best other contender ({against}): {self.reason}"

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


def choose(contenders: Sequence[Contender], reference: str = "pixels") -> tuple[Contender, str]:
    """The contender to publish and why: the reference unless another beats it significantly on validation.

    Sets each other contender's ``versus`` (its `paired_test` against the reference). Of those whose test is
    significant, the one with the best validation accuracy wins (ties: the earlier); when none is, the
    reference does, whatever the raw accuracies. Without a reference: the best accuracy (ties: the earlier).

    Args:
        contenders: The contenders, each with ``correct`` set on the same validation images.
        reference: Name of the reference contender.

    Returns:
        ``(published, reason)``, the reason one sentence for the status and metrics.json.

    Raises:
        ValueError: No contenders.
    """
    if not contenders:
        raise ValueError("nothing to choose from")
    base = next((c for c in contenders if c.name == reference), None)
    if base is None:
        best = max(contenders, key=lambda c: c.validation_accuracy)  # max keeps the first on ties
        return best, f"no {reference} contender: the best validation accuracy"
    others = [c for c in contenders if c is not base]
    for contender in others:
        contender.versus = paired_test(contender.correct, base.correct)
    better = [c for c in others if c.versus is not None and c.versus.significant]
    if better:
        won = max(better, key=lambda c: c.validation_accuracy)
        assert won.versus is not None
        return won, (
            f"it beats {reference} significantly on the same validation images "
            f"({won.versus.describe(reference)} < {SIGNIFICANCE:g})"
        )
    ahead = [c for c in others if c.validation_accuracy > base.validation_accuracy]
    if not ahead:
        return base, f"no contender beats {reference} on validation"
    top = max(ahead, key=lambda c: c.validation_accuracy)
    assert top.versus is not None
    lead = top.validation_accuracy - base.validation_accuracy
    return base, (
        f"{top.name}'s higher validation accuracy ({lead:+.3f}) is no significant gain "
        f"({top.versus.describe(reference)}, not < {SIGNIFICANCE:g}), so {reference}, the run's pixel "
        "baseline or a pixel model that cross-validated better than it, is published"
    )


def _log_loss(probabilities: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))


def _correct(probabilities: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(np.argmax(probabilities, axis=1) == labels, dtype=bool)


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
        transfer_name,
        "transfer",
        transfer_description,
        _accuracy(transfer_p, labels),
        transfer_model,
        _correct(transfer_p, labels),
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
    pixels = Contender(
        "pixels",
        "pixels",
        candidate.describe(),
        _accuracy(pixel_p, labels),
        pixel_model,
        _correct(pixel_p, labels),
    )
    contenders = [transfer, pixels]
    weight, loss = ensemble_weight(transfer_p, pixel_p, labels)
    ensemble: dict[str, Any] = {"transfer_weight": weight, "validation_log_loss": loss}
    if 0.0 < weight < 1.0:
        mixed = weight * transfer_p + (1.0 - weight) * pixel_p
        description = f"{weight:.2f} x {transfer_name} + {1.0 - weight:.2f} x pixels"
        model = ensemble_model(transfer_model, pixel_model, weight)
        contenders.append(
            Contender(
                "ensemble",
                "ensemble",
                description,
                _accuracy(mixed, labels),
                model,
                _correct(mixed, labels),
            )
        )
    else:
        ensemble["competed"] = False
        ensemble["reason"] = (
            f"weight {weight:g}: the ensemble would be {transfer_name if weight else 'pixels'}"
        )
    published, reason = choose(contenders)
    selection = Selection(
        contenders,
        published,
        split,
        time.monotonic() - started,
        pixels=candidate,
        ensemble=ensemble,
        reason=reason,
    )
    log.info("selection: %s", selection.summary())
    return selection
