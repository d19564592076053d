"""Operator metrics: phase gauges, per-job progress series, and their removal with the TransferJob."""

from __future__ import annotations

import logging

from kubegraft.runtime import TrainingProgress
from kubegraft_operator import metrics, standby


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
            "imagesTrained": 1200,
        }
    )
    metrics.record_progress("m2", "a", progress, 1000.0)
    assert _value("kubegraft_job_stage_info", namespace="m2", transferjob="a", stage="head") == 1
    assert _value("kubegraft_job_epoch", namespace="m2", transferjob="a") == 3
    assert _value("kubegraft_job_val_accuracy_ratio", namespace="m2", transferjob="a") == 0.7
    assert _value("kubegraft_job_images_total", namespace="m2", transferjob="a") == 1200
    assert _value("kubegraft_job_last_progress_timestamp_seconds", namespace="m2", transferjob="a") == 1000.0
    metrics.record_progress("m2", "a", progress.model_copy(update={"stage": "finetune"}), 1005.0)
    assert _value("kubegraft_job_stage_info", namespace="m2", transferjob="a", stage="head") is None
    metrics.record_phase("m2", "a", "Succeeded")
    assert _value("kubegraft_job_epoch", namespace="m2", transferjob="a") is None
    assert _value("kubegraft_job_images_total", namespace="m2", transferjob="a") is None
    assert _value("kubegraft_job_stage_info", namespace="m2", transferjob="a", stage="finetune") is None
    metrics.forget("m2", "a")


def test_images_counter_follows_every_poll_within_an_epoch() -> None:
    metrics.record_phase("m3", "a", "Running")
    mid_epoch = TrainingProgress.model_validate({"state": "training", "stage": "finetune", "epoch": 2})
    seen = []
    for polled_at, trained in ((1000.0, 640), (1005.0, 704), (1010.0, 768)):  # the same epoch, more images
        metrics.record_progress(
            "m3", "a", mid_epoch.model_copy(update={"images_trained": trained}), polled_at
        )
        seen.append(_value("kubegraft_job_images_total", namespace="m3", transferjob="a"))
    assert seen == [640, 704, 768]  # rate() over it moves between epoch ends
    metrics.forget("m3", "a")


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


def _kopf_peering_record(message: str) -> logging.LogRecord:
    return logging.getLogger(standby.KOPF_PEERING_LOGGER).makeRecord(
        standby.KOPF_PEERING_LOGGER, logging.INFO, __file__, 1, message, (), None
    )


def test_a_replica_put_on_standby_exports_no_transferjob_series_until_it_works_again() -> None:
    metrics.record_phase("m4", "a", "Failed")
    metrics.record_phase("m4", "b", "Running")
    progress = TrainingProgress.model_validate({"state": "training", "stage": "head", "imagesTrained": 10})
    metrics.record_progress("m4", "b", progress, 1000.0)
    keep = standby.PeeringStateFilter().filter(
        _kopf_peering_record("Pausing operations in favour of [<Peer kubegraft-2: priority=99>].")
    )
    assert keep is True  # the record is still logged
    text = metrics.render().decode()
    assert 'transferjob="' not in text  # no per-TransferJob series of any kind
    assert _value("kubegraft_transferjobs", phase="Failed") == 0
    assert _value("kubegraft_operator_active") == 0
    standby.PeeringStateFilter().filter(_kopf_peering_record("Resuming operations after the pause. ..."))
    assert _value("kubegraft_operator_active") == 1
    metrics.record_phase("m4", "a", "Failed")  # kopf lists every TransferJob again after the pause
    assert _value("kubegraft_transferjob_phase", namespace="m4", transferjob="a", phase="Failed") == 1
    assert _value("kubegraft_transferjobs", phase="Failed") == 1
    metrics.forget("m4", "a")


def test_same_priority_pause_is_a_standby_too_and_other_kopf_lines_change_nothing() -> None:
    metrics.record_phase("m5", "a", "Pending")
    standby.PeeringStateFilter().filter(_kopf_peering_record("Keep-alive in 'kubegraft' cluster-wide: ok."))
    assert _value("kubegraft_transferjob_phase", namespace="m5", transferjob="a", phase="Pending") == 1
    standby.PeeringStateFilter().filter(_kopf_peering_record("Pausing all operators, including self: [...]"))
    assert _value("kubegraft_transferjob_phase", namespace="m5", transferjob="a", phase="Pending") is None
    metrics.active()


def test_kopfs_peering_engine_still_logs_the_messages_standby_listens_for() -> None:
    import inspect

    from kopf._core.engines import peering

    source = inspect.getsource(peering.process_peering_event)
    assert peering.logger.name == standby.KOPF_PEERING_LOGGER
    for prefix in (*standby.PAUSING, standby.RESUMING):
        assert f'"{prefix}' in source, prefix
