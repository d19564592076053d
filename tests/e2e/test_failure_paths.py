"""Failure paths end to end: what a user sees when the data is wrong, and what a crashed trainer does.

- A data set in a bucket that does not exist, and a data set with a single class, cannot succeed however often
  they are retried: the TransferJob ends Failed at once with a reason that says why, after one pod.
- A trainer killed mid-run (SIGKILL, as the OOM killer or a node loss would) is retried by the Job, and the
  new pod resumes from the checkpoint the killed one left in S3 instead of training from scratch.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import E2E
from tests.harness.s3 import upload_tree
from tests.harness.watch import StatusRecorder

FAIL_TIMEOUT = 180.0
RUN_TIMEOUT = 360.0
PROGRESS_PORT = 9090


def _trainer_progress(pod: dict[str, Any]) -> dict[str, Any]:
    """The trainer's own GET /progress on its pod IP ({} while it does not answer yet)."""
    ip = pod.get("status", {}).get("podIP")
    if not ip:
        return {}
    try:
        with urllib.request.urlopen(f"http://{ip}:{PROGRESS_PORT}/progress", timeout=2) as response:
            progress: dict[str, Any] = json.loads(response.read())
    except OSError:
        return {}
    return progress


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for condition in status.get("conditions", []):
        if condition["type"] == type_:
            return dict(condition)
    raise AssertionError(f"no {type_} condition in {status}")


def _pod_exit_codes(e2e: E2E, name: str) -> list[int | None]:
    codes: list[int | None] = []
    for pod in e2e.pods(name):
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        terminated = statuses[0].get("state", {}).get("terminated") or {}
        codes.append(terminated.get("exitCode"))
    return codes


def test_dataset_in_a_missing_bucket_fails_at_once_naming_the_bucket(e2e: E2E) -> None:
    name = "missing-bucket"
    bucket = "kubegraft-no-such-bucket"
    manifest = e2e.transferjob(name, dataset_uri=f"s3://{bucket}/images/")
    with StatusRecorder(e2e.cluster.url, e2e.namespace, name) as recorder:
        e2e.cluster.apply(manifest)
        status = recorder.wait_for_phase({"Succeeded", "Failed"}, timeout=FAIL_TIMEOUT)
        phases = recorder.phases()

    assert status["phase"] == "Failed", status
    assert phases[-1] == "Failed" and "Succeeded" not in phases
    failed = _condition(status, "Failed")
    assert failed["status"] == "True"
    assert bucket in failed["message"], failed
    assert failed["reason"] in ("DatasetNotFound", "StorageAccessDenied"), failed
    assert len(e2e.pods(name)) == 1, "a run that cannot succeed must not be retried"
    assert _pod_exit_codes(e2e, name) == [78]
    (job,) = e2e.jobs(name)
    assert job["status"].get("failed") == 1


def test_dataset_with_one_class_fails_with_a_reason_saying_so(e2e: E2E) -> None:
    name = "one-class"
    prefix = f"datasets/{name}"
    only = e2e.data.train / e2e.data.classes[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / only.name
        folder.mkdir()
        for image in sorted(only.glob("*.png"))[:30]:
            (folder / image.name).write_bytes(image.read_bytes())
        upload_tree(e2e.s3.client(), e2e.inputs.bucket, prefix, Path(tmp))
    manifest = e2e.transferjob(name, dataset_uri=f"s3://{e2e.inputs.bucket}/{prefix}/")
    with StatusRecorder(e2e.cluster.url, e2e.namespace, name) as recorder:
        e2e.cluster.apply(manifest)
        status = recorder.wait_for_phase({"Succeeded", "Failed"}, timeout=FAIL_TIMEOUT)

    assert status["phase"] == "Failed", status
    failed = _condition(status, "Failed")
    assert failed["reason"] == "TooFewClasses", failed
    assert "class" in failed["message"].lower(), failed
    assert len(e2e.pods(name)) == 1
    assert _pod_exit_codes(e2e, name) == [78]


def test_trainer_killed_mid_run_is_retried_and_resumes_from_its_checkpoint(e2e: E2E) -> None:
    name = "killed-trainer"
    finetune_epochs = 6
    stages = [
        {"name": "head", "trainable": 0, "epochs": 1, "learningRate": 0.003},
        {
            "name": "finetune",
            "trainable": 30,
            "epochs": finetune_epochs,
            "learningRate": 0.0003,
            "earlyStopping": {"enabled": False},
        },
    ]
    manifest = e2e.transferjob(name, stages=stages, backoff_limit=2)
    with StatusRecorder(e2e.cluster.url, e2e.namespace, name) as recorder:
        e2e.cluster.apply(manifest)
        # Kill once the trainer itself says the fine-tune stage finished its second epoch (so at least one
        # fine-tune checkpoint is in S3) and epochs remain. The trainer is asked directly, every 0.1 s: its
        # epochs can take well under a second, faster than any status poll.
        first_name = ""

        def finetune_epoch_2() -> bool:
            nonlocal first_name
            pods = e2e.pods(name)
            if not pods:
                return False
            first_name = pods[0]["metadata"]["name"]
            progress = _trainer_progress(pods[0])
            return progress.get("stage") == "finetune" and (progress.get("epoch") or 0) >= 2

        deadline = time.monotonic() + RUN_TIMEOUT
        while not finetune_epoch_2():
            assert time.monotonic() < deadline, "the trainer never reported fine-tune epoch 2"
            time.sleep(0.1)
        assert e2e.cluster.kubelet.kill(first_name, signal.SIGKILL, namespace=e2e.namespace)
        status = recorder.wait_for_phase({"Succeeded", "Failed"}, timeout=RUN_TIMEOUT)
        phases = recorder.phases()

    assert status["phase"] == "Succeeded", status
    assert phases[-1] == "Succeeded"
    pods = e2e.pods(name)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    assert _pod_exit_codes(e2e, name) == [137, 0]

    second_log = e2e.cluster.kubelet.log_path(pods[1]["metadata"]["name"], e2e.namespace).read_text()
    assert "resuming run" in second_log, second_log[-3000:]

    client = e2e.s3.client()
    bucket, prefix = status["modelUri"].removeprefix("s3://").split("/", 1)
    metrics = json.loads(client.get_object(Bucket=bucket, Key=prefix + "metrics.json")["Body"].read())
    finetune = next(s for s in metrics["stages"] if s["name"] == "finetune")
    resumed_at = finetune["resumed_at_epoch"]
    assert resumed_at >= 1, finetune
    # The retried pod trained only the epochs the killed one had not checkpointed: fewer than from scratch.
    assert finetune_epochs - resumed_at < finetune_epochs
    assert finetune["epochs_run"] == finetune_epochs


@pytest.fixture(autouse=True)
def _forget_transferjobs(e2e: E2E) -> Any:
    """Delete this module's TransferJobs afterwards so that later tests see a quiet operator."""
    yield
    for tj in e2e.cluster.list("kubegraft.io/v1alpha1", "transferjobs", e2e.namespace):
        if tj["metadata"]["name"] in ("missing-bucket", "one-class", "killed-trainer"):
            e2e.cluster.delete("kubegraft.io/v1alpha1", "transferjobs", tj["metadata"]["name"], e2e.namespace)
