"""Hand-written docs that restate the code are checked against it, so they cannot drift (issue 15)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kubegraft.status import ConditionType

REPO = Path(__file__).resolve().parents[2]


def _section(text: str, start: str, end: str) -> str:
    begin = text.index(start)
    return text[begin : text.index(end, begin + len(start))]


def test_api_status_section_names_every_condition_type() -> None:
    status = _section((REPO / "docs" / "api.md").read_text(), "## Status", "## Field reference")
    kinds = [value for name, value in vars(ConditionType).items() if name.isupper()]
    assert kinds
    missing = [kind for kind in kinds if f"`{kind}`" not in status]
    assert missing == []


def _verbs(cell: str) -> frozenset[str]:
    return frozenset(verb.strip() for verb in cell.split(","))


def test_operator_rbac_table_is_exactly_the_cluster_role() -> None:
    table = _section(
        (REPO / "docs" / "operator.md").read_text(), "RBAC the operator needs", "No namespace access"
    )
    documented = set()
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        group = cells[0].strip("`").strip('"')
        for resource in re.findall(r"`([^`]+)`", cells[1]):
            documented.add((group, resource, _verbs(cells[2])))
    role = next(
        doc
        for doc in yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text())
        if doc["kind"] == "ClusterRole"
    )
    granted = {
        (group, resource, frozenset(rule["verbs"]))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert documented == granted


def test_every_manifest_path_the_docs_run_exists() -> None:
    pattern = re.compile(r"kubegraft (?:run|validate) ((?:\./)?[\w./-]+\.ya?ml)")
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for path in pattern.findall(doc.read_text()):
            if "/" in path and not (REPO / path).exists():
                missing.append(f"{doc.name}: {path}")
    assert missing == []
