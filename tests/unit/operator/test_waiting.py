"""A run that waits explains itself: Kueue's suspension is never lifted, Queued and FailedCreate say why."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kubegraft_operator.conditions import find
from kubegraft_operator.config import OperatorConfig
from kubegraft_operator.observation import (
    WorkloadView,
    failed_create_message,
    job_workload,
    observe_job,
)
from kubegraft_operator.planning import Explanation, derive_status, plan_run
from kubegraft_operator.progress_client import ProgressClient
from kubegraft_operator.reconcile import Reconciler
from kubegraft_operator.rendering import render_job
from tests.unit.operator.factories import job, pod, transferjob, with_spec
from tests.unit.operator.test_reconcile import RecordingKube

NOW = "2026-01-01T00:05:00Z"
LATER = "2026-01-01T00:06:00Z"
QUOTA = (
    'Error creating: pods "flowers-1-x7k2p" is forbidden: exceeded quota: gpu-quota, requested: '
    "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4"
)


def _workload(conditions: list[dict[str, str]], job_uid: str = "job-uid-flowers-1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": "job-flowers-1-3b2f1",
            "labels": {"kueue.x-k8s.io/job-uid": job_uid},
            "ownerReferences": [{"kind": "Job", "name": "flowers-1", "uid": job_uid}],
        },
        "spec": {"queueName": "default"},
        "status": {"conditions": conditions},
    }


PENDING_QUOTA = {
    "type": "QuotaReserved",
    "status": "False",
    "reason": "Pending",
    "message": "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in "
    "flavor gpu, 1 more needed",
}


def _ready(status: Mapping[str, Any]) -> Mapping[str, Any]:
    ready = find(status["conditions"], "Ready")
    assert ready is not None
    return ready


def test_a_job_kueue_suspended_without_a_queue_name_is_never_unsuspended() -> None:
    held = job(1, suspend=True, suspended_by_operator=False)
    plan = plan_run(transferjob(), [held], desired_suspend=False)
    assert plan.suspend is None
    assert not plan.create


def test_a_job_the_operator_suspended_is_unsuspended_when_runpolicy_suspend_is_cleared() -> None:
    plan = plan_run(transferjob(), [job(1, suspend=True, suspended_by_operator=True)], desired_suspend=False)
    assert plan.suspend is False


def test_rendering_and_observing_mark_only_the_operators_own_suspension() -> None:
    tj = transferjob(with_spec(runPolicy={"suspend": True}))
    assert observe_job(render_job(tj, 1, 1, OperatorConfig())).suspended_by_operator
    queued = transferjob(with_spec(scheduling={"queueName": "q"}))
    assert not observe_job(render_job(queued, 1, 1, OperatorConfig())).suspended_by_operator


def test_a_kueue_held_job_without_queue_name_is_queued_with_the_workloads_reason() -> None:
    tj = transferjob()
    held = job(1, suspend=True, suspended_by_operator=False)
    plan = plan_run(tj, [held], desired_suspend=False)
    workload = job_workload([_workload([PENDING_QUOTA])], held.uid)
    result = derive_status(tj, plan, [], None, NOW, explanation=Explanation(workload=workload))
    ready = _ready(result.status)
    assert (result.status["phase"], ready["reason"]) == ("Pending", "Queued")
    assert "from queue default" in ready["message"]
    assert "insufficient unused quota for nvidia.com/gpu" in ready["message"]


def test_without_a_readable_workload_queued_still_says_who_holds_the_job() -> None:
    tj = transferjob()
    plan = plan_run(tj, [job(1, suspend=True, suspended_by_operator=False)], desired_suspend=False)
    ready = _ready(derive_status(tj, plan, [], None, NOW, explanation=Explanation()).status)
    assert ready["reason"] == "Queued"
    assert "manageJobsWithoutQueueName" in ready["message"]


def test_workload_admission_stages_read_as_one_clause() -> None:
    spec = with_spec(scheduling={"queueName": "team-a"})
    tj = transferjob(spec)
    held = job(1, spec=spec, suspend=True, suspended_by_operator=False)
    plan = plan_run(tj, [held], desired_suspend=None)
    cases = {
        "quota reserved, waiting for admission checks: check provreq pending": [
            {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "ok"},
            {"type": "Admitted", "status": "False", "reason": "Pending", "message": "check provreq pending"},
        ],
        "admitted; the Job starts shortly": [{"type": "Admitted", "status": "True", "reason": "Admitted"}],
        "evicted (Preempted): preempted by a higher priority workload": [
            {
                "type": "Evicted",
                "status": "True",
                "reason": "Preempted",
                "message": "preempted by a higher priority workload",
            }
        ],
    }
    for clause, conditions in cases.items():
        workload = job_workload([_workload(conditions)], held.uid)
        message = _ready(derive_status(tj, plan, [], None, NOW, explanation=Explanation(workload)).status)[
            "message"
        ]
        assert message.endswith(f"(Workload job-flowers-1-3b2f1: {clause}).")
        assert "from queue team-a" in message


def test_workloads_and_events_of_other_jobs_are_ignored() -> None:
    assert job_workload([_workload([PENDING_QUOTA], job_uid="other")], "mine") is None
    assert isinstance(job_workload([_workload([])], "job-uid-flowers-1"), WorkloadView)
    event = {"reason": "FailedCreate", "message": QUOTA, "involvedObject": {"uid": "other"}}
    assert failed_create_message([event], "mine") is None


def _event(reason: str, message: str, at: str) -> dict[str, Any]:
    return {"reason": reason, "message": message, "lastTimestamp": at, "involvedObject": {"uid": "u"}}


def test_the_newest_failed_create_event_is_the_message() -> None:
    events = [
        _event("FailedCreate", "old", "2026-01-01T00:01:00Z"),
        _event("FailedCreate", QUOTA, "2026-01-01T00:03:00Z"),
        _event("SuccessfulCreate", "x", "2026-01-01T00:04:00Z"),
    ]
    assert failed_create_message(events, "u") == QUOTA


def test_a_quota_refused_pod_shows_as_pending_failed_create_and_stalled() -> None:
    tj = transferjob()
    plan = plan_run(tj, [job(1, active=0)], desired_suspend=False)
    result = derive_status(tj, plan, [], None, NOW, explanation=Explanation(failed_create=QUOTA))
    conditions = {c["type"]: c for c in result.status["conditions"]}
    assert result.status["phase"] == "Pending"
    assert conditions["Ready"]["reason"] == "FailedCreate"
    assert "exceeded quota: gpu-quota" in conditions["Ready"]["message"]
    assert conditions["Stalled"]["status"] == "True"
    assert conditions["Reconciling"]["status"] == "False"
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "FailedCreate")]


def test_a_stalled_run_that_moves_on_is_reconciling_again_and_no_longer_stalled() -> None:
    tj = transferjob()
    plan = plan_run(tj, [job(1, active=0)], desired_suspend=False)
    stuck = derive_status(tj, plan, [], None, NOW, explanation=Explanation(failed_create=QUOTA)).status
    again = transferjob(status=stuck)
    started = derive_status(again, plan_run(again, [job(1)], False), [pod()], None, LATER).status
    conditions = {c["type"]: c for c in started["conditions"]}
    assert (conditions["Reconciling"]["status"], conditions["Stalled"]["status"]) == ("True", "False")
    assert conditions["Reconciling"]["lastTransitionTime"] == LATER


def test_the_explanation_is_kept_by_other_reconciles_until_a_pod_appears() -> None:
    tj = transferjob()
    plan = plan_run(tj, [job(1, active=0)], desired_suspend=False)
    first = derive_status(tj, plan, [], None, NOW, explanation=Explanation(failed_create=QUOTA)).status
    again = transferjob(status=first)
    kept = derive_status(again, plan_run(again, [job(1, active=0)], False), [], None, NOW)
    assert _ready(kept.status)["reason"] == "FailedCreate"
    assert kept.events == ()
    started = derive_status(again, plan_run(again, [job(1)], False), [pod()], None, NOW)
    assert _ready(started.status)["reason"] == "Starting"


def _explaining_run(kube: RecordingKube, jobs: list[Any], pods: list[Any]) -> None:
    reconciler = Reconciler(config=OperatorConfig(), kube=kube, progress=ProgressClient())
    asyncio.run(reconciler.reconcile(transferjob(), jobs, pods, explain=True))


class ListingKube(RecordingKube):
    """RecordingKube whose lists answer `answers[path prefix]` (None: forbidden)."""

    def __init__(self, answers: Mapping[str, list[dict[str, Any]] | None]) -> None:
        super().__init__()
        self.answers = answers
        self.listed: list[str] = []

    async def list_optional(self, path: str, what: str) -> list[dict[str, Any]] | None:
        self.listed.append(path)
        return next((v for k, v in self.answers.items() if path.startswith(k)), None)


def _status_written(kube: RecordingKube) -> dict[str, Any]:
    status: dict[str, Any] = next(c[2] for c in kube.calls if c[1].endswith("/status"))["status"]
    return status


def test_the_pending_timer_reads_the_jobs_events_and_reports_failed_create() -> None:
    uid = "job-uid-flowers-1"
    event = {"reason": "FailedCreate", "message": QUOTA, "involvedObject": {"uid": uid}}
    kube = ListingKube({"/api/v1/namespaces/ml/events": [event]})
    _explaining_run(kube, [job(1, active=0)], [])
    assert kube.listed == [f"/api/v1/namespaces/ml/events?fieldSelector=involvedObject.uid%3D{uid}"]
    assert _ready(_status_written(kube))["reason"] == "FailedCreate"
    assert ("Warning", "FailedCreate") in kube.events


def test_the_pending_timer_reads_the_workload_and_a_forbidden_read_still_reports_queued() -> None:
    held = job(1, suspend=True, suspended_by_operator=False)
    kube = ListingKube({"/apis/kueue.x-k8s.io/": [_workload([PENDING_QUOTA])]})
    _explaining_run(kube, [held], [])
    assert kube.listed[0].startswith("/apis/kueue.x-k8s.io/v1beta1/namespaces/ml/workloads?labelSelector=")
    assert "insufficient unused quota" in _ready(_status_written(kube))["message"]
    assert not [c for c in kube.calls if c[0] == "patch" and "/jobs/" in c[1]]  # Kueue's to unsuspend
    forbidden = ListingKube({})
    _explaining_run(forbidden, [held], [])
    assert _ready(_status_written(forbidden))["reason"] == "Queued"


def test_reconciles_other_than_the_pending_timer_read_nothing_extra() -> None:
    kube = ListingKube({})
    reconciler = Reconciler(config=OperatorConfig(), kube=kube, progress=ProgressClient())
    asyncio.run(reconciler.reconcile(transferjob(), [job(1, active=0)], []))
    assert kube.listed == []
