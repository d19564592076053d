"""TensorBoard event files: one run per stage beside the model, every epoch once, also across a resume."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.repository import tensorboard_uri
from kubegraft_trainer.run import train
from tests.integration.trainer.conftest import SpecFactory, stage
from tests.integration.trainer.test_stages import RunKilledError, _InterruptAt


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
    }


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
