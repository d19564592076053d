"""`kubegraft status` / `predict -o json` formats and the `kubegraft wait` decision (no cluster)."""

from __future__ import annotations

import json

import pytest

from kubegraft.client import WaitFor, wait_outcome
from kubegraft.printing import duration, prediction_document, render, status_table, status_view


def _condition(type_: str, status: str, reason: str = "R", generation: int = 1) -> dict[str, object]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": "m.",
        "observedGeneration": generation,
    }


def _tj(*conditions: dict[str, object], generation: int = 1, **status: object) -> dict[str, object]:
    meta = {"name": "cars", "namespace": "ml", "generation": generation}
    return {"metadata": meta, "status": {**status, "conditions": list(conditions)}}


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (0, "0s"), (44.6, "45s"), (340, "5m40s"), (7500, "2h5m")]
)
def test_durations_read_like_kubectl_ages(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_status_table_shows_progress_eta_metrics_and_conditions() -> None:
    tj = _tj(
        _condition("Ready", "False", "Training"),
        phase="Running",
        stage="finetune",
        epoch=3,
        totalEpochs=10,
        progress=42,
        etaSeconds=340,
        metrics={"val_accuracy": 0.875},
        unrelated="hidden",
    )
    view = status_view(tj)
    assert "unrelated" not in view and (view["name"], view["namespace"]) == ("cars", "ml")
    text = status_table(view)
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if line[0] != " ")}
    assert (fields["Phase"], fields["Progress"], fields["ETA"]) == ("Running", "42%", "5m40s")
    assert fields["Epoch"] == "3 (of 10 in all stages)" and fields["Model"] == "-"
    assert "  val_accuracy  0.875" in text.splitlines()
    assert any(line.split()[:3] == ["Ready", "False", "Training"] for line in text.splitlines())
    assert json.loads(render(view, "json"))["progress"] == 42


def test_prediction_document_aligns_probabilities_with_classes_and_ranks_the_top() -> None:
    doc = prediction_document(
        "s3://m/3/", 3, ["cat", "dog", "owl"], ["a.jpg", "b.jpg"], [[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], top=2
    )
    assert doc["classes"] == ["cat", "dog", "owl"] and doc["version"] == 3
    first, second = doc["predictions"]
    assert (first["image"], first["class"], first["probabilities"]) == ("a.jpg", "dog", [0.1, 0.7, 0.2])
    assert [t["class"] for t in first["top"]] == ["dog", "owl"]
    assert second["top"] == [{"class": "cat", "probability": 0.5}, {"class": "owl", "probability": 0.3}]
    with pytest.raises(ValueError, match="2 probabilities for 3 classes"):
        prediction_document("u", 1, ["a", "b", "c"], ["x.jpg"], [[0.5, 0.5]], top=1)


def test_wait_for_parses_kubectl_conditions_and_refuses_others() -> None:
    assert WaitFor.parse("condition=Succeeded") == WaitFor("Succeeded", "True")
    assert WaitFor.parse("condition=Ready=false") == WaitFor("Ready", "False")
    for bad in ("delete", "condition=", "jsonpath={.status.phase}", "condition=Ready=maybe"):
        with pytest.raises(ValueError, match="unrecognized condition"):
            WaitFor.parse(bad)


def test_wait_is_met_fails_fast_on_the_opposite_end_and_ignores_an_older_generations_conditions() -> None:
    succeeded = WaitFor("Succeeded")
    assert wait_outcome(_tj(_condition("Succeeded", "True")), succeeded).state == "met"
    assert wait_outcome(_tj(_condition("Succeeded", "False")), succeeded).state == "waiting"
    failed = wait_outcome(_tj(_condition("Failed", "True", "DatasetNotFound")), succeeded)
    assert failed.state == "impossible" and "Failed=True (DatasetNotFound)" in failed.message
    # A new spec (generation 2) starts a new run: the old run's Failed does not end the wait.
    stale = _tj(_condition("Failed", "True", generation=1), generation=2)
    assert wait_outcome(stale, succeeded).state == "waiting"
    assert wait_outcome(_tj(), WaitFor("Ready", "False")).state == "waiting"
