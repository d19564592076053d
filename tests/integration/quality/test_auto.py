"""strategy auto, backbone health and the baseline through the trainer, on the developers' transfer task.

Fashion-MNIST classes 0-4 at 32 px with the tests' pretrained MobileNetV2 (classes 5-9), small data sets so
that a whole search stays around two minutes on 2 cores.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from kubegraft.runtime import NoticeReason
from kubegraft.spec import StorageSpec, TransferJobSpec
from kubegraft_trainer.backbones import load_backbone
from kubegraft_trainer.health import COLLAPSE_THRESHOLD, batchnorm_layers
from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.run import RECIPE_FILE, load_spec, train
from kubegraft_trainer.search import search_recipe
from kubegraft_trainer.sources import ArraySource
from tests.harness.fashion import write_class_folders
from tests.integration.quality.task import transfer_arrays

CLASSES = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def small_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 images per class as class folders (70/15/15 split: 70 train, 15 validation, 15 test)."""
    return write_class_folders(tmp_path_factory.mktemp("auto-images"), CLASSES, 20, split="train", seed=0)


def minimal_spec(data: Path, weights: Path, output: Path, **extra: Any) -> TransferJobSpec:
    return TransferJobSpec.model_validate(
        {
            "dataset": {"uri": str(data), "imageSize": 32},
            "model": {"backbone": "MobileNetV2", "weights": str(weights)},
            "output": {"uri": str(output)},
            **extra,
        }
    )


def test_spec_with_only_dataset_output_and_model_publishes_the_best_candidate_its_report_and_pinned_stages(
    small_images: Path, pretrained_backbone: Path, tmp_path: Path
) -> None:
    tracker = ProgressTracker(out=io.StringIO())
    percents = _Percents(tracker)
    result = train(
        minimal_spec(small_images, pretrained_backbone, tmp_path / "models"),
        tracker=tracker,
        extra_callbacks=[percents],
    )
    # Progress spans the whole search: it only grows over every candidate's epochs, and is 100 at the end.
    assert len(percents.seen) > 1 and percents.seen == sorted(percents.seen) and percents.seen[-1] < 100
    assert (tracker.snapshot().state, tracker.snapshot().progress) == ("succeeded", 100)

    version = tmp_path / "models" / "1"
    for name in (
        "saved_model.pb",
        "metrics.json",
        "labels.txt",
        "transferjob.json",
        RECIPE_FILE,
        "_COMPLETE",
    ):
        assert (version / name).exists(), name
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["strategy"] == "auto"
    search = metrics["search"]
    ran = [c for c in search["candidates"] if c["status"] != "skipped"]
    names = [c["name"] for c in search["candidates"]]
    assert names[:6] == ["linear", "head", "full-1e-3", "top-38", "top-77", "full-1e-4"]
    assert names[6].endswith("+augment")
    assert ran[0]["name"] == "linear"
    for candidate in ran:
        assert 0.0 <= candidate["validation_accuracy"] <= 1.0
        assert candidate["seconds"] > 0
        assert candidate["epochs"] <= candidate["max_epochs"]
    # The choice: the best validation accuracy, the earliest (cheapest) on ties.
    best = max(c["validation_accuracy"] for c in ran)
    chosen = next(c for c in ran if c["validation_accuracy"] == best)
    assert search["chosen"] == chosen["name"]
    assert search["selected_on"] == "validation"
    # What is published: the pixel model, unless the transfer winner or the ensemble beats it significantly
    # on the same validation images (a paired test each); of those that do, the most accurate.
    selection = metrics["selection"]
    contenders = selection["contenders"]
    assert [c["kind"] for c in contenders][:2] == ["transfer", "pixels"]
    assert contenders[0]["name"] == chosen["name"]
    assert contenders[0]["validation_accuracy"] == pytest.approx(chosen["validation_accuracy"])
    pixels = contenders[1]
    assert pixels["versus_pixels"] is None
    for contender in contenders[2:] + contenders[:1]:
        paired = contender["versus_pixels"]
        assert paired["significant"] == (paired["p_value"] < paired["level"])
    better = [c for c in contenders if c["versus_pixels"] and c["versus_pixels"]["significant"]]
    published = max(better, key=lambda c: c["validation_accuracy"]) if better else pixels
    assert selection["published"] == published["name"] == search["published"]
    assert selection["selected_on"] == "validation"
    assert selection["margin_over_transfer"] == pytest.approx(
        published["validation_accuracy"] - chosen["validation_accuracy"]
    )
    assert selection["reason"]
    assert selection["pixels"]["model"] in ("linear", "rbf")
    if published["kind"] == "transfer":
        assert metrics["recipe"].startswith(f"auto {chosen['name']}: ")
    else:
        assert metrics["recipe"].startswith(f"auto {published['name']}: ")
    assert f"published {published['name']} " in (version / RECIPE_FILE).read_text()
    # The published stages are the winner's: recipe.yaml is an explicit spec that reruns it.
    pinned = load_spec(version / RECIPE_FILE)
    assert pinned.resolved_strategy == "stages"
    assert pinned.strategy == "stages"
    assert [s["name"] for s in metrics["stages"]] == (
        ["linear"] if pinned.classifier == "linear" else [s.name for s in pinned.resolved_stages()]
    )
    assert chosen["recipe"] == search["recipe"]
    assert json.loads((version / "transferjob.json").read_text()).get("strategy") is None
    # Baseline and transfer gain beside the model on the test split.
    assert metrics["baseline"]["fitted"] is True
    assert metrics["baseline"]["train_images"] == 70
    # The transfer gain is the transfer model's, whichever model is published.
    transfer_test = selection["transfer_test_accuracy"]
    assert metrics["transfer_gain"] == pytest.approx(transfer_test - metrics["baseline_accuracy"])
    if published["kind"] == "transfer":
        assert transfer_test == pytest.approx(metrics["testAccuracy"])
    if published["kind"] == "pixels" and selection["pixels"]["model"] == "linear":
        # The linear pixel model is the baseline itself: same pixels, training images, seed and C.
        assert metrics["testAccuracy"] == pytest.approx(metrics["baseline_accuracy"])
        assert selection["pixels"]["settings"]["C"] == metrics["baseline"]["C"]
    assert metrics["health"]["before_training"]["collapsed"] is False
    progress = tracker.snapshot()
    assert progress.metrics["baseline_accuracy"] == pytest.approx(metrics["baseline_accuracy"])
    assert progress.metrics["transfer_gain"] == pytest.approx(metrics["transfer_gain"])
    assert progress.recipe == metrics["recipe"]
    # The status describes the published model, not the last candidate the search trained.
    assert progress.metrics["val_accuracy"] == pytest.approx(published["validation_accuracy"])
    assert "loss" not in progress.metrics and "val_loss" not in progress.metrics
    if published["kind"] == "transfer":
        assert (progress.stage, progress.epoch) == (
            metrics["stages"][-1]["name"],
            metrics["stages"][-1]["epochs_run"],
        )
    else:
        assert (progress.stage, progress.epoch) == (published["name"], 0)
    reasons = [n.reason for n in progress.notices]
    assert NoticeReason.RECIPE_CHOSEN in reasons
    chosen_notice = next(n for n in progress.notices if n.reason == NoticeReason.RECIPE_CHOSEN)
    assert f"published {published['name']} " in chosen_notice.message
    assert selection["reason"] in chosen_notice.message
    assert (NoticeReason.NO_TRANSFER_GAIN in reasons) == (metrics["transfer_gain"] <= 0)
    # The exported model serves image bytes: PNG in, probabilities out, same answer as the trained model.
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    png = next((small_images / "Trouser").iterdir()).read_bytes()
    probabilities = serve(images=tf.constant([png]))["probabilities"].numpy()
    assert probabilities.shape == (1, 5)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert result.metrics["search"]["chosen"] == search["chosen"]


def _search(weights: Path, arrays: dict[str, Any]) -> list[tuple[Any, ...]]:
    spec = TransferJobSpec.model_validate(
        {
            "dataset": {"uri": "unused-data", "imageSize": 32, "seed": 5},
            "model": {"backbone": "MobileNetV2", "weights": str(weights), "head": {"hidden": [32]}},
            "budget": {"epochs": 45},
            "output": {"uri": "unused-models"},
        }
    )
    keras.utils.set_random_seed(5)
    loaded = load_backbone(spec.model, 32, StorageSpec())
    outcome = search_recipe(
        spec,
        loaded,
        5,
        ArraySource(arrays),
        tracker=ProgressTracker(out=io.StringIO()),
        strategy=tf.distribute.get_strategy(),
    )
    assert outcome.selection is not None
    selection = {k: v for k, v in outcome.selection.record().items() if k != "seconds"}
    return [("chosen", outcome.name, None, 0), ("selection", repr(selection))] + [
        (c.name, c.status, c.validation_accuracy, c.epochs) for c in outcome.candidates
    ]


def test_search_is_deterministic_for_a_fixed_seed(pretrained_backbone: Path) -> None:
    x, y = transfer_arrays("train", 16, seed=2)
    arrays = {"train": (x[:60], y[:60]), "validation": (x[60:], y[60:])}
    first = _search(pretrained_backbone, arrays)
    second = _search(pretrained_backbone, arrays)
    assert first == second
    ran = [row for row in first[2:] if row[1] != "skipped"]
    assert len(ran) >= 3  # linear, head and at least one candidate that trains the backbone
    assert any(row[3] > 0 for row in ran)
    assert any(row[1] == "skipped" for row in first[2:])  # the epoch budget bounds the search


def test_backbone_with_stale_batchnorm_statistics_is_repaired_before_training_and_reported(
    small_images: Path, pretrained_backbone: Path, tmp_path: Path
) -> None:
    backbone = keras.saving.load_model(pretrained_backbone)
    for layer in batchnorm_layers(backbone):  # what a slow BN momentum leaves after a short schedule
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, dtype="float32"))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, dtype="float32"))
    stale = tmp_path / "stale.keras"
    backbone.save(stale)
    tracker = ProgressTracker(out=io.StringIO())
    stages = [{"name": "head", "trainable": 0, "epochs": 2}]
    train(minimal_spec(small_images, stale, tmp_path / "models", stages=stages), tracker=tracker)

    metrics = json.loads((tmp_path / "models" / "1" / "metrics.json").read_text())
    health = metrics["health"]["before_training"]
    assert health["collapsed"] is True
    assert health["repaired"] is True
    assert health["spread_before"] < COLLAPSE_THRESHOLD <= health["spread_after"]
    assert health["layers_updated"] == len(batchnorm_layers(backbone))
    assert health["images"] == 70
    assert health["sample"] == 70  # the spread was measured on every training image (fewer than 512)
    notices = [n for n in tracker.snapshot().notices if n.reason == NoticeReason.BATCH_NORM_REESTIMATED]
    assert len(notices) == 1
    assert "re-estimated" in notices[0].message
    assert metrics["strategy"] == "stages"
    assert "search" not in metrics


class _Percents(keras.callbacks.Callback):  # type: ignore[misc]
    """Records the tracker's progress percent after every epoch (it runs after the progress callback)."""

    def __init__(self, tracker: ProgressTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.seen: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.seen.append(self.tracker.snapshot().progress)


class SearchKilledError(Exception):
    """Raised by the test to kill a search mid-candidate."""


class _StageEpochs(keras.callbacks.Callback):  # type: ignore[misc]
    """Records (stage, epoch) of every epoch; raises SearchKilledError after a given one, if any."""

    def __init__(self, tracker: ProgressTracker, kill_at: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.tracker, self.kill_at = tracker, kill_at
        self.seen: list[tuple[str, int]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.seen.append((self.tracker.snapshot().stage or "", epoch + 1))
        if self.seen[-1] == self.kill_at:
            raise SearchKilledError


def test_killed_search_resumes_without_training_finished_candidates_again(
    small_images: Path, pretrained_backbone: Path, tmp_path: Path
) -> None:
    spec = minimal_spec(small_images, pretrained_backbone, tmp_path / "models", budget={"epochs": 80})
    first = ProgressTracker(out=io.StringIO())
    # The first stage called "full" is the third candidate's (full-1e-3): killed after its second epoch.
    with pytest.raises(SearchKilledError):
        train(spec, run_id="killed", tracker=first, extra_callbacks=[_StageEpochs(first, ("full", 2))])
    saved = json.loads(
        (tmp_path / ".kubegraft" / "models" / "checkpoints" / "killed" / "search.json").read_text()
    )
    before = {c["result"]["name"]: c["result"] for c in saved["candidates"]}
    assert list(before) == ["linear", "head"]

    second = ProgressTracker(out=io.StringIO())
    epochs = _StageEpochs(second)
    train(spec, run_id="killed", tracker=second, extra_callbacks=[epochs])

    # Nothing trained before the interrupted candidate's third epoch: linear and head were not run again.
    assert epochs.seen[0] == ("full", 3)
    metrics = json.loads((tmp_path / "models" / "1" / "metrics.json").read_text())
    after = {c["name"]: c for c in metrics["search"]["candidates"]}
    for name in ("linear", "head"):
        assert after[name] == before[name]
    assert after["full-1e-3"]["epochs"] >= 3
    assert metrics["search"]["seconds"] >= saved["seconds"]
    assert not (
        tmp_path / ".kubegraft" / "models" / "checkpoints" / "killed"
    ).exists()  # deleted after the publish
