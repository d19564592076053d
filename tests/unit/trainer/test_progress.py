"""The progress document, its Prometheus metrics and the termination message."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kubegraft.runtime import TERMINATION_MESSAGE_MAX_BYTES, NoticeReason
from kubegraft_trainer.progress import (
    ProgressCallback,
    ProgressServer,
    ProgressTracker,
    write_termination_message,
)


def _tracker() -> ProgressTracker:
    tracker = ProgressTracker(out=io.StringIO(), clock=lambda: 1000.0)
    tracker.set_plan(["head", "finetune"], 8, "MobileNetV2 head -> finetune")
    tracker.start_stage(0, "head", 3, 0)
    return tracker


def test_epoch_updates_document_gauges_and_prints_one_line() -> None:
    out = io.StringIO()
    tracker = ProgressTracker(out=out, clock=lambda: 1000.0)
    tracker.set_plan(["head", "finetune"], 8, "recipe")
    tracker.start_stage(0, "head", 3, 0)
    tracker.end_epoch(1, {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.75}, 2.0, 100)
    progress = tracker.snapshot()
    assert (progress.epoch, progress.completed_epochs, progress.images_per_second) == (1, 1, 50.0)
    assert progress.eta_seconds == pytest.approx(2.0 * 7)
    text = tracker.metrics_text().decode()
    assert 'kubegraft_train_stage_info{stage="head"} 1.0' in text
    assert "kubegraft_train_val_accuracy_ratio 0.75" in text
    assert "kubegraft_train_images_total 100.0" in text
    tracker.end_epoch(2, {"accuracy": 0.9}, 2.0, 100)
    assert tracker.snapshot().images_trained == 200
    assert "kubegraft_train_images_total 200.0" in tracker.metrics_text().decode()
    assert "kubegraft_train_last_progress_timestamp_seconds 1000.0" in text
    assert out.getvalue().count("\n") == 2 and "[head] epoch 1/3" in out.getvalue()


def _images_total(tracker: ProgressTracker) -> float:
    line = next(
        line
        for line in tracker.metrics_text().decode().splitlines()
        if line.startswith("kubegraft_train_images_total ")
    )
    return float(line.split()[1])


def test_images_trained_grow_at_batch_ends_within_an_epoch_and_the_epoch_end_counts_only_the_rest() -> None:
    stamps = [1000.0]
    tracker = ProgressTracker(out=io.StringIO(), clock=lambda: stamps[0])
    tracker.set_plan(["finetune"], 2, "recipe")
    tracker.start_stage(0, "finetune", 2, 0)
    now = [0.0]
    callback = ProgressCallback(tracker, 100, batch_size=32, report_seconds=1.0, clock=lambda: now[0])

    callback.on_epoch_begin(0)
    callback.on_train_batch_end(0)  # at the epoch's start: too soon to count
    assert tracker.snapshot().images_trained == 0
    now[0], stamps[0] = 1.5, 2000.0
    callback.on_train_batch_end(1)  # two steps of 32
    assert (tracker.snapshot().images_trained, _images_total(tracker)) == (64, 64.0)
    now[0] = 2.0
    callback.on_train_batch_end(2)  # 0.5 s after the last count: waits
    assert tracker.snapshot().images_trained == 64
    now[0] = 3.0
    callback.on_train_batch_end(3)  # 4 x 32 > 100: at most the epoch's images
    assert (tracker.snapshot().images_trained, _images_total(tracker)) == (100, 100.0)
    progress = tracker.snapshot()
    assert (progress.completed_epochs, progress.epoch) == (0, 0)  # counting images finishes no epoch
    assert "kubegraft_train_last_progress_timestamp_seconds 1000.0" in tracker.metrics_text().decode()

    callback.on_epoch_end(0, {"loss": 1.0})
    assert (tracker.snapshot().images_trained, _images_total(tracker)) == (100, 100.0)  # not counted twice
    callback.on_epoch_begin(1)
    now[0] = 10.0
    callback.on_train_batch_end(0)
    assert tracker.snapshot().images_trained == 132
    callback.on_epoch_end(1, {"loss": 0.5})
    assert (tracker.snapshot().images_trained, _images_total(tracker)) == (200, 200.0)


def test_without_a_batch_size_images_are_counted_at_epoch_ends_only() -> None:
    tracker = _tracker()
    now = [0.0]
    callback = ProgressCallback(tracker, 50, clock=lambda: now[0])
    callback.on_epoch_begin(0)
    now[0] = 100.0
    callback.on_train_batch_end(5)
    assert tracker.snapshot().images_trained == 0
    callback.on_epoch_end(0, {})
    assert tracker.snapshot().images_trained == 50


def test_stage_change_replaces_the_stage_info_series() -> None:
    tracker = _tracker()
    tracker.start_stage(1, "finetune", 5, 0)
    text = tracker.metrics_text().decode()
    assert 'stage="finetune"' in text and 'stage="head"' not in text


def test_early_stop_removes_unrun_epochs_from_the_total() -> None:
    tracker = _tracker()
    tracker.end_epoch(1, {"loss": 1.0}, 1.0, 10)
    tracker.end_stage(1)
    assert tracker.snapshot().total_epochs == 6


def test_compact_termination_message_fits_the_kubernetes_limit() -> None:
    tracker = _tracker()
    tracker.add_metrics({f"class/{'x' * 40}-{i}/f1": 0.5 for i in range(500)})
    tracker.set_state("failed", reason="TrainingError", message="m" * 10_000)
    text = tracker.compact_json()
    assert len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    data = json.loads(text)
    assert data["state"] == "failed" and data["reason"] == "TrainingError"


def test_termination_message_is_written_or_skipped_silently(tmp_path: Path) -> None:
    tracker = _tracker()
    target = tmp_path / "termination-log"
    assert write_termination_message(tracker, str(target))
    assert json.loads(target.read_text())["stage"] == "head"
    assert not write_termination_message(tracker, str(tmp_path / "missing-dir" / "log"))


def test_server_serves_progress_metrics_and_404() -> None:
    tracker = _tracker()
    server = ProgressServer(tracker, port=0, bind="127.0.0.1").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/progress", timeout=5) as response:
            assert json.loads(response.read())["stageEpochs"] == 3
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            assert b"kubegraft_train_total_epochs 8.0" in response.read()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{base}/nothing", timeout=5)
        assert caught.value.code == 404
        caught.value.close()
    finally:
        server.stop()


def test_notices_are_kept_once_and_survive_the_compact_termination_message() -> None:
    tracker = _tracker()
    tracker.add_notice(NoticeReason.NO_TRANSFER_GAIN, "test accuracy 0.50 is below the baseline's 0.80")
    tracker.add_notice(NoticeReason.NO_TRANSFER_GAIN, "test accuracy 0.50 is below the baseline's 0.80")
    tracker.add_notice(NoticeReason.FINE_TUNE_REGRESSED, "m" * 1000)
    tracker.add_metrics({f"class/{i}/f1": 0.5 for i in range(400)})
    assert [n.reason for n in tracker.snapshot().notices] == ["NoTransferGain", "FineTuneRegressed"]
    data = json.loads(tracker.compact_json())
    assert [n["reason"] for n in data["notices"]] == ["NoTransferGain", "FineTuneRegressed"]
    assert len(data["notices"][1]["message"]) <= 200


def test_progress_is_percent_of_planned_epochs_and_100_only_once_succeeded() -> None:
    tracker = ProgressTracker(out=io.StringIO(), clock=lambda: 1000.0)
    assert (tracker.snapshot().progress, tracker.snapshot().eta_seconds) == (0, None)
    tracker.set_plan(["head"], 2, "recipe")
    tracker.start_stage(0, "head", 2, 0)
    tracker.end_epoch(1, {"loss": 1.0}, 3.0, 10)
    assert (tracker.snapshot().progress, tracker.snapshot().eta_seconds) == (50, 3.0)
    tracker.end_epoch(2, {"loss": 0.5}, 1.0, 10)
    tracker.end_stage(2)
    tracker.set_state("exporting")
    assert tracker.snapshot().progress == 99  # training done, export still to come
    tracker.set_state("succeeded")
    assert (tracker.snapshot().progress, tracker.snapshot().eta_seconds) == (100, 0.0)


def test_search_progress_spans_all_candidates_and_never_goes_back() -> None:
    tracker = ProgressTracker(out=io.StringIO(), clock=lambda: 1000.0)
    seen: list[int] = []
    # Candidate 1 (4 epochs, stops early after 2), then candidate 2 (4 epochs); 4 more may follow.
    tracker.update(search_epochs_done=0, search_epochs_left=8, total_epochs=4, completed_epochs=0)
    tracker.set_plan(["head"], 4, "c1")
    tracker.start_stage(0, "head", 4, 0)
    for epoch in (1, 2):
        tracker.end_epoch(epoch, {}, 1.0, 10)
        seen.append(tracker.snapshot().progress)
    tracker.end_stage(2)
    seen.append(tracker.snapshot().progress)
    tracker.update(search_epochs_done=2, search_epochs_left=0, total_epochs=4, completed_epochs=0)
    seen.append(tracker.snapshot().progress)
    tracker.set_plan(["head"], 4, "c2")
    tracker.update(completed_epochs=0)
    tracker.start_stage(0, "head", 4, 0)
    assert tracker.snapshot().eta_seconds == pytest.approx(4.0)  # 4 epochs left at 1 s each
    for epoch in (1, 2, 3, 4):
        tracker.end_epoch(epoch, {}, 1.0, 10)
        seen.append(tracker.snapshot().progress)
    assert seen == sorted(seen)
    assert seen[0] == 100 * 1 // 12 and seen[-1] == 99
    tracker.update(state="failed")
    assert tracker.snapshot().eta_seconds is None
