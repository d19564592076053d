"""The auto search's candidates and the transfer-gain report: plain data, no training."""

from __future__ import annotations

import io
from typing import Any

import pytest

from kubegraft.runtime import NoticeReason
from kubegraft.spec import TransferJobSpec
from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.run import _report_transfer_gain
from kubegraft_trainer.search import _Guard, candidate_specs

AUTO = TransferJobSpec.model_validate(
    {
        "dataset": {"uri": "data", "imageSize": 32, "seed": 3},
        "model": {"backbone": "MobileNetV2", "weights": "backbone.keras", "head": {"hidden": [64]}},
        "augmentation": {"horizontalFlip": True},
        "budget": {"minutes": 5},
        "output": {"uri": "models"},
    }
)


def test_candidates_are_pinned_specs_cheap_first_covering_every_recipe_family() -> None:
    candidates = candidate_specs(AUTO, backbone_depth=100)
    names = [name for name, _ in candidates]
    assert names == ["linear", "head", "full-1e-3", "top-25", "top-50", "full-1e-4"]
    for _, pinned in candidates:
        assert pinned.strategy == "stages"
        assert pinned.resolved_strategy == "stages"
        assert pinned.budget is None
        assert not pinned.augmentation.enabled  # augmentation is its own, later candidate
        assert pinned.dataset == AUTO.dataset
        assert pinned.model == AUTO.model
        # A pinned spec round-trips through the manifest form a user would apply.
        assert TransferJobSpec.model_validate(pinned.model_dump(by_alias=True, exclude_none=True)) == pinned
    linear = candidates[0][1]
    assert linear.classifier == "linear"
    assert linear.resolved_stages() == []
    tops = {name: pinned.resolved_stages()[-1].trainable for name, pinned in candidates[1:]}
    assert tops["top-25"] == 25
    assert tops["top-50"] == 50
    assert tops["full-1e-3"] == "all"
    assert [s.learning_rate for s in candidates[5][1].resolved_stages()] == [1e-3, 1e-4]
    assert [(s.trainable, s.learning_rate) for s in candidates[2][1].resolved_stages()] == [
        ("all", 1e-3),
        ("all", 1e-4),
    ]


def test_model_below_the_pixel_baseline_gets_a_no_transfer_gain_notice_and_the_run_goes_on() -> None:
    tracker = ProgressTracker(out=io.StringIO())
    record = _report_transfer_gain({"fitted": True, "accuracy": 0.8}, 0.7, tracker)
    assert record["baseline_accuracy"] == 0.8
    assert record["transfer_gain"] == pytest.approx(-0.1)
    progress = tracker.snapshot()
    assert progress.metrics["baseline_accuracy"] == 0.8
    assert progress.metrics["transfer_gain"] == pytest.approx(-0.1)
    assert [n.reason for n in progress.notices] == [NoticeReason.NO_TRANSFER_GAIN]
    assert "0.700" in progress.notices[0].message
    assert "0.800" in progress.notices[0].message


def test_model_above_the_pixel_baseline_reports_its_gain_without_a_notice() -> None:
    tracker = ProgressTracker(out=io.StringIO())
    record = _report_transfer_gain({"fitted": True, "accuracy": 0.6}, 0.9, tracker)
    assert record["transfer_gain"] == pytest.approx(0.3)
    assert tracker.snapshot().notices == []


def test_no_baseline_without_test_images_reports_why() -> None:
    tracker = ProgressTracker(out=io.StringIO())
    record = _report_transfer_gain({"fitted": False, "reason": "no test images"}, None, tracker)
    assert record == {"baseline": {"fitted": False, "reason": "no test images"}}
    assert "transfer_gain" not in tracker.snapshot().metrics


class _Model:
    stop_training = False


def _epochs(guard: Any, values: list[float]) -> None:
    for epoch, value in enumerate(values):
        guard.on_epoch_end(epoch, {"val_accuracy": value})


def test_candidate_clearly_behind_the_leader_at_the_same_epoch_is_cut_in_its_last_stage_only() -> None:
    leader = ([0.3, 0.5, 0.6, 0.7, 0.8, 0.8], 0.8)
    guard = _Guard(deadline=float("inf"), stages=2, leader=leader)
    guard.set_model(_Model())
    guard.on_train_begin()
    _epochs(guard, [0.2, 0.3, 0.3, 0.3, 0.3])  # a warm-up stage: never judged
    assert not guard.cut
    guard.on_train_begin()
    _epochs(guard, [0.5, 0.6, 0.7])  # last stage, not yet CUT_AFTER_EPOCHS epochs in
    assert not guard.cut
    _epochs(guard, [0.7])  # 9 epochs in all: the leader's final 0.8, minus the margin, is the bar
    assert guard.cut
    assert guard.model.stop_training


def test_candidate_within_the_margin_of_the_leader_runs_on() -> None:
    guard = _Guard(deadline=float("inf"), stages=1, leader=([0.5, 0.6, 0.7, 0.8], 0.8))
    guard.set_model(_Model())
    guard.on_train_begin()
    _epochs(guard, [0.5, 0.6, 0.7, 0.76, 0.76, 0.76])
    assert not guard.cut
    assert guard.curve == [0.5, 0.6, 0.7, 0.76, 0.76, 0.76]


def test_spent_time_budget_stops_a_candidate_at_the_epoch_end() -> None:
    guard = _Guard(deadline=0.0, stages=1, leader=None)
    guard.set_model(_Model())
    guard.on_train_begin()
    _epochs(guard, [0.9])
    assert guard.timed_out
    assert not guard.cut
    assert guard.model.stop_training
