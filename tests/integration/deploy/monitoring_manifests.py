"""manifests/monitoring/prometheusrule.yaml: the chart's PrometheusRule, rendered for the kustomize install.

`python -m tests.integration.deploy.monitoring_manifests` rewrites the file from `helm template` (release
`kubegraft-operator` in `kubegraft-system`, so the alerts' `job` is the kustomize Service
`kubegraft-operator-metrics`), with the kustomize objects' labels instead of Helm's; a test fails when the two
disagree, so the alerts are written once, in the chart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
OUTPUT = REPO / "manifests" / "monitoring" / "prometheusrule.yaml"
HEADER = """\
# Generated from the Helm chart's PrometheusRule (charts/kubegraft/templates/prometheusrule.yaml) for the
# kustomize install: `python -m tests.integration.deploy.monitoring_manifests`. Do not edit; a test compares.
"""
LABELS = {
    "app.kubernetes.io/name": "kubegraft",
    "app.kubernetes.io/component": "operator",
    "app.kubernetes.io/part-of": "kubegraft",
}


def render(helm: str | None = None) -> str:
    """The file's text: the chart's PrometheusRule as a kustomize user gets it."""
    binary = helm or shutil.which(
        "helm", path=os.pathsep.join([str(REPO / ".tools" / "bin"), os.environ["PATH"]])
    )
    assert binary, "helm not found: run `make setup`"
    command = [binary, "template", "kubegraft-operator", str(REPO / "charts" / "kubegraft")]
    command += ["--namespace", "kubegraft-system", "--set", "prometheusRule.enabled=true"]
    command += ["--show-only", "templates/prometheusrule.yaml"]
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/kubegraft-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/kubegraft-helm/config",
    }
    rendered = subprocess.run(command, capture_output=True, text=True, check=True, env=env, timeout=60).stdout
    rule = yaml.safe_load(rendered)
    rule["metadata"] = {"name": "kubegraft-operator", "namespace": "kubegraft-system", "labels": dict(LABELS)}
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=110)


def main() -> None:
    """Rewrite manifests/monitoring/prometheusrule.yaml."""
    OUTPUT.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
