"""SIGTERM (node drain, preemption): the trainer process stops, exits 143 in the grace period, and resumes.

A real `kubegraft run` process trains a stage of several epochs; once its first epoch's checkpoint is in the
work area it gets SIGTERM, as the kubelet sends it on a drain. It must exit with `ExitCode.TERMINATED` well
inside Kubernetes' default 30 s grace period, say why in its termination message, and leave the checkpoint;
a second process with the same run id resumes from it instead of starting over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubegraft.runtime import ENV_RUN_ID, ENV_TERMINATION_LOG, ExitCode, FailureReason
from kubegraft_trainer.repository import CHECKPOINTS, work_uri
from tests.harness.fashion import write_class_folders
from tests.harness.reliability import tiny_backbone
from tests.integration.trainer.conftest import stage

GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds: a guard against a hang, not a timing
EPOCHS = 6


def _process(manifest: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    kubegraft = Path(sys.executable).parent / "kubegraft"
    return subprocess.Popen(
        [str(kubegraft), "run", str(manifest), "--progress-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for(path: Path, process: subprocess.Popen[bytes], limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(
                f"the trainer exited ({process.returncode}) before its first checkpoint:\n{output[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no checkpoint appeared")
        time.sleep(0.05)


def test_sigterm_mid_stage_exits_143_in_the_grace_period_and_the_rerun_resumes_from_the_checkpoint(
    tmp_path: Path,
) -> None:
    data = write_class_folders(tmp_path / "data", (0, 1, 2), 40, seed=0)
    output = tmp_path / "models"
    document = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": "t"},
        "spec": {
            "dataset": {"uri": str(data), "imageSize": 32, "validationSplit": 0.15, "seed": 7},
            "model": {"backbone": "MobileNetV2", "weights": str(tiny_backbone(tmp_path / "tiny.keras"))},
            "stages": [stage("finetune", "all", EPOCHS, learningRate=1e-3)],
            "output": {"uri": str(output)},
        },
    }
    manifest = tmp_path / "tj.yaml"
    manifest.write_text(yaml.safe_dump(document))
    termination = tmp_path / "termination-log"
    env = {**os.environ, ENV_RUN_ID: "drained", ENV_TERMINATION_LOG: str(termination)}
    state = Path(work_uri(str(output))) / CHECKPOINTS / "drained" / "state.json"

    first = _process(manifest, env)
    _wait_for(state, first)
    first.send_signal(signal.SIGTERM)
    try:
        code = first.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        first.kill()
        pytest.fail(f"the trainer did not exit within {GRACE_SECONDS} s of SIGTERM")
    assert code == ExitCode.TERMINATED == 143
    message = json.loads(termination.read_text())
    assert (message["state"], message["reason"]) == ("failed", FailureReason.TERMINATED)
    saved = json.loads(state.read_text())["stage"]["epochs_done"]
    assert 1 <= saved < EPOCHS
    assert not output.exists() or not any(output.iterdir())  # nothing published

    second = _process(manifest, env)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == ExitCode.SUCCEEDED, out.decode()[-3000:]
    (record,) = json.loads((output / "1" / "metrics.json").read_text())["stages"]
    assert record["resumed_at_epoch"] == saved  # it went on from the checkpoint, not from epoch 0
    assert record["epochs_run"] == EPOCHS
    assert len(record["history"]["loss"]) == EPOCHS
    assert not state.exists()  # the published run's checkpoints are gone
