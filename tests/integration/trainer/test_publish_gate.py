"""The publish gate in a real run (local storage): a model kept back, and a retried run publishing once."""

from __future__ import annotations

import io
import json
from pathlib import Path

from kubegraft.runtime import NoticeReason
from kubegraft_trainer.progress import ProgressTracker
from kubegraft_trainer.repository import complete_versions, work_uri
from kubegraft_trainer.run import train
from kubegraft_trainer.storage import LocalStorage
from tests.integration.trainer.conftest import build_spec, stage

# One head epoch at this rate leaves the model near chance: far below the minimum asked.
USELESS = [stage("head", 0, 1, learningRate=1e-7)]


def test_a_run_below_the_minimum_succeeds_publishes_nothing_and_keeps_its_report(
    tiny_backbone: Path, transfer_images: Path, tmp_path: Path
) -> None:
    output = {"uri": str(tmp_path / "models"), "minTestAccuracy": 0.99}
    spec = build_spec(transfer_images, tiny_backbone, USELESS, output)
    tracker = ProgressTracker(out=io.StringIO())

    result = train(spec, run_id="gated", tracker=tracker)

    assert (result.version, result.model_uri) == (None, None)
    assert result.metrics["publish"]["reason"] == NoticeReason.BELOW_MINIMUM
    progress = tracker.snapshot()
    assert progress.state == "succeeded" and progress.model_uri is None
    notice = next(n for n in progress.notices if n.reason == NoticeReason.BELOW_MINIMUM)
    assert "minTestAccuracy 0.99" in notice.message
    repository, work = Path(spec.output.uri), Path(work_uri(spec.output.uri))
    assert not repository.exists() or not complete_versions(LocalStorage(str(repository)))
    report = json.loads((work / "reports" / "gated" / "metrics.json").read_text())
    assert report["publish"]["published"] is False
    assert report["testAccuracy"] < 0.99
    assert (work / "reports" / "gated" / "training_curves.png").is_file()
    assert not (work / "checkpoints" / "gated").exists()


def test_a_retried_run_that_already_published_returns_its_version_without_comparing_with_itself(
    tiny_backbone: Path, transfer_images: Path, tmp_path: Path
) -> None:
    output = {"uri": str(tmp_path / "models"), "publishPolicy": "ifBetter"}
    spec = build_spec(transfer_images, tiny_backbone, USELESS, output)
    first = train(spec, run_id="once", tracker=ProgressTracker(out=io.StringIO()))
    assert first.version == 1

    tracker = ProgressTracker(out=io.StringIO())
    again = train(spec, run_id="once", tracker=tracker)  # the pod died after publishing; the Job retries

    assert (again.version, again.model_uri) == (1, first.model_uri)
    assert not [n for n in tracker.snapshot().notices if n.reason == NoticeReason.NOT_BETTER]
    assert complete_versions(LocalStorage(spec.output.uri)) == [1]
