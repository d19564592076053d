"""Record every status a TransferJob goes through, from an API watch, for tests that assert on its history.

Polling can miss a state that lasts less than the poll interval (a Pending that turns Running within 100 ms, a
stage whose epochs pass between two polls); a watch sees every write the operator makes. `StatusRecorder`
streams ``GET .../transferjobs?watch=true&fieldSelector=metadata.name=<name>`` from the API server in a
background thread and keeps each status it saw, in order. Used by the e2e tests (tests/e2e/).

Example::

    with StatusRecorder(cluster.url, "e2e", "flowers") as recorder:
        cluster.apply(manifest)
        final = recorder.wait_for_phase({"Succeeded", "Failed"}, timeout=300)
    assert recorder.phases() == ["Pending", "Running", "Succeeded"]
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from kubegraft.spec import API_VERSION, PLURAL

__all__ = ["StatusRecorder", "StatusSample"]

JsonObj = dict[str, Any]
WATCH_SECONDS = 2  # each watch request ends after this long (then the next one starts where it ended)


@dataclass(frozen=True)
class StatusSample:
    """One observed status: when (seconds since the recorder started), the watch event type, the status."""

    at: float
    event: str
    status: JsonObj

    @property
    def phase(self) -> str | None:
        """status.phase."""
        value = self.status.get("phase")
        return str(value) if value is not None else None

    @property
    def stage(self) -> str | None:
        """status.stage."""
        value = self.status.get("stage")
        return str(value) if value is not None else None

    @property
    def epoch(self) -> int | None:
        """status.epoch."""
        value = self.status.get("epoch")
        return int(value) if value is not None else None


class StatusRecorder:
    """A background watch on one TransferJob that records each status it sees (a context manager).

    Each watch asks the server to end it after `WATCH_SECONDS` (`timeoutSeconds`), and is re-opened from the
    last resourceVersion seen, so nothing is lost and `stop` never has to interrupt a blocked read (closing an
    HTTP response from another thread while it is read deadlocks on the reader's lock).

    Args:
        api_url: the API server, e.g. ``http://127.0.0.1:41234`` (no authentication: the emulator).
        namespace: the TransferJob's namespace.
        name: its name.
    """

    def __init__(self, api_url: str, namespace: str, name: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.namespace = namespace
        self.name = name
        self.samples: list[StatusSample] = []
        self.deleted = False
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)
        self._resource_version = ""

    def __enter__(self) -> Self:
        self._list()  # synchronously: whatever the caller does next happens after this resourceVersion
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """End the watch and its thread."""
        self._stop.set()
        self._thread.join(timeout=WATCH_SECONDS + 10)

    def _list(self) -> None:
        """Record the object as it is now and remember the list's resourceVersion to watch from.

        A watch opened without a resourceVersion starts at "now" and misses what happened while no watch was
        open (the gap between two watch requests); one opened from the list's version replays it.
        """
        params = {"fieldSelector": f"metadata.name={self.name}"}
        url = (
            f"{self.api_url}/apis/{API_VERSION}/namespaces/{self.namespace}/{PLURAL}?"
            + urllib.parse.urlencode(params)
        )
        with urllib.request.urlopen(url, timeout=30) as response:
            listed = json.loads(response.read())
        for item in listed.get("items") or []:
            self._record({"type": "ADDED", "object": item})
        self._resource_version = str(listed.get("metadata", {}).get("resourceVersion", ""))

    def _url(self) -> str:
        params = {
            "watch": "true",
            "fieldSelector": f"metadata.name={self.name}",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        if self._resource_version:
            params["resourceVersion"] = self._resource_version
        return (
            f"{self.api_url}/apis/{API_VERSION}/namespaces/{self.namespace}/{PLURAL}?"
            + urllib.parse.urlencode(params)
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self._url(), timeout=WATCH_SECONDS + 30) as response:
                    for raw in response:
                        if self._stop.is_set():
                            return
                        if raw.strip():
                            self._record(json.loads(raw))
            except Exception:  # any broken stream (IncompleteRead is no OSError): watch again
                # from the last resourceVersion seen; the API server replays what happened in between.
                if self._stop.is_set():
                    return
            self._stop.wait(0.2)

    def _record(self, event: JsonObj) -> None:
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":  # e.g. 410 Expired: list again, then watch from there
            self._list()
            return
        self._resource_version = obj.get("metadata", {}).get("resourceVersion", self._resource_version)
        with self._changed:
            if event.get("type") == "DELETED":
                self.deleted = True
            self.samples.append(
                StatusSample(
                    time.monotonic() - self._started, str(event.get("type")), obj.get("status") or {}
                )
            )
            self._changed.notify_all()

    def wait_deleted(self, timeout: float) -> bool:
        """Block until the watch has seen the object's DELETED event (or `timeout` passed); whether it has."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.deleted:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 1.0))
            return self.deleted

    def latest(self) -> JsonObj:
        """The last status seen ({} before the first event)."""
        with self._changed:
            return dict(self.samples[-1].status) if self.samples else {}

    def wait_for_phase(self, phases: Collection[str], timeout: float) -> JsonObj:
        """Block until the status reaches one of `phases`; return that status.

        Raises:
            TimeoutError: with the phases seen so far.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for sample in reversed(self.samples):
                    if sample.phase in phases:
                        return dict(sample.status)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.namespace}/{self.name} did not reach {sorted(phases)} in {timeout:.0f} s; "
                        f"phases seen {self.phases()}, last status {self.latest_unlocked()}"
                    )
                self._changed.wait(min(left, 1.0))

    def wait_until(self, predicate: Any, timeout: float, message: str = "") -> JsonObj:
        """Block until `predicate(status)` holds for a newly or already seen status; return it.

        Raises:
            TimeoutError: with `message` and the last status.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for sample in reversed(self.samples):
                    if predicate(sample.status):
                        return dict(sample.status)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{message or 'condition'} not met in {timeout:.0f} s; last {self.latest_unlocked()}"
                    )
                self._changed.wait(min(left, 1.0))

    def latest_unlocked(self) -> JsonObj:
        """The last status, for messages built while the lock is held."""
        return self.samples[-1].status if self.samples else {}

    def phases(self) -> list[str]:
        """The distinct phases in the order seen (consecutive repeats folded; no phase = left out)."""
        seen: list[str] = []
        for sample in list(self.samples):
            if sample.phase and (not seen or seen[-1] != sample.phase):
                seen.append(sample.phase)
        return seen

    def stage_epochs(self) -> dict[str, list[int]]:
        """For each stage, the distinct epochs the status showed while Running, in order seen."""
        result: dict[str, list[int]] = {}
        for sample in list(self.samples):
            if sample.phase == "Running" and sample.stage and sample.epoch is not None:
                epochs = result.setdefault(sample.stage, [])
                if not epochs or epochs[-1] != sample.epoch:
                    epochs.append(sample.epoch)
        return result
