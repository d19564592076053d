"""docs/api.md: its generated field reference matches the models and covers every spec field."""

from __future__ import annotations

import pytest

from kubegraft.crd import openapi_schema
from kubegraft.reference import BEGIN_MARKER, END_MARKER, render_field_reference, update_document
from tests.unit.api.corpus import REPO

DOC = REPO / "docs" / "api.md"


def test_docs_field_reference_is_up_to_date() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert update_document(text) == text, "docs/api.md is stale: run `make crd`"


def test_reference_lists_every_top_level_spec_field_and_every_rule() -> None:
    reference = render_field_reference()
    spec = openapi_schema()["properties"]["spec"]
    for key in spec["properties"]:
        assert f"| `spec.{key}` |" in reference
    assert "| `spec.stages[].trainable` |" in reference
    assert "validationSplit + testSplit must be less than 1" in reference


def test_update_document_refuses_a_text_without_markers() -> None:
    with pytest.raises(ValueError, match="markers"):
        update_document("# API\n")


def test_update_document_replaces_only_the_generated_part() -> None:
    text = f"intro\n{BEGIN_MARKER}\nold table\n{END_MARKER}\noutro\n"
    updated = update_document(text)
    assert updated.startswith(f"intro\n{BEGIN_MARKER}\n| Field |")
    assert updated.endswith(f"{END_MARKER}\noutro\n")
    assert "old table" not in updated
