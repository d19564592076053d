"""manifests/ (kustomize): renders, validates offline against Kubernetes 1.35, and wires the operator safely.

The CRD is the generated file (`make crd` = `kubegraft crd`): referenced from the kustomization, shipped in
the chart's crds/, and identical to the generator's output in every place.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubegraft.crd import render_crd_yaml
from kubegraft.validation import is_transferjob
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
from tests.integration.deploy.conftest import CHART, MANIFESTS, REPO, find_tool, load_documents, run
from tests.integration.deploy.schemas import validation_errors

CRD_NAME = "transferjobs.kubegraft.io"


def _trainer_pod_labels() -> dict[str, str]:
    """The labels the real operator puts on a training pod."""
    from kubegraft_operator.rendering import labels

    return labels("flowers", 1)


def _yaml_files() -> list[Path]:
    """Every object file under manifests/ (not kustomizations, examples, generated CRDs or chart values)."""
    skip = {"kustomization.yaml", "argo-cd-values.yaml"}
    return sorted(
        p
        for p in MANIFESTS.rglob("*.yaml")
        if p.name not in skip and p.relative_to(MANIFESTS).parts[0] not in {"examples", "crd"}
    )


def test_kustomize_renders_the_operator_install(kustomized: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in kustomized)
    assert kinds == sorted(
        [
            "ClusterKopfPeering",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    )


def test_kustomized_objects_validate_against_kubernetes_1_35(kustomized: list[dict[str, Any]]) -> None:
    problems = {f"{d['kind']}/{d['metadata']['name']}": validation_errors(d) for d in kustomized}
    assert {k: v for k, v in problems.items() if v} == {}


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_file_validates_against_kubernetes_1_35(path: Path) -> None:
    documents = load_documents(path.read_text(encoding="utf-8"))
    assert documents, f"{path} holds no object"
    for document in documents:
        assert validation_errors(document) == [], f"{path}: {document['kind']}"


def test_validation_catches_a_misspelt_field_so_the_check_is_real(kustomized: list[dict[str, Any]]) -> None:
    deployment = yaml.safe_load(yaml.safe_dump(one(kustomized, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert validation_errors(deployment)


def test_every_manifest_file_is_in_the_kustomization_or_its_own() -> None:
    listed = {
        (k.parent / r).resolve()
        for k in MANIFESTS.rglob("kustomization.yaml")
        for r in (yaml.safe_load(k.read_text(encoding="utf-8")).get("resources") or [])
    }
    unlisted = [p for p in _yaml_files() if p.resolve() not in listed and p.parent.name != "argocd"]
    assert unlisted == []


def test_kustomization_references_the_generated_crd_and_not_the_examples() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text(encoding="utf-8"))
    resources = kustomization["resources"]
    assert "crd/kubegraft.io_transferjobs.yaml" in resources
    assert not [r for r in resources if r.startswith("examples")]
    # No transformers: they would rewrite the CRD (labels) or namespace cluster-scoped kopf objects.
    assert not {"namespace", "labels", "commonLabels", "namePrefix"} & set(kustomization)


def test_kustomized_crd_is_identical_to_kubegraft_crd_output(kustomized: list[dict[str, Any]]) -> None:
    crds = [d for d in by_kind(kustomized, "CustomResourceDefinition") if d["metadata"]["name"] == CRD_NAME]
    assert crds == [yaml.safe_load(render_crd_yaml())]


@pytest.mark.parametrize(
    "path",
    [MANIFESTS / "crd" / "kubegraft.io_transferjobs.yaml", CHART / "crds" / "kubegraft.io_transferjobs.yaml"],
    ids=["manifests", "chart"],
)
def test_crd_file_is_byte_identical_to_kubegraft_crd_output(path: Path) -> None:
    assert path.read_text(encoding="utf-8") == render_crd_yaml(), f"{path} is stale: run `make crd`"


def test_chart_ships_the_same_kopf_peering_crds() -> None:
    manifests = load_documents((MANIFESTS / "kopf-peering-crds.yaml").read_text(encoding="utf-8"))
    chart = load_documents((CHART / "crds" / "kopf.dev_peerings.yaml").read_text(encoding="utf-8"))
    assert manifests == chart
    assert {d["spec"]["names"]["kind"] for d in manifests} == {"ClusterKopfPeering", "KopfPeering"}


def _examples() -> list[Path]:
    return sorted((MANIFESTS / "examples").glob("*.yaml"))


def test_there_are_examples_to_apply() -> None:
    assert [p for p in _examples() if any(is_transferjob(d) for d in load_documents(p.read_text("utf-8")))]


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_example_validates_against_the_crd(path: Path) -> None:
    for document in load_documents(path.read_text(encoding="utf-8")):
        assert validation_errors(document) == [], f"{path}: {document.get('kind')}"


def test_operator_pod_is_restricted(kustomized: list[dict[str, Any]]) -> None:
    pod = one(kustomized, "Deployment")["spec"]["template"]["spec"]
    assert restricted_pod_problems(pod) == []


def test_two_operator_replicas_share_a_peering(kustomized: list[dict[str, Any]]) -> None:
    deployment = one(kustomized, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    peering = one(kustomized, "ClusterKopfPeering")
    args = deployment["spec"]["template"]["spec"]["containers"][0].get("args", [])
    assert f"--peering={peering['metadata']['name']}" in args


def test_operator_rbac_is_exactly_least_privilege(kustomized: list[dict[str, Any]]) -> None:
    rules = granted(operator_cluster_role(kustomized)["rules"])
    assert rules == NAMESPACED_RULES | CLUSTER_RULES | CLUSTER_PEERING_RULES
    assert not [k for k in rules if k[1] == "secrets" or "*" in k or "*" in rules[k]]


def test_namespace_editors_and_viewers_get_transferjobs_through_the_builtin_roles(
    kustomized: list[dict[str, Any]],
) -> None:
    roles = {r["metadata"]["name"]: r for r in by_kind(kustomized, "ClusterRole")}
    assert granted(roles["kubegraft-transferjob-editor"]["rules"]) == EDITOR_RULES
    assert granted(roles["kubegraft-transferjob-viewer"]["rules"]) == VIEWER_RULES
    assert aggregated_rules(kustomized, "view") == VIEWER_RULES
    assert aggregated_rules(kustomized, "edit") == EDITOR_RULES
    assert aggregated_rules(kustomized, "admin") == EDITOR_RULES


def test_role_binding_grants_the_role_to_the_operator_service_account(
    kustomized: list[dict[str, Any]],
) -> None:
    binding = one(kustomized, "ClusterRoleBinding")
    account = one(kustomized, "ServiceAccount")
    deployment = one(kustomized, "Deployment")
    assert binding["roleRef"]["name"] == operator_cluster_role(kustomized)["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "kubegraft-system"}
    ]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_operator_gets_a_pinned_default_trainer_image(kustomized: list[dict[str, Any]]) -> None:
    container = one(kustomized, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    image = env_of(container)["KUBEGRAFT_TRAINER_IMAGE"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")


def test_operator_environment_uses_the_names_the_operator_reads(kustomized: list[dict[str, Any]]) -> None:
    from kubegraft_operator import config

    container = one(kustomized, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    known = {v for k, v in vars(config).items() if k.startswith("ENV_")} | {"POD_ID"}
    assert {e["name"] for e in container["env"]} <= known


def test_metrics_service_selects_the_operator_pods_on_the_metrics_port(
    kustomized: list[dict[str, Any]],
) -> None:
    service = one(kustomized, "Service")
    template = one(kustomized, "Deployment")["spec"]["template"]
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert ports["metrics"] == 8080


def test_operator_network_policy_admits_prometheus_to_metrics_only(kustomized: list[dict[str, Any]]) -> None:
    policy = one(kustomized, "NetworkPolicy")
    template = one(kustomized, "Deployment")["spec"]["template"]
    assert selector_matches(policy["spec"]["podSelector"], template["metadata"]["labels"])
    [rule] = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["metrics"]
    assert selector_matches(rule["from"][0]["podSelector"], {"app.kubernetes.io/name": "prometheus"})


def test_trainer_network_policy_admits_the_operator_and_prometheus_to_port_9090(
    kustomized: list[dict[str, Any]],
) -> None:
    policy = load_documents((MANIFESTS / "trainer-networkpolicy" / "networkpolicy.yaml").read_text("utf-8"))[
        0
    ]
    assert selector_matches(policy["spec"]["podSelector"], _trainer_pod_labels())
    rule, workers = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [9090]
    assert_worker_port_rule(workers, _trainer_pod_labels())
    operator_labels = one(kustomized, "Deployment")["spec"]["template"]["metadata"]["labels"]
    sources = rule["from"]
    assert any(
        selector_matches(s["podSelector"], operator_labels)
        and selector_matches(s["namespaceSelector"], {"kubernetes.io/metadata.name": "kubegraft-system"})
        for s in sources
    )
    assert any(selector_matches(s["podSelector"], {"app.kubernetes.io/name": "prometheus"}) for s in sources)
    # Nothing else: no source without a pod selector (that would admit every pod of a namespace).
    assert all("podSelector" in s for s in sources)


def test_operator_cli_accepts_the_deployment_args(
    kustomized: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = one(kustomized, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    kopf_argv, env = operator_command(args, monkeypatch)
    assert kopf_argv[1:6] == ["-m", "kopf", "run", "-m", "kubegraft_operator.main"]
    assert "--all-namespaces" in kopf_argv
    assert (
        kopf_argv[kopf_argv.index("--peering") + 1]
        == one(kustomized, "ClusterKopfPeering")["metadata"]["name"]
    )
    assert "--liveness=http://0.0.0.0:8081/healthz" in kopf_argv
    assert env["KUBEGRAFT_METRICS_PORT"] == "8080"


def test_release_versions_agree_across_pyproject_chart_manifests_and_operator(
    kustomized: list[dict[str, Any]],
) -> None:
    from kubegraft_operator.config import DEFAULT_TRAINER_IMAGE

    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    container = one(kustomized, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert chart["appVersion"] == version
    assert container["image"].rsplit(":", 1)[1] == version
    assert env_of(container)["KUBEGRAFT_TRAINER_IMAGE"] == DEFAULT_TRAINER_IMAGE
    assert DEFAULT_TRAINER_IMAGE.rsplit(":", 1)[1] == version


def test_trainer_network_policy_kustomization_renders_into_any_namespace() -> None:
    result = run([find_tool("kubectl"), "kustomize", str(MANIFESTS / "trainer-networkpolicy")])
    [policy] = load_documents(result.stdout)
    assert policy["kind"] == "NetworkPolicy"
    # No namespace of its own: `kubectl apply -n <namespace> -k` puts it where the TransferJobs run.
    assert "namespace" not in policy["metadata"]


def test_a_multi_worker_run_renders_an_indexed_job_and_service_a_real_api_server_admits() -> None:
    from kubegraft.manifests import load_manifest
    from kubegraft_operator.config import OperatorConfig
    from kubegraft_operator.rendering import render_job, render_service

    example = load_manifest((MANIFESTS / "examples" / "multi-worker.yaml").read_text("utf-8"))
    example["metadata"]["uid"] = "0b5e7d3c-1111-4222-8333-444455556666"
    job = render_job(example, 1, 1, OperatorConfig(trainer_image="registry.example/trainer:1"))
    service = render_service(example, 1)
    for body in (job, service):
        assert validation_errors(body) == [], body["kind"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert selector_matches(
        {"matchLabels": service["spec"]["selector"]}, job["spec"]["template"]["metadata"]["labels"]
    )


@pytest.fixture(scope="module")
def monitoring() -> list[dict[str, Any]]:
    """`kubectl kustomize manifests/monitoring/`."""
    return load_documents(run([find_tool("kubectl"), "kustomize", str(MANIFESTS / "monitoring")]).stdout)


def test_monitoring_kustomization_gives_kustomize_users_the_charts_monitoring_objects(
    monitoring: list[dict[str, Any]],
) -> None:
    kinds = sorted(d["kind"] for d in monitoring)
    assert kinds == ["ConfigMap", "PodMonitor", "PrometheusRule", "ServiceMonitor"]
    problems = {f"{d['kind']}/{d['metadata']['name']}": validation_errors(d) for d in monitoring}
    assert {k: v for k, v in problems.items() if v} == {}


def test_kustomize_service_monitor_scrapes_the_metrics_service_the_alerts_name(
    kustomized: list[dict[str, Any]], monitoring: list[dict[str, Any]]
) -> None:
    monitor, service = one(monitoring, "ServiceMonitor"), one(kustomized, "Service")
    assert selector_matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["honorLabels"] is True
    # prometheus-operator names the scrape job after the Service: the job KubegraftOperatorDown watches.
    rules = one(monitoring, "PrometheusRule")["spec"]["groups"]
    down = next(r for g in rules for r in g["rules"] if r.get("alert") == "KubegraftOperatorDown")
    assert f'job="{service["metadata"]["name"]}"' in down["expr"]
    deployment = one(kustomized, "Deployment")["metadata"]["name"]
    assert all(
        f"deploy/{deployment}`" in r["annotations"]["description"]
        for g in rules
        for r in g["rules"]
        if "deploy/" in r["annotations"]["description"]
    )


def test_kustomize_pod_monitor_selects_training_pods_on_their_progress_port(
    monitoring: list[dict[str, Any]],
) -> None:
    from kubegraft.runtime import PROGRESS_PORT_NAME

    monitor = one(monitoring, "PodMonitor")
    assert selector_matches(monitor["spec"]["selector"], _trainer_pod_labels())
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == PROGRESS_PORT_NAME
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def test_kustomize_prometheus_rule_is_the_charts_alerts(tmp_path: Path) -> None:
    from tests.integration.deploy.monitoring_manifests import OUTPUT, render

    assert OUTPUT.read_text(encoding="utf-8") == render(find_tool("helm")), (
        f"{OUTPUT} is stale: run `python -m tests.integration.deploy.monitoring_manifests`"
    )
    rules_file = tmp_path / "rules.yaml"
    groups = load_documents(OUTPUT.read_text(encoding="utf-8"))[0]["spec"]["groups"]
    rules_file.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    result = run([find_tool("promtool"), "check", "rules", str(rules_file)])
    assert "SUCCESS" in result.stdout


def test_kustomize_grafana_dashboard_is_the_charts_dashboard_for_the_sidecar(
    kustomized: list[dict[str, Any]], monitoring: list[dict[str, Any]]
) -> None:
    from tests.integration.deploy.monitoring_manifests import DASHBOARD_OUTPUT, render_dashboard

    assert DASHBOARD_OUTPUT.read_text(encoding="utf-8") == render_dashboard(find_tool("helm")), (
        f"{DASHBOARD_OUTPUT} is stale: run `python -m tests.integration.deploy.monitoring_manifests`"
    )
    config_map = one(monitoring, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # what the Grafana sidecar selects
    assert config_map["metadata"]["namespace"] == one(kustomized, "Deployment")["metadata"]["namespace"]
    [(name, text)] = config_map["data"].items()
    chart_dashboard = CHART / "dashboards" / "kubegraft.json"
    assert name == chart_dashboard.name
    assert json.loads(text) == json.loads(chart_dashboard.read_text(encoding="utf-8"))
