"""kopf entry point (`kopf run -m kubegraft_operator.main`): settings, indices and thin handlers only.

Every handler delegates to `reconcile.Reconciler.reconcile` with the observations kopf keeps in indices:
- TransferJob create / update (spec) / resume (operator restart): reconcile, retried on TemporaryError;
- watch events of the TransferJob's Jobs and Pods: reconcile the owner at once (a Job finished, a pod failed);
- a timer while a TransferJob is Running (every KUBEGRAFT_PROGRESS_INTERVAL seconds, default 5): reconcile
  with a /progress poll of the trainer (kopf puts its finalizer `kubegraft.io/finalizer` on the TransferJob
  while a timer runs, to stop it on deletion);
- a timer while it is Pending (every KUBEGRAFT_PENDING_INTERVAL seconds, default 30): reconcile reading why
  it waits (Kueue Workload, FailedCreate);
- every TransferJob event: metrics only (DELETED forgets its series; the others export the phase in status).
Handlers return nothing (kopf would store results in status). Indices are filled before any handler runs, so
after a restart the operator sees every existing Job before it decides anything.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from typing import Any

import kopf

from kubegraft.spec import GROUP, PLURAL, VERSION
from kubegraft_operator import metrics, standby
from kubegraft_operator.config import (
    ENV_PEERING_PRIORITY,
    load_config,
    pending_interval,
    progress_interval,
)
from kubegraft_operator.kube import Kube, load_api_client
from kubegraft_operator.observation import JobView, PodView, observe_job, observe_pod
from kubegraft_operator.progress_client import ProgressClient
from kubegraft_operator.reconcile import Reconciler, snapshot
from kubegraft_operator.rendering import LABEL_TRANSFERJOB

TRANSFERJOBS = (GROUP, VERSION, PLURAL)
TRAINER = {LABEL_TRANSFERJOB: kopf.PRESENT}
PEERING_NAME = "kubegraft"
# Decorator arguments are fixed at import, so the timer's interval is read here (an invalid value stops the
# operator at start, like every other setting).
PROGRESS_INTERVAL = progress_interval()
# How often a Pending TransferJob re-reads why it waits (its Kueue Workload, its Job's FailedCreate Events):
# neither changes the Job or its pods, so no watch event would tell. KUBEGRAFT_PENDING_INTERVAL, default 30.
PENDING_EXPLAIN_INTERVAL = pending_interval()
# kopf's routine per-object INFO lines, demoted to DEBUG (thousands of TransferJobs flood the log otherwise).
ROUTINE_LOG_PREFIXES = (
    "Handler '",
    "Indexer '",
    "Timer '",
    "Creation is processed",
    "Updating is processed",
    "Resuming is processed",
)
Key = tuple[str, str]


class _RoutineToDebug(logging.Filter):
    """Demote kopf's per-object "Handler/Indexer ... succeeded" / "... is processed" INFO records to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).startswith(ROUTINE_LOG_PREFIXES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


@kopf.on.startup()
async def startup(
    *,
    settings: kopf.OperatorSettings,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Configure kopf, connect the API client and start the metrics/readiness server."""
    # Only warnings and errors from handler logs become Kubernetes Events; explicit Events are always posted.
    settings.posting.level = logging.WARNING
    # Events are reported as coming from the operator, per replica.
    settings.posting.reporting_component = "kubegraft-operator"
    settings.posting.reporting_instance = os.environ.get("HOSTNAME", "kubegraft-operator")
    # Handler progress and the last-handled spec live in annotations under kubegraft.io/, never in status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # kopf's finalizer, present only while the progress timer runs (children go by ownerReference GC).
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Real API servers end watches after server_timeout; reconnect a little later if one silently stalls.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Each object's events are processed by its own worker; no cap so 1,000 TransferJobs are not queued.
    settings.queueing.worker_limit = None
    # API calls that hang are abandoned and retried rather than holding a worker forever.
    settings.networking.request_timeout = 60
    # HA: replicas elect one active operator through kopf peering (ClusterKopfPeering/KopfPeering named
    # "kubegraft"); `--standalone` disables it, `--peering NAME` makes it mandatory. Highest priority wins:
    # KUBEGRAFT_PEERING_PRIORITY or a random one, so two replicas never tie (a tie freezes both).
    if not settings.peering.mandatory:
        settings.peering.name = PEERING_NAME
    if settings.peering.priority == 0:
        raw = os.environ.get(ENV_PEERING_PRIORITY, "")
        settings.peering.priority = int(raw) if raw else random.randint(1, 1_000_000)
    # Failed handlers retry after this many seconds unless they raised TemporaryError with their own delay.
    settings.execution.default_backoff = 10
    # After its own patch, kopf waits this long for the patched version on the watch before it trusts an
    # older one (whose missing "handled" annotations would re-run the creation handler). The default 5 s
    # is shorter than the watch lag of a loaded API server; status writes ride on kopf's patch as well.
    settings.persistence.consistency_timeout = 30
    # A standby replica (kopf peering paused it) exports no per-TransferJob series: they would freeze.
    standby.watch_kopf_peering()
    # Routine per-object INFO lines ("Handler 'x' succeeded.") only with --verbose.
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RoutineToDebug) for f in handler.filters):
            handler.addFilter(_RoutineToDebug())

    config = load_config()
    memo.reconciler = Reconciler(config=config, kube=Kube(load_api_client()), progress=ProgressClient())
    # Readiness means "connected": the API answered a TransferJob list (kopf retries startup until so).
    await memo.reconciler.kube.ping()
    memo.metrics_server = await metrics.serve(config.metrics_port, ready=lambda: True)
    logger.info(
        "kubegraft operator: trainer image %s, metrics on :%d", config.trainer_image, config.metrics_port
    )


@kopf.on.cleanup()
async def cleanup(*, memo: Any, **_: Any) -> None:
    """Stop the metrics server and close the /progress client."""
    if "reconciler" in memo:
        await memo.reconciler.progress.close()
    if "metrics_server" in memo:
        await memo.metrics_server.cleanup()


@kopf.index(*TRANSFERJOBS)
async def transferjob_index(
    *, body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, dict[str, Any]]:
    """TransferJobs by (namespace, name), for handlers of their Jobs and Pods."""
    return {(namespace or "", name): snapshot(body)}


@kopf.index("batch", "v1", "jobs", labels=TRAINER)
async def job_index(
    *, body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[Key, JobView]:
    """Trainer Jobs by (namespace, TransferJob name)."""
    return {(namespace or "", labels[LABEL_TRANSFERJOB]): observe_job(body)}


@kopf.index("", "v1", "pods", labels=TRAINER)
async def pod_index(
    *, body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[Key, PodView]:
    """Trainer Pods by (namespace, TransferJob name)."""
    return {(namespace or "", labels[LABEL_TRANSFERJOB]): observe_pod(body)}


async def _reconcile(
    memo: Any,
    body: Mapping[str, Any],
    key: Key,
    indices: Mapping[str, Any],
    *,
    poll: bool = False,
    patch: kopf.Patch | None = None,
    defer_status: bool = False,
    explain: bool = False,
) -> None:
    """Reconcile one TransferJob with its children as kopf's indices (handler kwargs) hold them."""
    jobs: list[JobView] = list(indices["job_index"].get(key, ()))
    pods: list[PodView] = list(indices["pod_index"].get(key, ()))
    await memo.reconciler.reconcile(
        body, jobs, pods, poll=poll, patch=patch, defer_status=defer_status, explain=explain
    )


@kopf.on.resume(*TRANSFERJOBS)
@kopf.on.create(*TRANSFERJOBS)
@kopf.on.update(*TRANSFERJOBS, field="spec")
async def transferjob_changed(
    *, body: kopf.Body, namespace: str | None, name: str, memo: Any, **kwargs: Any
) -> None:
    """A TransferJob appeared, changed its spec, or the operator restarted: reconcile it."""
    await _reconcile(memo, body, (namespace or "", name), kwargs, patch=kwargs["patch"], defer_status=True)


async def _reconcile_owner(
    namespace: str | None, labels: kopf.Labels, memo: Any, indices: Mapping[str, Any]
) -> None:
    key = (namespace or "", labels[LABEL_TRANSFERJOB])
    for owner in list(indices["transferjob_index"].get(key, ())):
        await _reconcile(memo, owner, key, indices)


@kopf.on.event("batch", "v1", "jobs", labels=TRAINER)
async def job_event(*, namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    """A trainer Job changed (started, suspended, finished): reconcile its TransferJob."""
    await _reconcile_owner(namespace, labels, memo, kwargs)


@kopf.on.event("", "v1", "pods", labels=TRAINER)
async def pod_event(*, namespace: str | None, labels: kopf.Labels, memo: Any, **kwargs: Any) -> None:
    """A trainer Pod changed (scheduled, pulling, running, terminated): reconcile its TransferJob."""
    await _reconcile_owner(namespace, labels, memo, kwargs)


def _is_running(*, status: kopf.Status, **_: Any) -> bool:
    return bool(status.get("phase") == "Running")


@kopf.timer(*TRANSFERJOBS, interval=PROGRESS_INTERVAL, when=_is_running)
async def poll_progress(
    *, body: kopf.Body, namespace: str | None, name: str, memo: Any, **kwargs: Any
) -> None:
    """While a TransferJob is Running: read its trainer's /progress into status and metrics."""
    await _reconcile(memo, body, (namespace or "", name), kwargs, poll=True, patch=kwargs["patch"])


def _is_pending(*, status: kopf.Status, **_: Any) -> bool:
    return bool(status.get("phase") == "Pending")


@kopf.timer(
    *TRANSFERJOBS,
    interval=PENDING_EXPLAIN_INTERVAL,
    initial_delay=PENDING_EXPLAIN_INTERVAL,
    when=_is_pending,
)
async def explain_pending(
    *, body: kopf.Body, namespace: str | None, name: str, memo: Any, **kwargs: Any
) -> None:
    """While a TransferJob is Pending: read why (Kueue Workload, FailedCreate Events) into its conditions."""
    await _reconcile(memo, body, (namespace or "", name), kwargs, patch=kwargs["patch"], explain=True)


@kopf.on.event(*TRANSFERJOBS)
async def transferjob_event(
    *, type: str | None, status: kopf.Status, namespace: str | None, name: str, uid: str, memo: Any, **_: Any
) -> None:
    """Deleted: forget the TransferJob's metric series and cached state. Otherwise: export its phase.

    After a standby (`standby.py`) kopf lists every TransferJob again, and this brings their series back.
    """
    if type == "DELETED":
        metrics.forget(namespace or "", name)
        memo.reconciler.forget(uid)
    elif phase := status.get("phase"):
        metrics.record_phase(namespace or "", name, str(phase))
