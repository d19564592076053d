"""Read the chart's values.yaml the way helm-docs does: a `# --` comment documents the key below it.

`python -m tests.integration.deploy.values_doc` rewrites the values table at the end of the chart's README.md
from values.yaml; a test fails when the two disagree.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-]+):(?:\s|$)")


@dataclass(frozen=True)
class DocumentedValue:
    """One documented key: its dotted path, description and default (as YAML flow text)."""

    path: str
    description: str
    default: str


def documented_values(values_file: Path) -> list[DocumentedValue]:
    """Every key preceded by a `# --` comment, in file order, with its dotted path and default."""
    lines = values_file.read_text(encoding="utf-8").splitlines()
    values = yaml.safe_load("\n".join(lines))
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    documented: list[DocumentedValue] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = _KEY.match(line)
        if not match:
            if not stripped:
                comment = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = ".".join(key for _, key in stack)
        if comment and comment[0].startswith("--"):
            text = " ".join([comment[0][2:].strip(), *comment[1:]]).strip()
            documented.append(DocumentedValue(path, text, _flow(_lookup(values, path))))
        comment = []
    return documented


def leaf_paths(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf value (scalars, lists and empty maps)."""
    if isinstance(values, dict) and values:
        return [p for key, value in values.items() for p in leaf_paths(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def _lookup(values: Any, path: str) -> Any:
    for key in path.split("."):
        values = values[key]
    return values


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


TABLE_HEADER = "| Key | Default | Description |\n|-----|---------|-------------|\n"


def render_table(values_file: Path) -> str:
    """The README's values table (header included) for every documented key, in file order."""
    rows = [
        f"| `{v.path}` | `{v.default}` | {v.description.replace('|', chr(92) + '|')} |\n"
        for v in documented_values(values_file)
    ]
    return TABLE_HEADER + "".join(rows)


def main() -> None:
    """Rewrite the values table of charts/kubegraft/README.md (everything from the table header on)."""
    chart = Path(__file__).resolve().parents[3] / "charts" / "kubegraft"
    readme = chart / "README.md"
    text = readme.read_text(encoding="utf-8")
    head, found, _ = text.partition(TABLE_HEADER)
    if not found:
        sys.exit(f"{readme}: no values table header found")
    readme.write_text(head + render_table(chart / "values.yaml"), encoding="utf-8")


if __name__ == "__main__":
    main()
