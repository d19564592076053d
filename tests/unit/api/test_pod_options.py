"""spec.pod: label and annotation keys are checked like Kubernetes checks them, with the field named."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubegraft.validation import validate_with_pydantic
from tests.unit.api.corpus import MINIMAL


def _with_pod(**pod: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(MINIMAL)
    manifest["spec"]["pod"] = pod
    return manifest


@pytest.mark.parametrize(
    "key",
    ["-team", "team-", "a b", "example.com/", "/team", "Example.COM/team", "a/b/c", "x" * 64, "e_x.com/a"],
)
def test_a_label_key_kubernetes_would_refuse_is_rejected_naming_the_field(key: str) -> None:
    errors = validate_with_pydantic(_with_pod(labels={key: "v"}))
    assert [e.path for e in errors] == ["spec.pod.labels"]
    assert "not a valid Kubernetes key" in errors[0].message
    assert repr(key) in errors[0].message


@pytest.mark.parametrize("key", ["team", "example.com/team", "a.b-c_d", "x" * 63, f"{'d' * 253}/n"])
def test_label_and_annotation_keys_kubernetes_accepts_are_accepted(key: str) -> None:
    assert validate_with_pydantic(_with_pod(labels={key: "v"}, annotations={key: "any text"})) == []


def test_an_annotation_key_kubernetes_would_refuse_is_rejected_naming_the_field() -> None:
    errors = validate_with_pydantic(_with_pod(annotations={"sidecar inject": "false"}))
    assert [e.path for e in errors] == ["spec.pod.annotations"]


def test_more_labels_than_the_bound_are_rejected() -> None:
    errors = validate_with_pydantic(_with_pod(labels={f"k{i}": "v" for i in range(33)}))
    assert [e.path for e in errors] == ["spec.pod.labels"]
