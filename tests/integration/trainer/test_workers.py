"""Two trainer processes train one model together (MultiWorkerMirroredStrategy over gRPC on loopback).

Each process gets what its pod of the Indexed Job would: the manifest, `KUBEGRAFT_WORKERS`, the Job and
Service names, its `JOB_COMPLETION_INDEX`, and (test only) the loopback addresses that stand for the workers'
hostnames. Worker 0 publishes; worker 1 trains in lockstep and publishes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kubegraft import runtime
from tests.harness.fashion import write_class_folders
from tests.integration.trainer.conftest import stage

WORKER_TIMEOUT = 240.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


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
    addresses = {f"pair-1-{i}.pair-1:{runtime.WORKER_PORT}": f"127.0.0.1:{_free_port()}" for i in range(2)}
    processes = []
    for index in range(2):
        env = {
            **os.environ,
            runtime.ENV_SPEC_PATH: str(manifest),
            runtime.ENV_RUN_ID: "pair-run",
            runtime.ENV_WORKERS: "2",
            runtime.ENV_JOB_NAME: "pair-1",
            runtime.ENV_WORKER_SERVICE: "pair-1",
            runtime.ENV_WORKER_PORT: str(runtime.WORKER_PORT),
            runtime.ENV_COMPLETION_INDEX: str(index),
            runtime.ENV_TEST_ADDRESSES: json.dumps(addresses),
            runtime.ENV_TERMINATION_LOG: str(tmp_path / f"termination-{index}"),
            runtime.ENV_SCRATCH_DIR: str(tmp_path / f"scratch-{index}"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        log = (tmp_path / f"worker-{index}.log").open("wb")
        command = [str(Path(sys.executable).parent / "kubegraft"), "train", "--progress-port", "0"]
        processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


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
