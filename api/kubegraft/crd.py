"""Generate the TransferJob CustomResourceDefinition from the pydantic models in `kubegraft.spec`.

The models are the single source of truth; this module turns their JSON schema into a
*structural* `openAPIV3Schema` the API server accepts: `$ref` inlined, `Optional` collapsed to the plain type
(the API server prunes nulls, which matches pydantic's None-means-absent), int-or-string fields in the
apiserver's own shape, JSON-Schema-2020 exclusive bounds turned into OpenAPI 3.0 booleans, nested objects
defaulted to `{}` so their children's defaults apply, and each model's `__cel_rules__` placed on its node as
`x-kubernetes-validations`.

Called by `kubegraft crd` (and so `make crd`), by `kubegraft.validation` (which validates manifests against
this very schema) and by the field reference in `kubegraft.reference`.
"""

from __future__ import annotations

import copy
import functools
import typing
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticUndefined

from kubegraft.rules import CelRule
from kubegraft.spec import (
    CATEGORIES,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    TransferJob,
    TransferJobSpec,
)
from kubegraft.status import TransferJobStatus

CRD_NAME = f"{PLURAL}.{GROUP}"

# Keys of a pydantic JSON schema that have no place (or no use) in a CRD schema.
_DROPPED_KEYS = frozenset({"title", "additionalProperties", "$defs"})
# Value validations allowed next to `x-kubernetes-int-or-string` (lifted from the string branch).
_STRING_VALIDATIONS = ("maxLength", "minLength", "pattern", "enum")

_API_VERSION_DESCRIPTION = (
    "APIVersion defines the versioned schema of this representation of an object. Servers should convert "
    "recognized schemas to the latest internal value, and may reject unrecognized values."
)
_KIND_DESCRIPTION = (
    "Kind is a string value representing the REST resource this object represents. Servers may infer this "
    "from the endpoint the client submits requests to. In CamelCase."
)
_METADATA_DESCRIPTION = (
    "Standard object metadata: name (at most 52 characters), namespace, labels, annotations."
)
_STATUS_DESCRIPTION = "What the operator observed about the current run; written by the operator only."

# `kubectl get` shows priority 0 columns; `-o wide` adds the long ones (priority 1).
_PRINTER_COLUMNS: tuple[dict[str, str | int], ...] = (
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Summary of the run."},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage", "description": "Stage now training."},
    {
        "name": "Epoch",
        "type": "integer",
        "jsonPath": ".status.epoch",
        "description": "Epoch within the stage.",
    },
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.progress",
        "description": "Percent of the planned work done.",
    },
    {
        "name": "ETA",
        "type": "integer",
        "jsonPath": ".status.etaSeconds",
        "description": "Estimated seconds to the end of training.",
    },
    {
        "name": "Val-Acc",
        "type": "number",
        "jsonPath": ".status.metrics.val_accuracy",
        "description": "Latest validation accuracy.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Model",
        "type": "string",
        "jsonPath": ".status.modelUri",
        "description": "Published model.",
        "priority": 1,
    },
    {
        "name": "Recipe",
        "type": "string",
        "jsonPath": ".status.recipe",
        "description": "The training recipe.",
        "priority": 1,
    },
)


def _model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from `root`'s fields, keyed by class name (pydantic's `$defs` key)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__name__ in found:
                return
            found[annotation.__name__] = annotation
            for field in annotation.model_fields.values():
                visit(field.annotation)
            return
        for arg in typing.get_args(annotation):
            visit(arg)

    visit(root)
    return found


def _field_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Defaults of `model`'s optional fields by alias, as the API server should apply them.

    A field whose default is a model becomes `{}`, so the API server descends into it and applies its
    children's defaults; None defaults are left out (absent means None).
    """
    defaults: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
        elif field.default is not PydanticUndefined:
            value = field.default
        else:
            continue
        if value is None:
            continue
        if isinstance(value, BaseModel):
            defaults[alias] = {}
        else:
            defaults[alias] = TypeAdapter(Any).dump_python(value, mode="json")
    return defaults


class _SchemaBuilder:
    """Turns one pydantic JSON schema (with `$defs`) into a structural, inlined CRD schema."""

    def __init__(self, model: type[BaseModel]) -> None:
        self._raw = model.model_json_schema(by_alias=True, mode="validation")
        self._defs: dict[str, Any] = self._raw.get("$defs", {})
        self._classes = _model_classes(model)

    def build(self) -> dict[str, Any]:
        root_name = next(name for name, cls in self._classes.items() if cls.__name__ == self._raw["title"])
        return self._model_node(self._raw, root_name)

    def _model_node(self, node: dict[str, Any], def_name: str) -> dict[str, Any]:
        cls = self._classes[def_name]
        defaults = _field_defaults(cls)
        out: dict[str, Any] = {"type": "object"}
        if node.get("description"):
            out["description"] = " ".join(node["description"].split())
        properties: dict[str, Any] = {}
        for key, prop in node.get("properties", {}).items():
            converted = self._convert(prop)
            if key in defaults:
                converted["default"] = defaults[key]
            else:
                converted.pop("default", None)
            properties[key] = converted
        out["properties"] = properties
        if node.get("required"):
            out["required"] = sorted(node["required"])
        rules: tuple[CelRule, ...] = getattr(cls, "__cel_rules__", ())
        if rules:
            out["x-kubernetes-validations"] = [rule.as_crd() for rule in rules]
        return out

    def _convert(self, node: dict[str, Any]) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            def_name = node.pop("$ref").rsplit("/", 1)[-1]
            target = self._model_node(self._defs[def_name], def_name)
            # The field's description is the better `kubectl explain` text; else the class docstring stays.
            if node.get("description"):
                target["description"] = node["description"]
            return target
        if "anyOf" in node:
            return self._union(node)
        return self._keywords(node)

    def _union(self, node: dict[str, Any]) -> dict[str, Any]:
        """int-or-string, or Optional[X] collapsed to X (the API server prunes nulls)."""
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if node.get("x-kubernetes-int-or-string"):
            return self._int_or_string(node, branches)
        if len(branches) != 1:
            raise ValueError(f"unsupported union in CRD schema: {branches}")
        merged = self._convert(branches[0])
        for key, value in node.items():
            if key not in _DROPPED_KEYS and key != "default":
                merged[key] = " ".join(value.split()) if key == "description" else value
        if node.get("default") is not None:
            merged["default"] = node["default"]
        return merged

    def _keywords(self, node: dict[str, Any]) -> dict[str, Any]:
        """A plain node's keywords in OpenAPI 3.0 terms."""
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROPPED_KEYS:
                continue
            if key == "items":
                out[key] = self._convert(value)
            elif key == "const":
                out["enum"] = [value]
            elif key == "exclusiveMinimum":
                out["minimum"] = value
                out["exclusiveMinimum"] = True
            elif key == "exclusiveMaximum":
                out["maximum"] = value
                out["exclusiveMaximum"] = True
            elif key == "description":
                out[key] = " ".join(value.split())
            else:
                out[key] = value
        if isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = self._convert(node["additionalProperties"])
        if out.get("type") == "string" and "enum" in out and "maxLength" not in out:
            # CEL's cost estimator bounds strings by maxLength only.
            out["maxLength"] = max(len(str(v)) for v in out["enum"])
        return out

    @staticmethod
    def _int_or_string(node: dict[str, Any], branches: list[dict[str, Any]]) -> dict[str, Any]:
        """The apiserver's int-or-string shape: `anyOf: [integer, string]`, the marker, string checks."""
        out: dict[str, Any] = {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        }
        for branch in branches:
            if branch.get("type") == "string":
                out.update({k: branch[k] for k in _STRING_VALIDATIONS if k in branch})
        if node.get("description"):
            out["description"] = " ".join(node["description"].split())
        if "default" in node and node["default"] is not None:
            out["default"] = node["default"]
        return out


def _sorted(node: Any) -> Any:
    """Recursively sort mapping keys so the rendered YAML is stable whatever the models' field order."""
    if isinstance(node, dict):
        return {key: _sorted(node[key]) for key in sorted(node)}
    if isinstance(node, list):
        return [_sorted(item) for item in node]
    return node


def build_openapi_schema() -> dict[str, Any]:
    """The `openAPIV3Schema` of the TransferJob (structural, inlined, deterministic)."""
    spec = _SchemaBuilder(TransferJobSpec).build()
    status = _SchemaBuilder(TransferJobStatus).build()
    status["description"] = _STATUS_DESCRIPTION
    root: dict[str, Any] = {
        "description": " ".join((TransferJob.__doc__ or "").split()),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": _API_VERSION_DESCRIPTION, "type": "string"},
            "kind": {"description": _KIND_DESCRIPTION, "type": "string"},
            # Only name and generateName may be constrained at the root; declaring them lets CEL rules and
            # their fieldPath reach metadata.name with a bounded length.
            "metadata": {
                "description": _METADATA_DESCRIPTION,
                "type": "object",
                "properties": {
                    "name": {
                        "description": "Name of the TransferJob, unique in its namespace.",
                        "type": "string",
                        "maxLength": 253,
                    },
                    "generateName": {
                        "description": "Prefix of a generated name, used when name is empty.",
                        "type": "string",
                        "maxLength": 253,
                    },
                },
            },
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [rule.as_crd() for rule in TransferJob.__cel_rules__],
    }
    sorted_root: dict[str, Any] = _sorted(root)
    return sorted_root


@functools.cache
def _cached_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "kubegraft", "app.kubernetes.io/part-of": "kubegraft"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": build_openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(column) for column in _PRINTER_COLUMNS],
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    """The TransferJob CustomResourceDefinition (apiextensions.k8s.io/v1) as a fresh dict."""
    return copy.deepcopy(_cached_crd())


def openapi_schema() -> dict[str, Any]:
    """The served version's `openAPIV3Schema` (a fresh copy), as the API server validates against it."""
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


class _Dumper(yaml.SafeDumper):
    """Block-style YAML with indented lists, as kubectl and controller-gen write it."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, indentless=False)


def render_crd_yaml() -> str:
    """The CRD as a YAML document, byte-for-byte stable (what `make crd` writes)."""
    header = "# Generated by `kubegraft crd` from api/kubegraft/spec.py and status.py. Do not edit.\n---\n"
    body = yaml.dump(build_crd(), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    return header + body
