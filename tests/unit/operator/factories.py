"""Builders of TransferJob bodies, Job and Pod views for the operator's pure unit tests."""

from __future__ import annotations

import copy
import json
from typing import Any

from kubegraft_operator.observation import JobCondition, JobView, PodView, Terminated
from kubegraft_operator.rendering import spec_hash

UID = "0b5e7d3c-1111-4222-8333-444455556666"

BASE_SPEC: dict[str, Any] = {
    "dataset": {"uri": "s3://datasets/flowers/"},
    "output": {"uri": "s3://models/flowers/"},
    "model": {"backbone": "MobileNetV2"},
    "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi"},
}


def transferjob(
    spec: dict[str, Any] | None = None,
    *,
    name: str = "flowers",
    namespace: str = "ml",
    generation: int = 1,
    annotations: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A TransferJob body as the API server would deliver it."""
    return {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": UID,
            "generation": generation,
            "annotations": dict(annotations or {}),
            "labels": {},
        },
        "spec": copy.deepcopy(spec if spec is not None else BASE_SPEC),
        "status": dict(status or {}),
    }


def with_spec(**changes: Any) -> dict[str, Any]:
    """BASE_SPEC with top-level sections replaced."""
    spec = copy.deepcopy(BASE_SPEC)
    spec.update(changes)
    return spec


def job(
    run: int = 1,
    *,
    spec: dict[str, Any] | None = None,
    name: str = "flowers",
    outcome: str | None = None,
    reason: str = "",
    message: str = "",
    suspend: bool = False,
    suspended_by_operator: bool | None = None,
    failed: int = 0,
    active: int = 1,
    owner: str = UID,
    generation: int = 1,
    uid: str = "",
) -> JobView:
    """A JobView of run `run` for a TransferJob with `spec` (BASE_SPEC by default).

    A suspended Job is the operator's own suspension unless `suspended_by_operator` says otherwise.
    """
    conditions: tuple[JobCondition, ...] = ()
    if outcome == "Succeeded":
        conditions = (JobCondition("Complete", "True", "", "", "2026-01-01T00:10:00Z"),)
    elif outcome == "Failed":
        conditions = (JobCondition("Failed", "True", reason, message, "2026-01-01T00:10:00Z"),)
    return JobView(
        name=f"{name}-{run}",
        transferjob=name,
        run=run,
        owner_uids=(owner,),
        spec_hash=spec_hash(spec if spec is not None else BASE_SPEC),
        generation=generation,
        suspend=suspend,
        suspended_by_operator=suspend if suspended_by_operator is None else suspended_by_operator,
        uid=uid or f"job-uid-{name}-{run}",
        active=0 if outcome else active,
        failed=failed,
        succeeded=1 if outcome == "Succeeded" else 0,
        conditions=conditions,
        start_time="2026-01-01T00:00:00Z",
        completion_time="2026-01-01T00:10:00Z" if outcome == "Succeeded" else None,
    )


def pod(
    run: int = 1,
    *,
    index: int = 0,
    running: bool = False,
    ip: str | None = "10.0.0.7",
    unschedulable: str | None = None,
    waiting: str | None = None,
    waiting_message: str = "",
    exit_code: int | None = None,
    term_reason: str = "",
    term_message: str | dict[str, Any] = "",
) -> PodView:
    """A trainer PodView; `exit_code` makes it terminated with that code."""
    terminated = None
    if exit_code is not None:
        text = json.dumps(term_message) if isinstance(term_message, dict) else term_message
        terminated = Terminated(exit_code, term_reason, text, f"2026-01-01T00:0{index}:30Z")
    return PodView(
        name=f"flowers-{run}-pod{index}",
        transferjob="flowers",
        run=run,
        created=f"2026-01-01T00:0{index}:00Z",
        phase="Running" if running else ("Failed" if exit_code else "Pending"),
        pod_ip=ip,
        unschedulable=unschedulable,
        waiting_reason=waiting,
        waiting_message=waiting_message,
        running=running,
        terminated=terminated,
    )
