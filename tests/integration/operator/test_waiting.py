"""Why a run waits, against the emulator: a ResourceQuota's FailedCreate, and a Job Kueue holds suspended.

Its own operator (a short KUBEGRAFT_PENDING_INTERVAL) on a fresh cluster: the test kubelet's Job controller
records FailedCreate when the emulator's ResourceQuota admission refuses the pod, and the test plays Kueue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.cluster import Cluster
from tests.integration.operator.conftest import (
    OperatorEnv,
    free_port,
    operator_process_env,
    stand_in_spec,
)

KUEUE = "kueue.x-k8s.io/v1beta1"


@pytest.fixture
def waiting_op(cluster: Cluster) -> Iterator[OperatorEnv]:
    env = OperatorEnv(cluster, None, free_port(), free_port())  # type: ignore[arg-type]
    process_env = {**operator_process_env(env.metrics_port), "KUBEGRAFT_PENDING_INTERVAL": "0.5"}
    env.operator = cluster.start_operator(
        "--standalone",
        "--all-namespaces",
        f"--liveness=http://127.0.0.1:{env.liveness_port}/healthz",
        "-m",
        "kubegraft_operator.main",
        env=process_env,
    )
    cluster.wait_for(lambda: env.http(f"http://127.0.0.1:{env.metrics_port}/readyz"), timeout=60)
    yield env


def _ready(op: OperatorEnv, name: str) -> dict[str, Any]:
    return op.condition(name, "Ready")


def test_a_resource_quota_that_refuses_the_pod_shows_as_failed_create_until_it_is_lifted(
    waiting_op: OperatorEnv,
) -> None:
    op = waiting_op
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "gpu-quota"},
        "spec": {"hard": {"requests.nvidia.com/gpu": "0"}},
    }
    op.cluster.apply(quota)
    op.apply("quota", stand_in_spec(resources={"gpus": 1, "cpu": "1", "memory": "1Gi"}))

    def failed_create(status: dict[str, Any]) -> bool:
        return any(c["reason"] == "FailedCreate" for c in status.get("conditions", []))

    status = op.wait_status("quota", failed_create, 30, "FailedCreate")
    ready = _ready(op, "quota")
    assert status["phase"] == "Pending"
    assert "exceeded quota: gpu-quota" in ready["message"]
    assert "requests.nvidia.com/gpu=1" in ready["message"]
    assert op.condition("quota", "Stalled")["status"] == "True"
    op.cluster.wait_for(lambda: "FailedCreate" in op.event_reasons("quota"), timeout=10)
    # The quota is raised: the Job controller creates the pod and the explanation goes.
    op.cluster.patch(
        "v1", "resourcequotas", "gpu-quota", {"spec": {"hard": {"requests.nvidia.com/gpu": "1"}}}
    )
    op.wait_status("quota", lambda s: s.get("phase") in ("Running", "Succeeded"), 30, "running")
    assert op.event_reasons("quota").count("FailedCreate") == 1


def test_a_job_kueue_suspended_without_a_queue_name_stays_suspended_and_queued_quotes_the_workload(
    waiting_op: OperatorEnv,
) -> None:
    op = waiting_op
    op.apply("held", stand_in_spec())
    job = op.cluster.wait_for(lambda: op.cluster.get("batch/v1", "jobs", "held-1"), timeout=30)
    # Kueue with manageJobsWithoutQueueName: it suspends the Job and makes a Workload owned by it.
    op.cluster.patch("batch/v1", "jobs", "held-1", {"spec": {"suspend": True}})
    uid = job["metadata"]["uid"]
    workload = {
        "apiVersion": KUEUE,
        "kind": "Workload",
        "metadata": {
            "name": "job-held-1-3b2f1",
            "labels": {"kueue.x-k8s.io/job-uid": uid},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "held-1", "uid": uid}],
        },
        "spec": {"queueName": "default"},
    }
    op.cluster.apply(workload)
    message = (
        "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor "
        "gpu, 1 more needed"
    )
    conditions = [
        {
            "type": "QuotaReserved",
            "status": "False",
            "reason": "Pending",
            "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ]
    op.cluster.patch(
        KUEUE,
        "workloads",
        workload["metadata"]["name"],
        {"status": {"conditions": conditions}},
        subresource="status",
    )

    def quoted(status: dict[str, Any]) -> bool:
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        return ready.get("reason") == "Queued" and message in ready.get("message", "")

    op.wait_status("held", quoted, 30, "Queued with the Workload's message")
    assert "from queue default" in _ready(op, "held")["message"]
    time.sleep(2)  # several pending-timer rounds (0.5 s) later the Job is still Kueue's to unsuspend
    assert op.cluster.get("batch/v1", "jobs", "held-1")["spec"]["suspend"] is True
    # Kueue admits it: unsuspends the Job; the run goes on.
    op.cluster.patch("batch/v1", "jobs", "held-1", {"spec": {"suspend": False}})
    op.wait_status("held", lambda s: s.get("phase") in ("Running", "Succeeded"), 30, "running")
    assert op.transferjob("held")["metadata"]["annotations"].get("kubegraft.io/run") == "1"
    assert len(op.jobs("held")) == 1
