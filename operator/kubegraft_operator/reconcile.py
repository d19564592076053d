"""Reconcile one TransferJob: observe -> plan -> act -> report, safe to run any number of times.

Called by every handler in `main` (create, update, resume, timers, and watch events of the TransferJob's Jobs
and Pods). It reads its observations from kopf's in-memory indices (passed in by `main`) and, for running
trainers, their /progress; it asks `planning` what to do, does it through `kube`, and writes the status
(only when it changed), the run bookkeeping annotations and the Events that explain the status.

Reconciles of one TransferJob are serialised by a per-object lock; different TransferJobs run concurrently.

Status writes and kopf (the crash/consistency rules, docs/operator.md "Status writes"):
- From the TransferJob's own create/update/resume handlers the status is not PATCHed directly: it rides on
  kopf's own patch of the object, as a patch function that kopf runs on the freshest body right before its
  JSON patch (with a resourceVersion test). A direct status PATCH inside the handler would give the object
  a version without kopf's "handled" annotations; when the watch lags past kopf's consistency timeout, kopf
  takes that version for an unhandled object and runs the creation handler again.
- The function writes this process's latest decided status (`_Written.status`), not the one decided when
  the handler ran: if a Job or Pod event reconciled and wrote a newer status meanwhile, the deferred write
  cannot put an older one back, and the resourceVersion test makes kopf retry it on the next event if
  anything wrote in between.
- Other callers (Job/Pod events, the progress timer) write the status directly under the lock.
- A crash before kopf applies its patch loses nothing that matters: the resume handler re-observes the
  Job and Pods and derives the same status again; Job names are deterministic (409 = already there) and
  notice Events have fixed names (409 = already posted).
- A write that may not have landed puts the cached status in doubt (`_Written.in_doubt`): a deferred write
  until a body handed to reconcile shows it (kopf may lose its patch: a 409, or retries used up), a direct
  write that failed (a 500 before the commit, a 504 after it, a cut connection) until a write succeeds.
  While in doubt, status changes are not merge deltas against the cache (they would never write what the
  cache wrongly claims) but the whole status, replaced (`Kube.replace_status`), even when the decided
  status equals the cache.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf

from kubegraft.runtime import Notice, TrainingProgress
from kubegraft.spec import TransferJobSpec
from kubegraft_operator import metrics, planning, rendering
from kubegraft_operator.config import ENV_ALLOWED_IMAGES, OperatorConfig
from kubegraft_operator.errors import InvalidSpecError
from kubegraft_operator.kube import (
    Kube,
    configmap_path,
    event_path,
    job_events_path,
    job_path,
    service_path,
    transferjob_path,
    workloads_path,
)
from kubegraft_operator.observation import (
    JobView,
    PodView,
    failed_create_message,
    job_workload,
    observe_job,
)
from kubegraft_operator.progress_client import ProgressClient

MAX_EVENT_KEYS = 64
REPORTING_COMPONENT = "kubegraft-operator"

log = logging.getLogger(__name__)


def now_rfc3339() -> str:
    """The current time as Kubernetes writes it (RFC 3339, seconds, Z)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a TransferJob body reconcile needs (kept in kopf's index for Job and Pod events)."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {}),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }


@dataclass
class _Written:
    """What this process last wrote to a TransferJob (the only writer of status and run annotations)."""

    status: dict[str, Any] | None = None  # the latest status decided (written, or on its way)
    in_doubt: bool = False  # the API server may not hold `status` (see the module docstring)
    # A direct write failed: only a write that succeeds ends the doubt (a body showing the cached status may
    # predate the failed write's commit: the watch lags).
    write_failed: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    status_fn: Callable[[kopf.RawBody], None] | None = None  # kopf patch function (see the module doc)
    job_created: tuple[int, str] | None = None  # (run, Job name) whose JobCreated Event is not yet posted


@dataclass
class Reconciler:
    """Per-process reconcile state: settings, API access, the progress client, locks and write caches."""

    config: OperatorConfig
    kube: Kube
    progress: ProgressClient
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _written: dict[str, _Written] = field(default_factory=dict)

    def forget(self, uid: str) -> None:
        """Drop what is cached about a deleted TransferJob."""
        self._locks.pop(uid, None)
        self._written.pop(uid, None)

    def _confirm(self, transferjob: Mapping[str, Any]) -> None:
        """Clear the doubt about the cached status when `transferjob` (as the API server sent it) shows it."""
        written = self._written.get(transferjob["metadata"]["uid"])
        if (
            written is not None
            and written.in_doubt
            and not written.write_failed
            and (transferjob.get("status") or {}) == written.status
        ):
            written.in_doubt = False

    def _fresh(self, transferjob: Mapping[str, Any]) -> dict[str, Any]:
        """The body with this process's own last writes laid over it (the watch may lag behind them)."""
        body = snapshot(transferjob)
        written = self._written.get(body["metadata"]["uid"])
        if written is not None:
            if written.status is not None:
                body["status"] = written.status
            annotations = body["metadata"]["annotations"]
            for key, value in written.annotations.items():
                if value:
                    annotations[key] = value
                else:
                    annotations.pop(key, None)
        return body

    async def reconcile(
        self,
        transferjob: Mapping[str, Any],
        jobs: Iterable[JobView],
        pods: Iterable[PodView],
        *,
        poll: bool = False,
        patch: kopf.Patch | None = None,
        defer_status: bool = False,
        explain: bool = False,
    ) -> None:
        """Bring one TransferJob's children and status in line with its spec (see the module docstring).

        Args:
            transferjob: the TransferJob body (from a handler or the index).
            jobs: the observed Jobs labelled with its name.
            pods: the observed trainer Pods labelled with its name.
            poll: also read the trainer's /progress (the running-job timer sets it).
            patch: kopf's patch of this TransferJob when called from its own handler: the run annotations
                ride along with kopf's own bookkeeping patch (one request instead of two).
            defer_status: with `patch`, write the status through it too (the TransferJob's own change
                handlers; see the module docstring).
            explain: for a run that waits, also read why: its Kueue Workload (Queued) and its Job's
                FailedCreate Events (the pending timer sets it; both reads tolerate 403 and 404).

        Raises:
            kopf.TemporaryError: the API failed in a way worth retrying.
            kopf.PermanentError: the spec cannot be rendered, or the API refuses the request.
        """
        uid = transferjob["metadata"]["uid"]
        lock = self._locks.setdefault(uid, asyncio.Lock())
        started = time.perf_counter()
        async with lock:
            try:
                if transferjob["metadata"].get("deletionTimestamp"):
                    return
                self._confirm(transferjob)
                await self._reconcile(
                    self._fresh(transferjob),
                    list(jobs),
                    list(pods),
                    poll=poll,
                    patch=patch,
                    defer_status=defer_status and patch is not None,
                    explain=explain,
                )
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                raise
            finally:
                metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)

    async def _reconcile(
        self,
        tj: dict[str, Any],
        jobs: list[JobView],
        pods: list[PodView],
        *,
        poll: bool,
        patch: kopf.Patch | None,
        defer_status: bool,
        explain: bool = False,
    ) -> None:
        # Observe + plan.
        try:
            spec = rendering.parse_spec(tj["spec"])
        except InvalidSpecError as exc:
            plan = planning.plan_run(tj, jobs, None)
            await self._stop_replaced(tj, plan)
            await self._report_invalid(tj, plan, str(exc), patch=patch, defer_status=defer_status)
            return
        plan = planning.plan_run(tj, jobs, rendering.desired_suspend(spec))
        rejection = planning.image_rejection(spec, plan, self.config.image_allowed, ENV_ALLOWED_IMAGES)
        # Act.
        plan = await self._act(tj, plan, spec, create=rejection is None)
        # Observe the trainer itself.
        progress = None
        polled_at = time.time()
        if poll:
            # Worker 0 (the chief) is the one that serves /progress when several workers train together.
            pod = next(
                (
                    p
                    for p in pods
                    if p.run == plan.run and p.chief and p.running and p.pod_ip and not p.deleting
                ),
                None,
            )
            if pod is not None and pod.pod_ip:
                progress = await self.progress.fetch(pod.pod_ip)
        explanation = await self._explain(tj, plan, pods) if explain else None
        # Report.
        phase = await self._report(
            tj,
            spec,
            plan,
            pods,
            progress,
            patch=patch,
            defer_status=defer_status,
            rejection=rejection,
            explanation=explanation,
        )
        if progress is not None and phase == "Running":
            metrics.record_progress(tj["metadata"]["namespace"], tj["metadata"]["name"], progress, polled_at)

    async def _explain(
        self, tj: dict[str, Any], plan: planning.RunPlan, pods: list[PodView]
    ) -> planning.Explanation:
        """Why a run waits: the Workload of a suspended Job, the FailedCreate Events of one short of pods."""
        job = plan.job
        if job is None or job.outcome is not None or not job.uid:
            return planning.Explanation()
        namespace = tj["metadata"]["namespace"]
        if job.suspend:
            listed = await self.kube.list_optional(workloads_path(namespace, job.uid), "Kueue Workloads")
            return planning.Explanation(workload=job_workload(listed or [], job.uid))
        if len([p for p in pods if p.run == plan.run and not p.deleting]) < job.completions:
            events = await self.kube.list_optional(job_events_path(namespace, job.uid), "Job Events")
            return planning.Explanation(failed_create=failed_create_message(events or [], job.uid))
        return planning.Explanation()

    async def _stop_replaced(self, tj: dict[str, Any], plan: planning.RunPlan) -> None:
        """Delete the still-running Jobs of earlier runs (with their ConfigMap and Service): a new spec."""
        namespace, name = tj["metadata"]["namespace"], tj["metadata"]["name"]
        written = self._written.setdefault(tj["metadata"]["uid"], _Written())
        for old in plan.stop:
            await self.kube.delete(job_path(namespace, old.name), f"Job {namespace}/{old.name}")
            cm = rendering.configmap_name(name, old.run)
            await self.kube.delete(configmap_path(namespace, cm), f"ConfigMap {namespace}/{cm}")
            if old.completions > 1:
                svc = rendering.service_name(name, old.run)
                await self.kube.delete(service_path(namespace, svc), f"Service {namespace}/{svc}")
            message = (
                f"Stopped Job {old.name} of run {old.run}: the spec changed; run {plan.run} replaces it."
            )
            self._event(tj, written, "Normal", planning.Reason.RUN_STOPPED, message, key=f"stop/{old.name}")

    async def _act(
        self, tj: dict[str, Any], plan: planning.RunPlan, spec: TransferJobSpec, *, create: bool = True
    ) -> planning.RunPlan:
        """Stop older runs, create this run's children (unless `create` is False), (un)suspend.

        Returns the plan as it now stands. Older runs are stopped even when the new run is refused: the spec
        they ran is no longer wanted.
        """
        await self._stop_replaced(tj, plan)
        namespace = tj["metadata"]["namespace"]
        written = self._written.setdefault(tj["metadata"]["uid"], _Written())
        if plan.create and create:
            await self.kube.create(configmap_path(namespace), rendering.render_configmap(tj, plan.run))
            if spec.workers > 1:  # before the Job: its pods look each other up through the Service
                await self.kube.create(service_path(namespace), rendering.render_service(tj, plan.run))
            job = rendering.render_job(tj, plan.run, plan.generation, self.config, spec)
            if await self.kube.create(job_path(namespace), job):
                metrics.RUNS_STARTED.inc()
            # Also after a 409: the Job may be this process's own, its create's reply lost (a 504 after the
            # commit). The Event's fixed name posts it once per run either way.
            written.job_created = (plan.run, job["metadata"]["name"])
            plan = replace(plan, job=observe_job(job), create=False)
        await self._post_job_created(tj, written)
        if plan.suspend is not None and plan.job is not None:
            # The mark says the operator suspended it: only then may it unsuspend it later.
            mark = "true" if plan.suspend else None
            await self.kube.patch(
                job_path(namespace, plan.job.name),
                {
                    "metadata": {"annotations": {rendering.ANNOTATION_SUSPENDED: mark}},
                    "spec": {"suspend": plan.suspend},
                },
                f"Job {plan.job.name}",
            )
            patched = replace(plan.job, suspend=plan.suspend, suspended_by_operator=plan.suspend)
            plan = replace(plan, job=patched, suspend=None)
        return plan

    async def _report(
        self,
        tj: dict[str, Any],
        spec: TransferJobSpec,
        plan: planning.RunPlan,
        pods: list[PodView],
        progress: TrainingProgress | None,
        *,
        patch: kopf.Patch | None,
        defer_status: bool = False,
        rejection: planning.Summary | None = None,
        explanation: planning.Explanation | None = None,
    ) -> str:
        """Write the status (only when changed) and the run annotations; post Events; return the phase."""
        namespace, name = tj["metadata"]["namespace"], tj["metadata"]["name"]
        uid = tj["metadata"]["uid"]
        written = self._written.setdefault(uid, _Written())
        previous = tj.get("status") or {}
        result = planning.derive_status(
            tj, plan, pods, progress, now_rfc3339(), spec=spec, rejection=rejection, explanation=explanation
        )
        changed = await self._write_status(
            tj, written, previous, result.status, patch=patch, defer_status=defer_status
        )
        if changed and (previous.get("phase"), previous.get("run")) != (result.summary.phase, plan.run):
            metrics.record_outcome(result.summary.phase, result.summary.reason)
        annotations: dict[str, str | None] = dict(planning.annotations_patch(tj, plan))
        emitted = await self._post_notices(tj, plan.run, result.notices)
        if emitted is not None:
            annotations[planning.ANNOTATION_NOTICES] = emitted
        await self._write_annotations(tj, written, annotations, patch)
        for event in result.events:
            self._event(tj, written, event.type, event.reason, event.message, key=event.key)
        metrics.record_phase(namespace, name, result.summary.phase)
        return result.summary.phase

    async def _report_invalid(
        self,
        tj: dict[str, Any],
        plan: planning.RunPlan,
        message: str,
        *,
        patch: kopf.Patch | None,
        defer_status: bool,
    ) -> None:
        """A spec the operator cannot run: run `plan.run` Failed, reason InvalidSpec naming the fields.

        The run is recorded in the annotations like any other, so a later spec (corrected, or an earlier
        one again) is the next run; one Warning Event per run.
        """
        namespace, name = tj["metadata"]["namespace"], tj["metadata"]["name"]
        uid = tj["metadata"]["uid"]
        written = self._written.setdefault(uid, _Written())
        previous = tj.get("status") or {}
        status, summary = planning.invalid_spec_status(tj, plan, message, now_rfc3339())
        changed = await self._write_status(
            tj, written, previous, status, patch=patch, defer_status=defer_status
        )
        if changed and (previous.get("phase"), previous.get("run")) != (summary.phase, plan.run):
            metrics.record_outcome(summary.phase, summary.reason)
        await self._write_annotations(tj, written, dict(planning.annotations_patch(tj, plan)), patch)
        self._event(tj, written, "Warning", summary.reason, summary.message, key=f"invalid/{plan.run}")
        metrics.record_phase(namespace, name, summary.phase)

    async def _write_annotations(
        self,
        tj: dict[str, Any],
        written: _Written,
        annotations: dict[str, str | None],
        patch: kopf.Patch | None,
    ) -> None:
        """Record run bookkeeping annotations: on kopf's own patch from a handler, else with a request."""
        if annotations and patch is not None:
            # Rides along with kopf's own bookkeeping patch of this TransferJob, applied after the handler.
            patch.setdefault("metadata", {}).setdefault("annotations", {}).update(annotations)
        elif annotations:
            namespace, name = tj["metadata"]["namespace"], tj["metadata"]["name"]
            path = transferjob_path(namespace, name)
            await self.kube.patch(
                path, {"metadata": {"annotations": annotations}}, f"TransferJob {name} annotations"
            )
        written.annotations.update({k: v or "" for k, v in annotations.items()})

    async def _write_status(
        self,
        tj: dict[str, Any],
        written: _Written,
        previous: dict[str, Any],
        status: dict[str, Any],
        *,
        patch: kopf.Patch | None,
        defer_status: bool,
    ) -> bool:
        """Write `status` if it changed or the server may not hold it (module docstring); True if it changed.

        Through kopf's patch from the TransferJob's own handlers, else directly: the merge delta against
        `previous` (the cached status) when the cache is sure, the whole status when it is in doubt.
        A direct write that fails puts the cache in doubt and raises.
        """
        changes = planning.status_patch(previous, status)
        if not changes and not written.in_doubt:
            return False
        if defer_status and patch is not None:
            written.status = status
            written.in_doubt = True  # until a body shows it: kopf may yet lose its patch
            if written.status_fn is None:
                written.status_fn = self._status_fn(tj["metadata"]["uid"])
            if written.status_fn not in patch.fns:
                patch.fns.append(written.status_fn)
            return bool(changes)
        namespace, name = tj["metadata"]["namespace"], tj["metadata"]["name"]
        path = transferjob_path(namespace, name, "status")
        what = f"TransferJob {namespace}/{name} status"
        full = written.in_doubt
        # Until the reply says it landed, the server may hold this status or the one before (a 504 after
        # the commit, a cut connection): the cache keeps the one before (the next reconcile decides again
        # against it, so metrics count the change once it is written), in doubt.
        written.in_doubt = written.write_failed = True
        if full:
            await self.kube.replace_status(path, status, what)
        else:
            await self.kube.patch(path, {"status": changes}, what)
        written.status, written.in_doubt, written.write_failed = status, False, False
        return bool(changes)

    def _status_fn(self, uid: str) -> Callable[[kopf.RawBody], None]:
        """kopf patch function: lay this process's latest decided status over the freshest body."""

        def latest_status(body: kopf.RawBody) -> None:
            written = self._written.get(uid)
            if written is not None and written.status is not None:
                body["status"] = copy.deepcopy(written.status)

        return latest_status

    async def _post_notices(self, tj: Mapping[str, Any], run: int, notices: tuple[Notice, ...]) -> str | None:
        """Post each trainer notice of `run` not yet posted as an Event; the new record, or None if unchanged.

        Notice i of run r is the Event `rendering.notice_event_name(tj, r, i)`: posting is idempotent (409),
        so a crash between posting and recording the count (`ANNOTATION_NOTICES`) posts no duplicate.
        A failed post stops here; the next reconcile posts it and the rest.
        """
        done = planning.notices_emitted(tj, run)
        if len(notices) <= done:
            return None
        namespace = tj["metadata"]["namespace"]
        posted = done
        for index in range(done, len(notices)):
            type_, reason, message = planning.notice_event(notices[index])
            body = rendering.render_event(
                tj,
                rendering.notice_event_name(tj, run, index),
                type_,
                reason,
                message,
                now=datetime.now(UTC).isoformat(),
                component=REPORTING_COMPONENT,
                instance=os.environ.get("HOSTNAME", REPORTING_COMPONENT),
            )
            try:
                created = await self.kube.create(event_path(namespace), body)
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                log.warning(
                    "could not post notice %s of %s/%s: %s", reason, namespace, tj["metadata"]["name"], exc
                )
                break
            if created:
                metrics.record_notice(reason)
            posted = index + 1
        return f"{run}/{posted}" if posted > done else None

    async def _post_job_created(self, tj: Mapping[str, Any], written: _Written) -> None:
        """Post the pending JobCreated Event (`rendering.job_created_event_name`: 409 = already posted).

        A failed post is logged, not raised: the Job exists, the run goes on; the next reconcile in this
        process posts it (a restarted operator does not: it sees the Job and creates nothing).
        """
        if written.job_created is None:
            return
        run, job = written.job_created
        namespace = tj["metadata"]["namespace"]
        body = rendering.render_event(
            tj,
            rendering.job_created_event_name(tj, run),
            "Normal",
            planning.Reason.JOB_CREATED,
            f"Created Job {job} for run {run}.",
            now=datetime.now(UTC).isoformat(),
            component=REPORTING_COMPONENT,
            instance=os.environ.get("HOSTNAME", REPORTING_COMPONENT),
        )
        try:
            await self.kube.create(event_path(namespace), body)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            log.warning("could not post JobCreated of %s/%s: %s", namespace, tj["metadata"]["name"], exc)
            return
        if written.job_created == (run, job):
            written.job_created = None

    def _event(
        self, tj: Mapping[str, Any], written: _Written, type_: str, reason: str, message: str, *, key: str
    ) -> None:
        """Post an Event once per distinct cause (`key`) within this process."""
        if key in written.events:
            return
        written.events.append(key)
        del written.events[:-MAX_EVENT_KEYS]
        self.kube.post_event(tj, type_, reason, message)
