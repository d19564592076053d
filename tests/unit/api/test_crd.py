"""The generated CRD: checked-in copies up to date, structural, documented, CEL rules compiled and placed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml
from celpy import celtypes

from kubegraft.crd import build_crd, openapi_schema, render_crd_yaml
from kubegraft.rules import StringRule
from kubegraft.spec import (
    ENDPOINT_RULES,
    S3_URI_RULES,
    DatasetSpec,
    ResourcesSpec,
    Stage,
    TransferJob,
    TransferJobSpec,
)
from kubegraft.status import TransferJobStatus
from kubegraft.validation import _program, compile_rule
from tests.unit.api.corpus import CRD_FILES

# What a structural schema may hold (apiextensions.k8s.io/v1 JSONSchemaProps that kubegraft uses).
_ALLOWED_KEYS = {
    "type", "description", "properties", "required", "items", "additionalProperties", "default", "enum",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "maxProperties", "anyOf", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
}  # fmt: skip


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _at(path: str) -> dict[str, Any]:
    node = openapi_schema()
    for key in path.split("."):
        node = node["items"] if key == "[]" else node["properties"][key]
    return node


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_checked_in_crd_equals_the_one_generated_from_the_models(path: Any) -> None:
    assert path.read_text(encoding="utf-8") == render_crd_yaml(), f"{path} is stale: run `make crd`"


def test_manifest_and_chart_crd_copies_are_byte_identical() -> None:
    first, second = (path.read_bytes() for path in CRD_FILES)
    assert first == second


def test_rendering_twice_gives_the_same_bytes_and_parses_back_to_build_crd() -> None:
    assert render_crd_yaml() == render_crd_yaml()
    assert yaml.safe_load(render_crd_yaml()) == build_crd()


def test_crd_names_the_transferjob_resource() -> None:
    crd = build_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "transferjobs.kubegraft.io"
    assert spec["group"] == "kubegraft.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "TransferJob"
    assert spec["names"]["plural"] == "transferjobs"
    assert spec["names"]["shortNames"] == ["tj"]
    assert spec["names"]["categories"] == ["kubegraft", "ml"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns_show_progress_and_eta_and_keep_model_and_recipe_for_wide() -> None:
    columns = build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"], c.get("priority", 0)) for c in columns] == [
        ("Phase", ".status.phase", 0),
        ("Stage", ".status.stage", 0),
        ("Epoch", ".status.epoch", 0),
        ("Progress", ".status.progress", 0),
        ("ETA", ".status.etaSeconds", 0),
        ("Val-Acc", ".status.metrics.val_accuracy", 0),
        ("Age", ".metadata.creationTimestamp", 0),
        ("Model", ".status.modelUri", 1),
        ("Recipe", ".status.recipe", 1),
    ]


def test_crd_passes_kubernetes_strict_validation() -> None:
    kubernetes_validate.validate(build_crd(), "1.32.0", strict=True)


def test_schema_is_structural_every_node_typed_nothing_referenced() -> None:
    for path, node in _nodes(openapi_schema()):
        assert set(node) <= _ALLOWED_KEYS, f"{path}: {set(node) - _ALLOWED_KEYS}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
            continue
        assert "anyOf" not in node, f"{path}: unions other than int-or-string are not structural"
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: OpenAPI 3.0 wants a boolean {bound}"
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict), path


def test_every_property_has_a_description_for_kubectl_explain() -> None:
    missing = [
        f"{path}.{key}"
        for path, node in _nodes(openapi_schema())
        for key, child in node.get("properties", {}).items()
        if not child.get("description")
    ]
    assert missing == []


def test_optional_fields_collapse_to_their_plain_type_without_a_default() -> None:
    momentum = _at("spec.stages.[].momentum")
    assert momentum["type"] == "number"
    assert "default" not in momentum
    assert (momentum["minimum"], momentum["maximum"], momentum["exclusiveMaximum"]) == (0, 1, True)
    assert _at("spec.storage.secretRef")["type"] == "object"
    assert "default" not in _at("spec.storage.secretRef")


def test_int_or_string_fields_carry_the_marker_and_string_bounds() -> None:
    for path in ("spec.stages.[].trainable", "spec.resources.cpu", "spec.resources.memory"):
        node = _at(path)
        assert node["x-kubernetes-int-or-string"] is True
        assert "maxLength" in node, path
    assert _at("spec.resources.memory")["default"] == "16Gi"
    assert _at("spec.stages.[].trainable")["default"] == 0


def test_nested_objects_default_to_empty_so_their_children_defaults_apply() -> None:
    for path in ("spec.model", "spec.model.head", "spec.augmentation", "spec.storage", "spec.runPolicy"):
        assert _at(path)["default"] == {}, path
    assert _at("spec.model.head.hidden")["default"] == [256]
    assert _at("spec.output.formats")["default"] == ["savedmodel"]
    assert "default" not in _at("spec.dataset")
    assert "default" not in _at("spec.stages")


def test_dicts_are_additional_properties_and_affinity_is_typed() -> None:
    values = _at("spec.scheduling.nodeSelector")["additionalProperties"]
    assert (values["type"], values["maxLength"]) == ("string", 63)
    affinity = _at("spec.scheduling.affinity")
    assert "x-kubernetes-preserve-unknown-fields" not in affinity
    assert set(affinity["properties"]) == {"nodeAffinity", "podAffinity", "podAntiAffinity"}
    assert _at("status.metrics")["additionalProperties"] == {"type": "number"}


def test_metadata_is_an_object_that_only_constrains_name() -> None:
    metadata = _at("metadata")
    assert metadata["type"] == "object"
    assert set(metadata["properties"]) == {"name", "generateName"}


def test_status_schema_is_the_status_model_with_conditions_keyed_by_type() -> None:
    status = _at("status")
    aliases = {field.alias or name for name, field in TransferJobStatus.model_fields.items()}
    assert set(status["properties"]) == aliases
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("", TransferJob),
        ("spec", TransferJobSpec),
        ("spec.dataset", DatasetSpec),
        ("spec.resources", ResourcesSpec),
        ("spec.stages.[]", Stage),
    ],
)
def test_cel_rules_sit_on_the_node_of_the_model_that_declares_them(path: str, model: Any) -> None:
    node = _at(path) if path else openapi_schema()
    assert node["x-kubernetes-validations"] == [rule.as_crd() for rule in model.__cel_rules__]


def test_every_cel_rule_compiles() -> None:
    rules = [
        rule["rule"]
        for _, node in _nodes(openapi_schema())
        for rule in node.get("x-kubernetes-validations", ())
    ]
    assert len(rules) >= 10
    for rule in rules:
        compile_rule(rule)


def test_strings_and_lists_under_spec_are_bounded_for_the_cel_cost_budget() -> None:
    unbounded = []
    for path, node in _nodes(_at("spec"), "spec"):
        if path.endswith("{}"):
            continue  # map values are out of CEL's reach
        if (
            node.get("type") == "string" or node.get("x-kubernetes-int-or-string")
        ) and "maxLength" not in node:
            unbounded.append(path)
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
    assert unbounded == []


_URI_SAMPLES = (
    "s3://datasets/flowers/",
    "s3://a..b/x",
    "s3://192.168.1.1/x",
    "s3://ab/x",
    "s3://xn--abc/x",
    "s3://datasets/../x",
    "s3://datasets/./x",
    "s3://datasets//x",
    "s3://datasets/x?y=1",
    "s3://datasets/x#y",
    "file:///data/../x",
    "plain/../path",
    "http://minio.storage:9000",
    "http://user:pass@minio:9000",
    "http://169.254.169.254/latest",
    "http://[fd00:ec2::254]/",
    "http://[FE80::1]:9000",
    "http://[::ffff:169.254.169.254]/",
    "http://metadata.google.internal./",
    "http://2852039166/",
    "http://0xA9FEA9FE/",
    "https://s3.us-east-1.amazonaws.com",
    "https://169.254.example.com",
    "http://0251.0376.0251.0376/",
    "http://169.16689662/",
    "http://127.1:9000",
    "http://10.0.0.1:9000",
    "http://0xdeadbeef.example.com/",
)


@pytest.mark.parametrize("rule", [*S3_URI_RULES, *ENDPOINT_RULES], ids=lambda r: r.message[:40])
def test_string_rule_decides_like_its_cel_expression(rule: StringRule) -> None:
    program = _program(rule.cel)
    for value in _URI_SAMPLES:
        cel = program.evaluate({"self": celtypes.StringType(value)})
        assert bool(cel) == rule.holds(value), value
