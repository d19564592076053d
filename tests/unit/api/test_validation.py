"""Manifest validation: the CRD path (jsonschema + CEL) and the pydantic path agree; the CLI reports it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kubegraft.cli import app
from kubegraft.spec import TransferJob
from kubegraft.validation import (
    CEL_SKIPPED_MESSAGE,
    FieldError,
    validate_documents,
    validate_object,
    validate_with_pydantic,
)
from tests.unit.api.corpus import MINIMAL, VALID_VARIANTS, InvalidCase, example_files, invalid_cases, names

INVALID = invalid_cases()
EXAMPLES = example_files()
runner = CliRunner()


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def test_invalid_corpus_is_large_and_names_distinct_fields() -> None:
    assert len(INVALID) >= 200
    assert len({case.expect for case in INVALID}) >= 90


def test_there_is_one_example_per_seed_strategy() -> None:
    assert {path.stem for path in EXAMPLES} >= {
        "linear-bottleneck-features",
        "train-top-only",
        "finetune-last-layers",
        "cars-freeze-then-finetune",
        "finetune-all-layers",
        "from-scratch",
    }


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.path.stem)
def test_kubegraft_validate_rejects_invalid_manifest_naming_the_field(case: InvalidCase) -> None:
    result = runner.invoke(app, ["validate", str(case.path)])
    assert result.exit_code == 1, result.output
    assert f"{case.path}#1" in result.output
    assert case.expect in result.output


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.path.stem)
def test_crd_and_pydantic_paths_both_reject_invalid_manifest_at_the_expected_field(case: InvalidCase) -> None:
    crd_errors = validate_object(case.manifest).errors
    pydantic_errors = validate_with_pydantic(case.manifest)
    assert names(case.expect, pydantic_errors), pydantic_errors
    if case.client_only:
        assert crd_errors == [], "the CRD can express this check after all: drop the client-only header"
    else:
        assert names(case.expect, crd_errors), crd_errors


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_valid_on_both_paths_and_in_the_cli(path: Path) -> None:
    manifest = _load(path)
    assert validate_object(manifest).errors == []
    assert validate_with_pydantic(manifest) == []
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", sorted(VALID_VARIANTS))
def test_valid_variant_is_accepted_by_both_paths(name: str) -> None:
    manifest = VALID_VARIANTS[name]
    assert validate_object(manifest).errors == []
    assert validate_with_pydantic(manifest) == []


def _pydantic_defaults(manifest: dict[str, Any]) -> dict[str, Any]:
    dumped: dict[str, Any] = TransferJob.model_validate(manifest).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    spec: dict[str, Any] = dumped["spec"]
    return spec


@pytest.mark.parametrize(
    "manifest",
    [MINIMAL, VALID_VARIANTS["trainable-all"], VALID_VARIANTS["scheduling"], *map(_load, EXAMPLES)],
    ids=["minimal", "stage-item", "scheduling", *(p.stem for p in EXAMPLES)],
)
def test_crd_defaults_agree_with_the_pydantic_model_defaults(manifest: dict[str, Any]) -> None:
    assert validate_object(manifest).defaulted["spec"] == _pydantic_defaults(manifest)


def test_defaulting_fills_nested_objects_and_list_items() -> None:
    manifest = copy.deepcopy(MINIMAL)
    manifest["spec"]["stages"] = [{"name": "head"}]
    spec = validate_object(manifest).defaulted["spec"]
    assert spec["model"]["head"] == {"hidden": [256], "dropout": 0.3, "batchNorm": False}
    assert spec["stages"][0]["earlyStopping"]["patience"] == 3
    assert spec["stages"][0]["trainable"] == 0
    assert spec["dataset"]["validationSplit"] == 0.15
    assert "momentum" not in spec["stages"][0]


def test_validation_leaves_the_input_untouched() -> None:
    manifest = copy.deepcopy(MINIMAL)
    manifest["spec"]["storage"] = {"endpoint": None}
    before = copy.deepcopy(manifest)
    result = validate_object(manifest)
    assert manifest == before
    assert "endpoint" not in result.defaulted["spec"]["storage"]


def test_snake_case_key_is_an_unknown_field_with_its_path() -> None:
    manifest = copy.deepcopy(MINIMAL)
    manifest["spec"]["dataset"]["image_size"] = 128
    expected = FieldError("spec.dataset.image_size", 'unknown field "image_size"')
    assert expected in validate_object(manifest).errors
    assert expected in validate_with_pydantic(manifest)


def test_cel_rules_are_skipped_when_a_type_error_makes_them_unsafe() -> None:
    manifest = copy.deepcopy(MINIMAL)
    manifest["spec"]["dataset"].update(imageSize="big", validationSplit=0.9, testSplit=0.5)
    errors = validate_object(manifest).errors
    assert names("spec.dataset.imageSize", errors)
    assert FieldError("", CEL_SKIPPED_MESSAGE) in errors
    assert not names("spec.dataset.testSplit", errors)


def test_every_failed_cel_rule_is_reported_not_only_the_first() -> None:
    manifest = copy.deepcopy(MINIMAL)
    manifest["spec"]["dataset"].update(validationSplit=0.9, testSplit=0.5, layout="manifest")
    manifest["spec"]["stages"] = [{"name": "a", "momentum": 0.5}, {"name": "a"}]
    paths = {error.path for error in validate_object(manifest).errors}
    assert paths >= {
        "spec.dataset.testSplit",
        "spec.dataset.manifest",
        "spec.stages[0].momentum",
        "spec.stages",
    }


def test_duplicate_condition_types_in_status_are_rejected_by_both_paths() -> None:
    manifest = copy.deepcopy(VALID_VARIANTS["status-written-by-operator"])
    manifest["status"]["conditions"] *= 2
    assert names("status.conditions", validate_object(manifest).errors)
    assert names("status.conditions", validate_with_pydantic(manifest))


def test_field_error_prints_path_then_message() -> None:
    assert str(FieldError("spec.workers", "must be 1")) == "spec.workers: must be 1"


def test_other_kinds_are_skipped_but_a_wrong_transferjob_version_is_an_error() -> None:
    stream = yaml.safe_dump_all(
        [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}},
            {**MINIMAL, "apiVersion": "kubegraft.io/v2"},
            MINIMAL,
        ]
    )
    first, second, third = validate_documents(stream, "all.yaml")
    assert first.skipped
    assert first.label == "all.yaml#1 (ConfigMap/cm)"
    assert [e.path for e in second.errors] == ["apiVersion"]
    assert third.ok
    assert third.label == "all.yaml#3 (flowers)"


def test_cli_reads_stdin_skips_other_kinds_and_prints_defaulted_objects() -> None:
    stream = yaml.safe_dump_all([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}, MINIMAL])
    result = runner.invoke(app, ["validate", "-", "-o", "yaml"], input=stream)
    assert result.exit_code == 0, result.output
    assert "-#1 (Secret/s): skipped" in result.stderr
    [printed] = yaml.safe_load_all(result.stdout)
    assert printed == validate_object(MINIMAL).defaulted


def test_cli_reports_every_error_with_file_document_and_name(tmp_path: Path) -> None:
    bad = copy.deepcopy(MINIMAL)
    bad["metadata"]["name"] = "cars"
    bad["spec"]["workers"] = 2
    bad["spec"]["classifier"] = "svm"
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all([MINIMAL, bad]), encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}#1 (flowers): valid" in result.stderr
    assert f"{path}#2 (cars): spec.workers:" in result.stderr
    assert f"{path}#2 (cars): spec.classifier:" in result.stderr


def test_cli_fails_on_unreadable_file_and_on_broken_yaml(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(tmp_path / "missing.yaml"), str(broken)])
    assert result.exit_code == 1
    assert "missing.yaml: cannot read" in result.stderr
    assert "invalid YAML" in result.stderr


def test_exponent_without_a_dot_is_a_number_as_kubectl_reads_it() -> None:
    text = yaml.safe_dump(MINIMAL) + (
        "  stages:\n  - name: finetune\n    trainable: all\n    epochs: 2\n    optimizer: sgd\n"
        "    learningRate: 1e-5\n"
    )
    [report] = validate_documents(text, "job.yaml")
    assert report.errors == [], report.errors
    assert report.result is not None
    assert report.result.defaulted["spec"]["stages"][0]["learningRate"] == 1e-5
