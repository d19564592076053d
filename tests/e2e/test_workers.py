"""Two workers of one run, end to end: worker 1 is killed mid-epoch, the pod set restarts and resumes.

The real operator renders one Indexed Job of two pods; the test kubelet runs each as a `kubegraft train`
process (MultiWorkerMirroredStrategy over gRPC on loopback). Killing worker 1 (SIGKILL, as the OOM killer or a
lost node would) aborts worker 0's collectives: it exits 75 (WorkerLost, ignored by the Job's
podFailurePolicy), the Job controller replaces both indexes, and the new pair resumes from the chief's
checkpoint in S3. With `backoffLimit: 1` the run only succeeds if the restart was charged one failure.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path

from kubegraft import runtime
from tests.e2e.conftest import E2E
from tests.e2e.test_failure_paths import _trainer_progress
from tests.harness.s3 import upload_tree
from tests.harness.watch import StatusRecorder

RUN_TIMEOUT = 600.0
PER_CLASS = 30
FINETUNE_EPOCHS = 6


def _index(pod: dict[str, object]) -> int:
    annotations = pod["metadata"]["annotations"]  # type: ignore[index]
    return int(annotations[runtime.ANNOTATION_COMPLETION_INDEX])


def _exit_code(pod: dict[str, object]) -> int | None:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]  # type: ignore[attr-defined]
    return (statuses[0].get("state", {}).get("terminated") or {}).get("exitCode")


def test_a_killed_worker_restarts_the_pod_set_which_resumes_and_publishes_one_version(e2e: E2E) -> None:
    name = "two-workers"
    prefix = f"datasets/{name}"
    with tempfile.TemporaryDirectory() as tmp:
        for folder in sorted(p for p in e2e.data.train.iterdir() if p.is_dir()):
            (Path(tmp) / folder.name).mkdir()
            for image in sorted(folder.glob("*.png"))[:PER_CLASS]:
                (Path(tmp) / folder.name / image.name).write_bytes(image.read_bytes())
        upload_tree(e2e.s3.client(), e2e.inputs.bucket, prefix, Path(tmp))
    stages = [
        {"name": "head", "trainable": 0, "epochs": 1, "learningRate": 0.003},
        {
            "name": "finetune",
            "trainable": "all",
            "epochs": FINETUNE_EPOCHS,
            "learningRate": 0.0003,
            "earlyStopping": {"enabled": False},
        },
    ]
    manifest = e2e.transferjob(
        name, dataset_uri=f"s3://{e2e.inputs.bucket}/{prefix}/", stages=stages, backoff_limit=1, augment=False
    )
    manifest["spec"]["workers"] = 2
    with StatusRecorder(e2e.cluster.url, e2e.namespace, name) as recorder:
        e2e.cluster.apply(manifest)
        deadline = time.monotonic() + RUN_TIMEOUT
        victim = ""
        while not victim:
            assert time.monotonic() < deadline, "the chief never reported fine-tune epoch 2"
            pods = {_index(p): p for p in e2e.pods(name)}
            progress = _trainer_progress(pods[0]) if 0 in pods else {}
            if progress.get("stage") == "finetune" and (progress.get("epoch") or 0) >= 2 and 1 in pods:
                victim = pods[1]["metadata"]["name"]  # mid-epoch 3: checkpoints of epochs 1-2 are in S3
            time.sleep(0.1)
        assert e2e.cluster.kubelet.kill(victim, signal.SIGKILL, namespace=e2e.namespace)
        status = recorder.wait_for_phase({"Succeeded", "Failed"}, timeout=RUN_TIMEOUT)

    assert status["phase"] == "Succeeded", status
    pods = e2e.pods(name)
    by_index = {i: [p for p in pods if _index(p) == i] for i in (0, 1)}
    assert [_exit_code(p) for p in by_index[1]] == [137, 0]  # killed, then its replacement finished
    assert [_exit_code(p) for p in by_index[0]] == [runtime.ExitCode.WORKER_LOST, 0]
    (job,) = e2e.jobs(name)
    assert job["status"]["failed"] == 1  # the chief's exit 75 was ignored: one restart, one retry used
    first_chief = by_index[0][0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert json.loads(first_chief["message"])["reason"] == runtime.FailureReason.WORKER_LOST
    assert "lost worker 1" in json.loads(first_chief["message"])["message"]

    # The Events say which worker failed, and the chief's as WorkerLost.
    messages = [(e["reason"], e["message"]) for e in e2e.cluster.events(e2e.namespace, involved_name=name)]
    assert any(m.startswith(f"Worker 1 (pod {victim}) of run 1 failed: ") for _, m in messages), messages
    assert any(r == runtime.FailureReason.WORKER_LOST and m.startswith("Worker 0 (pod ") for r, m in messages)

    # Resumed, not restarted: the fine-tune stage picked up after its checkpointed epochs.
    client = e2e.s3.client()
    bucket, model_prefix = status["modelUri"].removeprefix("s3://").split("/", 1)
    metrics = json.loads(client.get_object(Bucket=bucket, Key=model_prefix + "metrics.json")["Body"].read())
    finetune = next(s for s in metrics["stages"] if s["name"] == "finetune")
    assert finetune["resumed_at_epoch"] >= 2, finetune
    assert finetune["epochs_run"] == FINETUNE_EPOCHS
    assert metrics["replicas"] == 2
    # One model, published once.
    base = f"models/{name}/"
    listing = client.list_objects_v2(Bucket=bucket, Prefix=base, Delimiter="/")
    assert [p["Prefix"] for p in listing.get("CommonPrefixes", [])] == [base + "1/"]
    e2e.cluster.delete("kubegraft.io/v1alpha1", "transferjobs", name, e2e.namespace)
