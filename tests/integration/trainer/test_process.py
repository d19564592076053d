"""The trainer as a process sees it: manifest files, exit codes, termination message, real S3 end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kubegraft.cli import app
from kubegraft.runtime import ENV_LOG_FORMAT, ENV_TERMINATION_LOG, ExitCode, FailureReason
from kubegraft_trainer.run import main
from tests.harness.fashion import CLASS_NAMES, upload_dir
from tests.harness.s3 import SeaweedFS
from tests.integration.trainer.conftest import stage


def _manifest(spec: dict[str, Any], path: Path) -> Path:
    document = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": "t"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_one_class_data_set_exits_78_and_explains_itself_in_the_termination_message(
    one_class_images: Path, pretrained_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(ENV_TERMINATION_LOG, str(termination))
    manifest = _manifest(
        {
            "dataset": {"uri": str(one_class_images), "imageSize": 32},
            "model": {"backbone": "MobileNetV2", "weights": str(pretrained_backbone)},
            "output": {"uri": str(tmp_path / "models")},
        },
        tmp_path / "tj.yaml",
    )
    code = main(manifest, progress_port=0)
    assert code == ExitCode.INVALID == 78
    message = json.loads(termination.read_text())
    assert message["state"] == "failed"
    assert message["reason"] == FailureReason.TOO_FEW_CLASSES
    assert "class" in message["message"]
    assert len(termination.read_bytes()) <= 4096
    assert not (tmp_path / "models").exists()


def test_invalid_manifest_exits_78_without_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(ENV_TERMINATION_LOG, str(termination))
    manifest = _manifest(
        {"dataset": {"uri": "data", "imageSize": 8}, "output": {"uri": "m"}}, tmp_path / "tj.yaml"
    )
    assert main(manifest, progress_port=0) == ExitCode.INVALID
    assert json.loads(termination.read_text())["reason"] == FailureReason.INVALID_SPEC


@pytest.mark.usefixtures("s3_env")
def test_run_from_s3_publishes_to_s3_and_predict_reads_the_latest_complete_version(
    s3_server: SeaweedFS,
    s3_bucket: str,
    transfer_images: Path,
    pretrained_backbone: Path,
    tmp_path: Path,
) -> None:
    client = s3_server.client()
    upload_dir(client, s3_bucket, "data/fashion", transfer_images)
    client.upload_file(str(pretrained_backbone), s3_bucket, "backbones/mnv2.keras")
    client.put_object(Bucket=s3_bucket, Key="models/7/saved_model.pb", Body=b"an unfinished upload")
    manifest = _manifest(
        {
            "dataset": {"uri": f"s3://{s3_bucket}/data/fashion", "imageSize": 32, "validationSplit": 0.12},
            "model": {"backbone": "MobileNetV2", "weights": f"s3://{s3_bucket}/backbones/mnv2.keras"},
            "classifier": "linear",
            "stages": [stage("finetune", 10, 1, learningRate=1e-4, optimizer="sgd")],
            "output": {"uri": f"s3://{s3_bucket}/models", "formats": ["savedmodel", "tflite"]},
            "storage": {"endpoint": s3_server.endpoint},
        },
        tmp_path / "tj.yaml",
    )
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(manifest), "--local", "--progress-port", "0"])
    assert result.exit_code == 0, result.output

    keys = {item["Key"] for item in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    for name in ("saved_model.pb", "labels.txt", "metrics.json", "model.tflite", "_COMPLETE"):
        assert f"models/8/{name}" in keys, name  # 7 is being written (fresh, incomplete): skipped, never read
    served = [k for k in keys if k.startswith("models")]  # what KServe's storage initializer would copy
    assert all(k.split("/")[1].isdigit() for k in served), served  # only versions in the base path
    work = [k for k in keys if k.startswith(".kubegraft/models/")]  # checkpoints and staging cleaned up
    assert all(k.startswith(".kubegraft/models/tensorboard/") for k in work), work  # TensorBoard's stay

    image = tmp_path / "trouser.png"
    image.write_bytes((transfer_images / "Trouser").iterdir().__next__().read_bytes())
    result = runner.invoke(
        app, ["predict", f"s3://{s3_bucket}/models", str(image), "--endpoint", s3_server.endpoint]
    )
    assert result.exit_code == 0, result.output
    assert "version 8" in result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith(str(image)))
    ranked = eval(line.split(": ", 1)[1])  # the CLI prints Python tuples, its documented format
    assert len(ranked) == 3 and {name for name, _ in ranked} <= set(CLASS_NAMES)


def test_json_log_format_makes_every_output_line_a_json_object_without_secrets(
    transfer_images: Path, pretrained_backbone: Path, tmp_path: Path
) -> None:
    secret = "wJalrXUtnFEMI-kubegraft-trainer-sentinel"
    manifest = _manifest(
        {
            "dataset": {"uri": str(transfer_images), "imageSize": 32, "validationSplit": 0.12},
            "model": {"backbone": "MobileNetV2", "weights": str(pretrained_backbone)},
            "stages": [stage("head", 0, 1)],
            "output": {"uri": str(tmp_path / "models")},
        },
        tmp_path / "tj.yaml",
    )
    env = {
        **os.environ,
        ENV_LOG_FORMAT: "json",
        ENV_TERMINATION_LOG: str(tmp_path / "termination-log"),
        "AWS_ACCESS_KEY_ID": "AKIAKUBEGRAFTSENTINEL",
        "AWS_SECRET_ACCESS_KEY": secret,
    }
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the trainer quiets TensorFlow's C++ lines itself
    kubegraft = str(Path(sys.executable).with_name("kubegraft"))
    result = subprocess.run(
        [kubegraft, "run", str(manifest), "--progress-port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = (result.stdout + result.stderr).splitlines()
    bad = [line for line in output if line.strip() and not line.startswith("{")]
    assert not bad, "\n".join(bad)
    stdout = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    stderr = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert all(isinstance(r, dict) and "message" in r and r["severity"] for r in stdout + stderr)
    epochs = [r for r in stdout if r.get("stage") == "head" and "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1]
    assert isinstance(epochs[0]["accuracy"], float)
    assert stdout[-1]["state"] == "succeeded" and stdout[-1]["modelUri"].endswith("/1/")
    assert any(r["logger"].startswith("kubegraft_trainer") for r in stderr)
    assert secret not in result.stdout + result.stderr
    assert "AKIAKUBEGRAFTSENTINEL" not in result.stdout + result.stderr
