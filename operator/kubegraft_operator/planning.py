"""Pure planning: from a TransferJob and what is observed of its children, what to do and what to report.

Called by `reconcile`, which observes (kopf indices, the trainer's /progress) and acts (`kube`). Two steps:

1. `plan_run` decides which run is current and which actions bring the cluster there: create the run's
   Job, stop Jobs of older runs, patch `spec.suspend`. The run rule (documented in docs/operator.md):
   a run is identified by the digest of the spec without `runPolicy.suspend` (`rendering.spec_hash`). The
   current run is the newest observed Job when its digest matches the spec; else the run recorded in the
   TransferJob's annotations when its digest matches; else a new run numbered one past every run seen.
   So a re-applied identical spec and a suspend-only change keep the run; any other spec change starts
   the next.
   A crash between "create Job" and "record the run" re-derives the same number, and 409 says it exists.
2. `derive_status` turns the observations into the status (phase, conditions, progress fields) and the
   Kubernetes Events that explain it; `status_patch` keeps writes to what changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from kubegraft.runtime import (
    UNPUBLISHED_NOTICES,
    WARNING_NOTICES,
    ExitCode,
    FailureReason,
    Notice,
    NoticeReason,
    TrainingProgress,
)
from kubegraft.spec import TransferJobSpec
from kubegraft.status import ConditionType
from kubegraft_operator.conditions import DesiredCondition, find, merge
from kubegraft_operator.observation import JobView, PodView, Terminated, WorkloadView
from kubegraft_operator.rendering import job_name, spec_hash

ANNOTATION_RUN = "kubegraft.io/run"
ANNOTATION_RUN_SPEC_HASH = "kubegraft.io/run-spec-hash"
ANNOTATION_RUN_GENERATION = "kubegraft.io/run-generation"
ANNOTATION_FINISHED_RUN = "kubegraft.io/finished-run"
# "<run>/<count>": how many of that run's trainer notices are Events already (a restart posts no duplicates).
ANNOTATION_NOTICES = "kubegraft.io/notices-emitted"

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
MAX_MESSAGE = 1024


class Reason:
    """CamelCase reasons the operator puts on conditions and Events (the trainer adds its FailureReasons)."""

    JOB_CREATED = "JobCreated"
    STARTING = "Starting"
    TRAINING = "Training"
    QUEUED = "Queued"
    SUSPENDED = "Suspended"
    RESUMING = "Resuming"
    SUCCEEDED = "Succeeded"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    SECRET_NOT_FOUND = "SecretNotFound"
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"
    OOM_KILLED = "OOMKilled"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    ATTEMPT_FAILED = "AttemptFailed"
    JOB_FAILED = "JobFailed"
    RUN_STOPPED = "RunStopped"
    JOB_MISSING = "JobMissing"
    TRANSFER_GAIN = "TransferGain"
    IMAGE_NOT_ALLOWED = "ImageNotAllowed"
    FAILED_CREATE = "FailedCreate"
    PUBLISHED = "Published"


# Metric names (trainer contract) that say the run measured itself against the raw-pixel baseline.
BASELINE_METRICS = ("transfer_gain", "baseline_accuracy")


@dataclass(frozen=True)
class RunPlan:
    """The current run and the actions that bring the cluster to it.

    Attributes:
        run: the current run number.
        generation: the metadata.generation the run was started for.
        spec_hash: the spec digest (without runPolicy.suspend) of the run.
        job: the current run's observed Job, if any.
        create: whether the run's Job (and its ConfigMap) must be created.
        stop: Jobs of other runs still running, to delete.
        suspend: the value to patch into the Job's spec.suspend, or None for no patch.
        finished_without_job: the run finished and its Job is gone (TTL): nothing to create, status stays.
        annotations: the kubegraft.io/ annotations the TransferJob must carry.
    """

    run: int
    generation: int
    spec_hash: str
    job: JobView | None
    create: bool
    stop: tuple[JobView, ...] = ()
    suspend: bool | None = None
    finished_without_job: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def job_name(self) -> str | None:
        """Name of the current run's Job, known once a run exists."""
        return self.job.name if self.job is not None else None


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def owned_jobs(transferjob: Mapping[str, Any], jobs: Iterable[JobView]) -> list[JobView]:
    """The Jobs owned by this TransferJob (same uid), so a re-created namesake never adopts old Jobs."""
    uid = transferjob["metadata"].get("uid", "")
    return [j for j in jobs if uid in j.owner_uids]


def plan_run(
    transferjob: Mapping[str, Any], jobs: Iterable[JobView], desired_suspend: bool | None
) -> RunPlan:
    """Decide the current run of `transferjob` and the actions to get there (see the module docstring).

    Args:
        transferjob: the TransferJob body (metadata with annotations, generation and uid; spec; status).
        jobs: the Jobs observed for it (any run); Jobs owned by another uid are ignored.
        desired_suspend: `rendering.desired_suspend` of the spec (True, False, or None = Kueue decides).
    """
    meta = transferjob["metadata"]
    annotations = meta.get("annotations") or {}
    status = transferjob.get("status") or {}
    generation = _int(meta.get("generation"), 1)
    digest = spec_hash(transferjob["spec"])
    mine = owned_jobs(transferjob, jobs)
    latest = max(mine, key=lambda j: j.run, default=None)
    recorded_run = _int(annotations.get(ANNOTATION_RUN))
    if latest is not None and latest.spec_hash == digest and latest.run >= recorded_run:
        run, run_generation = latest.run, latest.generation or generation
    elif recorded_run and annotations.get(ANNOTATION_RUN_SPEC_HASH) == digest:
        run, run_generation = recorded_run, _int(annotations.get(ANNOTATION_RUN_GENERATION), generation)
    else:
        run, run_generation = max(recorded_run, latest.run if latest else 0) + 1, generation
    current = next((j for j in mine if j.run == run and not j.deleting), None)
    finished = annotations.get(ANNOTATION_FINISHED_RUN) == str(run) or (
        status.get("run") == run and status.get("phase") in TERMINAL_PHASES
    )
    finished_without_job = current is None and finished
    stop = tuple(j for j in mine if j.run != run and j.outcome is None and not j.deleting)
    suspend = None
    if current is not None and current.outcome is None and desired_suspend is not None:
        suspend = desired_suspend if current.suspend != desired_suspend else None
        if suspend is False and not current.suspended_by_operator:
            suspend = None  # someone else suspended it (Kueue, manageJobsWithoutQueueName): theirs to resume
    wanted = {
        ANNOTATION_RUN: str(run),
        ANNOTATION_RUN_SPEC_HASH: digest,
        ANNOTATION_RUN_GENERATION: str(run_generation),
    }
    if (current is not None and current.outcome is not None) or finished:
        wanted[ANNOTATION_FINISHED_RUN] = str(run)
    elif ANNOTATION_FINISHED_RUN in annotations:
        wanted[ANNOTATION_FINISHED_RUN] = ""
    return RunPlan(
        run=run,
        generation=run_generation,
        spec_hash=digest,
        job=current,
        create=current is None and not finished_without_job,
        stop=stop,
        suspend=suspend,
        finished_without_job=finished_without_job,
        annotations=wanted,
    )


def annotations_patch(transferjob: Mapping[str, Any], plan: RunPlan) -> dict[str, str | None]:
    """The metadata.annotations merge patch recording `plan`'s run, or {} when already recorded."""
    have = transferjob["metadata"].get("annotations") or {}
    patch: dict[str, str | None] = {}
    for key, value in plan.annotations.items():
        if value == "":
            if key in have:
                patch[key] = None
        elif have.get(key) != value:
            patch[key] = value
    return patch


def parse_termination_message(message: str) -> tuple[TrainingProgress | None, str]:
    """The trainer's final `TrainingProgress` from a termination message, and a plain-text fallback.

    The trainer writes compact JSON; with FallbackToLogsOnError the kubelet may put the log tail there
    instead, which is returned (shortened) as text for the condition message.
    """
    text = message.strip()
    if not text:
        return None, ""
    try:
        return TrainingProgress.model_validate(json.loads(text)), ""
    except (ValueError, ValidationError):
        return None, text[-MAX_MESSAGE:]


@dataclass(frozen=True)
class EventSpec:
    """A Kubernetes Event to post on the TransferJob; `key` makes it once per distinct cause."""

    type: str  # Normal or Warning
    reason: str
    message: str
    key: str


@dataclass(frozen=True)
class Summary:
    """The one-line state of the run: phase, reason, message, and whether it is stuck."""

    phase: str
    reason: str
    message: str
    stalled: bool = False


@dataclass(frozen=True)
class Explanation:
    """What the cluster says about a run that waits, read by the pending timer (`reconcile`, explain=True).

    Attributes:
        workload: the Kueue Workload of the run's suspended Job, when readable (RBAC, Kueue installed).
        failed_create: the newest FailedCreate Event of the run's Job (e.g. a ResourceQuota refused its pod).
    """

    workload: WorkloadView | None = None
    failed_create: str | None = None


@dataclass(frozen=True)
class StatusResult:
    """The status to write and the Events that explain changes."""

    status: dict[str, Any]
    summary: Summary
    events: tuple[EventSpec, ...]
    progress: TrainingProgress | None

    @property
    def notices(self) -> tuple[Notice, ...]:
        """The trainer's notices of this run so far (cumulative, in order): /progress or its final word."""
        return tuple(self.progress.notices) if self.progress is not None else ()


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _latest(pods: Sequence[PodView]) -> PodView | None:
    live = [p for p in pods if not p.deleting] or list(pods)
    return max(live, key=lambda p: (p.created, p.name), default=None)


def _live(pods: Sequence[PodView]) -> list[PodView]:
    """Each worker's newest pod (one per index; the one pod of a single-worker run), deleted ones last."""
    newest: dict[int | None, PodView] = {}
    for pod in sorted(pods, key=lambda p: (not p.deleting, p.created, p.name)):
        newest[pod.index] = pod
    return list(newest.values())


def worker_counts(spec: TransferJobSpec, pods: Sequence[PodView]) -> dict[str, int]:
    """`status.workers`: worker pods whose trainer runs now, of `spec.workers`."""
    ready = sum(1 for p in _live(pods) if p.running and p.terminated is None and not p.deleting)
    return {"ready": ready, "total": spec.workers}


def _worker(pod: PodView) -> str:
    """How Events name a pod: `worker 1 (pod x-1-abcde)` in a multi-worker run, else `pod x-abcde`."""
    return f"worker {pod.index} (pod {pod.name})" if pod.index is not None else f"pod {pod.name}"


def _last_terminated(pods: Sequence[PodView]) -> tuple[PodView, Terminated] | None:
    """The pod that ended last, and how; a worker that only stopped because another failed (exit 75,
    WorkerLost) comes after the others: the failure that caused it is the news."""
    done = [(p, p.terminated) for p in pods if p.terminated is not None]
    done = [(p, t) for p, t in done if t.exit_code != ExitCode.WORKER_LOST] or done
    if not done:
        return None
    pod, term = max(done, key=lambda pt: (pt[1].finished_at or "", pt[0].created, pt[0].name))
    return pod, term


def _failure_text(term: Terminated) -> tuple[str, str]:
    """(reason, message) of one failed attempt: the trainer's own, else the kubelet's, else the exit code."""
    final, text = parse_termination_message(term.message)
    if term.reason == "OOMKilled":
        return Reason.OOM_KILLED, "the trainer was killed for exceeding its memory limit (OOMKilled)"
    if final is not None and final.reason:
        return final.reason, final.message or f"the trainer failed with {final.reason}"
    if term.exit_code == ExitCode.INVALID:
        return FailureReason.INVALID_SPEC, text or "the trainer rejected the spec or the data (exit code 78)"
    detail = f": {text}" if text else ""
    return Reason.ATTEMPT_FAILED, f"the trainer exited with code {term.exit_code}{detail}"


def _failed_summary(spec: TransferJobSpec, job: JobView, run: int, pods: Sequence[PodView]) -> Summary:
    """Why a Job failed: its deadline, the trainer's own reason, OOMKilled, or the exhausted backoff limit."""
    condition = job.condition("Failed")
    job_reason = condition.reason if condition else ""
    job_message = condition.message if condition else ""
    limit = spec.run_policy.backoff_limit
    if job_reason == "DeadlineExceeded":
        deadline = spec.run_policy.active_deadline_seconds
        text = f"Run {run} was stopped after runPolicy.activeDeadlineSeconds ({deadline} s). {job_message}"
        return Summary("Failed", Reason.DEADLINE_EXCEEDED, _short(text), stalled=True)
    last = _last_terminated(pods)
    if last is None:
        reason = job_reason or Reason.JOB_FAILED
        return Summary("Failed", reason, _short(f"Run {run} failed: {job_message or reason}."), stalled=True)
    reason, message = _failure_text(last[1])
    if job_reason == "BackoffLimitExceeded":
        if reason == Reason.ATTEMPT_FAILED:
            text = f"Run {run} failed {job.failed} times (backoffLimit {limit}); last attempt: {message}."
            return Summary("Failed", Reason.BACKOFF_LIMIT_EXCEEDED, _short(text), stalled=True)
        message = f"{message} (failed {job.failed} times, backoffLimit {limit})"
    return Summary("Failed", reason, _short(f"Run {run} failed: {message}."), stalled=True)


def _workload_detail(workload: WorkloadView) -> str:
    """Where a Kueue Workload stands, from its Evicted, Admitted and QuotaReserved conditions."""
    evicted, admitted = workload.condition("Evicted"), workload.condition("Admitted")
    reserved = workload.condition("QuotaReserved")
    if evicted is not None and evicted.status == "True":
        return f"evicted ({evicted.reason}): {evicted.message}".rstrip(": ")
    if admitted is not None and admitted.status == "True":
        return "admitted; the Job starts shortly"
    if reserved is not None and reserved.status == "True":
        waiting = f": {admitted.message}" if admitted is not None and admitted.message else ""
        return f"quota reserved, waiting for admission checks{waiting}"
    if reserved is not None and reserved.message:
        return reserved.message
    return "waiting for quota"


def _queued_summary(spec: TransferJobSpec, run: int, workload: WorkloadView | None) -> Summary:
    """Pending/Queued: Kueue (or another controller) holds the Job suspended; the Workload says why."""
    queue = spec.scheduling.queue_name or (workload.queue_name if workload is not None else "")
    if workload is not None:
        where = f" from queue {queue}" if queue else ""
        text = f"Run {run} waits for Kueue to admit it{where} (Workload {workload.name}: "
        return Summary("Pending", Reason.QUEUED, _short(f"{text}{_workload_detail(workload)})."))
    if queue:
        text = f"Run {run} waits for Kueue to admit it from queue {queue}."
        return Summary("Pending", Reason.QUEUED, text)
    text = (
        f"Run {run}'s Job was suspended by another controller (e.g. Kueue with manageJobsWithoutQueueName); "
        "it resumes when that controller unsuspends it."
    )
    return Summary("Pending", Reason.QUEUED, text)


def _suspended_summary(
    spec: TransferJobSpec, run: int, job: JobView, workload: WorkloadView | None
) -> Summary:
    if spec.run_policy.suspend:
        text = f"Run {run} is suspended; set spec.runPolicy.suspend to false to resume."
        return Summary("Suspended", Reason.SUSPENDED, text)
    if spec.scheduling.queue_name or not job.suspended_by_operator:
        return _queued_summary(spec, run, workload)
    return Summary("Pending", Reason.RESUMING, f"Run {run} is resuming.")


def _stuck_summary(spec: TransferJobSpec, pod: PodView) -> Summary | None:
    """Why a pending pod does not start (scheduling, image pull, missing Secret); None if just not yet."""
    if pod.unschedulable:
        text = f"The trainer pod cannot be scheduled: {pod.unschedulable}"
        return Summary("Pending", Reason.UNSCHEDULABLE, _short(text), stalled=True)
    if pod.waiting_reason in IMAGE_PULL_REASONS:
        image = spec.image or "the trainer image"
        text = f"Cannot pull {image}: {pod.waiting_message or pod.waiting_reason}"
        return Summary("Pending", Reason.IMAGE_PULL_FAILED, _short(text), stalled=True)
    if pod.waiting_reason == "CreateContainerConfigError":
        detail = pod.waiting_message or "the container configuration is invalid"
        if "secret" in detail.lower():
            text = f"The storage Secret is missing: {detail}"
            return Summary("Pending", Reason.SECRET_NOT_FOUND, _short(text), stalled=True)
        return Summary("Pending", Reason.CONTAINER_CONFIG_ERROR, _short(detail), stalled=True)
    return None


def summarize(
    spec: TransferJobSpec,
    plan: RunPlan,
    pods: Sequence[PodView],
    progress: TrainingProgress | None,
    explanation: Explanation | None = None,
) -> Summary:
    """The run's phase, reason and message from its Job, its pods (this run's) and the trainer's progress.

    `explanation` (the pending timer's reading of the Workload and the Job's Events) details a run that
    waits: Queued from the Kueue Workload's conditions, FailedCreate when no pod could be created.
    """
    explanation = explanation or Explanation()
    job, run = plan.job, plan.run
    if job is None:
        return Summary("Pending", Reason.JOB_CREATED, f"Creating the Job of run {run}.")
    if job.outcome == "Succeeded":
        return Summary("Succeeded", Reason.SUCCEEDED, f"Run {run} succeeded.")
    if job.outcome == "Failed":
        return _failed_summary(spec, job, run, pods)
    if job.suspend:
        return _suspended_summary(spec, run, job, explanation.workload)
    if explanation.failed_create and len([p for p in pods if not p.deleting]) < job.completions:
        text = f"The Job controller cannot create the trainer pod of run {run}: {explanation.failed_create}"
        return Summary("Pending", Reason.FAILED_CREATE, _short(text), stalled=True)
    # With several workers the chief (worker 0) tells how the run goes; any worker may be stuck.
    pod = _latest([p for p in pods if p.chief])
    last = _last_terminated(pods)
    retry_note = ""
    if last is not None and job.failed > 0 and last[0] is not pod:
        reason, message = _failure_text(last[1])
        retry_note = (
            f" Retrying after {job.failed} failed attempt(s) (backoffLimit {spec.run_policy.backoff_limit});"
            f" last: {reason}: {message}."
        )
    if pod is not None and pod.running and pod.terminated is None:
        return Summary("Running", Reason.TRAINING, _short(_progress_message(run, progress) + retry_note))
    if pod is not None and pod.terminated is not None and pod.terminated.exit_code == ExitCode.SUCCEEDED:
        # The trainer is done but the Job controller has not marked the Job Complete yet: still Running,
        # never back to Pending (phases only move forward within a run).
        text = f"Run {run} finished training; waiting for its Job to complete."
        return Summary("Running", Reason.TRAINING, text)
    for candidate in ([pod] if pod is not None else []) + [p for p in _live(pods) if p is not pod]:
        stuck = _stuck_summary(spec, candidate)
        if stuck is not None:
            return stuck
    return Summary("Pending", Reason.STARTING, _short(f"Run {run} is starting.{retry_note}"))


def image_rejection(
    spec: TransferJobSpec, plan: RunPlan, image_allowed: Callable[[str], bool], setting: str
) -> Summary | None:
    """Why the run's Job must not be created: `spec.image` is outside the operator's allow-list; else None.

    Only a Job still to be created is checked: a run already going on is left alone.

    Args:
        spec: the parsed spec.
        plan: `plan_run`'s decision.
        image_allowed: the operator's allow-list check (`OperatorConfig.image_allowed`).
        setting: the setting's name for the message (the environment variable the chart sets).
    """
    if not plan.create or image_allowed(spec.image):
        return None
    text = (
        f"Run {plan.run} was not started: image {spec.image} is not allowed by the operator's {setting} "
        "(chart value trainer.allowedImages); use an allowed image or ask the cluster's operator to allow it."
    )
    return Summary("Failed", Reason.IMAGE_NOT_ALLOWED, _short(text), stalled=True)


def invalid_spec_status(
    transferjob: Mapping[str, Any], plan: RunPlan, message: str, now: str
) -> tuple[dict[str, Any], Summary]:
    """The status of a spec that cannot be run: run `plan.run` Failed/Stalled, reason InvalidSpec, no Job.

    Like any spec change it is a run of its own (`plan_run` numbers it; the caller records it and stops
    the previous run's Job), so a corrected spec, or a return to an earlier one, starts the next run.
    """
    previous = dict(transferjob.get("status") or {})
    generation = _int(transferjob["metadata"].get("generation"), 1)
    summary = Summary(
        "Failed", FailureReason.INVALID_SPEC, _short(f"The spec cannot be run: {message}."), stalled=True
    )
    status = {
        "phase": summary.phase,
        "run": plan.run,
        "observedGeneration": generation,
        "conditions": merge(
            previous.get("conditions") or [], desired_conditions(summary), generation=generation, now=now
        ),
    }
    return status, summary


def _progress_message(run: int, progress: TrainingProgress | None) -> str:
    if progress is None or progress.state in ("starting", "loading"):
        return f"Run {run} is running: the trainer is loading data."
    if progress.state == "exporting":
        return f"Run {run} is exporting the model."
    stage = progress.stage or "?"
    return (
        f"Run {run} is training stage {stage}, epoch {progress.epoch}/{progress.stage_epochs} "
        f"({progress.completed_epochs}/{progress.total_epochs} epochs overall)."
    )


def desired_conditions(summary: Summary) -> list[DesiredCondition]:
    """The six conditions of a summary (kstatus: Reconciling while under way, Stalled when stuck/failed).

    Reconciling and Stalled are never both True: kstatus (Flux) reads the first True one of the two in the
    list, so a stuck Pending run with Reconciling True would be "in progress" for Flux and Degraded for Argo
    CD. A stuck run is Stalled only; Reconciling turns True again when it moves on.
    """
    phase, reason, message = summary.phase, summary.reason, summary.message
    active = phase in ("Pending", "Running") and not summary.stalled
    return [
        DesiredCondition(ConditionType.READY, phase == "Succeeded", reason, message),
        DesiredCondition(ConditionType.RECONCILING, active, reason, message),
        DesiredCondition(ConditionType.STALLED, summary.stalled, reason, message if summary.stalled else ""),
        DesiredCondition(ConditionType.SUCCEEDED, phase == "Succeeded", reason, message),
        DesiredCondition(ConditionType.FAILED, phase == "Failed", reason, message),
        DesiredCondition(
            ConditionType.SUSPENDED, phase == "Suspended", reason, message if phase == "Suspended" else ""
        ),
    ]


# Routine steps that need no Event of their own (creating the Job posts JobCreated already).
_QUIET_REASONS = frozenset({Reason.JOB_CREATED, Reason.STARTING})

STATUS_METRIC_DIGITS = 4

_PROGRESS_FIELDS = (
    "stage",
    "epoch",
    "totalEpochs",
    "progress",
    "etaSeconds",
    "lastUpdateTime",
    "metrics",
    "images",
    "recipe",
    "modelUri",
    "replicas",
    "globalBatchSize",
    "perReplicaBatchSize",
)
# What a new lastUpdateTime stamps: the fields that move while a run trains.
_MOVING_FIELDS = ("stage", "epoch", "totalEpochs", "progress", "etaSeconds", "metrics")


def _progress_fields(progress: TrainingProgress) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "stage": progress.stage,
        "epoch": progress.epoch,
        "totalEpochs": progress.total_epochs or None,
        "progress": progress.progress,
        # Whole seconds: an estimate, and the status is written only when it changes.
        "etaSeconds": round(progress.eta_seconds) if progress.eta_seconds is not None else None,
        # Rounded: the status is for people and printer columns; metrics.json keeps full precision.
        "metrics": {k: round(v, STATUS_METRIC_DIGITS) for k, v in progress.metrics.items()} or None,
        "images": progress.images.model_dump(by_alias=True) if progress.images.train else None,
        "recipe": progress.recipe,
        "modelUri": progress.model_uri,
        "replicas": progress.replicas,
        "globalBatchSize": progress.global_batch_size,
        "perReplicaBatchSize": progress.per_replica_batch_size,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _finish_progress(
    status: dict[str, Any], previous: Mapping[str, Any], phase: str, now: str, *, moved: bool
) -> None:
    """Progress only grows within a run and is 100 once Succeeded; no ETA once finished; stamp the update.

    A retried pod restarts its count from its checkpoint, so the status keeps the highest value it showed.
    """
    before = previous.get("progress")
    if phase == "Succeeded":
        status["progress"], status["etaSeconds"] = 100, 0
    elif isinstance(before, int) and status.get("progress") is not None:
        status["progress"] = max(before, int(status["progress"]))
    if phase in ("Failed", "Suspended"):
        status.pop("etaSeconds", None)
    if moved and any(status.get(k) != previous.get(k) for k in _MOVING_FIELDS):
        status["lastUpdateTime"] = now


def _event_type(summary: Summary) -> str:
    return "Warning" if summary.stalled or summary.phase == "Failed" else "Normal"


def _kept_status(previous: Mapping[str, Any], generation: int, now: str) -> StatusResult:
    """The status of a finished run whose Job is gone (TTL): as it was, re-stamped with the generation."""
    conditions = previous.get("conditions") or []
    status = dict(previous)
    status["observedGeneration"] = generation
    status["conditions"] = merge(
        conditions,
        [
            DesiredCondition(c["type"], c["status"] == "True", c["reason"], c.get("message", ""))
            for c in conditions
        ],
        generation=generation,
        now=now,
    )
    return StatusResult(status, Summary(str(previous.get("phase")), _ready_reason(previous), ""), (), None)


def _events(
    previous: Mapping[str, Any], plan: RunPlan, summary: Summary, pods: Sequence[PodView]
) -> list[EventSpec]:
    """Events for a changed cause (phase/reason/run) and for each failed attempt of a run still going on."""
    events: list[EventSpec] = []
    changed = (previous.get("phase"), _ready_reason(previous), previous.get("run")) != (
        summary.phase,
        summary.reason,
        plan.run,
    )
    if changed and summary.reason not in _QUIET_REASONS:
        key = f"run{plan.run}/{summary.phase}/{summary.reason}"
        events.append(EventSpec(_event_type(summary), summary.reason, summary.message, key=key))
    if plan.job is not None and plan.job.outcome is None:
        for pod in pods:
            if pod.terminated is not None and pod.terminated.exit_code != 0:
                reason, message = _failure_text(pod.terminated)
                who = _worker(pod)
                text = _short(f"{who[0].upper()}{who[1:]} of run {plan.run} failed: {message}.")
                events.append(EventSpec("Warning", reason, text, key=pod.name))
    return events


def transfer_gain_condition(
    summary: Summary,
    metrics: Mapping[str, float],
    word: TrainingProgress | None,
    previous_conditions: Sequence[Mapping[str, Any]],
) -> list[DesiredCondition]:
    """The `TransferGain` condition of a succeeded run ([] for other phases or when nothing says).

    False (NoTransferGain, the notice's message) when the trainer reported a NoTransferGain notice; True when
    the run's metrics hold a baseline comparison (`transfer_gain` or `baseline_accuracy`) and no such notice;
    absent otherwise. With no word from the trainer (its pods are gone), the run's previous verdict is kept.

    Args:
        summary: the run's summary (only Succeeded gets the condition).
        metrics: the run's metrics as the status will hold them.
        word: the trainer's /progress or final termination message, if seen in this reconcile.
        previous_conditions: the same run's previous conditions ([] for a new run).
    """
    if summary.phase != "Succeeded":
        return []
    before = find(previous_conditions, ConditionType.TRANSFER_GAIN)
    if word is None and before is not None:
        return [
            DesiredCondition(
                ConditionType.TRANSFER_GAIN,
                before.get("status") == "True",
                str(before.get("reason", "")),
                str(before.get("message", "")),
            )
        ]
    notices = word.notices if word is not None else []
    notice = next((n for n in notices if n.reason == NoticeReason.NO_TRANSFER_GAIN), None)
    if notice is not None:
        text = _short(notice.message or "The model did not beat the raw-pixel baseline on the test split.")
        return [DesiredCondition(ConditionType.TRANSFER_GAIN, False, NoticeReason.NO_TRANSFER_GAIN, text)]
    if not any(name in metrics for name in BASELINE_METRICS):
        return []
    parts = [
        f"{label} {metrics[key]:.4g}"
        for key, label in (
            ("test_accuracy", "test accuracy"),
            ("baseline_accuracy", "raw-pixel baseline"),
            ("transfer_gain", "gain"),
        )
        if key in metrics
    ]
    text = f"The model beat the raw-pixel baseline on the test split: {', '.join(parts)}."
    return [DesiredCondition(ConditionType.TRANSFER_GAIN, True, Reason.TRANSFER_GAIN, text)]


def _kept(before: Mapping[str, Any]) -> DesiredCondition:
    return DesiredCondition(
        str(before.get("type", "")),
        before.get("status") == "True",
        str(before.get("reason", "")),
        str(before.get("message", "")),
    )


def unpublished_notice(word: TrainingProgress | None) -> Notice | None:
    """The trainer's notice that its publish gate kept the model back (NotBetter, BelowMinimum), if any."""
    notices = word.notices if word is not None else []
    return next((n for n in notices if n.reason in UNPUBLISHED_NOTICES), None)


def published_condition(
    summary: Summary,
    model_uri: str | None,
    word: TrainingProgress | None,
    previous_conditions: Sequence[Mapping[str, Any]],
) -> list[DesiredCondition]:
    """The `Published` condition of a succeeded run ([] for other phases or when nothing says).

    False with the publish gate's reason (NotBetter, BelowMinimum) and message when the trainer reported
    one; True (Published) when the run published a version; with no word from the trainer (its pods are
    gone), the run's previous verdict is kept.

    Args:
        summary: the run's summary (only Succeeded gets the condition).
        model_uri: the version the run published, as the status holds it.
        word: the trainer's /progress or final termination message, if seen in this reconcile.
        previous_conditions: the same run's previous conditions ([] for a new run).
    """
    if summary.phase != "Succeeded":
        return []
    before = find(previous_conditions, ConditionType.PUBLISHED)
    if word is None and before is not None:
        return [_kept(before)]
    notice = unpublished_notice(word)
    if notice is not None:
        text = _short(notice.message or "The publish gate kept the model back.")
        return [DesiredCondition(ConditionType.PUBLISHED, False, notice.reason, text)]
    if model_uri:
        return [DesiredCondition(ConditionType.PUBLISHED, True, Reason.PUBLISHED, f"Published {model_uri}.")]
    return []


def _succeeded_summary(summary: Summary, model_uri: str | None, kept_back: str) -> Summary:
    """A succeeded run's message names the version it published, or why the publish gate kept it back."""
    if summary.phase != "Succeeded":
        return summary
    if model_uri:
        return replace(summary, message=f"{summary.message[:-1]}: published {model_uri}.")
    if kept_back:
        return replace(summary, message=_short(f"{summary.message} {kept_back.rstrip('.')}."))
    return summary


def _kept_back_text(word: TrainingProgress | None, previous_conditions: Sequence[Mapping[str, Any]]) -> str:
    """Why the publish gate kept the run's model back ("" if not): the notice, else the last verdict."""
    notice = unpublished_notice(word)
    if notice is not None:
        return notice.message or notice.reason
    before = find(previous_conditions, ConditionType.PUBLISHED)
    if word is None and before is not None and before.get("status") == "False":
        return str(before.get("message", ""))
    return ""


def notice_event(notice: Notice) -> tuple[str, str, str]:
    """(Event type, reason, message) of a trainer notice: Warning for `WARNING_NOTICES`, else Normal."""
    type_ = "Warning" if notice.reason in WARNING_NOTICES else "Normal"
    return type_, notice.reason, _short(notice.message or notice.reason)


def notices_emitted(transferjob: Mapping[str, Any], run: int) -> int:
    """How many of run `run`'s notices are Events already (`ANNOTATION_NOTICES`; 0 for another run)."""
    raw = (transferjob["metadata"].get("annotations") or {}).get(ANNOTATION_NOTICES, "")
    recorded_run, _, count = raw.partition("/")
    return _int(count) if _int(recorded_run) == run else 0


def derive_status(
    transferjob: Mapping[str, Any],
    plan: RunPlan,
    pods: Iterable[PodView],
    progress: TrainingProgress | None,
    now: str,
    *,
    spec: TransferJobSpec | None = None,
    rejection: Summary | None = None,
    explanation: Explanation | None = None,
) -> StatusResult:
    """The status for the current run and the Events explaining what changed since the previous status.

    Args:
        transferjob: the TransferJob body; its `status` is the previous status.
        plan: `plan_run`'s decision (current run and its Job).
        pods: the observed pods of the TransferJob (other runs' pods are ignored).
        progress: the trainer's live /progress, when it was polled.
        now: RFC 3339 time of this observation.
        spec: the already parsed `transferjob["spec"]`, if the caller has it (parsed here otherwise).
        rejection: why the run's Job was not created (`image_rejection`): the run is Failed with it.
        explanation: what the pending timer read about a waiting run; None keeps the previous status's
            explanation (Queued message, FailedCreate) while nothing else changed.
    """
    spec = spec if spec is not None else TransferJobSpec.model_validate(dict(transferjob["spec"]))
    previous = dict(transferjob.get("status") or {})
    generation = _int(transferjob["metadata"].get("generation"), 1)
    run_pods = [p for p in pods if p.run == plan.run]
    same_run = previous.get("run") == plan.run
    if plan.finished_without_job and same_run:
        return _kept_status(previous, generation, now)
    rejected = rejection is not None and plan.job is None
    if rejection is not None and rejected:
        summary = rejection
    else:
        kept = previous if same_run else {}
        summary = _waiting_explained(spec, plan, run_pods, progress, explanation=explanation, previous=kept)
    status: dict[str, Any] = {k: previous[k] for k in _PROGRESS_FIELDS if same_run and k in previous}
    last = _last_terminated(run_pods)
    final = None
    if summary.phase in TERMINAL_PHASES and last is not None:
        final, _ = parse_termination_message(last[1].message)
    for source in (progress, final):
        if source is not None:
            status.update(_progress_fields(source))
            if source.eta_seconds is None:
                status.pop("etaSeconds", None)
    word = progress or final
    same_run_conditions = (previous.get("conditions") or []) if same_run else []
    summary = _succeeded_summary(summary, status.get("modelUri"), _kept_back_text(word, same_run_conditions))
    _finish_progress(status, previous if same_run else {}, summary.phase, now, moved=word is not None)
    gain = transfer_gain_condition(summary, status.get("metrics") or {}, word, same_run_conditions)
    published = published_condition(summary, status.get("modelUri"), word, same_run_conditions)
    job = plan.job
    start = (job.start_time if job is not None else None) or (previous.get("startTime") if same_run else None)
    completion = None
    if job is not None and summary.phase in TERMINAL_PHASES:
        failed = job.condition("Failed")
        completion = job.completion_time or (failed.last_transition_time if failed else None) or now
    status.update(
        {
            "phase": summary.phase,
            "run": plan.run,
            "observedGeneration": generation,
            "conditions": merge(
                previous.get("conditions") or [],
                [*desired_conditions(summary), *published, *gain],
                generation=generation,
                now=now,
            ),
        }
    )
    if not rejected:
        status["jobName"] = job_name(transferjob["metadata"]["name"], plan.run)
    if spec.workers > 1:
        status["workers"] = worker_counts(spec, run_pods)
    if start:
        status["startTime"] = start
    if completion:
        status["completionTime"] = completion
    events = _events(previous, plan, summary, run_pods)
    return StatusResult(status, summary, tuple(events), progress or final)


def _waiting_explained(
    spec: TransferJobSpec,
    plan: RunPlan,
    pods: Sequence[PodView],
    progress: TrainingProgress | None,
    *,
    explanation: Explanation | None,
    previous: Mapping[str, Any],
) -> Summary:
    """`summarize`, with the pending timer's explanation, or the previous one kept when there is none."""
    summary = summarize(spec, plan, pods, progress, explanation)
    if explanation is None and previous:
        summary = _kept_explanation(previous, summary, pods, plan.job)
    return summary


def _kept_explanation(
    previous: Mapping[str, Any], summary: Summary, pods: Sequence[PodView], job: JobView | None
) -> Summary:
    """The previous status's explanation of a waiting run, while the run still waits the same way.

    Only the pending timer reads Workloads and Events; a reconcile for another reason (a spec or pod event)
    keeps what it found instead of flipping the message back and forth.
    """
    ready = find(previous.get("conditions") or [], ConditionType.READY) or {}
    reason, message = ready.get("reason"), str(ready.get("message") or "")
    short = job is not None and len([p for p in pods if not p.deleting]) < job.completions
    if summary.reason == Reason.STARTING and reason == Reason.FAILED_CREATE and short:
        return Summary("Pending", Reason.FAILED_CREATE, message, stalled=True)
    if summary.reason == Reason.QUEUED and reason == Reason.QUEUED and "(Workload " in message:
        return replace(summary, message=message)
    return summary


def _ready_reason(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition.get("type") == ConditionType.READY:
            return str(condition.get("reason", ""))
    return ""


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new` (nulls delete; lists are replaced)."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif value != before or key not in old:
            patch[key] = value
    return patch


def status_patch(previous: Mapping[str, Any] | None, status: Mapping[str, Any]) -> dict[str, Any]:
    """The status merge patch, or {} when nothing changed (the operator writes status only on change)."""
    return merge_patch(previous or {}, status)
