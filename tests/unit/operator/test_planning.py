"""Run decisions and status derivation from observed Jobs, Pods and trainer progress (pure planning)."""

from __future__ import annotations

from typing import Any

from kubegraft.runtime import TrainingProgress
from kubegraft.status import TransferJobStatus
from kubegraft_operator.conditions import find
from kubegraft_operator.planning import (
    ANNOTATION_FINISHED_RUN,
    ANNOTATION_RUN,
    ANNOTATION_RUN_GENERATION,
    ANNOTATION_RUN_SPEC_HASH,
    RunPlan,
    annotations_patch,
    derive_status,
    merge_patch,
    parse_termination_message,
    plan_run,
    status_patch,
)
from kubegraft_operator.rendering import spec_hash
from tests.unit.operator.factories import BASE_SPEC, job, pod, transferjob, with_spec

NOW = "2026-01-01T00:05:00Z"
LATER = "2026-01-01T00:06:00Z"


def _recorded(run: int, spec: dict[str, Any] | None = None, generation: int = 1) -> dict[str, str]:
    return {
        ANNOTATION_RUN: str(run),
        ANNOTATION_RUN_SPEC_HASH: spec_hash(spec or BASE_SPEC),
        ANNOTATION_RUN_GENERATION: str(generation),
    }


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    condition = find(status["conditions"], type_)
    assert condition is not None, type_
    return dict(condition)


# ---- plan_run: which run, which actions ------------------------------------------------------------------


def test_a_new_transferjob_plans_run_1_and_creates_its_job() -> None:
    plan = plan_run(transferjob(), [], desired_suspend=False)
    assert (plan.run, plan.create, plan.stop, plan.suspend) == (1, True, (), None)
    assert plan.annotations[ANNOTATION_RUN] == "1"


def test_reapplying_the_same_spec_is_a_no_op() -> None:
    tj = transferjob(annotations=_recorded(1))
    plan = plan_run(tj, [job(1)], desired_suspend=False)
    assert (plan.run, plan.create, plan.stop, plan.suspend) == (1, False, (), None)
    assert annotations_patch(tj, plan) == {}


def test_crash_after_creating_the_job_before_recording_the_run_finds_the_same_run() -> None:
    # The Job exists but the TransferJob's annotations were never written: no second Job, same run.
    plan = plan_run(transferjob(), [job(1)], desired_suspend=False)
    assert (plan.run, plan.create) == (1, False)


def test_crash_before_the_job_was_observed_plans_the_same_name_again() -> None:
    # Annotations recorded, Job not yet seen by the watch: the create is repeated and answered 409.
    plan = plan_run(transferjob(annotations=_recorded(1)), [], desired_suspend=False)
    assert (plan.run, plan.create) == (1, True)


def test_a_spec_change_starts_the_next_run_and_stops_the_running_one() -> None:
    new_spec = with_spec(model={"backbone": "ResNet50"})
    tj = transferjob(new_spec, generation=2, annotations=_recorded(1))
    plan = plan_run(tj, [job(1)], desired_suspend=False)
    assert (plan.run, plan.generation, plan.create) == (2, 2, True)
    assert [j.name for j in plan.stop] == ["flowers-1"]
    assert plan.annotations[ANNOTATION_RUN_SPEC_HASH] == spec_hash(new_spec)


def test_a_spec_change_after_a_finished_run_keeps_the_finished_job() -> None:
    tj = transferjob(with_spec(model={"backbone": "ResNet50"}), generation=2, annotations=_recorded(1))
    plan = plan_run(tj, [job(1, outcome="Succeeded")], desired_suspend=False)
    assert (plan.run, plan.create, plan.stop) == (2, True, ())


def test_the_next_run_after_a_crash_mid_change_is_still_the_same_number() -> None:
    new_spec = with_spec(model={"backbone": "ResNet50"})
    tj = transferjob(new_spec, generation=2, annotations=_recorded(1))
    plan = plan_run(tj, [job(1), job(2, spec=new_spec, generation=2)], desired_suspend=False)
    assert (plan.run, plan.create) == (2, False)
    assert [j.name for j in plan.stop] == ["flowers-1"]


def test_reverting_the_spec_is_a_new_run_not_a_return_to_the_old_one() -> None:
    spec2 = with_spec(model={"backbone": "ResNet50"})
    tj = transferjob(BASE_SPEC, generation=3, annotations=_recorded(2, spec2, 2))
    plan = plan_run(tj, [job(1, outcome="Succeeded"), job(2, spec=spec2)], desired_suspend=False)
    assert plan.run == 3
    assert plan.create


def test_a_suspend_only_change_keeps_the_run_and_patches_the_job() -> None:
    suspended = with_spec(runPolicy={"suspend": True})
    tj = transferjob(suspended, generation=2, annotations=_recorded(1))
    plan = plan_run(tj, [job(1)], desired_suspend=True)
    assert (plan.run, plan.create, plan.suspend) == (1, False, True)
    resumed = plan_run(transferjob(generation=3, annotations=_recorded(1)), [job(1, suspend=True)], False)
    assert (resumed.run, resumed.suspend) == (1, False)


def test_kueue_decides_suspend_when_the_user_did_not_ask() -> None:
    spec = with_spec(scheduling={"queueName": "q"})
    plan = plan_run(
        transferjob(spec, annotations=_recorded(1, spec)), [job(1, spec=spec, suspend=True)], None
    )
    assert plan.suspend is None


def test_jobs_of_another_transferjob_with_the_same_name_are_ignored() -> None:
    plan = plan_run(transferjob(), [job(1, owner="someone-else")], desired_suspend=False)
    assert (plan.run, plan.create) == (1, True)


def test_a_finished_run_whose_job_was_deleted_by_ttl_is_not_started_again() -> None:
    annotations = {**_recorded(1), ANNOTATION_FINISHED_RUN: "1"}
    plan = plan_run(transferjob(annotations=annotations), [], desired_suspend=False)
    assert plan.finished_without_job
    assert not plan.create


def test_a_finished_job_is_recorded_in_the_annotations() -> None:
    tj = transferjob(annotations=_recorded(1))
    plan = plan_run(tj, [job(1, outcome="Failed")], desired_suspend=False)
    assert annotations_patch(tj, plan) == {ANNOTATION_FINISHED_RUN: "1"}


# ---- derive_status: phase, conditions, reasons -----------------------------------------------------------


def _status(
    tj: dict[str, Any],
    jobs: list[Any],
    pods: list[Any],
    progress: TrainingProgress | None = None,
    now: str = NOW,
) -> Any:
    plan = plan_run(tj, jobs, desired_suspend=False)
    return derive_status(tj, plan, pods, progress, now)


def test_a_created_job_without_pods_is_pending() -> None:
    result = _status(transferjob(), [job(1)], [])
    assert result.status["phase"] == "Pending"
    assert result.status["jobName"] == "flowers-1"
    assert result.status["run"] == 1
    assert _condition(result.status, "Reconciling")["status"] == "True"
    assert _condition(result.status, "Ready")["status"] == "False"
    assert _condition(result.status, "Stalled")["status"] == "False"


def test_a_pod_that_exited_0_before_the_job_completes_stays_running_not_pending() -> None:
    result = _status(transferjob(), [job(1)], [pod(1, exit_code=0, term_message={"state": "succeeded"})])
    assert result.status["phase"] == "Running"
    assert _condition(result.status, "Reconciling")["status"] == "True"


def test_a_running_pod_with_progress_is_running_with_stage_epoch_and_metrics() -> None:
    progress = TrainingProgress.model_validate(
        {
            "state": "training",
            "stage": "head",
            "epoch": 2,
            "stageEpochs": 5,
            "completedEpochs": 2,
            "totalEpochs": 10,
            "metrics": {"val_accuracy": 0.8, "loss": 0.6636363863945007},
            "images": {"train": 100, "validation": 20, "test": 20},
            "recipe": "head5+ft5",
        }
    )
    result = _status(transferjob(), [job(1)], [pod(running=True)], progress)
    status = result.status
    assert status["phase"] == "Running"
    assert (status["stage"], status["epoch"], status["totalEpochs"]) == ("head", 2, 10)
    assert status["metrics"] == {"val_accuracy": 0.8, "loss": 0.6636}
    assert status["images"]["train"] == 100
    assert status["recipe"] == "head5+ft5"
    assert "epoch 2/5" in _condition(status, "Reconciling")["message"]


def test_replicas_and_the_current_stages_global_and_per_replica_batch_are_copied_into_status() -> None:
    progress = TrainingProgress.model_validate(
        {
            "state": "training",
            "stage": "finetune",
            "replicas": 4,
            "globalBatchSize": 64,
            "perReplicaBatchSize": 16,
        }
    )
    status = _status(transferjob(), [job(1)], [pod(running=True)], progress).status
    assert (status["replicas"], status["globalBatchSize"], status["perReplicaBatchSize"]) == (4, 64, 16)
    TransferJobStatus.model_validate(status)  # the fields the status schema declares
    before = TrainingProgress.model_validate({"state": "loading"})  # not known before the first stage
    waiting = _status(transferjob(), [job(1)], [pod(running=True)], before).status
    assert not {"replicas", "globalBatchSize", "perReplicaBatchSize"} & waiting.keys()
    tj = transferjob(with_spec(model={"backbone": "ResNet50"}), generation=2, status={**status, "run": 1})
    new_run = _status(tj, [job(1, outcome="Succeeded")], [])
    assert status_patch(status, new_run.status)["replicas"] is None  # a new run drops the old run's


def test_progress_fields_are_kept_between_polls_of_the_same_run() -> None:
    previous = {"run": 1, "phase": "Running", "stage": "head", "epoch": 3, "metrics": {"loss": 0.5}}
    result = _status(transferjob(status=previous), [job(1)], [pod(running=True)])
    assert (result.status["stage"], result.status["epoch"], result.status["metrics"]) == (
        "head",
        3,
        {"loss": 0.5},
    )


def test_progress_and_eta_are_copied_from_the_trainer_with_the_time_of_the_write() -> None:
    progress = TrainingProgress.model_validate(
        {"state": "training", "stage": "head", "epoch": 1, "progress": 40, "etaSeconds": 61.6}
    )
    status = _status(transferjob(), [job(1)], [pod(running=True)], progress).status
    assert (status["progress"], status["etaSeconds"], status["lastUpdateTime"]) == (40, 62, NOW)
    # The next poll sees nothing new: lastUpdateTime stays, so the status is not written again.
    again = _status(transferjob(status=status), [job(1)], [pod(running=True)], progress, now="later")
    assert status_patch(status, again.status) == {}


def test_progress_never_goes_back_within_a_run_and_an_unknown_eta_is_dropped() -> None:
    previous = {"run": 1, "phase": "Running", "progress": 60, "etaSeconds": 30}
    restarted = TrainingProgress.model_validate({"state": "loading", "progress": 10})
    status = _status(transferjob(status=previous), [job(1)], [pod(running=True)], restarted).status
    assert status["progress"] == 60
    assert "etaSeconds" not in status


def test_a_succeeded_run_shows_100_percent_and_no_time_left() -> None:
    previous = {"run": 1, "phase": "Running", "progress": 99, "etaSeconds": 3}
    message = {"state": "succeeded", "progress": 100, "modelUri": "s3://models/flowers/1/"}
    status = _succeeded(message, transferjob(status=previous)).status
    assert (status["phase"], status["progress"], status["etaSeconds"]) == ("Succeeded", 100, 0)


def test_a_failed_run_keeps_its_progress_and_drops_the_eta() -> None:
    previous = {"run": 1, "phase": "Running", "progress": 30, "etaSeconds": 90}
    tj = transferjob(status=previous)
    message = {"state": "failed", "reason": "TrainingError", "progress": 30}
    status = _status(tj, [job(1, outcome="Failed")], [pod(exit_code=1, term_message=message)]).status
    assert (status["phase"], status["progress"]) == ("Failed", 30)
    assert "etaSeconds" not in status


def test_progress_fields_of_the_previous_run_are_dropped_by_a_new_run() -> None:
    previous = {"run": 1, "phase": "Succeeded", "stage": "finetune", "modelUri": "s3://models/flowers/1/"}
    tj = transferjob(with_spec(model={"backbone": "ResNet50"}), generation=2, status=previous)
    result = _status(tj, [job(1, outcome="Succeeded")], [])
    patch = status_patch(previous, result.status)
    assert patch["modelUri"] is None
    assert patch["stage"] is None
    assert patch["run"] == 2


def test_success_reads_final_metrics_and_model_uri_from_the_termination_message() -> None:
    message = {
        "state": "succeeded",
        "metrics": {"test_accuracy": 0.91},
        "modelUri": "s3://models/flowers/1/",
        "totalEpochs": 10,
    }
    result = _status(transferjob(), [job(1, outcome="Succeeded")], [pod(exit_code=0, term_message=message)])
    status = result.status
    assert status["phase"] == "Succeeded"
    assert status["modelUri"] == "s3://models/flowers/1/"
    assert status["metrics"] == {"test_accuracy": 0.91}
    assert status["completionTime"] == "2026-01-01T00:10:00Z"
    for type_ in ("Ready", "Succeeded"):
        assert _condition(status, type_)["status"] == "True"
    for type_ in ("Reconciling", "Stalled", "Failed"):
        assert _condition(status, type_)["status"] == "False"
    assert "s3://models/flowers/1/" in _condition(status, "Succeeded")["message"]


def test_exit_78_fails_with_the_trainers_reason_and_message() -> None:
    message = {
        "state": "failed",
        "reason": "DatasetNotFound",
        "message": "No images under s3://datasets/flowers/.",
    }
    jobs = [job(1, outcome="Failed", reason="PodFailurePolicy")]
    result = _status(transferjob(), jobs, [pod(exit_code=78, term_message=message)])
    failed = _condition(result.status, "Failed")
    assert result.status["phase"] == "Failed"
    assert (failed["status"], failed["reason"]) == ("True", "DatasetNotFound")
    assert "No images under" in failed["message"]
    assert _condition(result.status, "Stalled")["status"] == "True"
    assert _condition(result.status, "Reconciling")["status"] == "False"
    assert [e.reason for e in result.events] == ["DatasetNotFound"]
    assert result.events[0].type == "Warning"


def test_exit_78_without_a_termination_message_is_invalid_spec() -> None:
    jobs = [job(1, outcome="Failed", reason="PodFailurePolicy")]
    result = _status(transferjob(), jobs, [pod(exit_code=78)])
    assert _condition(result.status, "Failed")["reason"] == "InvalidSpec"


def test_exhausted_retries_without_a_trainer_reason_are_backoff_limit_exceeded() -> None:
    jobs = [job(1, outcome="Failed", reason="BackoffLimitExceeded", failed=4)]
    pods = [pod(index=i, exit_code=1, term_message="Traceback: boom") for i in range(4)]
    failed = _condition(_status(transferjob(), jobs, pods).status, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "failed 4 times" in failed["message"]
    assert "boom" in failed["message"]


def test_exhausted_retries_after_oom_kills_say_oomkilled() -> None:
    jobs = [job(1, outcome="Failed", reason="BackoffLimitExceeded", failed=4)]
    pods = [pod(index=i, exit_code=137, term_reason="OOMKilled") for i in range(4)]
    failed = _condition(_status(transferjob(), jobs, pods).status, "Failed")
    assert failed["reason"] == "OOMKilled"


def test_the_deadline_is_reported_as_deadline_exceeded() -> None:
    tj = transferjob(with_spec(runPolicy={"activeDeadlineSeconds": 60}))
    jobs = [
        job(1, spec=tj["spec"], outcome="Failed", reason="DeadlineExceeded", message="Job was active longer")
    ]
    failed = _condition(_status(tj, jobs, [pod(running=True)]).status, "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    assert "60 s" in failed["message"]


def test_an_unschedulable_pod_is_pending_and_stalled_with_the_schedulers_message() -> None:
    pods = [pod(ip=None, unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")]
    result = _status(transferjob(), [job(1)], pods)
    stalled = _condition(result.status, "Stalled")
    assert result.status["phase"] == "Pending"
    assert (stalled["status"], stalled["reason"]) == ("True", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in stalled["message"]
    assert _condition(result.status, "Reconciling")["status"] == "False"
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "Unschedulable")]


def test_image_pull_failures_and_missing_secrets_have_their_own_reasons() -> None:
    pull = _status(transferjob(), [job(1)], [pod(waiting="ImagePullBackOff", waiting_message="not found")])
    assert _condition(pull.status, "Stalled")["reason"] == "ImagePullFailed"
    secret = _status(
        transferjob(),
        [job(1)],
        [pod(waiting="CreateContainerConfigError", waiting_message='secret "s3-creds" not found')],
    )
    stalled = _condition(secret.status, "Stalled")
    assert stalled["reason"] == "SecretNotFound"
    assert "s3-creds" in stalled["message"]


def test_a_failed_attempt_while_the_job_retries_is_an_event_not_a_failure() -> None:
    message = {"state": "failed", "reason": "StorageAccessDenied", "message": "403 from storage"}
    pods = [pod(index=0, exit_code=1, term_message=message), pod(index=1, running=True)]
    result = _status(transferjob(), [job(1, failed=1)], pods)
    assert result.status["phase"] == "Running"
    assert "Retrying after 1 failed attempt" in _condition(result.status, "Reconciling")["message"]
    assert ("Warning", "StorageAccessDenied") in [(e.type, e.reason) for e in result.events]


def test_a_user_suspended_run_is_suspended_and_a_queued_one_is_pending() -> None:
    spec = with_spec(runPolicy={"suspend": True})
    tj = transferjob(spec)
    result = derive_status(tj, plan_run(tj, [job(1, spec=spec, suspend=True)], True), [], None, NOW)
    assert result.status["phase"] == "Suspended"
    assert _condition(result.status, "Suspended")["status"] == "True"
    assert _condition(result.status, "Reconciling")["status"] == "False"
    queued_spec = with_spec(scheduling={"queueName": "team-a"})
    queued = transferjob(queued_spec)
    result = derive_status(
        queued, plan_run(queued, [job(1, spec=queued_spec, suspend=True)], None), [], None, NOW
    )
    assert result.status["phase"] == "Pending"
    assert _condition(result.status, "Reconciling")["reason"] == "Queued"


def test_conditions_keep_their_transition_time_until_they_flip_and_carry_the_generation() -> None:
    first = _status(transferjob(generation=4), [job(1)], [pod(running=True)], now=NOW).status
    again = _status(transferjob(generation=4, status=first), [job(1)], [pod(running=True)], now=LATER).status
    assert _condition(again, "Reconciling")["lastTransitionTime"] == NOW
    assert _condition(again, "Reconciling")["observedGeneration"] == 4
    assert again["observedGeneration"] == 4
    assert status_patch(first, again) == {}
    done = _status(
        transferjob(generation=4, status=again), [job(1, outcome="Succeeded")], [], now=LATER
    ).status
    assert _condition(done, "Reconciling")["lastTransitionTime"] == LATER
    assert _condition(done, "Stalled")["lastTransitionTime"] == NOW


def test_an_unchanged_observation_writes_nothing_and_emits_no_event() -> None:
    first = _status(transferjob(), [job(1)], [pod(running=True)])
    second = _status(transferjob(status=first.status), [job(1)], [pod(running=True)], now=LATER)
    assert status_patch(first.status, second.status) == {}
    assert second.events == ()


def test_a_finished_run_whose_job_is_gone_keeps_its_status() -> None:
    done = _status(transferjob(), [job(1, outcome="Succeeded")], []).status
    annotations = {**_recorded(1), ANNOTATION_FINISHED_RUN: "1"}
    kept = _status(transferjob(annotations=annotations, status=done), [], [], now=LATER)
    assert kept.status["phase"] == "Succeeded"
    assert status_patch(done, kept.status) == {}


def test_termination_message_parses_json_and_falls_back_to_text() -> None:
    progress, text = parse_termination_message('{"state": "failed", "reason": "TooFewClasses"}')
    assert progress is not None
    assert (progress.reason, text) == ("TooFewClasses", "")
    progress, text = parse_termination_message("Traceback (most recent call last): ...\n")
    assert progress is None
    assert text.startswith("Traceback")


def test_merge_patch_nulls_removed_keys_and_replaces_lists() -> None:
    old = {"a": 1, "m": {"x": 1, "y": 2}, "l": [1, 2]}
    new = {"m": {"x": 1}, "l": [3], "b": 2}
    assert merge_patch(old, new) == {"a": None, "m": {"y": None}, "l": [3], "b": 2}


def test_plan_job_name_is_known_once_the_job_is_observed() -> None:
    assert RunPlan(run=1, generation=1, spec_hash="x", job=job(1), create=False).job_name == "flowers-1"


def test_routine_steps_post_no_event_but_training_does() -> None:
    assert _status(transferjob(), [job(1)], []).events == ()
    started = _status(transferjob(), [job(1)], [pod(running=True)])
    assert [(e.type, e.reason) for e in started.events] == [("Normal", "Training")]


# ---- TransferGain and trainer notices ----------------------------------------------------------------------


def _succeeded(message: dict[str, Any], tj: dict[str, Any] | None = None) -> Any:
    return _status(
        tj or transferjob(), [job(1, outcome="Succeeded")], [pod(exit_code=0, term_message=message)]
    )


def test_a_no_transfer_gain_notice_makes_transfer_gain_false_with_its_message() -> None:
    message = {
        "state": "succeeded",
        "metrics": {"test_accuracy": 0.4, "baseline_accuracy": 0.5, "transfer_gain": -0.1},
        "notices": [{"reason": "NoTransferGain", "message": "0.40 is below the raw-pixel baseline 0.50."}],
    }
    gain = _condition(_succeeded(message).status, "TransferGain")
    assert (gain["status"], gain["reason"]) == ("False", "NoTransferGain")
    assert gain["message"] == "0.40 is below the raw-pixel baseline 0.50."


def test_baseline_metrics_without_the_notice_make_transfer_gain_true() -> None:
    message = {"state": "succeeded", "metrics": {"test_accuracy": 0.9, "baseline_accuracy": 0.5}}
    gain = _condition(_succeeded(message).status, "TransferGain")
    assert (gain["status"], gain["reason"]) == ("True", "TransferGain")
    assert "0.9" in gain["message"] and "0.5" in gain["message"]


def test_no_baseline_and_no_notice_leaves_transfer_gain_absent() -> None:
    status = _succeeded({"state": "succeeded", "metrics": {"test_accuracy": 0.9}}).status
    assert find(status["conditions"], "TransferGain") is None


def test_transfer_gain_is_only_set_on_success() -> None:
    progress = TrainingProgress.model_validate(
        {"state": "training", "notices": [{"reason": "NoTransferGain"}], "metrics": {"transfer_gain": 0.1}}
    )
    status = _status(transferjob(), [job(1)], [pod(running=True)], progress).status
    assert find(status["conditions"], "TransferGain") is None


def test_a_verdict_is_kept_once_the_pods_that_said_it_are_gone() -> None:
    first = _succeeded(
        {"state": "succeeded", "metrics": {"test_accuracy": 0.4}, "notices": [{"reason": "NoTransferGain"}]}
    )
    later = _status(transferjob(status=first.status), [job(1, outcome="Succeeded")], [], now=LATER)
    gain = _condition(later.status, "TransferGain")
    assert (gain["status"], gain["reason"]) == ("False", "NoTransferGain")


def test_notices_are_warnings_only_for_the_warning_reasons() -> None:
    from kubegraft.runtime import Notice
    from kubegraft_operator.planning import notice_event

    assert notice_event(Notice(reason="NoTransferGain", message="m"))[0] == "Warning"
    assert notice_event(Notice(reason="FineTuneRegressed", message="m"))[0] == "Warning"
    assert notice_event(Notice(reason="BatchNormReestimated", message="m"))[0] == "Normal"
    assert notice_event(Notice(reason="RecipeChosen", message="m")) == ("Normal", "RecipeChosen", "m")


def test_the_emitted_notice_count_belongs_to_its_run() -> None:
    from kubegraft_operator.planning import ANNOTATION_NOTICES, notices_emitted

    tj = transferjob(annotations={ANNOTATION_NOTICES: "1/3"})
    assert (notices_emitted(tj, 1), notices_emitted(tj, 2), notices_emitted(transferjob(), 1)) == (3, 0, 0)


# ---- Published: the publish gate -------------------------------------------------------------------------

_KEPT_BACK = {
    "state": "succeeded",
    "metrics": {"test_accuracy": 0.7, "published_test_accuracy": 0.8},
    "notices": [
        {
            "reason": "NotBetter",
            "message": "No version published: the new model does not beat version 1 (publishPolicy ifBetter)",
        }
    ],
}


def test_a_run_that_published_has_published_true_naming_its_version() -> None:
    status = _succeeded({"state": "succeeded", "modelUri": "s3://m/cars/2/"}).status
    published = _condition(status, "Published")
    assert (published["status"], published["reason"]) == ("True", "Published")
    assert "s3://m/cars/2/" in published["message"]


def test_a_run_the_gate_kept_back_succeeds_with_published_false_and_the_reason() -> None:
    result = _succeeded(_KEPT_BACK)
    status = result.status
    assert status["phase"] == "Succeeded" and "modelUri" not in status
    assert _condition(status, "Succeeded")["status"] == "True"  # kubectl wait --for=condition=Succeeded
    published = _condition(status, "Published")
    assert (published["status"], published["reason"]) == ("False", "NotBetter")
    assert "does not beat version 1" in published["message"]
    assert "No version published" in _condition(status, "Succeeded")["message"]
    assert [e.reason for e in result.events] == ["Succeeded"]
    assert "No version published" in result.events[0].message


def test_the_gate_verdict_and_message_are_kept_once_the_pods_are_gone() -> None:
    first = _succeeded(_KEPT_BACK)
    later = _status(transferjob(status=first.status), [job(1, outcome="Succeeded")], [], now=LATER)
    published = _condition(later.status, "Published")
    assert (published["status"], published["reason"]) == ("False", "NotBetter")
    assert (
        _condition(later.status, "Succeeded")["message"] == _condition(first.status, "Succeeded")["message"]
    )
    assert status_patch(first.status, later.status) == {}


def test_published_is_only_set_on_success() -> None:
    progress = TrainingProgress.model_validate({"state": "training", "notices": _KEPT_BACK["notices"]})
    status = _status(transferjob(), [job(1)], [pod(running=True)], progress).status
    assert find(status["conditions"], "Published") is None


def test_below_minimum_is_a_warning_and_not_better_is_normal() -> None:
    from kubegraft.runtime import Notice
    from kubegraft_operator.planning import notice_event

    assert notice_event(Notice(reason="BelowMinimum", message="m"))[0] == "Warning"
    assert notice_event(Notice(reason="NotBetter", message="m"))[0] == "Normal"
