"""Checks shared by the kustomize manifests and the Helm chart: restricted pods, minimal RBAC, selectors."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

# The operator's permissions, exactly (brief: least privilege; a new verb must be argued for here).
NAMESPACED_RULES: dict[tuple[str, str], set[str]] = {
    ("kubegraft.io", "transferjobs"): {"get", "list", "watch", "patch", "update"},
    ("kubegraft.io", "transferjobs/status"): {"patch", "update"},
    ("batch", "jobs"): {"create", "get", "list", "watch", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/status"): {"get"},
    ("", "configmaps"): {"create", "get", "list", "watch", "patch", "delete"},
    ("", "services"): {"create", "delete"},  # a multi-worker run's headless Service (create; delete on stop)
    ("", "events"): {"create", "patch", "get", "list"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
    ("kueue.x-k8s.io", "workloads"): {"get", "list"},
}
CLUSTER_RULES: dict[tuple[str, str], set[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
}
CLUSTER_PEERING_RULES: dict[tuple[str, str], set[str]] = {
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
}
# The roles of TransferJob users, aggregated into the built-in user-facing roles (status: the operator's).
EDITOR_RULES: dict[tuple[str, str], set[str]] = {
    ("kubegraft.io", "transferjobs"): {"create", "update", "patch", "delete", "get", "list", "watch"},
    ("kubegraft.io", "transferjobs/status"): {"get"},
}
VIEWER_RULES: dict[tuple[str, str], set[str]] = {
    ("kubegraft.io", "transferjobs"): {"get", "list", "watch"},
    ("kubegraft.io", "transferjobs/status"): {"get"},
}
# Kubernetes' built-in aggregation (the `admin`, `edit` and `view` ClusterRoles' aggregationRules, and the
# labels `edit` and `view` carry themselves): the roles whose rules each built-in role collects.
_AGGREGATES_INTO = {"view": ("view", "edit", "admin"), "edit": ("edit", "admin"), "admin": ("admin",)}


def granted(rules: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, flattened from RBAC rules."""
    result: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return result


def aggregated_rules(documents: Iterable[Mapping[str, Any]], builtin: str) -> dict[tuple[str, str], set[str]]:
    """What the built-in ClusterRole `builtin` (admin, edit, view) gains from the ClusterRoles in `documents`.

    Follows Kubernetes' own wiring: `admin` aggregates `aggregate-to-admin`, `edit` aggregates
    `aggregate-to-edit` and `view` aggregates `aggregate-to-view`; `view` is itself labelled aggregate-to-edit
    and `edit` aggregate-to-admin, so what reaches `view` reaches `edit` and `admin` too.
    """
    rules: list[Mapping[str, Any]] = []
    for document in documents:
        if document["kind"] != "ClusterRole":
            continue
        labels = document["metadata"].get("labels", {})
        sources = [k for k, targets in _AGGREGATES_INTO.items() if builtin in targets]
        if any(labels.get(f"rbac.authorization.k8s.io/aggregate-to-{s}") == "true" for s in sources):
            rules.extend(document["rules"])
    return granted(rules)


def operator_cluster_role(documents: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The operator's ClusterRole (component label `operator`), not the TransferJob user roles."""
    roles = [
        d
        for d in by_kind(documents, "ClusterRole")
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
    ]
    assert len(roles) == 1, f"expected one operator ClusterRole, found {len(roles)}"
    return roles[0]


def restricted_pod_problems(pod_spec: Mapping[str, Any]) -> list[str]:
    """Departures from the restricted Pod Security Standard plus a read-only root filesystem."""
    problems: list[str] = []
    pod_sc = pod_spec.get("securityContext", {})
    if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile is not RuntimeDefault")
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        sc = container.get("securityContext", {})
        name = container["name"]
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not set")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as uid 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities are not dropped (drop: [ALL])")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{name}: adds capabilities")
        if "livenessProbe" not in container or "readinessProbe" not in container:
            problems.append(f"{name}: missing liveness or readiness probe")
        resources = container.get("resources", {})
        if not resources.get("requests") or not resources.get("limits", {}).get("memory"):
            problems.append(f"{name}: no resource requests or memory limit")
        image = container["image"]
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append(f"{name}: image {image} is not pinned")
    return problems


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels + matchExpressions) selects `labels`."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
    return True


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    """A container's literal environment variables."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def by_kind(documents: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The documents of one kind."""
    return [d for d in documents if d["kind"] == kind]


def one(documents: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single document of `kind`."""
    found = by_kind(documents, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def operator_command(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], dict[str, str]]:
    """What the image's entrypoint `kubegraft operator <args>` would exec: (kopf argv, environment).

    Runs the real CLI with `os.execve` replaced by a recorder, so the Deployment's args are parsed exactly as
    in the container; an unknown option fails the CLI.
    """
    from typer.testing import CliRunner

    from kubegraft.cli import app

    calls: list[tuple[list[str], dict[str, str]]] = []

    def record(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls.append((list(argv), dict(env)))

    monkeypatch.setattr(os, "execve", record)
    result = CliRunner().invoke(app, ["operator", *args])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    kopf_run_parses(calls[0][0])
    return calls[0]


def kopf_run_parses(argv: list[str]) -> None:
    """Fail unless kopf's own `kopf run` parser accepts `argv` (`python -m kopf run ...`) as it is."""
    import click
    from kopf.cli import run

    assert argv[1:4] == ["-m", "kopf", "run"], argv
    try:
        run.make_context("run", argv[4:])
    except click.UsageError as exc:  # what `kopf run` would report before exiting 2
        pytest.fail(f"kopf run refuses {argv[4:]}: {exc.format_message()}")


def assert_worker_port_rule(rule: Mapping[str, Any], trainer_labels: Mapping[str, str]) -> None:
    """The multi-worker ingress rule: the worker port from training pods of the namespace, nothing else."""
    from kubegraft.runtime import WORKER_PORT

    assert [p["port"] for p in rule["ports"]] == [WORKER_PORT]
    [source] = rule["from"]
    assert "namespaceSelector" not in source  # the policy's own namespace only
    assert selector_matches(source["podSelector"], trainer_labels)
    assert not selector_matches(source["podSelector"], {"app.kubernetes.io/component": "trainer"})
