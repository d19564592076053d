"""charts/kubegraft with the real Helm 4 and Helm 3: lint, render, validate offline, refuse bad values.

Rendered with the default values and with ci/all-on-values.yaml (every feature on); every object must be
admitted by a Kubernetes 1.35 API server (custom resources checked against their CRDs, see schemas.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.integration.deploy.checks import (
    CLUSTER_PEERING_RULES,
    CLUSTER_RULES,
    EDITOR_RULES,
    NAMESPACED_RULES,
    VIEWER_RULES,
    aggregated_rules,
    assert_worker_port_rule,
    by_kind,
    env_of,
    granted,
    one,
    operator_cluster_role,
    operator_command,
    restricted_pod_problems,
    selector_matches,
)
from tests.integration.deploy.conftest import (
    ALL_ON_VALUES,
    CHART,
    HELMS,
    RELEASE_NAMESPACE,
    Renderer,
    find_tool,
    run,
)
from tests.integration.deploy.schemas import validation_errors
from tests.integration.deploy.values_doc import documented_values, leaf_paths, render_table

VALUE_SETS = {"defaults": (), "all-on": ("--values", str(ALL_ON_VALUES))}
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
VALUES = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
WATCHED = ("--set", "watchNamespaces={team-a,team-b}")


def _operator_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


def _trainer_pod_labels() -> dict[str, str]:
    from kubegraft_operator.rendering import labels

    return labels("flowers", 1)


@pytest.mark.parametrize("major", sorted(HELMS))
def test_helm_binary_is_the_major_version_it_claims(major: str) -> None:
    version = run([find_tool(HELMS[major]), "version", "--short"]).stdout.strip()
    assert version.startswith(f"v{major}."), version


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
@pytest.mark.parametrize("major", sorted(HELMS))
def test_helm_lint_strict_passes(major: str, values: str) -> None:
    result = run([find_tool(HELMS[major]), "lint", "--strict", str(CHART), *VALUE_SETS[values]])
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
@pytest.mark.parametrize("major", sorted(HELMS))
def test_rendered_objects_validate_against_kubernetes_1_35(
    helm_template: Renderer, major: str, values: str
) -> None:
    documents = helm_template(major, *VALUE_SETS[values])
    problems = {f"{d['kind']}/{d['metadata']['name']}": validation_errors(d) for d in documents}
    assert {k: v for k, v in problems.items() if v} == {}


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_helm_3_and_helm_4_render_the_same_objects(helm_template: Renderer, values: str) -> None:
    assert helm_template("3", *VALUE_SETS[values]) == helm_template("4", *VALUE_SETS[values])


def test_all_on_renders_every_optional_object(helm_template: Renderer) -> None:
    kinds = {d["kind"] for d in helm_template("4", *VALUE_SETS["all-on"])}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "KopfPeering", "Role"} <= kinds


def test_defaults_render_no_prometheus_operator_objects(helm_template: Renderer) -> None:
    kinds = {d["kind"] for d in helm_template("4")}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_image_tags_default_to_the_app_version(helm_template: Renderer) -> None:
    container = _operator_container(helm_template("4"))
    assert container["image"] == f"ghcr.io/kubegraft/operator:{CHART_META['appVersion']}"
    assert (
        env_of(container)["KUBEGRAFT_TRAINER_IMAGE"]
        == f"ghcr.io/kubegraft/trainer:{CHART_META['appVersion']}"
    )


def test_trainer_image_and_gpu_resource_name_reach_the_operator(helm_template: Renderer) -> None:
    env = env_of(_operator_container(helm_template("4", *VALUE_SETS["all-on"])))
    assert env["KUBEGRAFT_TRAINER_IMAGE"] == "registry.example.com/ml/kubegraft-trainer:0.1.0-cuda12"
    assert env["KUBEGRAFT_GPU_RESOURCE"] == "amd.com/gpu"
    assert env["KUBEGRAFT_TRAINER_SERVICE_ACCOUNT"] == "kubegraft-trainer"


def test_allowed_images_reach_the_operator_as_the_json_array_it_reads(helm_template: Renderer) -> None:
    from kubegraft_operator.config import load_config

    env = env_of(_operator_container(helm_template("4", *VALUE_SETS["all-on"])))
    assert load_config(env).allowed_images == (
        "registry.example.com/ml/*",
        "ghcr.io/kubegraft/trainer@sha256:*",
    )
    assert "KUBEGRAFT_ALLOWED_IMAGES" not in env_of(_operator_container(helm_template("4")))


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_operator_environment_uses_the_names_the_operator_reads(helm_template: Renderer, values: str) -> None:
    from kubegraft_operator import config

    known = {v for k, v in vars(config).items() if k.startswith("ENV_")} | {"POD_ID"}
    env = {e["name"] for e in _operator_container(helm_template("4", *VALUE_SETS[values]))["env"]}
    assert env <= known


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_operator_pod_is_restricted(helm_template: Renderer, values: str) -> None:
    pod = one(helm_template("4", *VALUE_SETS[values]), "Deployment")["spec"]["template"]["spec"]
    assert restricted_pod_problems(pod) == []


def test_watching_all_namespaces_uses_one_cluster_role_with_exactly_the_needed_rules(
    helm_template: Renderer,
) -> None:
    documents = helm_template("4")
    assert by_kind(documents, "Role") == []
    assert (
        granted(operator_cluster_role(documents)["rules"])
        == NAMESPACED_RULES | CLUSTER_RULES | CLUSTER_PEERING_RULES
    )
    args = _operator_container(documents)["args"]
    assert "--all-namespaces" in args
    assert not [a for a in args if a.startswith("--namespace")]
    assert one(documents, "ClusterKopfPeering")["metadata"]["name"] == "kubegraft"


def test_watching_a_list_of_namespaces_uses_a_role_in_each_and_passes_them_to_the_operator(
    helm_template: Renderer,
) -> None:
    documents = helm_template("4", *WATCHED)
    roles = {r["metadata"]["namespace"]: granted(r["rules"]) for r in by_kind(documents, "Role")}
    assert roles == {"team-a": NAMESPACED_RULES, "team-b": NAMESPACED_RULES}
    bindings = by_kind(documents, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    account = one(documents, "ServiceAccount")["metadata"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": RELEASE_NAMESPACE}
        ]
    # Cluster-wide, the operator may only read CRDs.
    assert granted(operator_cluster_role(documents)["rules"]) == CLUSTER_RULES
    args = _operator_container(documents)["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    assert "--all-namespaces" not in args
    assert {p["metadata"]["namespace"] for p in by_kind(documents, "KopfPeering")} == {"team-a", "team-b"}
    assert by_kind(documents, "ClusterKopfPeering") == []


@pytest.mark.parametrize("flags", [(), WATCHED], ids=["all-namespaces", "namespace-list"])
def test_no_role_grants_secrets_or_wildcards(helm_template: Renderer, flags: tuple[str, ...]) -> None:
    documents = helm_template("4", *flags)
    for role in by_kind(documents, "ClusterRole") + by_kind(documents, "Role"):
        rules = granted(role["rules"])
        assert not [k for k in rules if k[1] == "secrets" or "*" in k or "*" in rules[k]], role["metadata"]


@pytest.mark.parametrize("flags", [(), WATCHED], ids=["all-namespaces", "namespace-list"])
def test_namespace_editors_and_viewers_get_transferjobs_through_the_builtin_roles(
    helm_template: Renderer, flags: tuple[str, ...]
) -> None:
    documents = helm_template("4", *flags)
    roles = {r["metadata"]["name"]: r for r in by_kind(documents, "ClusterRole")}
    assert granted(roles["kubegraft-transferjob-editor"]["rules"]) == EDITOR_RULES
    assert granted(roles["kubegraft-transferjob-viewer"]["rules"]) == VIEWER_RULES
    # Users never write the status (the operator's) and never get Secrets or wildcards from these roles.
    assert aggregated_rules(documents, "view") == VIEWER_RULES
    assert aggregated_rules(documents, "edit") == EDITOR_RULES
    assert aggregated_rules(documents, "admin") == EDITOR_RULES


def test_user_roles_can_be_left_out_and_are_named_after_the_release(helm_template: Renderer) -> None:
    assert aggregated_rules(helm_template("4", "--set", "rbac.userRoles.create=false"), "admin") == {}
    renamed = helm_template("4", "--set", "fullnameOverride=ml")
    names = {r["metadata"]["name"] for r in by_kind(renamed, "ClusterRole")}
    assert {"ml-transferjob-editor", "ml-transferjob-viewer"} <= names


def test_peering_off_runs_no_peering_argument(helm_template: Renderer) -> None:
    documents = helm_template("4", "--set", "peering.create=false")
    assert not by_kind(documents, "ClusterKopfPeering")
    assert not [a for a in _operator_container(documents)["args"] if a.startswith("--peering")]


def test_liveness_probe_targets_kopfs_liveness_endpoint(helm_template: Renderer) -> None:
    container = _operator_container(helm_template("4", *VALUE_SETS["all-on"]))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert f"--metrics-port={ports['metrics']}" in container["args"]


def test_operator_scheduling_values_reach_the_pod(helm_template: Renderer) -> None:
    pod = one(helm_template("4", *VALUE_SETS["all-on"]), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["affinity"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"


def test_service_monitor_scrapes_the_metrics_service_and_keeps_transferjob_namespaces(
    helm_template: Renderer,
) -> None:
    documents = helm_template("4", *VALUE_SETS["all-on"])
    monitor, service = one(documents, "ServiceMonitor"), one(documents, "Service")
    assert selector_matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_pod_monitor_selects_training_pods_on_their_progress_port(helm_template: Renderer) -> None:
    from kubegraft.runtime import PROGRESS_PORT_NAME

    monitor = one(helm_template("4", *VALUE_SETS["all-on"]), "PodMonitor")
    assert selector_matches(monitor["spec"]["selector"], _trainer_pod_labels())
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == PROGRESS_PORT_NAME
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_trainer_network_policies_admit_the_operator_to_the_progress_port(helm_template: Renderer) -> None:
    from kubegraft.runtime import PROGRESS_PORT

    documents = helm_template("4", *VALUE_SETS["all-on"])
    operator_labels = one(documents, "Deployment")["spec"]["template"]["metadata"]["labels"]
    trainer_policies = [
        p
        for p in by_kind(documents, "NetworkPolicy")
        if selector_matches(p["spec"]["podSelector"], _trainer_pod_labels())
    ]
    assert {p["metadata"]["namespace"] for p in trainer_policies} == {"team-a", "team-b", "team-c"}
    for policy in trainer_policies:
        rule, workers = policy["spec"]["ingress"]
        assert [p["port"] for p in rule["ports"]] == [PROGRESS_PORT]
        assert_worker_port_rule(workers, _trainer_pod_labels())
        assert any(
            selector_matches(s["podSelector"], operator_labels)
            and selector_matches(s["namespaceSelector"], {"kubernetes.io/metadata.name": RELEASE_NAMESPACE})
            for s in rule["from"]
        )


def test_grafana_dashboard_is_valid_json_with_the_sidecar_label(helm_template: Renderer) -> None:
    configmap = one(helm_template("4", *VALUE_SETS["all-on"]), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(configmap["data"]["kubegraft.json"])
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "TransferJobs by phase",
        "Training accuracy per job",
        "Validation accuracy per job",
        "Images per second per job",
        "Reconcile latency",
    } <= titles
    latency = next(p for p in dashboard["panels"] if p["title"] == "Reconcile latency")
    assert [t["expr"].split("(", 2)[1].split(",")[0] for t in latency["targets"]] == ["0.5", "0.99"]


def test_pod_disruption_budget_only_with_more_than_one_replica(helm_template: Renderer) -> None:
    assert by_kind(helm_template("4"), "PodDisruptionBudget")
    assert not by_kind(helm_template("4", "--set", "operator.replicas=1"), "PodDisruptionBudget")


@pytest.mark.parametrize("flags", [(), WATCHED], ids=["all-namespaces", "namespace-list"])
def test_notes_tell_how_to_apply_and_watch_a_first_transferjob(flags: tuple[str, ...]) -> None:
    # Helm 4 only: Helm 3's `install --dry-run=client` still dials a cluster, and `template` skips NOTES.txt.
    command = [
        find_tool(HELMS["4"]),
        "install",
        "kubegraft",
        str(CHART),
        "--dry-run=client",
        "-n",
        RELEASE_NAMESPACE,
    ]
    notes = run([*command, *flags]).stdout.split("NOTES:", 1)[1]
    namespace = "team-a" if flags else "default"
    assert "kind: TransferJob" in notes
    assert f"kubectl apply -n {namespace} -f -" in notes
    assert f"kubectl get tj -n {namespace} -w" in notes
    assert f"kubectl wait -n {namespace} --for=condition=Succeeded tj/flowers" in notes


# --- values.schema.json ------------------------------------------------------------------------------------

BAD_VALUES: dict[str, tuple[dict[str, Any], str, tuple[str, ...]]] = {
    # case: (values, the field the message must name, words one of which the message must use)
    "wrong-type": ({"operator": {"replicas": "two"}}, "replicas", ("string", "type")),
    "unknown-key": ({"operator": {"replica": 2}}, "replica", ("additional", "Additional")),
    "bad-enum": ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "pullPolicy", ("one of",)),
    "negative-replicas": ({"operator": {"replicas": -1}}, "replicas", ("minimum", "greater than or equal")),
    "latest-tag": ({"trainer": {"image": {"tag": "latest"}}}, "tag", ("not",)),
    "bad-namespace": ({"watchNamespaces": ["Team_A"]}, "watchNamespaces", ("pattern",)),
    "bad-gpu-resource": ({"trainer": {"gpuResourceName": "gpu"}}, "gpuResourceName", ("pattern", "length")),
    "zero-minutes": (
        {"prometheusRule": {"pendingMinutes": 0}},
        "pendingMinutes",
        ("minimum", "greater than"),
    ),
    "bad-severity": ({"prometheusRule": {"severity": "page"}}, "severity", ("one of",)),
    "bad-interval": ({"metrics": {"podMonitor": {"interval": "soon"}}}, "interval", ("pattern",)),
    "top-level-typo": ({"watchNamespace": ["team-a"]}, "watchNamespace", ("additional", "Additional")),
    "bad-log-format": ({"operator": {"logFormat": "yaml"}}, "logFormat", ("one of",)),
    "bad-digest": ({"operator": {"image": {"digest": "sha256:abc"}}}, "digest", ("pattern", "match")),
    "bad-spread": (
        {"operator": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}]}},
        "whenUnsatisfiable",
        ("required", "missing"),
    ),
    "bad-security-context": (
        {"operator": {"securityContext": {"runAsNonroot": True}}},
        "runAsNonroot",
        ("additional", "Additional"),
    ),
    "bad-scrape-timeout": (
        {"metrics": {"serviceMonitor": {"scrapeTimeout": "soon"}}},
        "scrapeTimeout",
        ("pattern",),
    ),
    "bad-pod-monitor-timeout": (
        {"metrics": {"podMonitor": {"scrapeTimeout": "soon"}}},
        "scrapeTimeout",
        ("pattern",),
    ),
    "bad-pod-monitor-relabel-key": (
        {"metrics": {"podMonitor": {"metricRelabelings": [{"sourceLabel": "__name__"}]}}},
        "sourceLabel",
        ("additional", "Additional"),
    ),
    "bad-relabel-action": (
        {"metrics": {"serviceMonitor": {"relabelings": [{"action": "delete"}]}}},
        "action",
        ("one of",),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
@pytest.mark.parametrize("major", sorted(HELMS))
def test_schema_rejects_bad_values_with_a_clear_message(major: str, case: str, tmp_path: Path) -> None:
    values, field, words = BAD_VALUES[case]
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values), encoding="utf-8")
    result = run([find_tool(HELMS[major]), "template", "x", str(CHART), "-f", str(values_file)], check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert field in result.stderr
    assert any(word in result.stderr for word in words), result.stderr


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values_in_python_too(case: str) -> None:
    values = _merge(VALUES, BAD_VALUES[case][0])
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(values)), case


def test_default_and_all_on_values_satisfy_the_schema() -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)
    all_on = _merge(VALUES, yaml.safe_load(ALL_ON_VALUES.read_text(encoding="utf-8")))
    jsonschema.Draft7Validator(SCHEMA).validate(all_on)


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base.get(key), value)
        return merged
    return override


def _schema_objects(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path or "<root>", node))
        for key, child in node.items():
            found.extend(_schema_objects(child, f"{path}.{key}" if path else key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.extend(_schema_objects(child, f"{path}[{index}]"))
    return found


def test_schema_is_strict_every_object_closed_and_every_property_described() -> None:
    for path, node in _schema_objects(SCHEMA):
        assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
        for name, prop in node["properties"].items():
            assert prop.get("description"), f"{path}.{name} has no description"


def test_every_value_in_values_yaml_is_in_the_schema() -> None:
    for leaf in leaf_paths(VALUES):
        node: dict[str, Any] = SCHEMA
        for key in leaf.split("."):
            if "properties" not in node and isinstance(node.get("additionalProperties"), dict):
                break  # a free-form map of strings (labels, annotations, selectors)
            assert key in node.get("properties", {}), f"{leaf} is not in values.schema.json"
            node = node["properties"][key]


# --- documentation -----------------------------------------------------------------------------------------


def test_every_value_has_a_double_dash_comment() -> None:
    documented = {v.path for v in documented_values(CHART / "values.yaml")}
    undocumented = [
        leaf
        for leaf in leaf_paths(VALUES)
        if not any(".".join(leaf.split(".")[:i]) in documented for i in range(1, leaf.count(".") + 2))
    ]
    assert undocumented == []


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    missing = [v.path for v in documented_values(CHART / "values.yaml") if f"`{v.path}`" not in readme]
    assert missing == []


def test_chart_readme_values_table_is_generated_from_values_yaml() -> None:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    assert readme.endswith(render_table(CHART / "values.yaml")), (
        "stale values table: run `python -m tests.integration.deploy.values_doc`"
    )


def test_chart_crds_are_the_transferjob_and_kopf_peering_crds_only() -> None:
    names = sorted(p.name for p in (CHART / "crds").iterdir())
    assert names == ["kopf.dev_peerings.yaml", "kubegraft.io_transferjobs.yaml"]


def test_templates_use_the_standard_helpers() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    for helper in ("kubegraft.name", "kubegraft.fullname", "kubegraft.labels", "kubegraft.selectorLabels"):
        assert re.search(rf'define "{re.escape(helper)}"', helpers), helper


@pytest.mark.parametrize(
    "flags", [(), WATCHED, VALUE_SETS["all-on"]], ids=["defaults", "namespace-list", "all-on"]
)
def test_operator_cli_accepts_the_rendered_args(
    helm_template: Renderer, flags: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = helm_template("4", *flags)
    container = _operator_container(documents)
    kopf_argv, env = operator_command(container["args"], monkeypatch)
    namespaces = [kopf_argv[i + 1] for i, a in enumerate(kopf_argv) if a == "--namespace"]
    watched = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--namespace=")]
    assert namespaces == watched
    assert ("--all-namespaces" in kopf_argv) == (not watched)
    assert kopf_argv[kopf_argv.index("--peering") + 1] == "kubegraft"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in kopf_argv
    assert env["KUBEGRAFT_METRICS_PORT"] == str(ports["metrics"])


@pytest.mark.parametrize(("log_format", "kopf_format"), [("text", "full"), ("json", "json")])
def test_log_format_reaches_kopf_and_the_training_pods(
    helm_template: Renderer, log_format: str, kopf_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubegraft_operator.config import load_config
    from kubegraft_operator.rendering import render_job

    container = _operator_container(helm_template("4", "--set", f"operator.logFormat={log_format}"))
    kopf_argv, env = operator_command(container["args"], monkeypatch)
    assert [a for a in kopf_argv if a.startswith("--log-format")] == [f"--log-format={kopf_format}"]
    job = render_job(_TRANSFERJOB, 1, 1, load_config(env))
    assert env_of(job["spec"]["template"]["spec"]["containers"][0])["KUBEGRAFT_LOG_FORMAT"] == log_format


def test_extra_args_take_kubegraft_and_kopf_run_options_as_documented(
    helm_template: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _operator_container(helm_template("4", *VALUE_SETS["all-on"]))["args"]
    assert args[-2:] == ["--verbose", "--log-refkey=k8s"]
    kopf_argv, _ = operator_command(args, monkeypatch)  # kopf's own parser accepts the result
    assert {"--verbose", "--log-refkey=k8s", "--log-format=json"} <= set(kopf_argv)


def _security_ids(pod: dict[str, Any]) -> dict[str, Any]:
    contexts = [pod.get("securityContext", {}), *(c.get("securityContext", {}) for c in pod["containers"])]
    ids = ("runAsUser", "runAsGroup", "fsGroup")
    return {k: v for sc in contexts for k, v in sc.items() if k in ids}


def test_defaults_fix_no_uid_so_openshift_can_assign_one_to_operator_and_training_pods(
    helm_template: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubegraft_operator.config import load_config
    from kubegraft_operator.rendering import render_job

    container = _operator_container(helm_template("4"))
    pod = one(helm_template("4"), "Deployment")["spec"]["template"]["spec"]
    assert _security_ids(pod) == {}
    assert restricted_pod_problems(pod) == []
    _, env = operator_command(container["args"], monkeypatch)
    env.update(env_of(container))
    job = render_job(_TRANSFERJOB, 1, 1, load_config(env))
    assert _security_ids(job["spec"]["template"]["spec"]) == {}
    assert restricted_pod_problems({**job["spec"]["template"]["spec"], "containers": []}) == []


def test_security_context_values_reach_the_operator_and_training_pods(
    helm_template: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubegraft_operator.config import load_config
    from kubegraft_operator.rendering import render_job

    documents = helm_template("4", *VALUE_SETS["all-on"])
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    assert _security_ids(pod) == {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}
    env = env_of(_operator_container(documents))
    job = render_job(_TRANSFERJOB, 1, 1, load_config(env))
    assert _security_ids(job["spec"]["template"]["spec"]) == {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
    }


_TRANSFERJOB = {
    "metadata": {"name": "flowers", "namespace": "ml", "uid": "u-1"},
    "spec": {"dataset": {"uri": "s3://bucket/flowers/"}, "output": {"uri": "s3://bucket/models/flowers/"}},
}


def test_an_image_digest_replaces_the_tag(helm_template: Renderer) -> None:
    digest = "sha256:" + "ab" * 32
    documents = helm_template(
        "4", "--set", f"operator.image.digest={digest}", "--set", f"trainer.image.digest={digest}"
    )
    container = _operator_container(documents)
    assert container["image"] == f"ghcr.io/kubegraft/operator@{digest}"
    assert env_of(container)["KUBEGRAFT_TRAINER_IMAGE"] == f"ghcr.io/kubegraft/trainer@{digest}"
    all_on = _operator_container(helm_template("4", *VALUE_SETS["all-on"]))
    assert all_on["image"] == "registry.example.com/ml/kubegraft-operator@sha256:" + "0123456789abcdef" * 4
    assert env_of(all_on)["KUBEGRAFT_TRAINER_IMAGE"].endswith(":0.1.0-cuda12")  # no digest: the tag


def test_topology_spread_constraints_select_the_operator_pods_unless_given_a_selector(
    helm_template: Renderer,
) -> None:
    template = one(helm_template("4", *VALUE_SETS["all-on"]), "Deployment")["spec"]["template"]
    zone, host = template["spec"]["topologySpreadConstraints"]
    assert zone["topologyKey"] == "topology.kubernetes.io/zone"
    assert selector_matches(zone["labelSelector"], template["metadata"]["labels"])
    assert zone["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "kubegraft"
    assert host["labelSelector"] == {"matchLabels": {"app.kubernetes.io/component": "operator"}}
    assert (
        "topologySpreadConstraints" not in one(helm_template("4"), "Deployment")["spec"]["template"]["spec"]
    )


def test_service_monitor_takes_relabelings_and_a_scrape_timeout(helm_template: Renderer) -> None:
    [endpoint] = one(helm_template("4", *VALUE_SETS["all-on"]), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scrapeTimeout"] == "10s"
    assert endpoint["relabelings"][0]["targetLabel"] == "node"
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    [plain] = one(helm_template("4", "--set", "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")[
        "spec"
    ]["endpoints"]
    assert not {"scrapeTimeout", "relabelings", "metricRelabelings"} & set(plain)


def test_pod_monitor_takes_relabelings_after_its_own_and_a_scrape_timeout(helm_template: Renderer) -> None:
    [endpoint] = one(helm_template("4", *VALUE_SETS["all-on"]), "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert endpoint["scrapeTimeout"] == "5s"
    own, user = endpoint["relabelings"]
    assert own["targetLabel"] == "transferjob"  # the join label with the operator's series comes first
    assert user == {
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "node",
        "action": "replace",
    }
    assert endpoint["metricRelabelings"] == [
        {"sourceLabels": ["__name__"], "regex": "kubegraft_train_images_skipped_total", "action": "drop"}
    ]
    [plain] = one(helm_template("4", "--set", "metrics.podMonitor.enabled=true"), "PodMonitor")["spec"][
        "podMetricsEndpoints"
    ]
    assert not {"scrapeTimeout", "metricRelabelings"} & set(plain)
    assert [r["targetLabel"] for r in plain["relabelings"]] == ["transferjob"]


def _helm_test_pod(documents: list[dict[str, Any]]) -> dict[str, Any]:
    [pod] = [d for d in by_kind(documents, "Pod") if d["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    return pod


@contextlib.contextmanager
def _operator_metrics_server(ready: bool) -> Iterator[int]:
    """The operator's real /metrics and /readyz server (`metrics.serve`) on a free port, in a thread."""
    from kubegraft_operator import metrics

    loop = asyncio.new_event_loop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    runner = loop.run_until_complete(metrics.serve(port, ready=lambda: ready, host="127.0.0.1"))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_helm_test_pod_asks_the_metrics_service_and_fails_when_the_operator_is_not_ready(
    helm_template: Renderer,
) -> None:
    documents = helm_template("4", *VALUE_SETS["all-on"])
    pod = _helm_test_pod(documents)
    assert (
        pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    )
    [container] = pod["spec"]["containers"]
    operator = one(documents, "Deployment")["spec"]["template"]["spec"]
    assert container["image"] == operator["containers"][0]["image"]
    assert container["securityContext"] == operator["containers"][0]["securityContext"]
    assert pod["spec"]["securityContext"] == operator["securityContext"]
    service = one(documents, "Service")
    url = env_of(container)["KUBEGRAFT_METRICS_URL"]
    port = service["spec"]["ports"][0]["port"]
    assert url == f"http://{service['metadata']['name']}.{RELEASE_NAMESPACE}.svc:{port}"
    # NetworkPolicy: the operator admits the test pod on its metrics port.
    [policy] = [
        p
        for p in by_kind(documents, "NetworkPolicy")
        if selector_matches(
            p["spec"]["podSelector"], one(documents, "Deployment")["spec"]["template"]["metadata"]["labels"]
        )
    ]
    assert any(
        "namespaceSelector" not in peer and selector_matches(peer["podSelector"], pod["metadata"]["labels"])
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
    )
    # The pod's own command, run here against the operator's real metrics server.
    assert container["command"][0] == "python"
    command = [sys.executable, *container["command"][1:]]
    for ready, succeeds in ((True, True), (False, False)):
        with _operator_metrics_server(ready) as local:
            env = {**os.environ, "KUBEGRAFT_METRICS_URL": f"http://127.0.0.1:{local}"}
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert (result.returncode == 0) is succeeds, result.stdout + result.stderr
    assert "/readyz" in result.stderr  # a failing check says which endpoint failed


def test_no_helm_test_pod_without_the_metrics_service(helm_template: Renderer) -> None:
    assert by_kind(helm_template("4", "--set", "metrics.service.enabled=false"), "Pod") == []


def test_log_format_in_extra_args_is_accepted_and_wins_like_any_repeated_option(
    helm_template: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = _operator_container(
        helm_template("4", "--set", "operator.extraArgs={--log-format=json,--debug}")
    )
    kopf_argv, env = operator_command(container["args"], monkeypatch)  # exited 2 before: kopf had no "text"
    assert [a for a in kopf_argv if a.startswith("--log-format")] == ["--log-format=json"]
    assert "--debug" in kopf_argv
    assert env["KUBEGRAFT_LOG_FORMAT"] == "json"
