"""The emulator's TransferJob admission gives the same verdict and defaulting with its cache as without it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubegraft.validation import validate_object
from tests.harness import emulator

SPEC: dict[str, Any] = {
    "dataset": {"uri": "s3://datasets/flowers/"},
    "output": {"uri": "s3://models/flowers/"},
    "model": {"backbone": "MobileNetV2"},
    "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
}


def _tj(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": name, "namespace": "ns", "uid": "u"},
        "spec": copy.deepcopy(spec or SPEC),
    }


def _uncached(obj: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    meta = obj["metadata"]
    view = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    view["metadata"] = {"name": meta["name"]}
    result = validate_object(view)
    if not result.ok:
        return obj, [(str(e.path), str(e.message)) for e in result.errors]
    return {**result.defaulted, "metadata": meta}, []


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    emulator._admitted.clear()


def test_a_second_object_with_the_same_spec_gets_the_same_defaulting_under_its_own_name() -> None:
    first, errors = emulator.admit_transferjob(_tj("one"))
    assert errors == []
    second, errors = emulator.admit_transferjob(_tj("two"))
    assert errors == []
    assert len(emulator._admitted) == 1
    assert second == _uncached(_tj("two"))[0]
    assert second["metadata"]["name"] == "two"
    assert second["spec"] == first["spec"]
    second["spec"]["dataset"]["uri"] = "changed"
    assert emulator.admit_transferjob(_tj("three"))[0]["spec"]["dataset"]["uri"] == SPEC["dataset"]["uri"]


@pytest.mark.parametrize("name", ["Upper-Case", "x" * 53, "ends-with-", "x" * 254])
def test_a_bad_name_is_refused_with_the_full_validators_errors_even_when_its_spec_is_cached(
    name: str,
) -> None:
    assert emulator.admit_transferjob(_tj("fine"))[1] == []
    _, errors = emulator.admit_transferjob(_tj(name))
    assert errors
    assert errors == _uncached(_tj(name))[1]


def test_an_invalid_spec_is_refused_with_the_same_errors_and_never_cached() -> None:
    bad = copy.deepcopy(SPEC)
    bad["dataset"]["testSplit"] = 2
    _, errors = emulator.admit_transferjob(_tj("bad", bad))
    assert errors == _uncached(_tj("bad", bad))[1]
    assert errors
    assert emulator._admitted == {}
