"""The real operator (`kopf run`) against the emulator and the test kubelet, end to end.

Each test drives TransferJobs the way a user would and checks what a user would see: status, conditions,
Events, Jobs and metrics. The stand-in trainer is chosen per TransferJob by its dataset URI (see
`stand_in_trainer.py`).
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.integration.operator.conftest import API_VERSION, UNPULLABLE, OperatorEnv, stand_in_spec


def _phase(phase: str) -> Callable[[dict[str, Any]], bool]:
    def check(status: dict[str, Any]) -> bool:
        return status.get("phase") == phase

    return check


def test_a_transferjob_trains_to_success_with_model_uri_events_and_metrics(op: OperatorEnv) -> None:
    op.apply("ok", stand_in_spec("succeed", 0.2, epochs=3))
    status = op.wait_status("ok", _phase("Succeeded"), 60, "Succeeded")
    assert status["run"] == 1
    assert status["jobName"] == "ok-1"
    assert status["modelUri"] == "file:///models/stand-in/1/"
    assert status["metrics"] == {"test_accuracy": 0.9}
    assert status["observedGeneration"] == 1
    assert status["startTime"] and status["completionTime"]
    assert op.condition("ok", "Succeeded")["status"] == "True"
    assert op.condition("ok", "Ready")["status"] == "True"
    assert op.condition("ok", "Reconciling")["status"] == "False"
    (job,) = op.jobs("ok")
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("TransferJob", op.transferjob("ok")["metadata"]["uid"])
    assert op.cluster.get("v1", "configmaps", "ok-1-spec") is not None
    reasons = op.event_reasons("ok")
    assert "JobCreated" in reasons
    assert "Succeeded" in reasons
    text = op.metrics()
    assert "kubegraft_runs_succeeded_total" in text
    assert 'kubegraft_transferjob_phase{namespace="default",phase="Succeeded",transferjob="ok"} 1.0' in text


def test_status_and_metrics_reflect_the_trainers_progress_within_15_seconds(op: OperatorEnv) -> None:
    op.apply("progress", stand_in_spec("succeed", 1.0, epochs=30))
    op.wait_status("progress", _phase("Running"), 60, "Running")
    running_at = time.monotonic()
    status = op.wait_status("progress", lambda s: s.get("epoch", 0) >= 1, 15, "epoch >= 1")
    assert time.monotonic() - running_at < 15
    assert status["stage"] == "head"
    assert status["totalEpochs"] == 30
    assert "val_accuracy" in status["metrics"]
    # The stand-in reports 2 replicas splitting the stage's batchSize (the default, 32).
    assert (status["replicas"], status["globalBatchSize"], status["perReplicaBatchSize"]) == (2, 32, 16)
    assert "epoch" in op.condition("progress", "Reconciling")["message"]
    text = op.metrics()
    assert 'kubegraft_job_stage_info{namespace="default",stage="head",transferjob="progress"} 1.0' in text
    assert 'kubegraft_job_epoch{namespace="default",transferjob="progress"}' in text
    images = re.search(
        r'^kubegraft_job_images_total\{namespace="default",transferjob="progress"\} (\S+)$', text, re.M
    )
    assert images is not None and float(images[1]) > 0
    op.cluster.delete(API_VERSION, "transferjobs", "progress")


def test_exit_code_78_fails_at_once_with_the_trainers_reason(op: OperatorEnv) -> None:
    op.apply("invalid", stand_in_spec("invalid", runPolicy={"backoffLimit": 3}))
    op.wait_status("invalid", _phase("Failed"), 60, "Failed")
    failed = op.condition("invalid", "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] == "DatasetNotFound"
    assert "No images under" in failed["message"]
    assert op.condition("invalid", "Stalled")["status"] == "True"
    assert len(op.pods("invalid")) == 1  # no retry
    assert "DatasetNotFound" in op.event_reasons("invalid")
    assert 'kubegraft_runs_failed_total{reason="DatasetNotFound"}' in op.metrics()


def test_retryable_failures_are_retried_up_to_the_backoff_limit(op: OperatorEnv) -> None:
    op.apply("flaky", stand_in_spec("flaky", runPolicy={"backoffLimit": 2}))
    op.apply("broken", stand_in_spec("retryable", runPolicy={"backoffLimit": 1}))
    op.wait_status("flaky", _phase("Succeeded"), 90, "flaky Succeeded")
    assert len(op.pods("flaky")) == 2
    assert "StorageAccessDenied" in op.event_reasons("flaky")  # the failed attempt, explained
    op.wait_status("broken", _phase("Failed"), 90, "broken Failed")
    failed = op.condition("broken", "Failed")
    assert failed["reason"] == "StorageAccessDenied"
    assert "failed 2 times, backoffLimit 1" in failed["message"]
    assert len(op.pods("broken")) == 2


def test_why_a_run_does_not_start_is_a_condition_and_an_event(op: OperatorEnv) -> None:
    op.apply("greedy", stand_in_spec(resources={"gpus": 4, "cpu": "1", "memory": "1Gi"}))
    op.apply("unpullable", stand_in_spec(image=f"{UNPULLABLE}trainer:1"))
    op.apply("nosecret", stand_in_spec(storage={"secretRef": {"name": "missing-creds"}}))
    for name, reason, words in (
        ("greedy", "Unschedulable", "Insufficient nvidia.com/gpu"),
        ("unpullable", "ImagePullFailed", UNPULLABLE),
        ("nosecret", "SecretNotFound", "missing-creds"),
    ):

        def stalled_for(status: dict[str, Any], reason: str = reason) -> bool:
            return any(c["reason"] == reason for c in status.get("conditions", []))

        op.wait_status(name, stalled_for, 45, reason)
        stalled = op.condition(name, "Stalled")
        assert (stalled["status"], stalled["reason"]) == ("True", reason)
        assert words in stalled["message"]
        assert op.status(name)["phase"] == "Pending"

        def explained(name: str = name, reason: str = reason) -> bool:
            return reason in op.event_reasons(name)

        op.cluster.wait_for(explained, timeout=10)
    time.sleep(2)  # the kubelet keeps retrying (back-off, re-scheduling): each cause is still told once
    for name, reason in (
        ("greedy", "Unschedulable"),
        ("unpullable", "ImagePullFailed"),
        ("nosecret", "SecretNotFound"),
    ):
        assert op.event_reasons(name).count(reason) == 1
    for name in ("greedy", "unpullable", "nosecret"):
        op.cluster.delete(API_VERSION, "transferjobs", name)


def test_suspend_stops_the_run_and_resume_continues_the_same_run(op: OperatorEnv) -> None:
    op.apply("pausable", stand_in_spec("succeed", 0.5, epochs=40))
    op.wait_status("pausable", _phase("Running"), 60, "Running")
    op.apply("pausable", {"runPolicy": {"suspend": True}})
    op.wait_status("pausable", _phase("Suspended"), 30, "Suspended")
    assert op.condition("pausable", "Suspended")["status"] == "True"
    (job,) = op.jobs("pausable")
    assert job["spec"]["suspend"] is True
    op.cluster.wait_for(lambda: not op.pods("pausable"), timeout=20)
    op.apply("pausable", {"runPolicy": {"suspend": False}})
    status = op.wait_status("pausable", _phase("Running"), 30, "Running again")
    assert status["run"] == 1
    assert status["observedGeneration"] == op.transferjob("pausable")["metadata"]["generation"]
    assert [j["metadata"]["name"] for j in op.jobs("pausable")] == ["pausable-1"]
    op.cluster.delete(API_VERSION, "transferjobs", "pausable")


def test_a_spec_change_stops_the_running_job_and_starts_the_next_run(op: OperatorEnv) -> None:
    op.apply("gitops", stand_in_spec("succeed", 0.5, epochs=40))
    op.wait_status("gitops", _phase("Running"), 60, "Running")
    op.apply("gitops", stand_in_spec("succeed", 0.5, epochs=40))  # the same spec again: nothing happens
    op.apply("gitops", stand_in_spec("succeed", 0.1, epochs=2))
    status = op.wait_status(
        "gitops", lambda s: s.get("run") == 2 and s.get("phase") == "Succeeded", 60, "run 2"
    )
    # run 2, not 3: re-applying the same spec started nothing (even where the emulator bumped the generation).
    assert status["observedGeneration"] == op.transferjob("gitops")["metadata"]["generation"]
    assert status["jobName"] == "gitops-2"
    assert [j["metadata"]["name"] for j in op.jobs("gitops")] == ["gitops-2"]
    assert "RunStopped" in op.event_reasons("gitops")


def test_deleting_a_transferjob_deletes_its_job_pods_and_configmap(op: OperatorEnv) -> None:
    op.apply("doomed", stand_in_spec("succeed", 0.5, epochs=40))
    op.wait_status("doomed", _phase("Running"), 60, "Running")
    op.cluster.delete(API_VERSION, "transferjobs", "doomed")
    op.cluster.wait_for(lambda: op.cluster.get(API_VERSION, "transferjobs", "doomed") is None, timeout=30)
    op.cluster.wait_for(lambda: not op.jobs("doomed") and not op.pods("doomed"), timeout=30)
    assert op.cluster.get("v1", "configmaps", "doomed-1-spec") is None
    assert "doomed" not in op.metrics()


def test_an_operator_killed_at_any_point_never_creates_a_second_job(op: OperatorEnv) -> None:
    op.apply("crash-early", stand_in_spec("succeed", 0.3, epochs=4))
    time.sleep(0.3)
    op.operator.kill()  # somewhere between seeing the TransferJob and creating/recording its Job
    op.apply("crash-mid", stand_in_spec("succeed", 0.3, epochs=4))
    op.start_operator()
    op.wait_status("crash-mid", _phase("Running"), 60, "Running")
    op.operator.kill()  # mid-run: the pod keeps training with nobody watching
    time.sleep(1.0)
    op.start_operator()
    for name in ("crash-early", "crash-mid"):
        status = op.wait_status(name, _phase("Succeeded"), 60, "Succeeded after restarts")
        assert status["run"] == 1
        assert status["modelUri"] == "file:///models/stand-in/1/"
        assert [j["metadata"]["name"] for j in op.jobs(name)] == [f"{name}-1"]
        assert len(op.pods(name)) == 1


def _events_of(op: OperatorEnv, name: str) -> list[dict[str, Any]]:
    return [e for e in op.cluster.events() if e.get("involvedObject", {}).get("name") == name]


def test_trainer_notices_are_events_once_each_even_across_a_restart_and_no_gain_is_a_condition(
    op: OperatorEnv,
) -> None:
    op.apply("nogain", stand_in_spec("nogain", 1.0, epochs=8))
    # The BatchNormReestimated notice comes from /progress while the run trains.
    op.cluster.wait_for(lambda: "BatchNormReestimated" in op.event_reasons("nogain"), timeout=60)
    assert op.status("nogain")["phase"] == "Running"
    op.wait_status("nogain", _phase("Succeeded"), 60, "Succeeded")
    op.cluster.wait_for(lambda: "NoTransferGain" in op.event_reasons("nogain"), timeout=15)
    gain = op.condition("nogain", "TransferGain")
    assert (gain["status"], gain["reason"]) == ("False", "NoTransferGain")
    assert gain["message"] == "Test accuracy 0.4 is below the baseline 0.5."
    op.operator.kill()
    op.start_operator()  # resumes every TransferJob: must not post the notices again
    time.sleep(3)
    notices = [
        (e["type"], e["reason"])
        for e in _events_of(op, "nogain")
        if e["reason"] in ("BatchNormReestimated", "NoTransferGain")
    ]
    assert sorted(notices) == [("Normal", "BatchNormReestimated"), ("Warning", "NoTransferGain")]
    annotations = op.transferjob("nogain")["metadata"]["annotations"]
    assert annotations["kubegraft.io/notices-emitted"] == "1/2"
    assert op.condition("nogain", "TransferGain")["status"] == "False"


def test_a_run_that_beat_its_baseline_has_transfer_gain_true_and_its_recipe(op: OperatorEnv) -> None:
    op.apply("gain", stand_in_spec("gain", 0.2, epochs=2))
    status = op.wait_status("gain", _phase("Succeeded"), 60, "Succeeded")
    assert status["recipe"] == "head-then-finetune"
    gain = op.condition("gain", "TransferGain")
    assert (gain["status"], gain["reason"]) == ("True", "TransferGain")
    op.cluster.wait_for(lambda: "RecipeChosen" in op.event_reasons("gain"), timeout=15)
    assert 'kubegraft_notices_total{reason="RecipeChosen"}' in op.metrics()


def test_operator_killed_at_random_moments_leaves_one_job_one_event_per_notice_and_a_final_status(
    op: OperatorEnv,
) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    names = [f"chaos-{i}" for i in range(4)]
    for name in names[:-1]:
        op.apply(name, stand_in_spec("succeed", 0.3, epochs=6))
    op.apply(names[-1], stand_in_spec("nogain", 0.3, epochs=6))
    for _ in range(4):
        time.sleep(rng.uniform(0.05, 1.5))
        op.operator.kill()
        time.sleep(rng.uniform(0.0, 0.5))
        op.start_operator()
    for name in names:
        status = op.wait_status(name, _phase("Succeeded"), 90, f"Succeeded after kills (seed {seed})")
        assert (status["run"], status["jobName"]) == (1, f"{name}-1"), seed
        assert status["modelUri"] == "file:///models/stand-in/1/", seed
        assert [j["metadata"]["name"] for j in op.jobs(name)] == [f"{name}-1"], seed
        assert len(op.pods(name)) == 1, seed
    op.cluster.wait_for(lambda: "NoTransferGain" in op.event_reasons(names[-1]), timeout=15)
    time.sleep(2)
    reasons = op.event_reasons(names[-1])
    assert (reasons.count("BatchNormReestimated"), reasons.count("NoTransferGain")) == (1, 1), seed
    assert op.condition(names[-1], "TransferGain")["status"] == "False", seed


def test_kubectl_apply_and_wait_for_condition_succeeded(op: OperatorEnv, tmp_path: Path) -> None:
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "TransferJob",
        "metadata": {"name": "kubectl-demo", "namespace": "default"},
        "spec": stand_in_spec("succeed", 0.2, epochs=2),
    }
    path = tmp_path / "tj.yaml"
    path.write_text(yaml.safe_dump(manifest))
    op.cluster.kubectl("apply", "--validate=false", "-f", str(path))
    try:
        op.cluster.kubectl(
            "wait", "--for=condition=Succeeded", "transferjob/kubectl-demo", "--timeout=60s", timeout=90
        )
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"kubectl wait failed: {exc.stderr}") from exc
    assert op.status("kubectl-demo")["phase"] == "Succeeded"


def test_secret_values_never_reach_status_events_logs_or_metrics(op: OperatorEnv) -> None:
    access, secret = "AKIASTANDINEXAMPLE42", "s3cr3t-value-that-must-not-leak"
    op.cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": "default"},
            "stringData": {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret},
        }
    )
    op.apply("private", stand_in_spec("succeed", 0.2, epochs=2, storage={"secretRef": {"name": "s3-creds"}}))
    op.wait_status("private", _phase("Succeeded"), 60, "Succeeded")
    (job,) = op.jobs("private")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    seen = "\n".join(
        [
            str(op.transferjob("private")),
            str(op.cluster.list("v1", "events")),
            str(op.cluster.list("v1", "configmaps")),
            str(job),
            op.operator.log_text(),
            op.metrics(),
        ]
    )
    assert access not in seen
    assert secret not in seen


def test_liveness_and_readiness_endpoints_answer(op: OperatorEnv) -> None:
    assert op.http(f"http://127.0.0.1:{op.liveness_port}/healthz") is not None
    assert op.http(f"http://127.0.0.1:{op.metrics_port}/readyz") == "ok\n"
