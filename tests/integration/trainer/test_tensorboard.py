"""TensorBoard event files: one run per stage beside the model, every epoch once, also across a resume.

Read back with TensorBoard's own reader (`EventAccumulator`), locally and after a download from S3.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.repository import tensorboard_uri
from kubegraft_trainer.run import train
from tests.harness.s3 import SeaweedFS
from tests.integration.trainer.conftest import SpecFactory, build_spec, stage
from tests.integration.trainer.test_stages import RunKilledError, _InterruptAt


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
    }


def _event_folders(root: Path) -> set[str]:
    """The TensorBoard run folders under ``root`` (those holding an event file), relative, as posix paths."""
    return {p.parent.relative_to(root).as_posix() for p in root.rglob("*tfevents*")}


def _assert_epochs_match(scalars: dict[str, list[tuple[int, float]]], history: dict[str, Any]) -> None:
    """Each tag of metrics.json's history is in ``scalars`` once per epoch, at steps 1..n, with its values."""
    assert history
    for tag, values in history.items():
        assert [step for step, _ in scalars[tag]] == list(range(1, len(values) + 1)), tag
        assert [value for _, value in scalars[tag]] == pytest.approx(values, rel=1e-6), tag


def test_killed_and_resumed_run_has_each_epoch_once_matching_metrics_json(
    tiny_backbone: Path, transfer_images: Path, make_spec: SpecFactory
) -> None:
    spec = make_spec(
        transfer_images, tiny_backbone, [stage("head", 0, 3), stage("finetune", 4, 4, learningRate=1e-3)]
    )
    first = ProgressTracker(out=io.StringIO())
    with pytest.raises(RunKilledError):
        train(spec, run_id="tb", tracker=first, extra_callbacks=[_InterruptAt(first, "finetune", 2)])
    result = train(spec, run_id="tb", tracker=ProgressTracker(out=io.StringIO()))

    root = Path(tensorboard_uri(spec.output.uri, "tb"))
    assert not (Path(spec.output.uri) / "tensorboard").exists()  # the base path holds only versions
    assert len(list((root / "finetune").glob("*tfevents*"))) == 2  # the retry appended a file of its own
    for record in result.metrics["stages"]:
        scalars = _scalars(root / record["name"])
        for tag in ("loss", "accuracy", "val_loss", "val_accuracy"):
            steps = [step for step, _ in scalars[tag]]
            assert steps == list(range(1, record["epochs_run"] + 1)), (record["name"], tag, steps)
            values = [value for _, value in scalars[tag]]
            assert values == pytest.approx(record["history"][tag], rel=1e-6)
        rate = {s.name: s.learning_rate for s in spec.resolved_stages()}[record["name"]]
        assert [v for _, v in scalars["learning_rate"]] == pytest.approx([rate] * record["epochs_run"])
        assert all(v > 0 for _, v in scalars["images_per_second"])
    test = _scalars(root / "test_metrics")
    assert test["test_accuracy"][0][1] == pytest.approx(result.metrics["test"]["accuracy"])


@pytest.mark.usefixtures("s3_env")
def test_run_to_s3_uploads_each_stage_under_work_area_tensorboard_prefix_readable_after_download(
    s3_server: SeaweedFS, s3_bucket: str, tiny_backbone: Path, transfer_images: Path, tmp_path: Path
) -> None:
    spec = build_spec(
        transfer_images,
        tiny_backbone,
        [stage("head", 0, 2), stage("finetune", 4, 2, learningRate=1e-3)],
        {"uri": f"s3://{s3_bucket}/team/models"},
        storage={"endpoint": s3_server.endpoint},
    )
    result = train(spec, run_id="tb-s3", tracker=ProgressTracker(out=io.StringIO()))

    prefix = "team/.kubegraft/models/tensorboard/tb-s3/"  # docs/trainer.md: <parent>/.kubegraft/<name>/...
    assert tensorboard_uri(spec.output.uri, "tb-s3") == f"s3://{s3_bucket}/{prefix.rstrip('/')}"
    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]]
    local = tmp_path / "downloaded"
    for key in keys:
        target = local / key.removeprefix(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(s3_bucket, key, str(target))
    assert _event_folders(local) == {"head", "finetune", "test_metrics"}
    for record in result.metrics["stages"]:
        assert record["epochs_run"] == 2
        scalars = _scalars(local / record["name"])
        _assert_epochs_match(scalars, record["history"])
        assert [step for step, _ in scalars["images_per_second"]] == [1, 2]
    test = _scalars(local / "test_metrics")
    ((step, accuracy),) = test["test_accuracy"]  # at the step of the 4 epochs trained
    assert step == 4
    assert accuracy == pytest.approx(result.metrics["test"]["accuracy"])


def test_auto_search_writes_each_candidate_under_its_own_search_folder(
    tiny_backbone: Path, transfer_images: Path, tmp_path: Path
) -> None:
    # A 30-epoch budget: the linear candidate and the 30-epoch head (early stopping may end it sooner).
    spec = build_spec(
        transfer_images, tiny_backbone, None, {"uri": str(tmp_path / "models")}, budget={"epochs": 30}
    )
    result = train(spec, run_id="tb-auto", tracker=ProgressTracker(out=io.StringIO()))

    root = Path(tensorboard_uri(spec.output.uri, "tb-auto"))
    candidates = {c["name"]: c for c in result.metrics["search"]["candidates"]}
    ran = {name for name, c in candidates.items() if c["status"] != "skipped"}
    assert ran == {"linear", "head"}, candidates
    assert _event_folders(root) == {"search-linear/linear", "search-head/head", "test_metrics"}
    linear = _scalars(root / "search-linear" / "linear")
    assert set(linear) == {"accuracy", "val_accuracy"}  # one exact fit: step 1, no loss or learning rate
    ((step, accuracy),) = linear["val_accuracy"]
    assert step == 1
    assert accuracy == pytest.approx(candidates["linear"]["validation_accuracy"])
    head = _scalars(root / "search-head" / "head")
    epochs = candidates["head"]["epochs"]
    for tag in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert [step for step, _ in head[tag]] == list(range(1, epochs + 1)), tag
    assert max(v for _, v in head["val_accuracy"]) == pytest.approx(candidates["head"]["validation_accuracy"])


def test_linear_classifier_run_writes_its_fit_as_one_step(
    tiny_backbone: Path, transfer_images: Path, make_spec: SpecFactory
) -> None:
    spec = make_spec(transfer_images, tiny_backbone, None, classifier="linear")
    result = train(spec, run_id="tb-linear", tracker=ProgressTracker(out=io.StringIO()))

    root = Path(tensorboard_uri(spec.output.uri, "tb-linear"))
    assert _event_folders(root) == {"linear", "test_metrics"}
    (record,) = result.metrics["stages"]
    _assert_epochs_match(_scalars(root / "linear"), record["history"])


def test_tensorboard_false_writes_no_event_file(
    tiny_backbone: Path, transfer_images: Path, tmp_path: Path
) -> None:
    output = {"uri": str(tmp_path / "models"), "tensorboard": False}
    spec = build_spec(transfer_images, tiny_backbone, [stage("head", 0, 1)], output)
    train(spec, run_id="tb-off", tracker=ProgressTracker(out=io.StringIO()))

    parent = Path(spec.output.uri).parent
    assert not list(parent.rglob("*tfevents*"))
    assert not Path(tensorboard_uri(spec.output.uri, "tb-off")).exists()
