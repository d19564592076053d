"""Several replicas in one pod: the trainer on a CPU split into 2 logical devices against the same run on 1.

Logical devices must be set before TensorFlow starts, so every run here is a trainer process
(`kubegraft run`) with ``KUBEGRAFT_LOGICAL_CPUS``. ``batchSize`` is the global batch, split across the
replicas, and the learning rate is not scaled: with the head's dropout off (nothing random left but the
shuffle, which depends on the seed alone) 2 replicas take the very steps 1 replica takes, so their losses
agree to float32 round-off (`LOSS_TOLERANCE`) and their accuracies to one image.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import yaml

from kubegraft import runtime
from kubegraft.runtime import ExitCode, FailureReason
from kubegraft_trainer.devices import ENV_LOGICAL_CPUS, ENV_PRECISION
from kubegraft_trainer.run import main
from tests.harness.fashion import write_class_folders
from tests.integration.trainer.conftest import stage

RUN_TIMEOUT = 600.0
LOSS_TOLERANCE = 2e-3  # float32 sums in another order (per replica, then across): the documented tolerance


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST classes 0-4, 24 images each (84 train, 18 validation, 18 test)."""
    return write_class_folders(tmp_path_factory.mktemp("replica-images"), (0, 1, 2, 3, 4), 24, seed=0)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """97 training images (3 batches of 32 and 1), 20 validation, 20 test: classes 0-3 27 each, class 4 29."""
    root = tmp_path_factory.mktemp("odd-replica-images")
    write_class_folders(root, (0, 1, 2, 3), 27, seed=1)
    return write_class_folders(root, (4,), 29, seed=1)


def _manifest(root: Path, name: str, data: Path, weights: Path, **spec: Any) -> Path:
    body: dict[str, Any] = {
        "dataset": {"uri": str(data), "imageSize": 32, "validationSplit": 0.15, "testSplit": 0.15, "seed": 7},
        "model": {"backbone": "MobileNetV2", "weights": str(weights), "head": {"hidden": [32], "dropout": 0}},
        "output": {"uri": str(root / name / "models")},
        **spec,
    }
    document = {"apiVersion": "kubegraft.io/v1alpha1", "kind": "TransferJob", "metadata": {"name": name}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**document, "spec": body}))
    return path


def _start(manifest: Path, replicas: int, **env: str) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        ENV_LOGICAL_CPUS: str(replicas),
        runtime.ENV_RUN_ID: manifest.stem,
        runtime.ENV_TERMINATION_LOG: str(manifest.with_suffix(".termination")),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **env,
    }
    kubegraft = str(Path(sys.executable).with_name("kubegraft"))
    return subprocess.Popen(
        [kubegraft, "run", str(manifest), "--progress-port", "0"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> str:
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print(output[-4000:])
    assert process.returncode == 0, output[-4000:]
    return output


def _metrics(manifest: Path) -> dict[str, Any]:
    versions = sorted((manifest.parent / manifest.stem / "models").iterdir())
    assert [v.name for v in versions] == ["1"]
    result: dict[str, Any] = json.loads((versions[0] / "metrics.json").read_text())
    return result


def _pair(root: Path, name: str, data: Path, weights: Path, **spec: Any) -> Iterator[dict[str, Any]]:
    """Train the spec on 1 and on 2 replicas at once; their metrics.json, 1 replica's first."""
    manifests = [_manifest(root, f"{name}-{n}", data, weights, **spec) for n in (1, 2)]
    processes = [_start(manifest, n) for manifest, n in zip(manifests, (1, 2), strict=True)]
    for process in processes:
        _finish(process)
    for manifest in manifests:
        yield _metrics(manifest)


def _assert_same_history(one: dict[str, list[float]], two: dict[str, list[float]], images: int) -> None:
    assert one.keys() == two.keys()
    for key, expected in one.items():
        tolerance = LOSS_TOLERANCE if "loss" in key else 1.01 / images  # accuracies: at most one image
        np.testing.assert_allclose(two[key], expected, atol=tolerance, rtol=0, err_msg=key)


def test_two_replicas_take_the_one_replica_steps_through_cached_head_prefix_cut_and_pixel_stages(
    images: Path, pretrained_backbone: Path, tmp_path: Path
) -> None:
    stages = [
        stage("head", 0, 4, learningRate=0.01),  # cached bottleneck features
        stage("top", 20, 2, learningRate=1e-3),  # the frozen prefix's activations, the top trains
        stage("all", "all", 1, learningRate=1e-4, optimizer="sgd"),  # the full model on pixels
    ]
    one, two = _pair(tmp_path, "staged", images, pretrained_backbone, stages=stages)

    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert len(two["devices"]) == 2
    records = list(zip(one["stages"], two["stages"], strict=True))
    assert [(a["cached_features"], a["frozen_prefix"] is not None) for a, _ in records] == [
        (True, False),
        (False, True),
        (False, False),
    ]
    for a, b in records:
        assert (b["cached_features"], b["frozen_prefix"]) == (a["cached_features"], a["frozen_prefix"])
        assert a["global_batch_size"] == b["global_batch_size"] == 32  # batchSize: one optimizer step
        assert (a["per_replica_batch_size"], b["per_replica_batch_size"]) == (32, 16)
        _assert_same_history(a["history"], b["history"], one["images"]["validation"])
    assert abs(one["test"]["accuracy"] - two["test"]["accuracy"]) <= 1.01 / one["test"]["images"]
    assert abs(one["test"]["loss"] - two["test"]["loss"]) <= LOSS_TOLERANCE


def test_last_batch_of_one_image_trains_on_two_replicas_as_one_replica_trains_it(
    odd_images: Path, pretrained_backbone: Path, tmp_path: Path
) -> None:
    # 97 training images in batches of 32: the last batch of 1 would give the second replica no example
    # (the pixel stage's convolutions then failed: "Incompatible shapes: [0,32,32,3] vs. [16]"); each
    # replica computes it whole instead, so the step is the one replica's step.
    stages = [
        stage("head", 0, 3, learningRate=0.01),  # cached bottleneck features
        stage("top", 20, 2, learningRate=1e-3),  # the frozen prefix's activations
        stage("all", "all", 1, learningRate=1e-4, optimizer="sgd"),  # the full model on pixels
    ]
    one, two = _pair(tmp_path, "odd", odd_images, pretrained_backbone, stages=stages)

    assert one["images"]["train"] == two["images"]["train"] == 97
    validation = one["images"]["validation"]
    for a, b in zip(one["stages"], two["stages"], strict=True):
        assert (b["cached_features"], b["frozen_prefix"]) == (a["cached_features"], a["frozen_prefix"])
        assert (a["per_replica_batch_size"], b["per_replica_batch_size"]) == (32, 16)
        # The same weights after every epoch: validation agrees as on even batches. The logged training
        # loss counts the repeated 1-image batch twice (a 98th image's loss), accuracy within one image.
        for key in ("val_loss", "val_accuracy"):
            tolerance = LOSS_TOLERANCE if "loss" in key else 1.01 / validation
            np.testing.assert_allclose(b["history"][key], a["history"][key], atol=tolerance, rtol=0)
        np.testing.assert_allclose(b["history"]["accuracy"], a["history"]["accuracy"], atol=1.01 / 97, rtol=0)
    assert abs(one["test"]["accuracy"] - two["test"]["accuracy"]) <= 1.01 / one["test"]["images"]
    assert abs(one["test"]["loss"] - two["test"]["loss"]) <= LOSS_TOLERANCE


def test_two_replicas_search_like_one_through_the_linear_classifier_and_the_head(
    odd_images: Path, pretrained_backbone: Path, tmp_path: Path
) -> None:
    # A 30-epoch budget: the linear classifier (scikit-learn on cached features) and the 30-epoch head, on
    # 97 training images (every epoch ends with a batch of 1, which each replica computes whole).
    one, two = _pair(tmp_path, "auto", odd_images, pretrained_backbone, budget={"epochs": 30})

    assert (one["strategy"], two["strategy"], two["replicas"]) == ("auto", "auto", 2)
    ran = [[c for c in m["search"]["candidates"] if c["status"] != "skipped"] for m in (one, two)]
    assert [c["name"] for c in ran[0]] == [c["name"] for c in ran[1]] == ["linear", "head"]
    validation = one["images"]["validation"]
    for a, b in zip(*ran, strict=True):
        assert abs(a["validation_accuracy"] - b["validation_accuracy"]) <= 1.01 / validation, a["name"]
    assert one["selection"]["published"] == two["selection"]["published"]
    assert abs(one["test"]["accuracy"] - two["test"]["accuracy"]) <= 1.01 / one["test"]["images"]


def test_two_replica_run_killed_mid_stage_resumes_from_its_checkpoint_and_publishes(
    images: Path, pretrained_backbone: Path, tmp_path: Path
) -> None:
    stages = [stage("head", 0, 2, learningRate=0.01), stage("top", 20, 6, learningRate=1e-3)]
    manifest = _manifest(tmp_path, "killed", images, pretrained_backbone, stages=stages)
    first = _start(manifest, 2)
    assert first.stdout is not None
    seen = []
    try:
        for line in first.stdout:
            seen.append(line)
            if line.startswith("[top] epoch 1/6"):  # printed after the epoch's checkpoint was written
                first.send_signal(signal.SIGKILL)
                break
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    assert not (tmp_path / "killed" / "models" / "1").exists()

    output = _finish(_start(manifest, 2))

    assert "stage top resumes after epoch" in output
    metrics = _metrics(manifest)
    assert metrics["replicas"] == 2
    head, top = metrics["stages"]
    assert head["resumed_at_epoch"] == 0 and head["epochs_run"] == 2  # finished before the kill: not rerun
    assert 1 <= top["resumed_at_epoch"] < 6
    assert top["epochs_run"] == 6 and len(top["history"]["loss"]) == 6
    assert "[head] epoch" not in output


def test_mixed_bfloat16_on_cpu_trains_and_exports_a_model_with_float32_outputs(
    images: Path, pretrained_backbone: Path, tmp_path: Path
) -> None:
    stages = [stage("head", 0, 2, learningRate=0.01), stage("top", 20, 1, learningRate=1e-3)]
    manifest = _manifest(tmp_path, "bf16", images, pretrained_backbone, stages=stages)

    _finish(_start(manifest, 1, **{ENV_PRECISION: "mixed_bfloat16"}))

    metrics = _metrics(manifest)
    assert metrics["precision"] == "mixed_bfloat16"
    assert all(np.isfinite(r["history"]["loss"]).all() for r in metrics["stages"])
    served = tf.saved_model.load(str(tmp_path / "bf16" / "models" / "1"))
    png = next((images / "Trouser").iterdir()).read_bytes()
    out = served.signatures["serving_default"](images=tf.constant([png, png]))
    assert out["probabilities"].dtype == out["scores"].dtype == tf.float32
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-3)


def test_pod_that_sees_fewer_gpus_than_it_asked_for_exits_78_before_training(
    images: Path, pretrained_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(runtime.ENV_TERMINATION_LOG, str(termination))
    monkeypatch.setenv(runtime.ENV_EXPECTED_GPUS, str(len(tf.config.list_physical_devices("GPU")) + 1))
    manifest = _manifest(tmp_path, "gpus", images, pretrained_backbone, stages=[stage("head", 0, 1)])

    assert main(manifest, progress_port=0) == ExitCode.INVALID == 78

    message = json.loads(termination.read_text())
    assert message["reason"] == FailureReason.GPUS_UNAVAILABLE
    assert "resources.gpus" in message["message"]
    assert not (tmp_path / "gpus" / "models").exists()
