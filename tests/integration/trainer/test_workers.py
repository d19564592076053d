"""Two trainer processes train one model together (MultiWorkerMirroredStrategy over gRPC on loopback).

Each process gets what its pod of the Indexed Job would: the manifest, `KUBEGRAFT_WORKERS`, the Job and
Service names, its `JOB_COMPLETION_INDEX`, and (test only) the loopback addresses that stand for the workers'
hostnames. Worker 0 publishes; worker 1 trains in lockstep and publishes nothing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.harness.fashion import write_class_folders
from tests.harness.workers import start_local_workers
from tests.integration.trainer.conftest import stage

WORKER_TIMEOUT = 240.0


def _manifest(tmp_path: Path, data: Path, weights: Path, stages: list[dict[str, Any]]) -> Path:
    document = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": "pair"},
        "spec": {
            "dataset": {
                "uri": str(data),
                "imageSize": 32,
                "validationSplit": 0.15,
                "testSplit": 0.1,
                "seed": 7,
            },
            "model": {"backbone": "MobileNetV2", "weights": str(weights), "head": {"hidden": [32]}},
            "stages": stages,
            "output": {"uri": str(tmp_path / "models")},
            "workers": 2,
        },
    }
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _start_workers(manifest: Path, tmp_path: Path) -> list[subprocess.Popen[bytes]]:
    return start_local_workers(manifest, tmp_path, job="pair-1", run_id="pair-run", workers=2)


def _wait(processes: list[subprocess.Popen[bytes]], tmp_path: Path) -> list[int]:
    try:
        return [p.wait(WORKER_TIMEOUT) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for index in range(len(processes)):
            print(f"--- worker {index}\n" + (tmp_path / f"worker-{index}.log").read_text()[-3000:])


def test_two_worker_processes_train_together_and_only_worker_0_publishes(
    pretrained_backbone: Path, tmp_path: Path
) -> None:
    data = write_class_folders(tmp_path / "data", (0, 1, 2, 3, 4), 24, split="train", seed=0)
    stages = [stage("head", 0, 2, learningRate=0.003), stage("finetune", "all", 1, learningRate=0.0003)]
    manifest = _manifest(tmp_path, data, pretrained_backbone, stages)
    codes = _wait(_start_workers(manifest, tmp_path), tmp_path)
    assert codes == [0, 0]
    versions = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert versions == ["1"]  # one model, published once, and the run's checkpoints deleted
    metrics = json.loads((tmp_path / "models" / "1" / "metrics.json").read_text())
    assert metrics["replicas"] == 2  # one replica per worker process, in sync
    assert [s["name"] for s in metrics["stages"]] == ["head", "finetune"]
    assert [s["epochs_run"] for s in metrics["stages"]] == [2, 1]
    finals = [json.loads((tmp_path / f"termination-{i}").read_text()) for i in range(2)]
    assert finals[0]["modelUri"] == str(tmp_path / "models" / "1") + "/"
    assert finals[1]["state"] == "succeeded" and finals[1].get("modelUri") is None
    # Both logged the same epochs: the workers trained in lockstep, not each on its own.
    logs = [(tmp_path / f"worker-{i}.log").read_text() for i in range(2)]
    epochs = [[line.split(" loss=")[0] for line in text.splitlines() if "] epoch " in line] for text in logs]
    assert epochs[0] == epochs[1] == ["[head] epoch 1/2", "[head] epoch 2/2", "[finetune] epoch 1/1"]
    losses = [
        [line.split(" loss=")[1].split()[0] for line in t.splitlines() if "] epoch " in line] for t in logs
    ]
    assert losses[0] == losses[1]  # metrics are reduced across the workers: both see the same numbers
