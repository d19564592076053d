"""The operator's Prometheus metrics (module-level `REGISTRY`) and the HTTP server of /metrics and /readyz.

`reconcile` records each TransferJob's phase and its running trainer's progress here; `main`'s startup hook
starts `serve()`. Labels are namespace and TransferJob names only: never spec contents, never secret values.
Series of a deleted TransferJob are removed by `forget`; `standby` removes every per-TransferJob series while
kopf peering keeps this replica paused (`standby.py`), so only the working replica reports TransferJobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from kubegraft.runtime import NoticeReason, TrainingProgress

PHASES: Final = ("Pending", "Running", "Succeeded", "Failed", "Suspended")

REGISTRY = CollectorRegistry(auto_describe=True)

TRANSFERJOBS = Gauge("kubegraft_transferjobs", "TransferJobs by phase.", ["phase"], registry=REGISTRY)
TRANSFERJOB_PHASE = Gauge(
    "kubegraft_transferjob_phase",
    "1 for the TransferJob's current phase, 0 for the others (alert on stuck Pending or Failed).",
    ["namespace", "transferjob", "phase"],
    registry=REGISTRY,
)
RUNS_STARTED = Counter("kubegraft_runs_started", "Training runs started (Jobs created).", registry=REGISTRY)
RUNS_SUCCEEDED = Counter("kubegraft_runs_succeeded", "Training runs that succeeded.", registry=REGISTRY)
RUNS_FAILED = Counter(
    "kubegraft_runs_failed", "Training runs that failed, by reason.", ["reason"], registry=REGISTRY
)
RECONCILE_DURATION = Histogram(
    "kubegraft_reconcile_duration_seconds",
    "Time of one reconcile of one TransferJob (observe, plan, act, report).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "kubegraft_reconcile_errors", "Reconciles that raised an error.", registry=REGISTRY
)
NOTICES = Counter(
    "kubegraft_notices",
    "Trainer notices posted as Events, by reason (unknown reasons count as Other).",
    ["reason"],
    registry=REGISTRY,
)
_NOTICE_REASONS: Final = frozenset(
    value for key, value in vars(NoticeReason).items() if key.isupper() and isinstance(value, str)
)
_JOB_LABELS: Final = ["namespace", "transferjob"]
JOB_STAGE_INFO = Gauge(
    "kubegraft_job_stage_info",
    "1 for the stage a running job trains.",
    [*_JOB_LABELS, "stage"],
    registry=REGISTRY,
)
JOB_EPOCH = Gauge(
    "kubegraft_job_epoch", "Epoch within the current stage of a running job.", _JOB_LABELS, registry=REGISTRY
)
JOB_VAL_ACCURACY = Gauge(
    "kubegraft_job_val_accuracy_ratio",
    "Latest validation accuracy of a running job (0 to 1).",
    _JOB_LABELS,
    registry=REGISTRY,
)
JOB_LAST_PROGRESS = Gauge(
    "kubegraft_job_last_progress_timestamp_seconds",
    "Unix time of the last successful /progress poll of a running job.",
    _JOB_LABELS,
    registry=REGISTRY,
)
OPERATOR_ACTIVE = Gauge(
    "kubegraft_operator_active",
    "1 while this replica works, 0 while kopf peering keeps it on standby (it then exports no TransferJob).",
    registry=REGISTRY,
)
OPERATOR_ACTIVE.set(1)
_JOB_GAUGES: Final = (JOB_EPOCH, JOB_VAL_ACCURACY, JOB_LAST_PROGRESS)


class _ImagesTrained(Collector):
    """`kubegraft_job_images_total`: the trainer's own count of images trained, per running job.

    A counter whose value comes from the trainer (`TrainingProgress.images_trained`), so it is exported as
    read instead of incremented here; a new run starts again from 0, which `rate()` treats as a reset.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], float] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "kubegraft_job_images",
            "Training images a running job has processed (rate() is its throughput).",
            labels=_JOB_LABELS,
        )
        for (namespace, name), value in sorted(self.values.items()):
            family.add_metric([namespace, name], value)
        yield family


JOB_IMAGES = _ImagesTrained()
REGISTRY.register(JOB_IMAGES)

_phases: dict[tuple[str, str], str] = {}
_stages: dict[tuple[str, str], str] = {}
_counts: dict[str, int] = dict.fromkeys(PHASES, 0)

for _phase in PHASES:
    TRANSFERJOBS.labels(phase=_phase).set(0)


def _count(phase: str, delta: int) -> None:
    """Move the count of TransferJobs in `phase` by `delta` (O(1): no scan of every TransferJob)."""
    _counts[phase] = _counts.get(phase, 0) + delta
    TRANSFERJOBS.labels(phase=phase).set(_counts[phase])


def record_phase(namespace: str, name: str, phase: str) -> None:
    """Record a TransferJob's current phase (per-object series and the count by phase)."""
    key = (namespace, name)
    before = _phases.get(key)
    if before == phase:
        return
    _phases[key] = phase
    for each in PHASES:
        TRANSFERJOB_PHASE.labels(namespace=namespace, transferjob=name, phase=each).set(
            1 if each == phase else 0
        )
    if before is not None:
        _count(before, -1)
    _count(phase, +1)
    if phase != "Running":
        _clear_job(namespace, name)


def record_progress(namespace: str, name: str, progress: TrainingProgress, polled_at: float) -> None:
    """Record a running trainer's /progress: stage, epoch, validation accuracy, throughput, poll time."""
    key = (namespace, name)
    stage = progress.stage or progress.state
    if _stages.get(key) not in (None, stage):
        JOB_STAGE_INFO.remove(namespace, name, _stages[key])
    _stages[key] = stage
    JOB_STAGE_INFO.labels(namespace=namespace, transferjob=name, stage=stage).set(1)
    JOB_EPOCH.labels(namespace=namespace, transferjob=name).set(progress.epoch)
    if "val_accuracy" in progress.metrics:
        JOB_VAL_ACCURACY.labels(namespace=namespace, transferjob=name).set(progress.metrics["val_accuracy"])
    JOB_IMAGES.values[key] = float(progress.images_trained)
    JOB_LAST_PROGRESS.labels(namespace=namespace, transferjob=name).set(polled_at)


def record_outcome(phase: str, reason: str) -> None:
    """Count a run that just finished (called once per run, on the flip into Succeeded or Failed)."""
    if phase == "Succeeded":
        RUNS_SUCCEEDED.inc()
    elif phase == "Failed":
        RUNS_FAILED.labels(reason=reason).inc()


def record_notice(reason: str) -> None:
    """Count a trainer notice posted as an Event (label bounded to the known NoticeReasons and Other)."""
    NOTICES.labels(reason=reason if reason in _NOTICE_REASONS else "Other").inc()


def _clear_job(namespace: str, name: str) -> None:
    JOB_IMAGES.values.pop((namespace, name), None)
    stage = _stages.pop((namespace, name), None)
    if stage is not None:
        JOB_STAGE_INFO.remove(namespace, name, stage)
    for gauge in _JOB_GAUGES:
        try:
            gauge.remove(namespace, name)
        except KeyError:
            continue


def forget(namespace: str, name: str) -> None:
    """Remove every series of a deleted TransferJob."""
    before = _phases.pop((namespace, name), None)
    if before is not None:
        for phase in PHASES:
            TRANSFERJOB_PHASE.remove(namespace, name, phase)
        _count(before, -1)
    _clear_job(namespace, name)


def standby() -> None:
    """This replica stands by (kopf peering paused it): drop every per-TransferJob series and the counts.

    A paused replica sees no events, so whatever it still exported would freeze at the moment it paused
    (a Failed phase alerting forever, a deleted TransferJob never leaving). When it works again, kopf lists
    every TransferJob anew and `record_phase` fills the series back in.
    """
    OPERATOR_ACTIVE.set(0)
    for gauge in (TRANSFERJOB_PHASE, JOB_STAGE_INFO, *_JOB_GAUGES):
        gauge.clear()
    JOB_IMAGES.values.clear()
    _phases.clear()
    _stages.clear()
    for phase in list(_counts):
        _counts[phase] = 0
        TRANSFERJOBS.labels(phase=phase).set(0)


def active() -> None:
    """This replica works again (kopf peering resumed it)."""
    OPERATOR_ACTIVE.set(1)


def render() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


async def serve(port: int, ready: Callable[[], bool], host: str = "0.0.0.0") -> web.AppRunner:
    """Serve GET /metrics and GET /readyz (200 once `ready()`, else 503); returns the runner to stop."""

    async def metrics_view(_: web.Request) -> web.Response:
        response = web.Response(body=render())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    async def ready_view(_: web.Request) -> web.Response:
        ok = ready()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "not connected\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/readyz", ready_view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
