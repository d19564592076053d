"""Several workers (spec.workers > 1): one Indexed Job behind a headless Service, worker 0 reports."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from kubegraft import runtime
from kubegraft.status import TransferJobStatus
from kubegraft_operator.config import OperatorConfig
from kubegraft_operator.observation import PodView, observe_job, observe_pod
from kubegraft_operator.planning import derive_status, plan_run
from kubegraft_operator.reconcile import Reconciler
from kubegraft_operator.rendering import job_created_event_name, render_job, render_service
from tests.unit.operator.factories import job, pod, transferjob, with_spec
from tests.unit.operator.test_reconcile import RecordingKube, _reconciler

CONFIG = OperatorConfig(trainer_image="registry.example/trainer:1")
TWO = with_spec(workers=2, stages=[{"name": "head"}], resources={"gpus": 2, "cpu": "4", "memory": "16Gi"})


def _worker(index: int, **kwargs: Any) -> PodView:
    return replace(pod(index=index, **kwargs), index=index)


def _env(body: dict[str, Any]) -> dict[str, str]:
    container = body["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_two_workers_render_one_indexed_job_of_two_pods_with_the_same_spec() -> None:
    body = render_job(transferjob(TWO), 3, 1, CONFIG)
    spec = body["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 3  # one restart of the pod set counts the one worker that failed
    pod_spec = spec["template"]["spec"]
    assert pod_spec["subdomain"] == "flowers-3"
    container = pod_spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"  # per worker pod
    assert {"name": "worker", "containerPort": runtime.WORKER_PORT, "protocol": "TCP"} in container["ports"]
    env = _env(body)
    assert env[runtime.ENV_WORKERS] == "2"
    assert env[runtime.ENV_JOB_NAME] == "flowers-3"
    assert env[runtime.ENV_WORKER_SERVICE] == "flowers-3"
    assert env[runtime.ENV_WORKER_PORT] == str(runtime.WORKER_PORT)
    assert runtime.ENV_COMPLETION_INDEX not in env  # the Job controller sets it per pod


def test_one_worker_renders_the_plain_job_without_service_or_worker_settings() -> None:
    body = render_job(transferjob(), 1, 1, CONFIG)
    assert "completionMode" not in body["spec"]
    spec = body["spec"]
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (1, 1, 3)
    assert "subdomain" not in body["spec"]["template"]["spec"]
    assert runtime.ENV_WORKERS not in _env(body)


def test_a_worker_stopped_by_a_lost_peer_uses_no_retry_but_invalid_data_still_fails_the_job() -> None:
    rules = render_job(transferjob(TWO), 1, 1, CONFIG)["spec"]["podFailurePolicy"]["rules"]
    by_code = {r["onExitCodes"]["values"][0]: r["action"] for r in rules if "onExitCodes" in r}
    assert by_code == {runtime.ExitCode.INVALID: "FailJob", runtime.ExitCode.WORKER_LOST: "Ignore"}
    assert all(r["onExitCodes"]["containerName"] == "trainer" for r in rules if "onExitCodes" in r)
    assert rules[0]["action"] == "FailJob"  # the first matching rule wins: a bad spec is never retried
    single = render_job(transferjob(), 1, 1, CONFIG)["spec"]["podFailurePolicy"]["rules"]
    assert [r["onExitCodes"]["values"] for r in single if "onExitCodes" in r] == [[runtime.ExitCode.INVALID]]


def test_a_queued_multi_worker_job_is_what_kueue_admits_as_one_pod_set_of_all_workers() -> None:
    """Kueue's batch/Job integration: one Workload per Job, one pod set `main` of `parallelism` pods.

    It needs the queue label on the Job, the Job created suspended, parallelism equal to completions (the
    pod set's count is parallelism) and no partial-admission annotation (`job-min-parallelism`), so Kueue
    admits all workers or none: MultiWorkerMirroredStrategy cannot start with part of them.
    """
    queued = with_spec(**{**TWO, "scheduling": {"queueName": "gpus"}})
    body = render_job(transferjob(queued), 1, 1, CONFIG)
    spec = body["spec"]
    assert body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    assert spec["suspend"] is True
    assert spec["parallelism"] == spec["completions"] == 2
    assert not any(k.startswith("kueue.x-k8s.io/") for k in body["metadata"].get("annotations", {}))
    assert spec["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "2"


def test_the_worker_service_is_headless_owned_and_selects_exactly_the_runs_pods() -> None:
    service = render_service(transferjob(TWO), 3)
    assert service["metadata"]["name"] == "flowers-3"
    spec = service["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert spec["selector"] == {"kubegraft.io/transferjob": "flowers", "kubegraft.io/run": "3"}
    assert spec["ports"][0]["port"] == runtime.WORKER_PORT
    job_labels = render_job(transferjob(TWO), 3, 1, CONFIG)["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= job_labels.items()
    (ref,) = service["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["controller"]) == ("TransferJob", True)


def test_first_reconcile_creates_the_service_before_the_job_whose_pods_need_it() -> None:
    kube = RecordingKube()
    asyncio.run(_reconciler(kube).reconcile(transferjob(TWO), [], []))
    created = [(c[2]["kind"], c[1]) for c in kube.calls if c[0] == "create"]
    assert created == [("ConfigMap", "flowers-1-spec"), ("Service", "flowers-1"), ("Job", "flowers-1")]


def test_a_crashed_reconcile_recreates_nothing_twice_the_service_answers_409() -> None:
    kube = RecordingKube(existing={"flowers-1-spec", "flowers-1", job_created_event_name(transferjob(), 1)})
    asyncio.run(_reconciler(kube).reconcile(transferjob(TWO), [], []))
    assert kube.events == []  # the Job and its JobCreated already existed: no second JobCreated


def test_stopping_an_older_multi_worker_run_deletes_its_service_too() -> None:
    kube = RecordingKube()
    old = observe_job(render_job(transferjob(TWO), 1, 1, CONFIG))
    changed = transferjob({**TWO, "stages": [{"name": "other"}]}, generation=2)
    asyncio.run(_reconciler(kube).reconcile(changed, [old], []))
    deleted = [c[1] for c in kube.calls if c[0] == "delete"]
    assert deleted == ["flowers-1", "flowers-1-spec", "flowers-1"]  # Job, ConfigMap, Service


def test_pods_of_an_indexed_job_observe_with_their_worker_index() -> None:
    body = {
        "metadata": {
            "name": "flowers-1-1-abcde",
            "labels": {"kubegraft.io/transferjob": "flowers", "kubegraft.io/run": "1"},
            "annotations": {runtime.ANNOTATION_COMPLETION_INDEX: "1"},
        }
    }
    view = observe_pod(body)
    assert (view.index, view.chief) == (1, False)
    assert observe_pod({"metadata": {"name": "x"}}).chief


def test_status_counts_running_workers_of_the_total_and_validates() -> None:
    tj = transferjob(TWO)
    plan = plan_run(tj, [job(1, spec=TWO)], False)
    pods = [_worker(0, running=True), _worker(1)]
    result = derive_status(tj, plan, pods, None, "2026-01-01T00:01:00Z")
    assert result.status["workers"] == {"ready": 1, "total": 2}
    assert result.summary.phase == "Running"
    TransferJobStatus.model_validate(result.status)
    one = transferjob()
    single = derive_status(one, plan_run(one, [job(1)], False), [pod(running=True)], None, "x")
    assert "workers" not in single.status


def test_a_pending_worker_1_does_not_hide_that_worker_0_runs() -> None:
    tj = transferjob(TWO)
    plan = plan_run(tj, [job(1, spec=TWO)], False)
    pods = [_worker(0, running=True), _worker(1, waiting="ContainerCreating")]
    assert derive_status(tj, plan, pods, None, "now").summary.phase == "Running"


def test_an_unschedulable_worker_stalls_the_run_even_when_the_chief_was_placed() -> None:
    tj = transferjob(TWO)
    plan = plan_run(tj, [job(1, spec=TWO)], False)
    pods = [_worker(0, waiting="ContainerCreating"), _worker(1, unschedulable="0/1 nodes are available")]
    summary = derive_status(tj, plan, pods, None, "now").summary
    assert (summary.phase, summary.reason, summary.stalled) == ("Pending", "Unschedulable", True)


def test_a_failed_worker_is_named_in_its_warning_event() -> None:
    tj = transferjob(TWO)
    plan = plan_run(tj, [job(1, spec=TWO, failed=1)], False)
    pods = [_worker(0, running=True), _worker(1, exit_code=137, term_reason="Error")]
    events = derive_status(tj, plan, pods, None, "now").events
    (failure,) = [e for e in events if e.type == "Warning"]
    assert failure.message.startswith("Worker 1 (pod flowers-1-pod1) of run 1 failed: ")
    assert "137" in failure.message


def test_progress_is_read_from_worker_0_only() -> None:
    class Progress:
        def __init__(self) -> None:
            self.asked: list[str] = []

        async def fetch(self, pod_ip: str) -> None:
            self.asked.append(pod_ip)

    kube = RecordingKube()
    progress = Progress()
    reconciler = Reconciler(config=OperatorConfig(), kube=kube, progress=progress)  # type: ignore[arg-type]
    pods = [_worker(1, running=True, ip="10.0.0.2"), _worker(0, running=True, ip="10.0.0.1")]
    asyncio.run(reconciler.reconcile(transferjob(TWO), [job(1, spec=TWO)], pods, poll=True))
    assert progress.asked == ["10.0.0.1"]


def test_the_retry_note_names_the_worker_that_failed_not_the_one_it_took_down() -> None:
    tj = transferjob(TWO)
    plan = plan_run(tj, [job(1, spec=TWO, failed=1)], False)
    lost = {"state": "failed", "reason": "WorkerLost", "message": "worker 0 of 2 lost worker 1"}
    crashed = _worker(1, exit_code=137, term_reason="Error")
    chief = _worker(0, exit_code=int(runtime.ExitCode.WORKER_LOST), term_reason="Error", term_message=lost)
    assert chief.terminated is not None and crashed.terminated is not None
    # The chief stopped after the crash (seconds later, when its collectives aborted).
    chief = replace(chief, terminated=replace(chief.terminated, finished_at="2026-01-01T00:05:00Z"))
    replacement = replace(
        _worker(1, running=True), name="flowers-1-pod1-again", created="2026-01-01T00:06:00Z"
    )
    result = derive_status(tj, plan, [crashed, chief, replacement], None, "2026-01-01T00:07:00Z")
    assert "last: AttemptFailed: the trainer exited with code 137" in result.summary.message
    reasons = sorted(e.reason for e in result.events if e.type == "Warning")
    assert reasons == ["AttemptFailed", "WorkerLost"]  # each failed worker has its Event
