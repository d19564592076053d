"""Render the TransferJob field reference (Markdown) from the generated CRD schema, for docs/api.md.

The table is generated so it cannot drift from the models: `make crd` rewrites the part of docs/api.md between
the markers below (`python -m kubegraft.reference docs/api.md`), and a unit test fails when it is stale.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kubegraft.crd import openapi_schema

BEGIN_MARKER = "<!-- BEGIN GENERATED FIELD REFERENCE (make crd) -->"
END_MARKER = "<!-- END GENERATED FIELD REFERENCE -->"


def _type_name(schema: Mapping[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"[]{_type_name(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        return f"map[string]{_type_name(schema['additionalProperties'])}"
    return str(kind)


def _bounds(schema: Mapping[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is None and high is None:
        return ""
    left = "(" if schema.get("exclusiveMinimum") else "["
    right = ")" if schema.get("exclusiveMaximum") else "]"
    return f"Range {left}{'' if low is None else low}, {'' if high is None else high}{right}."


def _constraints(schema: Mapping[str, Any], required: bool) -> str:
    parts = ["**Required.**"] if required else []
    if "enum" in schema:
        parts.append("One of: " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".")
    parts.append(_bounds(schema))
    if "minItems" in schema or "maxItems" in schema:
        parts.append(f"{schema.get('minItems', 0)} to {schema.get('maxItems', 'any')} items.")
    if schema.get("x-kubernetes-list-type") == "set":
        parts.append("Items unique.")
    if "maxLength" in schema and "enum" not in schema:
        parts.append(f"At most {schema['maxLength']} characters.")
    return " ".join(p for p in parts if p)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(schema: Mapping[str, Any], path: str) -> Iterator[str]:
    required = set(schema.get("required", ()))
    for key in sorted(schema.get("properties", {})):
        prop = schema["properties"][key]
        child = f"{path}.{key}"
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        description = " ".join(
            p for p in (prop.get("description", ""), _constraints(prop, key in required)) if p
        )
        yield f"| `{child}` | {_type_name(prop)} | {_cell(default)} | {_cell(description)} |"
        if "properties" in prop:
            yield from _rows(prop, child)
        elif "properties" in prop.get("items", {}):
            yield from _rows(prop["items"], f"{child}[]")


def _rules(schema: Mapping[str, Any], path: str) -> Iterator[str]:
    for rule in schema.get("x-kubernetes-validations", ()):
        yield f"| `{path or '.'}` | {_cell(rule['message'])} | `{_cell(rule['rule'])}` |"
    for key in sorted(schema.get("properties", {})):
        prop = schema["properties"][key]
        yield from _rules(prop, f"{path}.{key}" if path else key)
        if "items" in prop:
            yield from _rules(prop["items"], f"{path}.{key}[]" if path else f"{key}[]")


def render_field_reference() -> str:
    """The Markdown field reference: every spec field, then every cross-field rule."""
    root = openapi_schema()
    lines = [
        "| Field | Type | Default | Description |",
        "| --- | --- | --- | --- |",
        *_rows(root["properties"]["spec"], "spec"),
        "",
        "Cross-field rules (CEL, checked by the API server and by `kubegraft validate`):",
        "",
        "| On | Rule | CEL |",
        "| --- | --- | --- |",
        *_rules({k: v for k, v in root.items() if k != "properties"}, ""),
        *_rules(root["properties"]["spec"], "spec"),
    ]
    return "\n".join(lines) + "\n"


def update_document(text: str) -> str:
    """`text` with the part between the markers replaced by the current reference.

    Raises:
        ValueError: when the markers are missing.
    """
    start, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"markers {BEGIN_MARKER!r} ... {END_MARKER!r} not found")
    return text[: start + len(BEGIN_MARKER)] + "\n" + render_field_reference() + text[end:]


def main(argv: list[str]) -> int:
    """Rewrite the reference section of each Markdown file named in `argv`."""
    for name in argv:
        path = Path(name)
        path.write_text(update_document(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
