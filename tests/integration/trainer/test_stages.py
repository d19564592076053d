"""Stages on a tiny counting backbone: what freezes, what trains, how often the backbone runs, resume."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from kubegraft_trainer.backbones import load_backbone
from kubegraft_trainer.checkpoints import CheckpointStore, spec_hash
from kubegraft_trainer.model import build_transfer_model
from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.run import train
from kubegraft_trainer.sources import ArraySource
from kubegraft_trainer.stages import StageRunner
from kubegraft_trainer.storage import open_storage
from tests.harness.fashion import load_fashion_mnist
from tests.integration.trainer.conftest import SpecFactory, counted_images, stage


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
    head_spec = make_spec(tmp_path, tiny_backbone, [stage("head", 0, 2, learningRate=0.01)])
    tune_spec = make_spec(tmp_path, tiny_backbone, [stage("tune", 4, 2, learningRate=0.01)])
    loaded = load_backbone(head_spec.model, 32, head_spec.storage)
    parts = build_transfer_model(loaded, head_spec.model.head, 3, head_spec.augmentation)
    source = ArraySource({"train": _arrays((0, 1, 7), 40, 0), "validation": _arrays((0, 1, 7), 10, 40)})
    strategy = tf.distribute.get_strategy()

    def run(spec: Any, run_id: str) -> None:
        store = CheckpointStore(spec.output.uri, run_id, spec.storage, spec_hash(spec))
        StageRunner(
            parts, spec, source, store=store, tracker=ProgressTracker(out=io.StringIO()), strategy=strategy
        ).run_all()

    backbone0, head0 = _weights(parts.backbone), _weights(parts.head)
    run(head_spec, "head")
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
    expected = (epochs if augment else 1) * (train_n + val_n) + test_n  # the final test pass runs once
    assert counted_images(result.parts.model) == expected


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
    checkpoints = open_storage(spec.output.uri, spec.storage)
    assert checkpoints.exists("checkpoints/resume/state.json")

    counter = _CountEpochs()
    second = ProgressTracker(out=io.StringIO())
    result = train(spec, run_id="resume", tracker=second, extra_callbacks=[counter])

    assert counter.epochs == [3, 4]  # only the rest of the interrupted stage ran again
    head, finetune = result.records
    assert (head.epochs_run, finetune.epochs_run, finetune.resumed_at_epoch) == (3, 4, 2)
    assert len(finetune.history["loss"]) == 4
    assert second.snapshot().completed_epochs == 3 + 4
    assert not any(info.key.startswith("checkpoints/resume/") for info in checkpoints.list("checkpoints/"))
