"""strategy and budget: defaulting keeps explicit stages as they were; a spec without stages searches."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubegraft.spec import SearchBudget, TransferJobSpec

BASE: dict[str, Any] = {"dataset": {"uri": "s3://data/flowers/"}, "output": {"uri": "s3://models/flowers/"}}


def spec(**fields: Any) -> TransferJobSpec:
    return TransferJobSpec.model_validate({**BASE, **fields})


def test_spec_without_stages_resolves_to_auto_with_the_default_budget() -> None:
    resolved = spec()
    assert resolved.strategy is None
    assert resolved.resolved_strategy == "auto"
    assert resolved.resolved_budget == SearchBudget(minutes=30, epochs=200)


@pytest.mark.parametrize(
    "fields",
    [
        {"stages": [{"name": "head"}]},
        {"classifier": "linear"},
        {"strategy": "stages"},
        {"classifier": "linear", "stages": [{"name": "ft", "trainable": 10}]},
    ],
    ids=["explicit-stages", "linear-classifier", "strategy-stages", "linear-then-finetune"],
)
def test_explicit_stages_or_linear_classifier_keep_the_stages_strategy(fields: dict[str, Any]) -> None:
    resolved = spec(**fields)
    assert resolved.resolved_strategy == "stages"
    before = TransferJobSpec.model_validate({**BASE, **fields})
    assert resolved.resolved_stages() == before.resolved_stages()


def test_strategy_stages_without_stages_runs_the_documented_default_stages() -> None:
    assert [s.name for s in spec(strategy="stages").resolved_stages()] == ["head", "finetune"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"strategy": "auto", "stages": [{"name": "head"}]}, "strategy"),
        ({"strategy": "auto", "classifier": "linear"}, "strategy"),
        ({"budget": {"minutes": 5}, "stages": [{"name": "head"}]}, "budget"),
        ({"budget": {"minutes": 5}, "strategy": "stages"}, "budget"),
        ({"budget": {"epochs": 0}}, "budget"),
    ],
)
def test_contradictory_strategy_fields_are_rejected_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        spec(**fields)
    assert field in str(caught.value)


def test_budget_alone_implies_auto_and_keeps_its_values() -> None:
    resolved = spec(budget={"minutes": 7})
    assert resolved.resolved_strategy == "auto"
    assert resolved.resolved_budget == SearchBudget(minutes=7, epochs=200)
