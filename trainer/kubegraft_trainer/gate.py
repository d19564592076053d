"""The publish gate: whether a finished run publishes its model (``publishPolicy``, ``minTestAccuracy``).

`kubegraft_trainer.run` calls `compare_with_published` (with ``publishPolicy: ifBetter``) and then `decide`,
after the new version's files are written locally and before anything is published. A run the gate stops
still succeeds: it publishes no version and reports why (a `NoticeReason` the operator shows as the
``Published`` condition and an Event; the numbers in metrics.json's ``publish`` entry).

``ifBetter`` compares on the same data: the latest complete published version and the new model are both
loaded through their ``serving_default`` signature and fed the same encoded test images of this run's
split (cropped to their boxes and re-encoded as PNG where the data set has boxes), so neither number comes
from another split or another input path. A prediction counts as correct when its class *name* is the
true class's name, so a published version with other or reordered classes is scored fairly (an image of a
class it does not know counts as wrong). The new model must score strictly higher to be published.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from kubegraft.runtime import NoticeReason
from kubegraft.spec import OutputSpec, StorageSpec
from kubegraft_trainer.dataset import DatasetSplits, Example
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.export import LABELS_FILE, SERVING_INPUT, SERVING_SIGNATURE
from kubegraft_trainer.images import crop_to_box, is_decodable
from kubegraft_trainer.predict import load_published
from kubegraft_trainer.repository import complete_versions
from kubegraft_trainer.storage import Storage

log = logging.getLogger(__name__)

SCORE_BATCH = 64


@dataclass(frozen=True)
class Comparison:
    """The latest published version and the new model, scored on the same test images.

    Attributes:
        version: The latest complete published version.
        published_accuracy: Its accuracy on this run's test images.
        new_accuracy: The new model's accuracy on the same images, through its serving signature.
        images: How many test images both were scored on.
    """

    version: int
    published_accuracy: float
    new_accuracy: float
    images: int


@dataclass(frozen=True)
class GateDecision:
    """Whether to publish, and why.

    Attributes:
        publish: Whether the run publishes a version.
        reason: A `NoticeReason` (NotBetter, BelowMinimum) when it does not; "" when it does.
        message: One sentence for people (status, Event, log).
        record: metrics.json's ``publish`` entry (policy, minimum, the numbers compared, the verdict).
    """

    publish: bool
    reason: str
    message: str
    record: dict[str, Any]


def decide(output: OutputSpec, test_accuracy: float | None, comparison: Comparison | None) -> GateDecision:
    """The gate's verdict: the minimum first, then with ``ifBetter`` the comparison.

    Args:
        output: The spec's output (publishPolicy, minTestAccuracy).
        test_accuracy: The new model's test accuracy (None without test images).
        comparison: The scores on the same images, or None when there is no published version (or the
            policy is ``always``).

    Returns:
        The decision; ``record`` holds every number it used.
    """
    record: dict[str, Any] = {
        "policy": output.publish_policy,
        "minTestAccuracy": output.min_test_accuracy,
        "testAccuracy": test_accuracy,
    }
    if comparison is not None:
        record["comparedWith"] = {
            "version": comparison.version,
            "images": comparison.images,
            "publishedAccuracy": comparison.published_accuracy,
            "newAccuracy": comparison.new_accuracy,
        }

    def verdict(publish: bool, reason: str, message: str) -> GateDecision:
        return GateDecision(
            publish,
            reason,
            message,
            {**record, "published": publish, "reason": reason or None, "message": message},
        )

    minimum = output.min_test_accuracy
    if minimum is not None and (test_accuracy is None or test_accuracy < minimum):
        measured = (
            "no test images to measure" if test_accuracy is None else f"test accuracy {test_accuracy:.4f}"
        )
        return verdict(
            False,
            NoticeReason.BELOW_MINIMUM,
            f"No version published: {measured}, below output.minTestAccuracy {minimum:g}",
        )
    if output.publish_policy == "always":
        return verdict(True, "", "Published: output.publishPolicy is always")
    if comparison is None:
        return verdict(True, "", "Published: no published version to compare with (publishPolicy ifBetter)")
    if comparison.images == 0:
        return verdict(
            False,
            NoticeReason.NOT_BETTER,
            f"No version published: the test split has no readable images to compare with version "
            f"{comparison.version} (publishPolicy ifBetter)",
        )
    same = f"on the same {comparison.images} test images"
    scores = (
        f"{comparison.new_accuracy:.4f} against version {comparison.version}'s "
        f"{comparison.published_accuracy:.4f}"
    )
    if comparison.new_accuracy > comparison.published_accuracy:
        return verdict(True, "", f"Published: the new model beats the latest version, {scores} {same}")
    return verdict(
        False,
        NoticeReason.NOT_BETTER,
        f"No version published: the new model does not beat version {comparison.version} (publishPolicy "
        f"ifBetter): test accuracy {scores} {same}",
    )


def compare_with_published(  # noqa: PLR0917  # each argument is one of the two models or their data
    output: OutputSpec,
    storage_spec: StorageSpec,
    repository: Storage,
    build_dir: Path,
    splits: DatasetSplits,
    data: Storage,
) -> Comparison | None:
    """Score the latest complete published version and the new build on this run's test images.

    Args:
        output: The spec's output (its uri names the repository).
        storage_spec: S3 settings.
        repository: The model repository (output.uri) as storage.
        build_dir: The new version's local folder (its SavedModel and labels.txt).
        splits: This run's splits (the test examples and class names).
        data: The data set's storage (the test images' bytes).

    Returns:
        The comparison, or None when nothing is published yet.

    Raises:
        TrainerError: The published version cannot be read.
    """
    versions = complete_versions(repository)
    if not versions:
        return None
    published = load_published(output.uri, storage_spec, versions[-1])
    try:
        new_signature = tf.saved_model.load(str(build_dir)).signatures[SERVING_SIGNATURE]
        new_names = (build_dir / LABELS_FILE).read_text(encoding="utf-8").splitlines()
        right_published = right_new = images = 0
        for encoded, truth in _test_batches(splits, data):
            right_published += _correct(published.predict_bytes(encoded), published.class_names, truth)
            right_new += _correct(_probabilities(new_signature, encoded), new_names, truth)
            images += len(encoded)
    finally:
        published.close()
    return Comparison(
        version=published.version,
        published_accuracy=right_published / images if images else 0.0,
        new_accuracy=right_new / images if images else 0.0,
        images=images,
    )


def _probabilities(signature: Any, encoded: Sequence[bytes]) -> np.ndarray[Any, Any]:
    outputs = signature(**{SERVING_INPUT: tf.constant(list(encoded), dtype=tf.string)})
    return np.asarray(outputs["probabilities"])


def _correct(probabilities: np.ndarray[Any, Any], names: Sequence[str], truth: Sequence[str]) -> int:
    """How many rows' most probable class name is the true name."""
    predicted = [names[i] for i in probabilities.argmax(axis=1)]
    return sum(p == t for p, t in zip(predicted, truth, strict=True))


def _test_batches(splits: DatasetSplits, data: Storage) -> Iterator[tuple[list[bytes], list[str]]]:
    """The test split's readable images as encoded bytes with their true class names, in batches."""
    examples = splits.test
    for start in range(0, len(examples), SCORE_BATCH):
        batch = examples[start : start + SCORE_BATCH]
        encoded: list[bytes] = []
        truth: list[str] = []
        for example, body in zip(batch, data.read_many([e.key for e in batch]), strict=True):
            if isinstance(body, TrainerError) or not is_decodable(body):
                continue  # unreadable or corrupt: the loader skipped it in training and evaluation too
            encoded.append(_as_served(body, example))
            truth.append(splits.classes[example.label])
        if encoded:
            yield encoded, truth


def _as_served(body: bytes, example: Example) -> bytes:
    """The bytes a client would send for ``example``: the file itself, or its box's crop as PNG."""
    if example.box is None:
        return body
    image = tf.io.decode_image(body, channels=3, expand_animations=False)
    cropped = crop_to_box(image, tf.constant(example.box))
    return bytes(tf.io.encode_png(tf.cast(cropped, tf.uint8)).numpy())
