"""The `make demo` script's own logic, without starting anything: manifest choice, table folding, parsing.

The demo itself runs end to end only under `make demo` (minutes); these checks keep its decisions honest
in every `make test`: the example manifest is applied unchanged when the demo's storage matches it, the live
table prints a row only when a shown column changes, and prediction output is parsed or shown as printed.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from kubegraft.validation import validate_object
from tests.harness import demo
from tests.harness.transfer import TransferInputs


def _inputs(bucket: str = "kubegraft-demo") -> TransferInputs:
    return TransferInputs(
        bucket=bucket,
        dataset_uri=f"s3://{bucket}/datasets/fashion-mnist-0to4/",
        weights_uri=f"s3://{bucket}/backbones/mobilenetv2-fashion-5to9.keras",
        output_uri=f"s3://{bucket}/models/fashion-mnist/",
        images=750,
    )


def _live(out: io.StringIO) -> demo.LiveStatus:
    console = demo.Console(out)
    return demo.LiveStatus(demo.Kubectl("kubectl", console, None, emulated=True), console, "demo", "ns")


def test_example_manifest_is_applied_unchanged_when_the_demo_storage_matches_it(tmp_path: Path) -> None:
    storage = demo.Storage("http://127.0.0.1:8333", "a", "b", "us-east-1", "kubegraft-demo")
    assert demo.render_manifest(_inputs(), storage, tmp_path / "copy.yaml") == demo.MANIFEST
    assert not (tmp_path / "copy.yaml").exists()


def test_other_endpoint_and_bucket_give_a_valid_copy_naming_them(tmp_path: Path) -> None:
    storage = demo.Storage("https://minio.example.com:9000", "a", "b", "eu-west-1", "team-bucket")
    path = demo.render_manifest(_inputs("team-bucket"), storage, tmp_path / "copy.yaml")
    assert path == tmp_path / "copy.yaml"
    manifest = yaml.safe_load(path.read_text())
    spec = manifest["spec"]
    assert spec["storage"]["endpoint"] == "https://minio.example.com:9000"
    assert spec["storage"]["region"] == "eu-west-1"
    assert spec["dataset"]["uri"].startswith("s3://team-bucket/")
    assert spec["model"]["weights"].startswith("s3://team-bucket/")
    assert spec["output"]["uri"] == "s3://team-bucket/models/fashion-mnist/"
    assert validate_object(manifest).ok


def test_aws_storage_drops_the_endpoint_and_path_addressing(tmp_path: Path) -> None:
    storage = demo.Storage(None, "a", "b", "us-east-2", "my-bucket")
    manifest = yaml.safe_load(
        demo.render_manifest(_inputs("my-bucket"), storage, tmp_path / "c.yaml").read_text()
    )
    assert "endpoint" not in manifest["spec"]["storage"]
    assert "addressingStyle" not in manifest["spec"]["storage"]
    assert manifest["spec"]["storage"]["secretRef"]["name"] == "s3-credentials"


def test_live_table_prints_a_row_only_when_a_shown_column_changes() -> None:
    out = io.StringIO()
    live = _live(out)
    for line in (
        "NAME   PHASE   STAGE   EPOCH   VAL-ACC",
        "other  Running head    1       0.5",
        "demo   <none>  <none>  <none>  <none>",
        "demo   Running head    1       0.41234",
        "demo   Running head    1       0.41234",
        "demo   Running finetune 1      0.5",
    ):
        live._table_line(line, "0:01")
    rows = out.getvalue().splitlines()
    assert [row.split()[:5] for row in rows] == [
        ["demo", "-", "-", "-", "-"],
        ["demo", "Running", "head", "1", "0.412"],
        ["demo", "Running", "finetune", "1", "0.500"],
    ]
    assert live.phase == "Running"


def test_event_lines_are_split_into_type_reason_object_and_message() -> None:
    out = io.StringIO()
    live = _live(out)
    live._event_line("Warning|Failed|TransferJob/demo|Run 1 failed: bucket x | y not found.")
    words = " ".join(out.getvalue().split())
    assert words == "event Warning Failed TransferJob/demo: Run 1 failed: bucket x | y not found."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[('Trouser', 0.93), ('Dress', 0.05)]", [("Trouser", 0.93), ("Dress", 0.05)]),
        ("Trouser 0.93", None),
        ("[]", None),
    ],
)
def test_prediction_ranking_is_parsed_or_left_as_printed(
    text: str, expected: list[tuple[str, float]] | None
) -> None:
    assert demo._parse_top(text) == expected


@pytest.mark.parametrize(
    ("requested", "env", "target"),
    [
        ("auto", {}, "local"),
        ("auto", {"KUBECONFIG": "/home/me/.kube/config"}, "cluster"),
        ("local", {"KUBECONFIG": "/home/me/.kube/config"}, "local"),
        ("cluster", {}, "cluster"),
    ],
)
def test_demo_runs_locally_unless_a_kubeconfig_or_the_cluster_target_is_given(
    requested: str, env: dict[str, str], target: str
) -> None:
    assert demo.choose_target(requested, env) == target
