"""The Argo CD health check for TransferJobs (manifests/argocd/health.lua), run in Lua 5.1 as Argo CD does.

Where kstatus (Flux) has a word for the same status, both must say the same (`tests.harness.health`).

Argo CD runs health scripts in gopher-lua (Lua 5.1) with the live object as the global `obj`; lupa's lua51
runtime is the closest real interpreter. The same script is shipped three more times (argocd-cm patch, argo-cd
chart values, docs/gitops.md): each copy must be identical to the file.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.harness.health import HEALTH_LUA, KSTATUS_AS_ARGOCD, argocd_health, kstatus
from tests.integration.deploy.conftest import MANIFESTS, REPO

HEALTH_KEY = "resource.customizations.health.kubegraft.io_TransferJob"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run the health script on `obj`; returns (status, message)."""
    return argocd_health(obj)


def _condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 2,
    }


def transferjob(status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": "flowers", "namespace": "ml", "generation": generation},
        "spec": {"dataset": {"uri": "s3://data/flowers/"}, "output": {"uri": "s3://models/flowers/"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


PENDING = {
    "phase": "Pending",
    "observedGeneration": 2,
    "conditions": [
        _condition("Ready", "False", "Pending", "Waiting for the training pod to be scheduled"),
        _condition("Reconciling", "True", "Pending", "Waiting for the training pod to be scheduled"),
    ],
}
RUNNING = {
    "phase": "Running",
    "observedGeneration": 2,
    "conditions": [
        _condition("Ready", "False", "Training", "Training stage finetune, epoch 3 of 10"),
        _condition("Reconciling", "True", "Training", "Training stage finetune, epoch 3 of 10"),
    ],
}
SUCCEEDED = {
    "phase": "Succeeded",
    "observedGeneration": 2,
    "modelUri": "s3://models/flowers/2/",
    "conditions": [
        _condition("Ready", "True", "Succeeded", "Model published at s3://models/flowers/2/"),
        _condition("Succeeded", "True", "ModelPublished", "Model published at s3://models/flowers/2/"),
    ],
}
FAILED = {
    "phase": "Failed",
    "observedGeneration": 2,
    "conditions": [
        _condition("Ready", "False", "Failed", "Dataset s3://data/flowers/ holds no images"),
        _condition("Stalled", "True", "DatasetEmpty", "Dataset s3://data/flowers/ holds no images"),
        _condition("Failed", "True", "DatasetEmpty", "Dataset s3://data/flowers/ holds no images"),
    ],
}
SUSPENDED = {
    "phase": "Suspended",
    "observedGeneration": 2,
    "conditions": [
        _condition("Ready", "False", "Suspended", "Suspended by spec.runPolicy.suspend"),
        _condition("Suspended", "True", "Suspended", "Suspended by spec.runPolicy.suspend"),
    ],
}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (PENDING, "Progressing"),
        (RUNNING, "Progressing"),
        (SUCCEEDED, "Healthy"),
        (FAILED, "Degraded"),
        (SUSPENDED, "Suspended"),
    ],
    ids=["pending", "running", "succeeded", "failed", "suspended"],
)
def test_each_phase_maps_to_its_argo_cd_health(status: dict[str, Any], expected: str) -> None:
    assert health(transferjob(status))[0] == expected


def test_failed_health_carries_the_failure_message() -> None:
    assert health(transferjob(FAILED)) == ("Degraded", "Dataset s3://data/flowers/ holds no images")


def test_succeeded_health_names_the_published_model() -> None:
    assert "s3://models/flowers/2/" in health(transferjob(SUCCEEDED))[1]


def test_running_health_shows_the_reconciling_message() -> None:
    assert health(transferjob(RUNNING)) == ("Progressing", "Training stage finetune, epoch 3 of 10")


def test_no_status_yet_is_progressing() -> None:
    status, message = health(transferjob(None))
    assert status == "Progressing"
    assert "operator" in message


def test_status_of_an_older_generation_is_progressing_not_healthy() -> None:
    # The spec was edited (generation 3): the old run's Succeeded says nothing about the new spec.
    status, message = health(transferjob(SUCCEEDED, generation=3))
    assert status == "Progressing"
    assert "generation 3" in message


def test_a_failed_status_of_an_older_generation_is_progressing_not_degraded() -> None:
    assert health(transferjob(FAILED, generation=3))[0] == "Progressing"


def test_status_without_observed_generation_is_stale() -> None:
    status = {k: v for k, v in SUCCEEDED.items() if k != "observedGeneration"}
    assert health(transferjob(status))[0] == "Progressing"


def test_conditions_win_over_a_missing_phase() -> None:
    status = {k: v for k, v in FAILED.items() if k != "phase"}
    assert health(transferjob(status))[0] == "Degraded"


STUCK_PENDING = {
    "phase": "Pending",
    "observedGeneration": 2,
    "conditions": [
        _condition(
            "Ready", "False", "Unschedulable", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        ),
        _condition("Reconciling", "False", "Unschedulable", "0/3 nodes are available."),
        _condition(
            "Stalled", "True", "Unschedulable", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        ),
    ],
}


def _both_true(first: str, second: str) -> dict[str, Any]:
    """A status an older operator wrote: Reconciling and Stalled both True, `first` listed first."""
    return {
        "phase": "Pending",
        "observedGeneration": 2,
        "conditions": [
            _condition(first, "True", "Unschedulable", f"{first} message"),
            _condition(second, "True", "Unschedulable", f"{second} message"),
        ],
    }


@pytest.mark.parametrize(
    "status",
    [
        PENDING,
        RUNNING,
        SUCCEEDED,
        FAILED,
        STUCK_PENDING,
        _both_true("Reconciling", "Stalled"),
        _both_true("Stalled", "Reconciling"),
    ],
    ids=["pending", "running", "succeeded", "failed", "stuck-pending", "reconciling-first", "stalled-first"],
)
def test_argo_cd_and_kstatus_agree_on_each_status(status: dict[str, Any]) -> None:
    obj = transferjob(status)
    assert health(obj)[0] == KSTATUS_AS_ARGOCD[kstatus(obj)]


def test_a_stuck_pending_run_is_degraded_with_the_stalled_message() -> None:
    obj = transferjob(STUCK_PENDING)
    assert health(obj) == ("Degraded", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    assert kstatus(obj) == "Failed"


def test_reconciling_listed_before_stalled_is_progressing_as_kstatus_reads_it() -> None:
    assert health(transferjob(_both_true("Reconciling", "Stalled"))) == ("Progressing", "Reconciling message")
    assert health(transferjob(_both_true("Stalled", "Reconciling"))) == ("Degraded", "Stalled message")


@pytest.mark.parametrize(
    "status", [SUCCEEDED, FAILED, RUNNING, None], ids=["succeeded", "failed", "running", "none"]
)
def test_a_transferjob_being_deleted_is_progressing_with_a_message(status: dict[str, Any] | None) -> None:
    obj = transferjob(status)
    obj["metadata"]["deletionTimestamp"] = "2026-01-02T03:04:05Z"
    state, message = health(obj)
    assert state == "Progressing"
    assert "being deleted" in message
    assert "2026-01-02T03:04:05Z" in message
    assert kstatus(obj) == "Terminating"


def test_stalled_without_failed_is_degraded() -> None:
    status = {
        "observedGeneration": 2,
        "phase": "Pending",
        "conditions": [_condition("Stalled", "True", "InvalidSpec", "spec.image cannot be pulled")],
    }
    assert health(transferjob(status)) == ("Degraded", "spec.image cannot be pulled")


def test_empty_status_object_is_progressing() -> None:
    assert health(transferjob({}))[0] == "Progressing"


def test_argocd_cm_patch_embeds_the_same_script() -> None:
    patch = yaml.safe_load((MANIFESTS / "argocd" / "argocd-cm-patch.yaml").read_text(encoding="utf-8"))
    assert patch["kind"] == "ConfigMap"
    assert patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"][HEALTH_KEY] == HEALTH_LUA.read_text(encoding="utf-8")


def test_argo_cd_chart_values_embed_the_same_script() -> None:
    values = yaml.safe_load((MANIFESTS / "argocd" / "argo-cd-values.yaml").read_text(encoding="utf-8"))
    assert values["configs"]["cm"][HEALTH_KEY] == HEALTH_LUA.read_text(encoding="utf-8")


def test_gitops_doc_shows_the_same_script() -> None:
    doc = (REPO / "docs" / "gitops.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```lua\n(.*?)```", doc, flags=re.DOTALL)
    assert blocks, "docs/gitops.md has no ```lua block"
    assert blocks[0] == HEALTH_LUA.read_text(encoding="utf-8")
