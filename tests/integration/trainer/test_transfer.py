"""The transfer task end to end on disk: pretrained staged run vs from scratch, export, predict, progress.

Target task: Fashion-MNIST classes 0-4, 100 training images per class; the backbone was pretrained on classes
5-9 only (tests/harness/backbone.py). Held-out images come from the t10k split.
"""

from __future__ import annotations

import io
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from kubegraft.cli import app
from kubegraft.spec import TransferJobSpec
from kubegraft_trainer.export import SERVING_SIGNATURE
from kubegraft_trainer.images import decode_and_resize
from kubegraft_trainer.progress import ProgressServer, ProgressTracker
from kubegraft_trainer.repository import COMPLETE_MARKER
from kubegraft_trainer.run import RunResult, train
from tests.harness.fashion import CLASS_NAMES, encode_image, load_fashion_mnist, pick_indices
from tests.integration.trainer.conftest import TRANSFER_CLASSES, build_spec, stage

# Pretrained staged accuracy minus the same stages' accuracy from scratch (weights none), on the held-out
# images, must be at least this. Measured on 500 held-out images (2026-12-05, this recipe): seed 7 0.692 vs
# 0.594, seed 3 0.608 vs 0.550; on 200 images seeds 1 and 2 gave 0.69 vs 0.525 and 0.72 vs 0.565, and seed 7
# with two other builds of the backbone (seeds 1 and 2; CI builds its own) 0.706 and 0.678 vs 0.594. Both runs
# get the trainer's BatchNormalization repair (a from-scratch backbone's BN statistics are re-estimated after
# it trains), which is what makes the scratch run a fair opponent.
TRANSFER_MARGIN = 0.05
HELD_OUT_PER_CLASS = 100


@dataclass
class HeldOut:
    """Held-out t10k images of the target classes: encoded PNGs, decoded pixels and class names."""

    png: list[bytes]
    pixels: np.ndarray[Any, Any]
    names: list[str]

    def labels(self, class_names: list[str]) -> np.ndarray[Any, Any]:
        """The true labels as indices into a model's class list."""
        return np.array([class_names.index(n) for n in self.names], dtype="int32")


@pytest.fixture(scope="module")
def held_out() -> HeldOut:
    images, _ = load_fashion_mnist("test")
    chosen = pick_indices("test", TRANSFER_CLASSES, HELD_OUT_PER_CLASS, seed=1)
    png = [encode_image(images[i]) for cls in TRANSFER_CLASSES for i in chosen[cls]]
    names = [CLASS_NAMES[cls] for cls in TRANSFER_CLASSES for _ in chosen[cls]]
    pixels = np.stack([decode_and_resize(tf.constant(b), 32).numpy() for b in png])
    return HeldOut(png, pixels, names)


def _spec(
    data: Path, weights: str, stages: list[dict[str, Any]] | None, output: Path, **extra: Any
) -> TransferJobSpec:
    return build_spec(
        data, weights, stages, {"uri": str(output), "formats": ["savedmodel", "keras"]}, **extra
    )


STAGED = [
    stage("head", 0, 4, learningRate=3e-3),
    stage("finetune", "all", 6, optimizer="adam", learningRate=3e-4),
]


class _PollProgress(keras.callbacks.Callback):  # type: ignore[misc]
    """Reads /progress and /metrics over HTTP at the end of the first fine-tune epoch."""

    def __init__(self, tracker: ProgressTracker, port: int) -> None:
        super().__init__()
        self.tracker, self.port = tracker, port
        self.seen: dict[str, str] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.seen or self.tracker.snapshot().stage != "finetune":
            return
        for path in ("progress", "metrics"):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/{path}", timeout=10) as response:
                self.seen[path] = response.read().decode()


@dataclass
class StagedRun:
    result: RunResult
    output: Path
    polled: dict[str, str] = field(default_factory=dict)
    log: str = ""


@pytest.fixture(scope="module")
def staged_run(
    pretrained_backbone: Path, transfer_images: Path, tmp_path_factory: pytest.TempPathFactory
) -> StagedRun:
    output = tmp_path_factory.mktemp("staged") / "models"
    out = io.StringIO()
    tracker = ProgressTracker(out=out)
    server = ProgressServer(tracker, port=0, bind="127.0.0.1").start()
    poll = _PollProgress(tracker, server.port)
    try:
        spec = _spec(transfer_images, str(pretrained_backbone), STAGED, output)
        result = train(spec, run_id="staged", tracker=tracker, extra_callbacks=[poll])
    finally:
        server.stop()
    return StagedRun(result, output, poll.seen, out.getvalue())


def test_pretrained_staged_run_beats_training_from_scratch_on_held_out_images(
    staged_run: StagedRun, transfer_images: Path, held_out: HeldOut, tmp_path: Path
) -> None:
    # The same model and stages, from randomly initialised weights.
    scratch = train(_spec(transfer_images, "none", STAGED, tmp_path / "m"), run_id="scratch")

    def accuracy(result: RunResult) -> float:
        probabilities = result.parts.model.predict(held_out.pixels, verbose=0)
        return float(np.mean(probabilities.argmax(axis=1) == held_out.labels(result.class_names)))

    transferred, from_scratch = accuracy(staged_run.result), accuracy(scratch)
    print(f"held-out accuracy: pretrained staged {transferred:.3f}, from scratch {from_scratch:.3f}")
    assert transferred >= from_scratch + TRANSFER_MARGIN
    assert transferred >= 0.5  # five classes: chance is 0.2


def test_exported_savedmodel_serves_encoded_png_like_the_keras_model(
    staged_run: StagedRun, held_out: HeldOut
) -> None:
    version_dir = staged_run.output / "1"
    loaded = tf.saved_model.load(str(version_dir))
    serve = loaded.signatures[SERVING_SIGNATURE]
    outputs = serve(images=tf.constant(held_out.png))
    served = outputs["probabilities"].numpy()
    expected = staged_run.result.parts.model.predict(held_out.pixels, verbose=0)
    np.testing.assert_allclose(served, expected, atol=1e-4)
    classes = [[c.decode() for c in row] for row in outputs["classes"].numpy()]
    names = staged_run.result.class_names
    assert names == sorted(CLASS_NAMES[c] for c in TRANSFER_CLASSES)
    assert [row[0] for row in classes] == [names[i] for i in served.argmax(axis=1)]
    assert all(sorted(row) == sorted(names) for row in classes)
    scores = outputs["scores"].numpy()  # scores[i][j] is the probability of classes[i][j]
    ranked = np.take_along_axis(served, np.array([[names.index(c) for c in row] for row in classes]), axis=1)
    np.testing.assert_array_equal(scores, ranked)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_published_version_holds_model_reports_and_marker_and_no_checkpoints(staged_run: StagedRun) -> None:
    version_dir = staged_run.output / "1"
    for name in (
        "saved_model.pb",
        "labels.txt",
        "metrics.json",
        "training_curves.png",
        "confusion_matrix.png",
        "model.keras",
        "transferjob.json",
        COMPLETE_MARKER,
    ):
        assert (version_dir / name).is_file(), name
    assert (version_dir / "labels.txt").read_text().split() == sorted(
        CLASS_NAMES[c] for c in TRANSFER_CLASSES
    )
    metrics = json.loads((version_dir / "metrics.json").read_text())
    assert [s["name"] for s in metrics["stages"]] == ["head", "finetune"]
    assert metrics["stages"][0]["cached_features"] is True
    assert len(metrics["stages"][1]["history"]["val_accuracy"]) == metrics["stages"][1]["epochs_run"]
    assert 0.0 <= metrics["testAccuracy"] <= 1.0
    assert len(metrics["test"]["confusion_matrix"]) == 5
    assert set(metrics["test"]["per_class"]) == {CLASS_NAMES[c] for c in TRANSFER_CLASSES}
    assert metrics["split"]["counts"]["train"] == 500
    assert not list((staged_run.output / "checkpoints").glob("staged/*"))


def test_predict_cli_prints_top_classes_of_each_image(
    staged_run: StagedRun, held_out: HeldOut, tmp_path: Path
) -> None:
    files = []
    for i in (0, HELD_OUT_PER_CLASS):  # a T-shirt_top, a Trouser
        path = tmp_path / f"image-{i}.png"
        path.write_bytes(held_out.png[i])
        files.append(str(path))
    result = CliRunner().invoke(app, ["predict", str(staged_run.output), *files, "--top", "2"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(lines) == 2
    for line in lines:
        ranked = eval(line.split(": ", 1)[1])  # the CLI prints Python tuples, its documented format
        assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]
        assert ranked[0][0] in {CLASS_NAMES[c] for c in TRANSFER_CLASSES}
    # -o json: the same ranking, and every class's probability aligned with the classes list.
    result = CliRunner().invoke(app, ["predict", str(staged_run.output), *files, "--top", "2", "-o", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document["classes"]) == len(TRANSFER_CLASSES)
    for line, prediction in zip(lines, document["predictions"], strict=True):
        ranked = eval(line.split(": ", 1)[1])
        assert prediction["class"] == ranked[0][0] == prediction["top"][0]["class"]
        scores = prediction["probabilities"]
        assert len(scores) == len(document["classes"]) and sum(scores) == pytest.approx(1.0, abs=1e-4)
        assert document["classes"][scores.index(max(scores))] == prediction["class"]


def test_progress_server_serves_progress_and_metrics_during_the_run(staged_run: StagedRun) -> None:
    progress = json.loads(staged_run.polled["progress"])
    assert progress["state"] == "training" and progress["stage"] == "finetune"
    assert progress["stages"] == ["head", "finetune"]
    assert progress["completedEpochs"] == 5 and progress["totalEpochs"] == 10
    assert progress["images"]["train"] == 500
    metrics = staged_run.polled["metrics"]
    assert 'kubegraft_train_stage_info{stage="finetune"} 1.0' in metrics
    assert "kubegraft_train_completed_epochs 5.0" in metrics
    for name in (
        "epoch",
        "total_epochs",
        "loss",
        "accuracy_ratio",
        "val_loss",
        "val_accuracy_ratio",
        "images_total",
        "images_skipped_total",
        "eta_seconds",
        "last_progress_timestamp_seconds",
    ):
        assert f"\nkubegraft_train_{name} " in metrics, name
    assert staged_run.log.count("[finetune] epoch") == staged_run.result.records[1].epochs_run


def test_linear_classifier_is_fit_on_features_and_exported_in_the_serving_model(
    pretrained_backbone: Path, transfer_images: Path, held_out: HeldOut, tmp_path: Path
) -> None:
    spec = _spec(transfer_images, str(pretrained_backbone), None, tmp_path / "m", classifier="linear")
    result = train(spec, run_id="linear")
    record = result.records[0]
    assert record.name == "linear" and record.extra["C"] > 0
    serve = tf.saved_model.load(str(tmp_path / "m" / "1")).signatures[SERVING_SIGNATURE]
    served = serve(images=tf.constant(held_out.png))["probabilities"].numpy()
    accuracy = float(np.mean(served.argmax(axis=1) == held_out.labels(result.class_names)))
    assert accuracy >= 0.4  # chance is 0.2
