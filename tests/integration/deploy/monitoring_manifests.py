"""manifests/monitoring/: the chart's PrometheusRule and Grafana dashboard, rendered for kustomize users.

`python -m tests.integration.deploy.monitoring_manifests` rewrites `prometheusrule.yaml` and
`grafana-dashboard.yaml` from `helm template` (release `kubegraft-operator` in `kubegraft-system`, so the
alerts' `job` is the kustomize Service `kubegraft-operator-metrics`), with the kustomize objects' labels
instead of Helm's; a test fails when a file and the chart disagree, so alerts and dashboard are written once,
in the chart (`templates/prometheusrule.yaml`, `dashboards/kubegraft.json`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
MONITORING = REPO / "manifests" / "monitoring"
OUTPUT = MONITORING / "prometheusrule.yaml"
DASHBOARD_OUTPUT = MONITORING / "grafana-dashboard.yaml"
HEADER = """\
# Generated from the Helm chart's PrometheusRule (charts/kubegraft/templates/prometheusrule.yaml) for the
# kustomize install: `python -m tests.integration.deploy.monitoring_manifests`. Do not edit; a test compares.
"""
DASHBOARD_HEADER = """\
# Generated from the Helm chart's Grafana dashboard (charts/kubegraft/dashboards/kubegraft.json, as
# templates/grafana-dashboard.yaml renders it) for the kustomize install: the Grafana sidecar
# (kube-prometheus-stack's) loads every ConfigMap labelled grafana_dashboard: "1".
# `python -m tests.integration.deploy.monitoring_manifests` rewrites it. Do not edit; a test compares.
"""
LABELS = {
    "app.kubernetes.io/name": "kubegraft",
    "app.kubernetes.io/component": "operator",
    "app.kubernetes.io/part-of": "kubegraft",
}
# The label kube-prometheus-stack's Grafana sidecar looks for (the chart's grafanaDashboard.labels default).
DASHBOARD_LABEL = {"grafana_dashboard": "1"}


class _BlockDumper(yaml.SafeDumper):
    """A YAML dumper that writes multi-line strings (the dashboard's JSON) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def _helm_template(helm: str | None, show: str, *sets: str) -> dict[str, Any]:
    """One chart template rendered for release kubegraft-operator in kubegraft-system, as an object."""
    binary = helm or shutil.which(
        "helm", path=os.pathsep.join([str(REPO / ".tools" / "bin"), os.environ["PATH"]])
    )
    assert binary, "helm not found: run `make setup`"
    command = [binary, "template", "kubegraft-operator", str(REPO / "charts" / "kubegraft")]
    command += ["--namespace", "kubegraft-system", "--show-only", show]
    for value in sets:
        command += ["--set", value]
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/kubegraft-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/kubegraft-helm/config",
    }
    rendered = subprocess.run(command, capture_output=True, text=True, check=True, env=env, timeout=60).stdout
    obj: dict[str, Any] = yaml.safe_load(rendered)
    return obj


def render(helm: str | None = None) -> str:
    """prometheusrule.yaml's text: the chart's PrometheusRule as a kustomize user gets it."""
    rule = _helm_template(helm, "templates/prometheusrule.yaml", "prometheusRule.enabled=true")
    rule["metadata"] = {"name": "kubegraft-operator", "namespace": "kubegraft-system", "labels": dict(LABELS)}
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=110)


def render_dashboard(helm: str | None = None) -> str:
    """grafana-dashboard.yaml's text: the chart's dashboard ConfigMap as a kustomize user gets it."""
    config_map = _helm_template(helm, "templates/grafana-dashboard.yaml", "grafanaDashboard.enabled=true")
    labels = {
        "app.kubernetes.io/name": "kubegraft",
        "app.kubernetes.io/part-of": "kubegraft",
        **DASHBOARD_LABEL,
    }
    config_map["metadata"] = {
        "name": "kubegraft-operator-dashboard",
        "namespace": "kubegraft-system",
        "labels": labels,
    }
    # A literal block (as the template writes it) keeps the JSON readable and diffable in the file.
    return DASHBOARD_HEADER + yaml.dump(config_map, Dumper=_BlockDumper, sort_keys=False, width=110)


def main() -> None:
    """Rewrite manifests/monitoring/prometheusrule.yaml and grafana-dashboard.yaml."""
    OUTPUT.write_text(render(), encoding="utf-8")
    DASHBOARD_OUTPUT.write_text(render_dashboard(), encoding="utf-8")


if __name__ == "__main__":
    main()
