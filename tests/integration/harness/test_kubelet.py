"""The test kubelet runs Jobs' pods as local processes and reports them as the Job controller would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import Cluster
from tests.harness.kubelet import OOM_ANNOTATION

INDEX = "batch.kubernetes.io/job-completion-index"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster (1 GPU) for this module, replacing the per-test `cluster` fixture: each test uses its own
    Job names, and starting a cluster per test costs seconds on shared CPUs."""
    venv_bin = str(Path(sys.executable).parent)
    pod_env = {"PATH": os.pathsep.join((venv_bin, os.environ.get("PATH", "")))}
    with Cluster(tmp_path_factory.mktemp("kubelet"), pod_env=pod_env) as running:
        yield running


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A Job whose single container runs `python -c script` (the pod's PATH has this interpreter's bin/)."""
    container: dict[str, Any] = {
        "name": "trainer",
        "image": "kubegraft/trainer:test",
        "command": ["python", "-c", script],
    }
    container.update(spec.pop("container", {}))
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    pod_spec.update(spec.pop("pod", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}, **spec},
    }


def job_condition(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The Job's terminal condition (Complete or Failed), once there is one."""
    obj = cluster.get("batch/v1", "jobs", name) or {}
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return dict(cond)
    return None


def pods_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    """The Job's pods, oldest first."""
    pods = cluster.list("v1", "pods", label_selector=f"job-name={name}")
    return sorted(pods, key=lambda p: int(p["metadata"]["resourceVersion"]))


def test_job_pod_runs_to_success_with_termination_message_and_secret_env(cluster: Cluster) -> None:
    cluster.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "stringData": {"key": "AKIA1"}}
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "spec"},
            "data": {"transferjob.yaml": "a: 1\n"},
        }
    )
    script = (
        "import os, pathlib;"
        "spec = pathlib.Path(os.environ['KUBEGRAFT_SPEC']).read_text();"
        "print('key', os.environ['AWS_ACCESS_KEY_ID'], 'pod', os.environ['POD_NAME'], os.environ['POD_IP']);"
        "log = pathlib.Path(os.environ['KUBEGRAFT_TERMINATION_LOG']);"
        'log.write_text(\'{"state": "succeeded"} \' + spec)'
    )
    cluster.apply(
        job(
            "ok",
            script,
            container={
                "env": [
                    {"name": "KUBEGRAFT_SPEC", "value": "/etc/kubegraft/transferjob.yaml"},
                    {
                        "name": "AWS_ACCESS_KEY_ID",
                        "valueFrom": {"secretKeyRef": {"name": "s3", "key": "key"}},
                    },
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                ],
                "volumeMounts": [{"name": "spec", "mountPath": "/etc/kubegraft", "readOnly": True}],
            },
            pod={"volumes": [{"name": "spec", "configMap": {"name": "spec"}}]},
        )
    )
    cond = cluster.wait_for(lambda: job_condition(cluster, "ok"), timeout=20)
    assert cond["reason"] == "CompletionsReached"
    status = cluster.get("batch/v1", "jobs", "ok")["status"]  # type: ignore[index]
    assert (status["succeeded"], status["failed"], status["active"]) == (1, 0, 0)
    assert status["startTime"] and status["completionTime"]
    (pod,) = pods_of(cluster, "ok")
    assert pod["status"]["phase"] == "Succeeded"
    assert (
        pod["metadata"]["labels"]["controller-uid"]
        == cluster.get("batch/v1", "jobs", "ok")["metadata"]["uid"]
    )  # type: ignore[index]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert terminated["message"] == '{"state": "succeeded"} a: 1\n'
    pod_ip = pod["status"]["podIP"]
    assert pod_ip.startswith("127.") and pod_ip != "127.0.0.1"
    log = cluster.kubelet.log_path(pod["metadata"]["name"]).read_text()
    assert f"key AKIA1 pod {pod['metadata']['name']} {pod_ip}" in log
    if shutil.which(Cluster.kubectl_path()):
        assert cluster.kubectl("logs", "job/ok").stdout == log  # pods/log serves the kubelet's file


def test_fail_job_exit_code_fails_the_job_without_retries(cluster: Cluster) -> None:
    policy = {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [78]},
            }
        ]
    }
    cluster.apply(job("invalid", "raise SystemExit(78)", backoffLimit=3, podFailurePolicy=policy))
    cond = cluster.wait_for(lambda: job_condition(cluster, "invalid"), timeout=20)
    assert cond["type"] == "Failed"
    assert cond["reason"] == "PodFailurePolicy"
    assert "failed with exit code 78 matching FailJob rule at index 0" in cond["message"]
    assert len(pods_of(cluster, "invalid")) == 1
    assert cluster.get("batch/v1", "jobs", "invalid")["status"]["failed"] == 1  # type: ignore[index]


def test_retryable_failures_retry_until_backoff_limit(cluster: Cluster) -> None:
    cluster.apply(job("flaky", "raise SystemExit(1)", backoffLimit=2))
    cond = cluster.wait_for(lambda: job_condition(cluster, "flaky"), timeout=30)
    assert (cond["type"], cond["reason"]) == ("Failed", "BackoffLimitExceeded")
    pods = pods_of(cluster, "flaky")
    assert len(pods) == 3
    assert {p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods} == {1}
    assert cluster.get("batch/v1", "jobs", "flaky")["status"]["failed"] == 3  # type: ignore[index]


def test_pod_asking_for_more_gpus_than_the_node_has_is_unschedulable(cluster: Cluster) -> None:
    cluster.apply(job("big", "pass", container={"resources": {"limits": {"nvidia.com/gpu": 4}}}))

    def unschedulable() -> dict[str, Any] | None:
        for pod in pods_of(cluster, "big"):
            for cond in pod.get("status", {}).get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["status"] == "False":
                    return dict(cond)
        return None

    cond = cluster.wait_for(unschedulable, timeout=10)
    assert cond["reason"] == "Unschedulable"
    assert cond["message"].startswith("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    assert pods_of(cluster, "big")[0]["status"]["phase"] == "Pending"


def test_suspend_deletes_running_pods_and_resume_starts_a_new_one(cluster: Cluster) -> None:
    # The node's only GPU: the resumed pod can run only if the deleted one gave it back.
    gpu = {"resources": {"limits": {"nvidia.com/gpu": 1}}}
    cluster.apply(job("pausable", "import time; time.sleep(60)", container=gpu))
    first = cluster.wait_for(
        lambda: [p for p in pods_of(cluster, "pausable") if p.get("status", {}).get("phase") == "Running"],
        timeout=10,
    )[0]
    cluster.patch("batch/v1", "jobs", "pausable", {"spec": {"suspend": True}})
    cluster.wait_for(lambda: not pods_of(cluster, "pausable"), timeout=10, message="pods deleted on suspend")
    process = cluster.kubelet.runtime(first["metadata"]["name"]).process
    assert process is not None
    cluster.wait_for(lambda: process.returncode is not None, timeout=10, message="process killed")
    suspended = cluster.get("batch/v1", "jobs", "pausable")["status"]  # type: ignore[index]
    assert {"type": "Suspended", "status": "True"}.items() <= suspended["conditions"][0].items()
    assert suspended["active"] == 0
    assert suspended["failed"] == 0  # pods deleted for suspension are not failures
    cluster.patch("batch/v1", "jobs", "pausable", {"spec": {"suspend": False}})
    second = cluster.wait_for(
        lambda: [p for p in pods_of(cluster, "pausable") if p.get("status", {}).get("phase") == "Running"],
        timeout=10,
    )[0]
    assert second["metadata"]["name"] != first["metadata"]["name"]
    cluster.delete("batch/v1", "jobs", "pausable")  # GC deletes the pod, the kubelet frees the GPU


def test_missing_secret_waits_in_create_container_config_error_until_it_exists(cluster: Cluster) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}]
    cluster.apply(job("needs-secret", "import os; print(os.environ['TOKEN'])", container={"env": env}))

    def waiting() -> dict[str, Any] | None:
        for pod in pods_of(cluster, "needs-secret"):
            for status in pod.get("status", {}).get("containerStatuses", []):
                if (
                    "waiting" in status["state"]
                    and status["state"]["waiting"]["reason"] == "CreateContainerConfigError"
                ):
                    return dict(status["state"]["waiting"])
        return None

    assert cluster.wait_for(waiting, timeout=10)["message"] == 'secret "later" not found'
    cluster.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"}, "stringData": {"token": "t0k"}}
    )
    assert cluster.wait_for(lambda: job_condition(cluster, "needs-secret"), timeout=15)["type"] == "Complete"


def test_unpullable_image_backs_off(tmp_path: Path) -> None:
    with Cluster(tmp_path, pullable_images=lambda image: image.startswith("kubegraft/")) as cluster:
        cluster.apply(job("typo", "pass", container={"image": "kubegraft-typo/trainer:1"}))

        def reason() -> str:
            pods = pods_of(cluster, "typo")
            statuses = pods[0].get("status", {}).get("containerStatuses", []) if pods else []
            return str(statuses[0]["state"].get("waiting", {}).get("reason", "")) if statuses else ""

        cluster.wait_for(lambda: reason() == "ErrImagePull", timeout=10, interval=0.05)
        cluster.wait_for(lambda: reason() == "ImagePullBackOff", timeout=10)


def test_active_deadline_fails_the_job_with_deadline_exceeded(cluster: Cluster) -> None:
    cluster.apply(job("slow", "import time; time.sleep(60)", activeDeadlineSeconds=1))
    cond = cluster.wait_for(lambda: job_condition(cluster, "slow"), timeout=15)
    assert (cond["type"], cond["reason"]) == ("Failed", "DeadlineExceeded")
    cluster.wait_for(lambda: not pods_of(cluster, "slow"), timeout=10, message="active pods deleted")


def test_sigkilled_pod_is_retried_and_the_retry_can_succeed(cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "first-run"
    script = (
        f"import pathlib, time; m = pathlib.Path({str(marker)!r});"
        "first = not m.exists(); m.touch();"
        "time.sleep(60 if first else 0)"
    )
    cluster.apply(job("resume", script, backoffLimit=2))
    first = cluster.wait_for(lambda: marker.exists() and pods_of(cluster, "resume"), timeout=15)[0]
    assert cluster.kubelet.kill(first["metadata"]["name"], signal.SIGKILL)
    cond = cluster.wait_for(lambda: job_condition(cluster, "resume"), timeout=20)
    assert cond["type"] == "Complete"
    killed, retried = pods_of(cluster, "resume")
    assert killed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert retried["status"]["phase"] == "Succeeded"
    status = cluster.get("batch/v1", "jobs", "resume")["status"]  # type: ignore[index]
    assert (status["failed"], status["succeeded"]) == (1, 1)


def test_oom_annotation_kills_the_container_as_oom_killed(cluster: Cluster) -> None:
    spec = job("hungry", "import time; time.sleep(60)")
    spec["spec"]["template"]["metadata"] = {"annotations": {OOM_ANNOTATION: "0.5"}}
    cluster.apply(spec)
    cond = cluster.wait_for(lambda: job_condition(cluster, "hungry"), timeout=15)
    assert cond["reason"] == "BackoffLimitExceeded"
    terminated = pods_of(cluster, "hungry")[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)


def test_preempted_pod_matching_an_ignore_rule_is_not_counted(cluster: Cluster) -> None:
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    cluster.apply(job("preempted", "import time; time.sleep(60)", podFailurePolicy=policy))
    first = cluster.wait_for(
        lambda: [p for p in pods_of(cluster, "preempted") if p.get("status", {}).get("phase") == "Running"],
        timeout=10,
    )[0]
    cluster.kubelet.preempt(first["metadata"]["name"])
    cluster.wait_for(lambda: len(pods_of(cluster, "preempted")) == 2, timeout=10, message="a replacement pod")
    status = cluster.get("batch/v1", "jobs", "preempted")["status"]  # type: ignore[index]
    assert status["failed"] == 0
    assert job_condition(cluster, "preempted") is None
    cluster.delete("batch/v1", "jobs", "preempted")


def test_concurrent_pods_get_their_own_loopback_address(tmp_path: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)
    with Cluster(tmp_path, gpus=2, pod_env={"PATH": venv_bin}) as cluster:
        script = "import os, time; print(os.environ['KUBEGRAFT_PROGRESS_BIND']); time.sleep(60)"
        gpu = {"resources": {"limits": {"nvidia.com/gpu": 1}}}
        for name in ("one", "two"):
            cluster.apply(job(name, script, container=gpu))

        def running_ips() -> set[str]:
            pods = [p for n in ("one", "two") for p in pods_of(cluster, n)]
            return {
                p.get("status", {}).get("podIP")
                for p in pods
                if p.get("status", {}).get("phase") == "Running"
            }

        ips = cluster.wait_for(lambda: len(running_ips()) == 2 and running_ips(), timeout=15)
        assert all(ip.startswith("127.") and ip != "127.0.0.1" for ip in ips)
        cluster.apply(job("three", script, container=gpu))  # the node's two GPUs are taken
        cluster.wait_for(
            lambda: any(
                c.get("reason") == "Unschedulable"
                for p in pods_of(cluster, "three")
                for c in p.get("status", {}).get("conditions", [])
            ),
            timeout=10,
        )


def test_finished_job_is_deleted_after_its_ttl_with_its_pods(cluster: Cluster) -> None:
    cluster.apply(job("short-lived", "pass", ttlSecondsAfterFinished=1))
    cluster.wait_for(lambda: job_condition(cluster, "short-lived"), timeout=15)
    cluster.wait_for(lambda: cluster.get("batch/v1", "jobs", "short-lived") is None, timeout=10)
    cluster.wait_for(lambda: not pods_of(cluster, "short-lived"), timeout=10, message="pods collected")


def test_scheduler_checks_taints_then_node_selector(tmp_path: Path) -> None:
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    venv_bin = str(Path(sys.executable).parent)
    with Cluster(
        tmp_path, node_labels={"pool": "gpu"}, node_taints=[taint], pod_env={"PATH": venv_bin}
    ) as cluster:
        toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        cluster.apply(job("intolerant", "pass"))
        cluster.apply(
            job("elsewhere", "pass", pod={"tolerations": [toleration], "nodeSelector": {"pool": "cpu"}})
        )
        cluster.apply(job("fits", "pass", pod={"tolerations": [toleration], "nodeSelector": {"pool": "gpu"}}))

        def scheduling_message(name: str) -> str:
            for pod in pods_of(cluster, name):
                for cond in pod.get("status", {}).get("conditions", []):
                    if cond["type"] == "PodScheduled" and cond["status"] == "False":
                        return str(cond["message"])
            return ""

        intolerant = cluster.wait_for(lambda: scheduling_message("intolerant"), timeout=10)
        assert intolerant.startswith(
            "0/1 nodes are available: 1 node(s) had untolerated taint {nvidia.com/gpu: present}."
        )
        elsewhere = cluster.wait_for(lambda: scheduling_message("elsewhere"), timeout=10)
        assert "didn't match Pod's node affinity/selector" in elsewhere
        assert cluster.wait_for(lambda: job_condition(cluster, "fits"), timeout=15)["type"] == "Complete"


def test_indexed_job_runs_one_pod_per_index_with_its_index_hostname_and_stand_in_dns(
    cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "indexed"
    out.mkdir()
    script = (
        "import json, os, pathlib;"
        f"d = pathlib.Path({str(out)!r});"
        "i = os.environ['JOB_COMPLETION_INDEX'];"
        "(d / i).write_text(json.dumps([os.environ['HOSTNAME'], os.environ['KUBEGRAFT_TEST_ADDRESSES']]))"
    )
    body = job(
        "idx",
        script,
        completions=2,
        parallelism=2,
        completionMode="Indexed",
        pod={"subdomain": "idx"},
        container={"ports": [{"name": "worker", "containerPort": 2222}]},
    )
    cluster.apply(body)
    cond = cluster.wait_for(lambda: job_condition(cluster, "idx"), timeout=30)
    assert cond["type"] == "Complete"
    pods = pods_of(cluster, "idx")
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == [
        "0",
        "1",
    ]
    assert all(p["metadata"]["name"].startswith(f"idx-{p['metadata']['labels'][INDEX]}-") for p in pods)
    seen = {i: json.loads((out / i).read_text()) for i in ("0", "1")}
    assert [seen[i][0] for i in ("0", "1")] == ["idx-0", "idx-1"]
    addresses = json.loads(seen["0"][1])
    assert seen["1"][1] == seen["0"][1]  # one map for every worker of the Job
    assert sorted(addresses) == ["idx-0.idx:2222", "idx-1.idx:2222"]
    assert len(set(addresses.values())) == 2
    assert all(a.startswith("127.0.0.1:") for a in addresses.values())
    status = cluster.get("batch/v1", "jobs", "idx")["status"]  # type: ignore[index]
    assert (status["succeeded"], status["completedIndexes"]) == (2, "0-1")


def test_a_failed_index_alone_is_replaced_with_the_same_index(cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "index-1-failed"
    script = (
        f"import os, pathlib; m = pathlib.Path({str(marker)!r});"
        "first = os.environ['JOB_COMPLETION_INDEX'] == '1' and not m.exists(); m.touch() if first else None;"
        "raise SystemExit(1 if first else 0)"
    )
    cluster.apply(
        job("idxretry", script, completions=2, parallelism=2, completionMode="Indexed", backoffLimit=1)
    )
    cond = cluster.wait_for(lambda: job_condition(cluster, "idxretry"), timeout=30)
    assert cond["type"] == "Complete"
    indexes = [p["metadata"]["labels"][INDEX] for p in pods_of(cluster, "idxretry")]
    assert sorted(indexes) == ["0", "1", "1"]
    status = cluster.get("batch/v1", "jobs", "idxretry")["status"]  # type: ignore[index]
    assert (status["failed"], status["succeeded"], status["completedIndexes"]) == (1, 2, "0-1")
