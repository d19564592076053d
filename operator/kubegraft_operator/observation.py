"""Small, immutable views of the Jobs and Pods the operator watches, kept in kopf's in-memory indices.

`main`'s index handlers call `observe_job` / `observe_pod` on every watch event; `planning` reads the views.
Keeping only these few fields (not whole bodies) holds memory flat at thousands of TransferJobs, and makes
planning's inputs easy to build in unit tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubegraft.runtime import ANNOTATION_COMPLETION_INDEX
from kubegraft_operator.rendering import (
    ANNOTATION_GENERATION,
    ANNOTATION_SPEC_HASH,
    ANNOTATION_SUSPENDED,
    CONTAINER_NAME,
    LABEL_RUN,
    LABEL_TRANSFERJOB,
)


@dataclass(frozen=True)
class JobCondition:
    """One condition of a batch/v1 Job (Complete, Failed, Suspended, ...)."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


@dataclass(frozen=True)
class JobView:
    """What planning needs to know about one run's Job."""

    name: str
    transferjob: str
    run: int
    owner_uids: tuple[str, ...] = ()
    spec_hash: str = ""
    generation: int = 0
    suspend: bool = False
    completions: int = 1  # spec.completions: the run's worker pods
    suspended_by_operator: bool = False  # the operator's own suspend (ANNOTATION_SUSPENDED), not Kueue's
    uid: str = ""
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    conditions: tuple[JobCondition, ...] = ()
    start_time: str | None = None
    completion_time: str | None = None
    deleting: bool = False

    def condition(self, type_: str) -> JobCondition | None:
        """The Job condition of type `type_` if it is True."""
        for condition in self.conditions:
            if condition.type == type_ and condition.status == "True":
                return condition
        return None

    @property
    def outcome(self) -> str | None:
        """Succeeded or Failed once the Job controller decided (Complete/Failed condition), else None."""
        if self.condition("Complete") is not None:
            return "Succeeded"
        if self.condition("Failed") is not None:
            return "Failed"
        return None


@dataclass(frozen=True)
class Terminated:
    """The terminated state of the trainer container."""

    exit_code: int
    reason: str = ""
    message: str = ""
    finished_at: str | None = None


@dataclass(frozen=True)
class PodView:
    """What planning needs to know about one trainer pod."""

    name: str
    transferjob: str
    run: int
    created: str = ""
    phase: str = "Pending"
    pod_ip: str | None = None
    unschedulable: str | None = None  # the scheduler's message when PodScheduled is False/Unschedulable
    waiting_reason: str | None = None
    waiting_message: str = ""
    running: bool = False
    terminated: Terminated | None = None
    deleting: bool = False
    index: int | None = None  # an Indexed Job pod's worker index (batch.kubernetes.io/job-completion-index)

    @property
    def chief(self) -> bool:
        """Whether this pod is worker 0 (or the only worker): the one that reports and publishes."""
        return self.index in (None, 0)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def observe_job(body: Mapping[str, Any]) -> JobView:
    """The `JobView` of a Job body (as kopf delivers it)."""
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = body.get("status") or {}
    return JobView(
        name=meta.get("name", ""),
        transferjob=labels.get(LABEL_TRANSFERJOB, ""),
        run=_int(labels.get(LABEL_RUN)),
        owner_uids=tuple(ref.get("uid", "") for ref in meta.get("ownerReferences") or []),
        spec_hash=annotations.get(ANNOTATION_SPEC_HASH, ""),
        generation=_int(annotations.get(ANNOTATION_GENERATION)),
        suspend=bool((body.get("spec") or {}).get("suspend", False)),
        completions=_int((body.get("spec") or {}).get("completions"), 1),
        suspended_by_operator=annotations.get(ANNOTATION_SUSPENDED) == "true",
        uid=meta.get("uid") or "",
        active=_int(status.get("active")),
        ready=_int(status.get("ready")),
        succeeded=_int(status.get("succeeded")),
        failed=_int(status.get("failed")),
        conditions=tuple(
            JobCondition(
                type=c.get("type", ""),
                status=c.get("status", ""),
                reason=c.get("reason") or "",
                message=c.get("message") or "",
                last_transition_time=c.get("lastTransitionTime"),
            )
            for c in status.get("conditions") or []
        ),
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def observe_pod(body: Mapping[str, Any]) -> PodView:
    """The `PodView` of a trainer Pod body (its `trainer` container's state)."""
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    status = body.get("status") or {}
    raw_index = (meta.get("annotations") or {}).get(ANNOTATION_COMPLETION_INDEX)
    if raw_index is None:
        raw_index = labels.get(ANNOTATION_COMPLETION_INDEX)  # also a label since Kubernetes 1.28
    unschedulable = None
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            unschedulable = condition.get("message") or "no node fits the pod"
    waiting_reason, waiting_message, running, terminated = None, "", False, None
    for container in status.get("containerStatuses") or []:
        if container.get("name") != CONTAINER_NAME:
            continue
        state = container.get("state") or {}
        if "waiting" in state:
            waiting_reason = state["waiting"].get("reason")
            waiting_message = state["waiting"].get("message") or ""
        if "running" in state:
            running = True
        if "terminated" in state:
            t = state["terminated"]
            terminated = Terminated(
                exit_code=_int(t.get("exitCode"), -1),
                reason=t.get("reason") or "",
                message=t.get("message") or "",
                finished_at=t.get("finishedAt"),
            )
    return PodView(
        name=meta.get("name", ""),
        transferjob=labels.get(LABEL_TRANSFERJOB, ""),
        run=_int(labels.get(LABEL_RUN)),
        created=meta.get("creationTimestamp") or "",
        phase=status.get("phase") or "Pending",
        pod_ip=status.get("podIP"),
        unschedulable=unschedulable,
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        running=running,
        terminated=terminated,
        deleting=bool(meta.get("deletionTimestamp")),
        index=_int(raw_index, -1) if raw_index is not None else None,
    )


@dataclass(frozen=True)
class WorkloadView:
    """A Kueue Workload of a run's Job (kueue.x-k8s.io/v1beta1): its queue and admission conditions."""

    name: str
    queue_name: str = ""
    conditions: tuple[JobCondition, ...] = ()

    def condition(self, type_: str) -> JobCondition | None:
        """The condition of type `type_` (any status), or None."""
        return next((c for c in self.conditions if c.type == type_), None)


def _conditions(raw: Any) -> tuple[JobCondition, ...]:
    return tuple(
        JobCondition(
            type=c.get("type", ""),
            status=c.get("status", ""),
            reason=c.get("reason") or "",
            message=c.get("message") or "",
            last_transition_time=c.get("lastTransitionTime"),
        )
        for c in raw or []
    )


def job_workload(workloads: Iterable[Mapping[str, Any]], job_uid: str) -> WorkloadView | None:
    """The Workload Kueue made for the Job with uid `job_uid` (its owner), from a list of Workloads."""
    for body in workloads:
        meta = body.get("metadata") or {}
        owners = meta.get("ownerReferences") or []
        labels = meta.get("labels") or {}
        if any(o.get("uid") == job_uid for o in owners) or labels.get("kueue.x-k8s.io/job-uid") == job_uid:
            return WorkloadView(
                name=meta.get("name", ""),
                queue_name=(body.get("spec") or {}).get("queueName") or "",
                conditions=_conditions((body.get("status") or {}).get("conditions")),
            )
    return None


def failed_create_message(events: Iterable[Mapping[str, Any]], job_uid: str) -> str | None:
    """The newest FailedCreate Event of the Job with uid `job_uid` (e.g. a ResourceQuota refused its pod)."""
    found = [
        e
        for e in events
        if e.get("reason") == "FailedCreate" and (e.get("involvedObject") or {}).get("uid") == job_uid
    ]
    if not found:
        return None
    newest = max(found, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return str(newest.get("message") or "the Job controller could not create the pod")
