"""Alerts and dashboard: PromQL checked by promtool, alerts unit-tested by `promtool test rules`, and every
metric name they use checked against what the real operator and trainer export.

The PrometheusRule comes from `helm template` (the same text a cluster gets); its `spec.groups` is a plain
Prometheus rules file. Unit tests feed synthetic series at 1-minute steps and state which alerts fire when.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.deploy.checks import one
from tests.integration.deploy.conftest import (
    ALL_ON_VALUES,
    CHART,
    RELEASE_NAMESPACE,
    Renderer,
    find_tool,
    run,
)

OPERATOR_JOB = "kubegraft-metrics"  # the metrics Service of release "kubegraft": the `job` of its targets
JOB_LABELS = {"namespace": "ml", "transferjob": "flowers"}
FIRING_RULE_VALUES = ("--set", "prometheusRule.enabled=true")


@pytest.fixture(scope="module")
def rules(helm_template: Renderer) -> dict[str, Any]:
    """The default PrometheusRule's rule groups."""
    spec: dict[str, Any] = one(helm_template("4", *FIRING_RULE_VALUES), "PrometheusRule")["spec"]
    return spec


@pytest.fixture(scope="module")
def all_on_rules(helm_template: Renderer) -> dict[str, Any]:
    spec: dict[str, Any] = one(helm_template("4", "--values", str(ALL_ON_VALUES)), "PrometheusRule")["spec"]
    return spec


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "dashboards" / "kubegraft.json").read_text(encoding="utf-8"))
    return loaded


def _rule(groups: dict[str, Any], alert: str) -> list[dict[str, Any]]:
    return [r for g in groups["groups"] for r in g["rules"] if r.get("alert") == alert]


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


def _phase(phase: str, values: str, instance: str = "10.0.0.1:8080", **labels: str) -> dict[str, str]:
    return _series(
        "kubegraft_transferjob_phase",
        values,
        phase=phase,
        instance=instance,
        job=OPERATOR_JOB,
        **(labels or JOB_LABELS),
    )


def _expected(groups: dict[str, Any], alert: str, labels: dict[str, str]) -> dict[str, Any]:
    """An exp_alerts entry: the rule's labels plus `labels`, and its annotations with $labels expanded."""
    candidates = [
        r for r in _rule(groups, alert) if all(r["labels"].get(k, v) == v for k, v in labels.items())
    ]
    rule = candidates[0]
    all_labels = {**rule["labels"], **labels}

    def expand(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: all_labels[m.group(1)], text)

    return {
        "exp_labels": all_labels,
        "exp_annotations": {k: expand(v) for k, v in rule["annotations"].items()},
    }


def _promtool_test(
    tmp_path: Path,
    groups: dict[str, Any],
    series: list[dict[str, str]],
    checks: list[tuple[str, str, list[Any]]],
) -> None:
    """Run `promtool test rules`: `checks` are (eval_time, alertname, expected alerts)."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": groups["groups"]}, sort_keys=False), encoding="utf-8")
    test = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": at, "alertname": name, "exp_alerts": alerts} for at, name, alerts in checks
                ],
            }
        ],
    }
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    result = run([find_tool("promtool"), "test", "rules", str(test_file)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- promtool check rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["defaults", "all-on"])
def test_promtool_accepts_the_rules(tmp_path: Path, helm_template: Renderer, values: str) -> None:
    flags = FIRING_RULE_VALUES if values == "defaults" else ("--values", str(ALL_ON_VALUES))
    spec = one(helm_template("4", *flags), "PrometheusRule")["spec"]
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": spec["groups"]}), encoding="utf-8")
    result = run([find_tool("promtool"), "check", "rules", str(rules_file)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_a_broken_rule_so_the_check_is_real(tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "max by ("}]}]})
    )
    assert run([find_tool("promtool"), "check", "rules", str(rules_file)], check=False).returncode != 0


def test_dashboard_queries_are_valid_promql(tmp_path: Path, dashboard: dict[str, Any]) -> None:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    grafana_variables = {"$namespace": ".*", "$__range": "1h", "$__rate_interval": "1m"}
    rules = []
    for index, expr in enumerate(exprs):
        query = expr
        for variable, value in grafana_variables.items():
            query = query.replace(variable, value)
        rules.append({"record": f"kubegraft:dashboard_query_{index}", "expr": query})
    rules_file = tmp_path / "dashboard.yaml"
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = run([find_tool("promtool"), "check", "rules", str(rules_file)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- promtool test rules: when each alert fires -----------------------------------------------------------


def test_failed_transferjob_fires(tmp_path: Path, rules: dict[str, Any]) -> None:
    expected = _expected(rules, "KubegraftTransferJobFailed", JOB_LABELS)
    _promtool_test(
        tmp_path,
        rules,
        [_phase("Failed", "0x4 1x20")],
        [
            ("3m", "KubegraftTransferJobFailed", []),
            ("6m", "KubegraftTransferJobFailed", [expected]),
        ],
    )


def test_failed_transferjob_exported_by_two_replicas_fires_once(
    tmp_path: Path, rules: dict[str, Any]
) -> None:
    expected = _expected(rules, "KubegraftTransferJobFailed", JOB_LABELS)
    series = [
        _phase("Failed", "1x10", instance="10.0.0.1:8080"),
        _phase("Failed", "1x10", instance="10.0.0.2:8080"),
    ]
    _promtool_test(tmp_path, rules, series, [("5m", "KubegraftTransferJobFailed", [expected])])


def test_succeeded_transferjob_fires_nothing(tmp_path: Path, rules: dict[str, Any]) -> None:
    series = [_phase("Succeeded", "1x60"), _phase("Failed", "0x60"), _phase("Pending", "0x60")]
    _promtool_test(
        tmp_path,
        rules,
        series,
        [
            ("60m", "KubegraftTransferJobFailed", []),
            ("60m", "KubegraftTransferJobStuckPending", []),
            ("60m", "KubegraftTransferJobNoProgress", []),
        ],
    )


def test_stuck_pending_fires_only_after_the_pending_minutes(tmp_path: Path, rules: dict[str, Any]) -> None:
    expected = _expected(rules, "KubegraftTransferJobStuckPending", JOB_LABELS)
    _promtool_test(
        tmp_path,
        rules,
        [_phase("Pending", "1x40")],
        [
            ("14m", "KubegraftTransferJobStuckPending", []),
            ("16m", "KubegraftTransferJobStuckPending", [expected]),
        ],
    )


def test_pending_that_starts_running_in_time_fires_nothing(tmp_path: Path, rules: dict[str, Any]) -> None:
    series = [
        _phase("Pending", "1x10 0x30"),
        _phase("Running", "0x10 1x30"),
        _series("kubegraft_job_last_progress_timestamp_seconds", "_x10 600+60x30", **JOB_LABELS),
    ]
    _promtool_test(
        tmp_path,
        rules,
        series,
        [
            ("30m", "KubegraftTransferJobStuckPending", []),
            ("30m", "KubegraftTransferJobNoProgress", []),
        ],
    )


def test_stuck_pending_uses_the_configured_minutes(tmp_path: Path, all_on_rules: dict[str, Any]) -> None:
    expected = _expected(all_on_rules, "KubegraftTransferJobStuckPending", JOB_LABELS)
    assert expected["exp_labels"]["severity"] == "critical"
    assert expected["exp_labels"]["team"] == "ml-platform"
    _promtool_test(
        tmp_path,
        all_on_rules,
        [_phase("Pending", "1x40")],
        [
            ("9m", "KubegraftTransferJobStuckPending", []),
            ("11m", "KubegraftTransferJobStuckPending", [expected]),
        ],
    )


def test_no_progress_fires_when_a_running_job_stops_reporting(tmp_path: Path, rules: dict[str, Any]) -> None:
    # Progress every minute until minute 10 (t=600 s), then silence; the gauge keeps its last value.
    series = [
        _phase("Running", "1x60"),
        _series("kubegraft_job_last_progress_timestamp_seconds", "0+60x10 600x50", **JOB_LABELS),
    ]
    expected = _expected(rules, "KubegraftTransferJobNoProgress", {**JOB_LABELS, "progress": "stalled"})
    _promtool_test(
        tmp_path,
        rules,
        series,
        [
            ("38m", "KubegraftTransferJobNoProgress", []),
            ("43m", "KubegraftTransferJobNoProgress", [expected]),
        ],
    )


def test_no_progress_fires_when_the_trainer_serves_but_finishes_no_epoch(
    tmp_path: Path, rules: dict[str, Any]
) -> None:
    # The operator polls /progress every minute (its timestamp advances), but the trainer's own last-progress
    # time stops at minute 5: a hung training loop behind a live HTTP server.
    pod = {"pod": "flowers-1-abcde", "instance": "10.0.1.7:9090", "job": "ml/kubegraft-trainer"}
    series = [
        _phase("Running", "1x60"),
        _series("kubegraft_job_last_progress_timestamp_seconds", "0+60x60", **JOB_LABELS),
        _series("kubegraft_train_last_progress_timestamp_seconds", "0+60x5 300x55", **JOB_LABELS, **pod),
    ]
    expected = _expected(rules, "KubegraftTransferJobNoProgress", {**JOB_LABELS, "progress": "stalled"})
    _promtool_test(
        tmp_path,
        rules,
        series,
        [
            ("33m", "KubegraftTransferJobNoProgress", []),
            ("38m", "KubegraftTransferJobNoProgress", [expected]),
        ],
    )


def test_no_progress_fires_when_a_running_job_never_reports(tmp_path: Path, rules: dict[str, Any]) -> None:
    expected = _expected(rules, "KubegraftTransferJobNoProgress", {**JOB_LABELS, "progress": "none"})
    _promtool_test(
        tmp_path,
        rules,
        [_phase("Running", "1x60")],
        [
            ("29m", "KubegraftTransferJobNoProgress", []),
            ("31m", "KubegraftTransferJobNoProgress", [expected]),
        ],
    )


def test_a_running_job_that_progresses_fires_nothing(tmp_path: Path, rules: dict[str, Any]) -> None:
    pod = {"pod": "flowers-1-abcde", "instance": "10.0.1.7:9090", "job": "ml/kubegraft-trainer"}
    series = [
        _phase("Running", "1x90"),
        _series("kubegraft_job_last_progress_timestamp_seconds", "0+60x90", **JOB_LABELS),
        # One epoch every 10 minutes: the trainer's timestamp steps by 600 s every 10 samples.
        _series(
            "kubegraft_train_last_progress_timestamp_seconds",
            " ".join(f"{600 * epoch}x9" for epoch in range(9)),
            **JOB_LABELS,
            **pod,
        ),
    ]
    _promtool_test(tmp_path, rules, series, [("90m", "KubegraftTransferJobNoProgress", [])])


def test_operator_down_fires_after_the_configured_minutes(tmp_path: Path, rules: dict[str, Any]) -> None:
    up = _series("up", "1x5 0x30", job=OPERATOR_JOB, namespace=RELEASE_NAMESPACE, instance="10.0.0.1:8080")
    expected = _expected(
        rules, "KubegraftOperatorDown", {"job": OPERATOR_JOB, "namespace": RELEASE_NAMESPACE}
    )
    _promtool_test(
        tmp_path,
        rules,
        [up],
        [
            ("8m", "KubegraftOperatorDown", []),
            ("12m", "KubegraftOperatorDown", [expected]),
        ],
    )


def test_operator_down_fires_when_no_operator_is_scraped_at_all(
    tmp_path: Path, rules: dict[str, Any]
) -> None:
    other = _series("up", "1x30", job="something-else", namespace="default", instance="10.0.0.9:80")
    expected = _expected(
        rules, "KubegraftOperatorDown", {"job": OPERATOR_JOB, "namespace": RELEASE_NAMESPACE}
    )
    _promtool_test(tmp_path, rules, [other], [("10m", "KubegraftOperatorDown", [expected])])


def test_one_replica_up_of_two_is_not_operator_down(tmp_path: Path, rules: dict[str, Any]) -> None:
    series = [
        _series("up", "1x30", job=OPERATOR_JOB, namespace=RELEASE_NAMESPACE, instance="10.0.0.1:8080"),
        _series("up", "0x30", job=OPERATOR_JOB, namespace=RELEASE_NAMESPACE, instance="10.0.0.2:8080"),
    ]
    _promtool_test(tmp_path, rules, series, [("20m", "KubegraftOperatorDown", [])])


# --- metric names: the contract between the alerts/dashboard and the code ----------------------------------

# Prints the text exposition of the operator's REGISTRY and of a trainer ProgressTracker's registry. Keras is
# replaced by a stub: progress.py only subclasses keras.callbacks.Callback at import, and importing the real
# Keras pulls in TensorFlow (20+ s here) without changing a single metric.
_EXPOSITION = """
import sys, types
keras = types.ModuleType("keras")
keras.callbacks = types.SimpleNamespace(Callback=object)
sys.modules.setdefault("keras", keras)
from prometheus_client import generate_latest
from kubegraft_operator.metrics import REGISTRY
from kubegraft_trainer.progress import ProgressTracker
sys.stdout.write(generate_latest(REGISTRY).decode())
sys.stdout.write(generate_latest(ProgressTracker().registry).decode())
"""


@pytest.fixture(scope="module")
def exposition() -> Iterator[str]:
    result = subprocess.run(
        [sys.executable, "-c", _EXPOSITION], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    yield result.stdout


def _exported_names(exposition: str) -> set[str]:
    """Series names the exposition can produce: HELP/TYPE names, plus _bucket/_sum/_count for histograms."""
    names: set[str] = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", exposition, flags=re.MULTILINE):
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "counter":
            names.add(f"{name}_total")
    return names


def _used_names(text: str) -> set[str]:
    return set(re.findall(r"\bkubegraft_[a-z0-9_]+\b", text))


def test_alerts_use_only_metrics_the_operator_exports(rules: dict[str, Any], exposition: str) -> None:
    used = _used_names(" ".join(r["expr"] for g in rules["groups"] for r in g["rules"]))
    assert used, "the alerts use no kubegraft metric"
    assert used - _exported_names(exposition) == set()


def test_dashboard_uses_only_metrics_the_code_exports(dashboard: dict[str, Any], exposition: str) -> None:
    used = _used_names(" ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"]))
    assert used - _exported_names(exposition) == set()


def test_exposition_carries_help_and_type_for_every_contract_metric(exposition: str) -> None:
    contract = {
        "kubegraft_transferjobs",
        "kubegraft_transferjob_phase",
        "kubegraft_runs_started_total",
        "kubegraft_runs_succeeded_total",
        "kubegraft_runs_failed_total",
        "kubegraft_reconcile_duration_seconds",
        "kubegraft_reconcile_errors_total",
        "kubegraft_job_stage_info",
        "kubegraft_job_epoch",
        "kubegraft_job_val_accuracy_ratio",
        "kubegraft_job_images_total",
        "kubegraft_operator_active",
        "kubegraft_job_last_progress_timestamp_seconds",
        "kubegraft_train_stage_info",
        "kubegraft_train_epoch",
        "kubegraft_train_total_epochs",
        "kubegraft_train_completed_epochs",
        "kubegraft_train_loss",
        "kubegraft_train_accuracy_ratio",
        "kubegraft_train_val_loss",
        "kubegraft_train_val_accuracy_ratio",
        "kubegraft_train_images_total",
        "kubegraft_train_images_skipped_total",
        "kubegraft_train_eta_seconds",
        "kubegraft_train_last_progress_timestamp_seconds",
    }
    helps = set(re.findall(r"^# HELP (\S+) ", exposition, flags=re.MULTILINE))
    types = set(re.findall(r"^# TYPE (\S+) ", exposition, flags=re.MULTILINE))
    assert contract - helps == set()
    assert contract - types == set()


def test_promtool_accepts_the_exposition(exposition: str) -> None:
    result = run([find_tool("promtool"), "check", "metrics"], check=False, stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr


def _types(exposition: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, flags=re.MULTILINE))


def test_rate_and_increase_take_only_counters(
    rules: dict[str, Any], dashboard: dict[str, Any], exposition: str
) -> None:
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    counters = {name for name, kind in _types(exposition).items() if kind == "counter"}
    counters |= {f"{n}_bucket" for n, kind in _types(exposition).items() if kind == "histogram"}
    rated = {m for e in exprs for m in re.findall(r"\b(?:rate|irate|increase)\(\s*(kubegraft_\w+)", e)}
    assert "kubegraft_job_images_total" in rated  # the dashboard's throughput panel
    assert rated - counters == set()


def test_metric_names_follow_prometheus_conventions(exposition: str) -> None:
    types = _types(exposition)
    accuracy = [n for n in types if "accuracy" in n]
    assert accuracy and [n for n in accuracy if not n.endswith("_ratio")] == []
    assert [n for n in types if "per_second" in n] == []  # throughput is rate() of a counter
    check = run([find_tool("promtool"), "check", "metrics"], check=False, stdin=exposition)
    assert "should be" not in check.stdout + check.stderr  # promtool's naming lints
