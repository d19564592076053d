"""Operator metrics: phase gauges, per-job progress series, and their removal with the TransferJob."""

from __future__ import annotations

from kubegraft.runtime import TrainingProgress
from kubegraft_operator import metrics


def _value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_phase_series_count_by_phase_and_mark_the_current_phase() -> None:
    metrics.record_phase("m1", "a", "Pending")
    metrics.record_phase("m1", "b", "Pending")
    before = _value("kubegraft_transferjobs", phase="Running") or 0
    metrics.record_phase("m1", "a", "Running")
    assert _value("kubegraft_transferjobs", phase="Running") == before + 1
    assert _value("kubegraft_transferjob_phase", namespace="m1", transferjob="a", phase="Running") == 1
    assert _value("kubegraft_transferjob_phase", namespace="m1", transferjob="a", phase="Pending") == 0
    metrics.forget("m1", "a")
    metrics.forget("m1", "b")
    assert _value("kubegraft_transferjob_phase", namespace="m1", transferjob="a", phase="Running") is None
    assert _value("kubegraft_transferjobs", phase="Running") == before


def test_progress_series_exist_while_running_and_vanish_after() -> None:
    metrics.record_phase("m2", "a", "Running")
    progress = TrainingProgress.model_validate(
        {
            "state": "training",
            "stage": "head",
            "epoch": 3,
            "metrics": {"val_accuracy": 0.7},
            "imagesPerSecond": 50,
        }
    )
    metrics.record_progress("m2", "a", progress, 1000.0)
    assert _value("kubegraft_job_stage_info", namespace="m2", transferjob="a", stage="head") == 1
    assert _value("kubegraft_job_epoch", namespace="m2", transferjob="a") == 3
    assert _value("kubegraft_job_val_accuracy", namespace="m2", transferjob="a") == 0.7
    assert _value("kubegraft_job_images_per_second", namespace="m2", transferjob="a") == 50
    assert _value("kubegraft_job_last_progress_timestamp_seconds", namespace="m2", transferjob="a") == 1000.0
    metrics.record_progress("m2", "a", progress.model_copy(update={"stage": "finetune"}), 1005.0)
    assert _value("kubegraft_job_stage_info", namespace="m2", transferjob="a", stage="head") is None
    metrics.record_phase("m2", "a", "Succeeded")
    assert _value("kubegraft_job_epoch", namespace="m2", transferjob="a") is None
    assert _value("kubegraft_job_stage_info", namespace="m2", transferjob="a", stage="finetune") is None
    metrics.forget("m2", "a")


def test_outcomes_count_successes_and_failures_by_reason() -> None:
    before = _value("kubegraft_runs_failed_total", reason="OOMKilled") or 0
    metrics.record_outcome("Failed", "OOMKilled")
    assert _value("kubegraft_runs_failed_total", reason="OOMKilled") == before + 1
    succeeded = _value("kubegraft_runs_succeeded_total") or 0
    metrics.record_outcome("Succeeded", "Succeeded")
    assert _value("kubegraft_runs_succeeded_total") == succeeded + 1


def test_notices_are_counted_by_known_reason_and_other_reasons_as_other() -> None:
    before = _value("kubegraft_notices_total", reason="NoTransferGain") or 0
    other = _value("kubegraft_notices_total", reason="Other") or 0
    metrics.record_notice("NoTransferGain")
    metrics.record_notice("SomethingNew")
    assert _value("kubegraft_notices_total", reason="NoTransferGain") == before + 1
    assert _value("kubegraft_notices_total", reason="Other") == other + 1


def test_exposition_names_every_documented_metric() -> None:
    text = metrics.render().decode()
    for name in (
        "kubegraft_transferjobs",
        "kubegraft_runs_started_total",
        "kubegraft_reconcile_duration_seconds_bucket",
        "kubegraft_reconcile_errors_total",
    ):
        assert name in text
