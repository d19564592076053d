"""Live progress of a run: the `TrainingProgress` document, Prometheus metrics, an HTTP server, the exit note.

`kubegraft_trainer.run` creates one `ProgressTracker` per process, starts a `ProgressServer` on it (the
operator and `kubectl port-forward` read ``GET /progress`` and ``GET /metrics``), and `stages` feeds it
through `ProgressCallback` after every epoch (and with the images trained during a long one). At exit
`write_termination_message` writes the compact document that the operator reads from the pod's termination
message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

import keras
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from kubegraft.logs import console
from kubegraft.runtime import (
    ENV_PROGRESS_BIND,
    ENV_PROGRESS_PORT,
    ENV_TERMINATION_LOG,
    PROGRESS_PORT,
    TERMINATION_LOG,
    TERMINATION_MESSAGE_MAX_BYTES,
    Notice,
    TrainingProgress,
    TrainingState,
)
from kubegraft.status import ImageCounts

log = logging.getLogger(__name__)

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


# Epoch times the ETA averages: the last few, so a stage change (cached head -> fine-tune) shows soon.
ETA_WINDOW = 3
# Within an epoch, the images trained are counted at most this often (a batch's end; see ProgressCallback).
BATCH_REPORT_SECONDS = 1.0


def planned_epochs(progress: TrainingProgress) -> tuple[int, int]:
    """(epochs done, epochs planned) over the whole run: the current stage plan plus the search's candidates.

    Every epoch trains on the whole training split, so epochs count the images processed as well. The plan
    is the most the run may still do: early stopping, the search's cuts and its budget only shrink it.
    """
    done = progress.search_epochs_done + progress.completed_epochs
    left = max(progress.total_epochs - progress.completed_epochs, 0) + progress.search_epochs_left
    return done, done + left


def run_percent(progress: TrainingProgress) -> int:
    """Percent of the planned epochs done: 100 once succeeded, at most 99 before (the export remains)."""
    if progress.state == "succeeded":
        return 100
    done, planned = planned_epochs(progress)
    return min(99, 100 * done // planned) if planned else 0


def eta(progress: TrainingProgress, epoch_seconds: list[float]) -> float | None:
    """Seconds to the end of training at the measured pace (mean of the last epochs); None: not known yet."""
    if progress.state == "succeeded":
        return 0.0
    if progress.state == "failed" or not epoch_seconds:
        return None
    done, planned = planned_epochs(progress)
    recent = epoch_seconds[-ETA_WINDOW:]
    return round(sum(recent) / len(recent) * (planned - done), 1)


class ProgressTracker:
    """Thread-safe holder of the run's `TrainingProgress` and its Prometheus gauges.

    Attributes:
        registry: The Prometheus registry of this tracker's metrics (not the global default registry).
    """

    def __init__(self, *, out: TextIO | None = None, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._progress = TrainingProgress()
        # None: the `kubegraft.console` logger (a bare stdout line, or a JSON record with --log-format json).
        self._out = out
        self._clock = clock
        self._epoch_seconds: list[float] = []
        self.registry = CollectorRegistry()
        r = self.registry
        self._stage_info = Gauge(
            "kubegraft_train_stage_info", "The stage now training (1).", ["stage"], registry=r
        )
        self._epoch = Gauge("kubegraft_train_epoch", "Epochs finished in the current stage.", registry=r)
        self._total = Gauge("kubegraft_train_total_epochs", "Maximum epochs over all stages.", registry=r)
        self._completed = Gauge(
            "kubegraft_train_completed_epochs", "Epochs finished over all stages.", registry=r
        )
        # Accuracies are ratios (0 to 1): Prometheus' naming rules give them the _ratio suffix.
        self._metric_gauges = {
            name: Gauge(
                f"kubegraft_train_{name}_ratio" if name.endswith("accuracy") else f"kubegraft_train_{name}",
                f"Last epoch's {name}.",
                registry=r,
            )
            for name in EPOCH_METRICS
        }
        # A Counter (kubegraft_train_images_total): rate() over it is the throughput.
        self._images = Counter(
            "kubegraft_train_images", "Training images processed in this run, all stages.", registry=r
        )
        # A Counter (exposed as kubegraft_train_images_skipped_total): skipped images only ever accumulate.
        self._skipped = Counter("kubegraft_train_images_skipped", "Images skipped as unreadable.", registry=r)
        self._skipped_seen = 0
        self._epoch_images = 0  # images of the running epoch counted already (`add_images`)
        self._eta = Gauge(
            "kubegraft_train_eta_seconds", "Estimated seconds to the end of the run.", registry=r
        )
        self._last = Gauge(
            "kubegraft_train_last_progress_timestamp_seconds",
            "Unix time of the last progress update.",
            registry=r,
        )
        self._touch()

    def _touch(self) -> None:
        self._last.set(self._clock())

    def snapshot(self) -> TrainingProgress:
        """A copy of the current progress."""
        with self._lock:
            return self._progress.model_copy(deep=True)

    def update(self, **fields: Any) -> None:
        """Set top-level `TrainingProgress` fields (snake_case names) and refresh the matching gauges.

        ``progress`` and ``eta_seconds`` are derived here from the plan (`run_percent`, `eta`).
        """
        with self._lock:
            before = self._progress
            merged = before.model_copy(update=fields)
            percent = run_percent(merged)
            if merged.state != "succeeded":
                percent = max(percent, before.progress)  # only grows within a run, even across re-plans
            self._progress = merged.model_copy(
                update={"progress": percent, "eta_seconds": eta(merged, self._epoch_seconds)}
            )
            p = self._progress
            self._total.set(p.total_epochs)
            self._completed.set(p.completed_epochs)
            if p.images.skipped > self._skipped_seen:
                self._skipped.inc(p.images.skipped - self._skipped_seen)
                self._skipped_seen = p.images.skipped
            if p.eta_seconds is not None:
                self._eta.set(p.eta_seconds)
            self._touch()

    def set_state(self, state: TrainingState, **fields: Any) -> None:
        """Move to a new state (loading, training, exporting, succeeded, failed)."""
        self.update(state=state, **fields)

    def set_plan(self, stages: list[str], total_epochs: int, recipe: str) -> None:
        """Declare the stages and their maximum epochs."""
        self.update(stages=stages, total_epochs=total_epochs, recipe=recipe)

    def set_images(self, counts: ImageCounts) -> None:
        """Record the image counts by split (and skipped images)."""
        self.update(images=counts)

    def start_stage(self, index: int, name: str, epochs: int, done: int) -> None:
        """Enter a stage, possibly resumed with ``done`` epochs already finished."""
        with self._lock:
            self._epoch_images = 0
            self._stage_info.clear()
            self._stage_info.labels(stage=name).set(1)
            self._epoch.set(done)
        self.update(state="training", stage=name, stage_index=index, stage_epochs=epochs, epoch=done)

    def add_images(self, images: int) -> None:
        """Count ``images`` more training images of the running epoch, before it ends (`ProgressCallback`).

        Grows `imagesTrained` and the images counter only, so ``rate()`` over it is smooth within long
        epochs; the epoch's end (`end_epoch`) counts the rest of its images and stamps the progress time.
        """
        if images <= 0:
            return
        with self._lock:
            self._images.inc(images)
            self._epoch_images += images
            trained = self._progress.images_trained + images
            self._progress = self._progress.model_copy(update={"images_trained": trained})

    def end_epoch(self, epoch: int, logs: Mapping[str, float], seconds: float, images: int) -> None:
        """Record a finished epoch of the current stage and print one line about it.

        Args:
            epoch: Epochs finished in the stage (1-based).
            logs: Keras epoch logs (loss, accuracy, val_loss, val_accuracy).
            seconds: Wall time of the epoch.
            images: Training images the epoch processed (those `add_images` counted during it included).
        """
        ips = images / seconds if seconds > 0 else None
        with self._lock:
            self._epoch_seconds.append(seconds)
            p = self._progress
            metrics = dict(p.metrics)
            for name in EPOCH_METRICS:
                if name in logs:
                    metrics[name] = float(logs[name])
                    self._metric_gauges[name].set(float(logs[name]))
            completed = p.completed_epochs + 1
            self._epoch.set(epoch)
            rest = max(images - self._epoch_images, 0)  # what `add_images` did not count yet
            self._epoch_images = 0
            self._images.inc(rest)
            trained = p.images_trained + rest
        self.update(
            epoch=epoch,
            completed_epochs=completed,
            metrics=metrics,
            images_per_second=ips,
            images_trained=trained,
        )
        left = self._progress.eta_seconds or 0.0
        parts = " ".join(f"{k}={float(logs[k]):.4f}" for k in EPOCH_METRICS if k in logs)
        rate = f" {ips:.0f} img/s" if ips is not None else ""
        line = (
            f"[{self._progress.stage}] epoch {epoch}/{self._progress.stage_epochs} {parts} "
            f"{seconds:.1f}s{rate} (total {completed}/{self._progress.total_epochs}, "
            f"{self._progress.progress}%, eta {left:.0f}s)"
        )
        if self._out is not None:
            print(line, file=self._out, flush=True)
        else:
            console(
                line,
                stage=self._progress.stage,
                epoch=epoch,
                completed_epochs=completed,
                total_epochs=self._progress.total_epochs,
                seconds=round(seconds, 3),
                images_per_second=ips,
                progress=self._progress.progress,
                eta_seconds=left,
                **{k: float(logs[k]) for k in EPOCH_METRICS if k in logs},
            )

    def end_stage(self, epochs_run: int) -> None:
        """Leave the stage after ``epochs_run`` epochs; epochs cut by early stopping leave the total."""
        with self._lock:
            p = self._progress
            skipped = max(p.stage_epochs - epochs_run, 0)
            total = max(p.total_epochs - skipped, p.completed_epochs)
        self.update(total_epochs=total, epoch=epochs_run)

    def add_notice(self, reason: str, message: str) -> None:
        """Record a `NoticeReason` for the operator to turn into an Event; a repeated notice is kept once."""
        with self._lock:
            notices = list(self._progress.notices)
            if any(n.reason == reason and n.message == message for n in notices):
                return
            notices.append(Notice(reason=reason, message=message))
        log.info("notice %s: %s", reason, message)
        self.update(notices=notices)

    def add_metrics(self, metrics: Mapping[str, float]) -> None:
        """Merge extra metrics (test accuracy, ...) into the document."""
        with self._lock:
            merged = {**self._progress.metrics, **{k: float(v) for k, v in metrics.items()}}
        self.update(metrics=merged)

    def to_json(self) -> str:
        """The progress document as JSON, camelCase keys."""
        return self.snapshot().model_dump_json(by_alias=True)

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of this tracker's registry."""
        return bytes(generate_latest(self.registry))

    def compact_json(self, limit: int = TERMINATION_MESSAGE_MAX_BYTES) -> str:
        """The progress document trimmed to at most ``limit`` bytes, for the termination message.

        Drops, in order, what the operator can live without (per-class metrics, the stage list, the
        recipe) and shortens the message until it fits.
        """
        progress = self.snapshot()
        data = progress.model_dump(by_alias=True, exclude_none=True)
        text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) <= limit:
            return text
        data["metrics"] = {k: v for k, v in data.get("metrics", {}).items() if "/" not in k and len(k) <= 32}
        for notice in data.get("notices", []):
            notice["message"] = str(notice.get("message", ""))[:200]
        for key in ("stages", "recipe"):
            text = json.dumps(data, separators=(",", ":"))
            if len(text.encode()) <= limit:
                return text
            data.pop(key, None)
        text = json.dumps(data, separators=(",", ":"))
        while len(text.encode()) > limit and data.get("message"):
            data["message"] = str(data["message"])[: max(len(str(data["message"])) // 2, 1) - 1] + "…"
            if len(data["message"]) <= 2:
                data.pop("message")
            text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > limit:
            data.pop("metrics", None)
            text = json.dumps(data, separators=(",", ":"))
        return text


def write_termination_message(tracker: ProgressTracker, path: str | None = None) -> bool:
    """Write the compact progress document to the termination message file.

    Args:
        tracker: The run's tracker.
        path: The file; default ``$KUBEGRAFT_TERMINATION_LOG`` or /dev/termination-log.

    Returns:
        Whether it was written (False, silently, when the file cannot be written, e.g. outside a pod).
    """
    target = path or os.environ.get(ENV_TERMINATION_LOG, TERMINATION_LOG)
    try:
        with Path(target).open("w", encoding="utf-8") as handle:
            handle.write(tracker.compact_json())
    except OSError:
        return False
    return True


class _Handler(BaseHTTPRequestHandler):
    tracker: ProgressTracker

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/progress":
            body, ctype = self.tracker.to_json().encode(), "application/json"
        elif path == "/metrics":
            body, ctype = self.tracker.metrics_text(), CONTENT_TYPE_LATEST
        elif path == "/healthz":
            body, ctype = b"ok\n", "text/plain"
        else:
            self.send_error(404, "try /progress or /metrics")
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("progress server: " + format, *args)


class ProgressServer:
    """``GET /progress`` (TrainingProgress JSON) and ``GET /metrics`` (Prometheus) on a daemon thread.

    Args:
        tracker: Whose state to serve.
        port: TCP port; None reads ``$KUBEGRAFT_PROGRESS_PORT`` (default 9090); 0 picks a free port.
        bind: Address; None reads ``$KUBEGRAFT_PROGRESS_BIND`` (default 0.0.0.0).
    """

    def __init__(self, tracker: ProgressTracker, port: int | None = None, bind: str | None = None) -> None:
        if port is None:
            port = int(os.environ.get(ENV_PROGRESS_PORT, PROGRESS_PORT))
        address = bind or os.environ.get(ENV_PROGRESS_BIND, "0.0.0.0")  # pods serve on all addresses
        handler = type("ProgressHandler", (_Handler,), {"tracker": tracker})
        self._server = ThreadingHTTPServer((address, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="progress-server", daemon=True
        )

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    def start(self) -> ProgressServer:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class ProgressCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Feeds a `ProgressTracker` after every epoch of a Keras fit, and its image count during the epoch.

    With ``batch_size``, every `BATCH_REPORT_SECONDS` at most a batch's end adds the images trained since the
    last report (``batch_size`` per step, at most ``images_per_epoch`` in the epoch) through
    `ProgressTracker.add_images`: `imagesTrained` and ``kubegraft_train_images_total`` then grow within a long
    epoch, not only at its end. Keras calls the batch hook from a worker thread (``async_safe``), so the fit's
    steps do not wait for it. `head_loop.HeadLoop` calls epoch hooks only (its epochs take milliseconds).

    Args:
        tracker: The run's tracker.
        images_per_epoch: Training images one epoch processes.
        batch_size: Images per optimizer step (the global batch); None: counted at epoch ends only.
        report_seconds: The least time between two counts within an epoch (default `BATCH_REPORT_SECONDS`).
        clock: Monotonic time source (tests pass a fake one).
    """

    async_safe = True  # on_train_batch_end only takes a lock and counts: safe from Keras' dispatch thread

    def __init__(
        self,
        tracker: ProgressTracker,
        images_per_epoch: int,
        *,
        batch_size: int | None = None,
        report_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.tracker = tracker
        self.images_per_epoch = images_per_epoch
        self.batch_size = batch_size
        self.report_seconds = BATCH_REPORT_SECONDS if report_seconds is None else report_seconds
        self.clock = clock
        self.epoch_seconds: list[float] = []
        self._started = 0.0
        self._lock = threading.Lock()
        self._counted = 0  # images of this epoch reported to the tracker
        self._reported = 0.0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Start the epoch's clock and its image count."""
        self._started = time.monotonic()
        with self._lock:
            self._counted = 0
            self._reported = self.clock()

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Count the images of the epoch's first ``batch + 1`` steps, if the last count is old enough."""
        if self.batch_size is None:
            return
        done = min((batch + 1) * self.batch_size, self.images_per_epoch)
        with self._lock:
            now = self.clock()
            if done <= self._counted or now - self._reported < self.report_seconds:
                return
            added, self._counted, self._reported = done - self._counted, done, now
        self.tracker.add_images(added)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Report the epoch (``epoch`` is 0-based, as Keras passes it)."""
        seconds = time.monotonic() - self._started
        self.epoch_seconds.append(seconds)
        self.tracker.end_epoch(epoch + 1, dict(logs or {}), seconds, self.images_per_epoch)
