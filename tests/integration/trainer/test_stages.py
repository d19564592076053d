"""Stages on a tiny counting backbone: what freezes, what trains, how often the backbone runs, resume."""

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
from kubegraft_trainer.backbones import load_backbone
from kubegraft_trainer.checkpoints import CheckpointStore, spec_hash
from kubegraft_trainer.model import build_transfer_model
from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.repository import work_uri
from kubegraft_trainer.run import train
from kubegraft_trainer.sources import ArraySource
from kubegraft_trainer.stages import StageRecord, StageRunner
from kubegraft_trainer.storage import open_storage
from tests.harness.fashion import load_fashion_mnist
from tests.integration.trainer.conftest import SpecFactory, counted_images, health_check_images, stage


def _arrays(
    classes: tuple[int, ...], per_class: int, offset: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    images, labels = load_fashion_mnist("train")
    picked = np.concatenate([np.flatnonzero(labels == c)[offset : offset + per_class] for c in classes])
    gray = tf.image.resize(images[picked][..., None].astype("float32"), (32, 32)).numpy()
    return np.repeat(gray, 3, axis=-1), np.searchsorted(np.array(classes), labels[picked]).astype("int32")


def _weights(model: keras.Model) -> dict[str, np.ndarray[Any, Any]]:
    return {w.path: np.array(w.numpy()) for w in model.weights if "counter" not in w.path}


def test_head_stage_freezes_backbone_and_finetune_trains_only_unfrozen_top_layers(
    tiny_backbone: Path, make_spec: SpecFactory, tmp_path: Path
) -> None:
    head_spec = make_spec(tmp_path / "unused-data", tiny_backbone, [stage("head", 0, 2, learningRate=0.01)])
    tune_spec = make_spec(tmp_path / "unused-data", tiny_backbone, [stage("tune", 4, 2, learningRate=0.01)])
    loaded = load_backbone(head_spec.model, 32, head_spec.storage)
    parts = build_transfer_model(loaded, head_spec.model.head, 3, head_spec.augmentation)
    source = ArraySource({"train": _arrays((0, 1, 7), 40, 0), "validation": _arrays((0, 1, 7), 10, 40)})
    strategy = tf.distribute.get_strategy()

    def run(spec: Any, run_id: str) -> ProgressTracker:
        store = CheckpointStore(spec.output.uri, run_id, spec.storage, spec_hash(spec))
        tracker = ProgressTracker(out=io.StringIO())
        StageRunner(parts, spec, source, store=store, tracker=tracker, strategy=strategy).run_all()
        return tracker

    backbone0, head0 = _weights(parts.backbone), _weights(parts.head)
    progress = run(head_spec, "head").snapshot()
    batch = head_spec.stages[0].batch_size
    assert (progress.replicas, progress.global_batch_size, progress.per_replica_batch_size) == (
        1,
        batch,
        batch,
    )
    backbone1, head1 = _weights(parts.backbone), _weights(parts.head)
    assert backbone1.keys() == backbone0.keys()
    for path, value in backbone0.items():  # kernels, BN gamma/beta and BN moving statistics alike
        np.testing.assert_array_equal(backbone1[path], value, err_msg=f"{path} changed in a head stage")
    assert any(not np.array_equal(head1[p], head0[p]) for p in head0), "the head did not train"

    run(tune_spec, "tune")  # top 4 layers: pool, relu_1, bn_1 (stays frozen), conv_1
    backbone2 = _weights(parts.backbone)
    changed = {p for p in backbone1 if not np.array_equal(backbone2[p], backbone1[p])}
    assert any(p.endswith("conv_1/kernel") for p in changed), changed
    assert not any("conv_0" in p for p in changed), f"frozen conv_0 changed: {changed}"
    assert not any("bn_" in p for p in changed), f"BatchNormalization changed: {changed}"


@pytest.mark.parametrize("augment", [False, True], ids=["cached-features", "augmented"])
def test_head_stage_runs_backbone_once_per_image_unless_augmented(
    augment: bool, tiny_backbone: Path, transfer_images: Path, make_spec: SpecFactory
) -> None:
    epochs = 3
    spec = make_spec(
        transfer_images,
        tiny_backbone,
        [stage("head", 0, epochs)],
        augmentation={"horizontalFlip": augment},
    )
    result = train(spec, run_id=f"count-{augment}")
    counts = result.metrics["images"]
    train_n, val_n, test_n = counts["train"], counts["validation"], counts["test"]
    assert result.records[0].cached_features is not augment
    health_n = health_check_images(result.metrics)
    expected = (epochs if augment else 1) * (train_n + val_n) + test_n  # the final test pass runs once
    # The feature pass reuses the extractor the health check warmed (its blank image is in health_n).
    assert counted_images(result.parts.model) == expected + health_n
    # The recipe in short form (status, metrics.json) says whether the run augmented.
    assert result.metrics["recipe"].endswith(" + augment(horizontalFlip)") is augment


class RunKilledError(Exception):
    """Raised by the test to kill a run mid-stage."""


class _InterruptAt(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self, tracker: ProgressTracker, stage_name: str, epoch: int) -> None:
        super().__init__()
        self.tracker, self.stage_name, self.epoch = tracker, stage_name, epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.tracker.snapshot().stage == self.stage_name and epoch + 1 == self.epoch:
            raise RunKilledError


class _CountEpochs(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs.append(epoch + 1)


def test_run_killed_mid_stage_resumes_from_checkpoint_with_same_total_epochs(
    tiny_backbone: Path, transfer_images: Path, make_spec: SpecFactory
) -> None:
    spec = make_spec(
        transfer_images, tiny_backbone, [stage("head", 0, 3), stage("finetune", 4, 4, learningRate=1e-3)]
    )
    first = ProgressTracker(out=io.StringIO())
    with pytest.raises(RunKilledError):
        train(spec, run_id="resume", tracker=first, extra_callbacks=[_InterruptAt(first, "finetune", 2)])
    assert first.snapshot().completed_epochs == 5
    checkpoints = open_storage(work_uri(spec.output.uri), spec.storage)
    assert checkpoints.exists("checkpoints/resume/state.json")
    assert not open_storage(spec.output.uri, spec.storage).exists("checkpoints/resume/state.json")

    counter = _CountEpochs()
    second = ProgressTracker(out=io.StringIO())
    result = train(spec, run_id="resume", tracker=second, extra_callbacks=[counter])

    assert counter.epochs == [3, 4]  # only the rest of the interrupted stage ran again
    head, finetune = result.records
    assert (head.epochs_run, finetune.epochs_run, finetune.resumed_at_epoch) == (3, 4, 2)
    assert len(finetune.history["loss"]) == 4
    assert second.snapshot().completed_epochs == 3 + 4
    assert not any(info.key.startswith("checkpoints/resume/") for info in checkpoints.list("checkpoints/"))


class _WeightsAtStageStart(keras.callbacks.Callback):  # type: ignore[misc]
    """Keeps the weights as the named stage starts training; notes whether its epochs change them."""

    def __init__(self, tracker: ProgressTracker, stage_name: str) -> None:
        super().__init__()
        self.tracker, self.stage_name = tracker, stage_name
        self.at_start: list[np.ndarray[Any, Any]] = []
        self.changed = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.tracker.snapshot().stage == self.stage_name:
            self.at_start = [np.array(w) for w in self.model.get_weights()]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.tracker.snapshot().stage == self.stage_name:
            now = self.model.get_weights()
            self.changed |= any(not np.array_equal(a, b) for a, b in zip(now, self.at_start, strict=True))


def test_stage_that_ends_below_the_previous_best_is_rolled_back_with_a_notice(
    tiny_backbone: Path, transfer_images: Path, make_spec: SpecFactory
) -> None:
    destructive = stage("wreck", "all", 2, optimizer="sgd", learningRate=10.0, momentum=0.9)
    spec = make_spec(transfer_images, tiny_backbone, [stage("head", 0, 4, learningRate=0.01), destructive])
    tracker = ProgressTracker(out=io.StringIO())
    watch = _WeightsAtStageStart(tracker, "wreck")  # in the wreck stage it watches the full model
    result = train(spec, run_id="regress", tracker=tracker, extra_callbacks=[watch])

    head, wreck = result.records
    assert head.best_val_accuracy is not None and wreck.best_val_accuracy is not None
    assert wreck.best_val_accuracy < head.best_val_accuracy, "the destructive stage did not regress"
    assert watch.changed, "the destructive stage did not change the weights"
    assert (wreck.regressed, wreck.restored) == (True, "head")
    assert not head.regressed
    names = [w.path for w in result.parts.model.weights]
    for name, now, before in zip(names, result.parts.model.get_weights(), watch.at_start, strict=True):
        if "counter" not in name:  # the counting layer counted the final test pass
            np.testing.assert_array_equal(now, before, err_msg=f"{name} was not restored")

    regressed = [n for n in tracker.snapshot().notices if n.reason == NoticeReason.FINE_TUNE_REGRESSED]
    assert len(regressed) == 1
    assert "wreck" in regressed[0].message and "head" in regressed[0].message
    assert result.model_uri is not None
    metrics = json.loads((Path(result.model_uri) / "metrics.json").read_text())
    by_name = {s["name"]: s for s in metrics["stages"]}
    assert (by_name["wreck"]["regressed"], by_name["wreck"]["restored"]) == (True, "head")
    assert by_name["head"]["regressed"] is False


def test_after_stage_hook_sees_each_record_before_the_next_stage_and_guard_can_be_off(
    tiny_backbone: Path, make_spec: SpecFactory, tmp_path: Path
) -> None:
    destructive = stage("wreck", "all", 1, optimizer="sgd", learningRate=10.0, momentum=0.9)
    spec = make_spec(
        tmp_path / "unused-data", tiny_backbone, [stage("head", 0, 3, learningRate=0.01), destructive]
    )
    loaded = load_backbone(spec.model, 32, spec.storage)
    parts = build_transfer_model(loaded, spec.model.head, 3, spec.augmentation)
    source = ArraySource({"train": _arrays((0, 1, 7), 40, 0), "validation": _arrays((0, 1, 7), 20, 40)})
    seen: list[tuple[str, bool, str | None]] = []
    tracker = ProgressTracker(out=io.StringIO())

    def after(record: StageRecord) -> None:
        # Called once the stage is done and before the next one starts.
        seen.append((record.name, tracker.snapshot().stage == record.name, record.restored))

    store = CheckpointStore(spec.output.uri, "hook", spec.storage, spec_hash(spec))
    runner = StageRunner(
        parts,
        spec,
        source,
        store=store,
        tracker=tracker,
        strategy=tf.distribute.get_strategy(),
        after_stage=after,
        restore_on_regression=False,
    )
    head, wreck = runner.run_all()
    assert seen == [("head", True, None), ("wreck", True, None)]
    assert wreck.best_val_accuracy is not None and head.best_val_accuracy is not None
    assert wreck.best_val_accuracy < head.best_val_accuracy, "the destructive stage did not regress"
    assert not wreck.regressed, "the guard-rail was off"
    assert not tracker.snapshot().notices
