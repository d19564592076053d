"""Status writes that may not have landed: the cache goes in doubt and the next write is the whole status.

The fake API server below holds one TransferJob's status and applies what the operator sends (merge deltas,
whole-status replacements); it can lose kopf's deferred patch, fail a write before its commit (500) or
answer 504 after committing it. Whatever was lost, the status the server ends with must be the one the
operator last decided: run, jobName and observedGeneration included.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch
import kopf
from kubernetes import client as k8s

from kubegraft.runtime import TrainingProgress
from kubegraft_operator.config import OperatorConfig
from kubegraft_operator.kube import Kube
from kubegraft_operator.progress_client import ProgressClient
from kubegraft_operator.reconcile import Reconciler
from tests.unit.operator.factories import job, pod, transferjob


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class StatusServer(Kube):
    """A Kube whose TransferJob status lives here; `fail` makes the next status write fail.

    `fail` is "before" (500: nothing applied) or "after" (504: applied, reply lost).
    """

    def __init__(self) -> None:
        super().__init__(k8s.ApiClient())
        self.body = transferjob()
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.fail: str | None = None
        self.created: set[str] = set()

    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        name = str(body["metadata"]["name"])
        new = name not in self.created
        self.created.add(name)
        return new

    async def patch(self, path: str, patch: Mapping[str, Any], what: str) -> None:
        if path.endswith("/status"):
            self._write("merge", dict(patch["status"]), lambda s: _merge(s, patch["status"]))
        else:
            _merge(self.body["metadata"], patch.get("metadata", {}))

    async def replace_status(self, path: str, status: Mapping[str, Any], what: str) -> None:
        def replace(stored: dict[str, Any]) -> None:
            stored.clear()
            stored.update(copy.deepcopy(dict(status)))

        self._write("replace", dict(status), replace)

    def _write(self, kind: str, sent: dict[str, Any], apply: Any) -> None:
        fail, self.fail = self.fail, None
        if fail == "before":
            raise kopf.TemporaryError("patch TransferJob status failed with HTTP 500", delay=5)
        apply(self.body.setdefault("status", {}))
        self.writes.append((kind, sent))
        if fail == "after":
            raise kopf.TemporaryError("patch TransferJob status failed with HTTP 504", delay=5)

    def apply_kopf_patch(self, patch: kopf.Patch) -> None:
        """What kopf does after a handler: the merge part, then the patch functions as a JSON patch."""
        merged = copy.deepcopy(self.body)
        _merge(merged, dict(patch))
        ops = kopf.Patch(fns=patch.fns).as_json_patch(merged)
        self.body = dict(jsonpatch.apply_patch(merged, ops))

    def post_event(self, transferjob: Mapping[str, Any], type_: str, reason: str, message: str) -> None:  # type: ignore[override]
        """Events are not under test here."""

    def seen(self) -> dict[str, Any]:
        """The TransferJob as the watch delivers it now."""
        return copy.deepcopy(self.body)


class FixedProgress(ProgressClient):
    """A /progress client whose trainer always answers `progress`."""

    def __init__(self, progress: TrainingProgress | None) -> None:
        super().__init__()
        self.progress = progress

    async def fetch(self, pod_ip: str) -> TrainingProgress | None:
        return self.progress


def _reconciler(server: StatusServer, progress: TrainingProgress | None = None) -> Reconciler:
    return Reconciler(config=OperatorConfig(), kube=server, progress=FixedProgress(progress))


def _complete(status: Mapping[str, Any]) -> None:
    """The fields whose loss the chaos run saw: run, jobName, observedGeneration."""
    assert (status.get("run"), status.get("jobName"), status.get("observedGeneration")) == (1, "flowers-1", 1)


def _handler(reconciler: Reconciler, body: dict[str, Any], jobs: list[Any], pods: list[Any]) -> kopf.Patch:
    patch = kopf.Patch()
    asyncio.run(reconciler.reconcile(body, jobs, pods, patch=patch, defer_status=True))
    return patch


def _event(reconciler: Reconciler, body: dict[str, Any], jobs: list[Any], pods: list[Any]) -> None:
    asyncio.run(reconciler.reconcile(body, jobs, pods))


def test_a_deferred_status_kopf_lost_is_written_whole_by_the_next_job_event() -> None:
    # kopf's patch (which carried run, jobName, observedGeneration) never lands (a 409, the retries used
    # up); a Pod event then moves the run on. The status written must not be a delta against the cache.
    server = StatusServer()
    reconciler = _reconciler(server)
    _handler(reconciler, server.seen(), [], [])  # the patch is dropped: never applied
    _event(reconciler, server.seen(), [job(1)], [pod(running=True)])
    assert server.body["status"]["phase"] == "Running"
    _complete(server.body["status"])
    assert [kind for kind, _ in server.writes] == ["replace"]


def test_a_lost_deferred_status_is_written_even_when_the_next_reconcile_decides_the_same() -> None:
    # The resume handler of a restarted operator decided the status of an existing Job; kopf lost it.
    server = StatusServer()
    reconciler = _reconciler(server)
    _handler(reconciler, server.seen(), [job(1)], [])
    decided = copy.deepcopy(reconciler._written[server.body["metadata"]["uid"]].status)
    _event(reconciler, server.seen(), [job(1)], [])
    assert server.body["status"] == decided
    _complete(server.body["status"])


def test_once_a_body_shows_the_deferred_status_later_changes_are_merge_deltas_again() -> None:
    server = StatusServer()
    reconciler = _reconciler(server)
    server.apply_kopf_patch(_handler(reconciler, server.seen(), [], []))
    _complete(server.body["status"])
    _event(reconciler, server.seen(), [job(1)], [pod(running=True)])
    assert [kind for kind, _ in server.writes] == ["merge"]
    assert "jobName" not in server.writes[0][1]
    assert server.body["status"]["phase"] == "Running"


def test_a_status_write_that_failed_before_its_commit_is_written_whole_next_time() -> None:
    server = StatusServer()
    reconciler = _reconciler(server)
    server.fail = "before"
    with contextlib.suppress(kopf.TemporaryError):
        _event(reconciler, server.seen(), [], [])
    assert server.body["status"] == {}
    _event(reconciler, server.seen(), [job(1)], [pod(running=True)])
    _complete(server.body["status"])
    assert server.writes[-1][0] == "replace"
    # Written and confirmed by the reply: the next change is a delta again.
    _event(reconciler, server.seen(), [job(1, outcome="Succeeded")], [pod(exit_code=0)])
    assert server.writes[-1][0] == "merge"
    assert server.body["status"]["phase"] == "Succeeded"
    _complete(server.body["status"])


def _training_with_eta(server: StatusServer) -> Reconciler:
    """A reconciler whose trainer reports epoch 1 of 4 with an ETA (a field a Failed status drops)."""
    return _reconciler(
        server,
        TrainingProgress.model_validate(
            {"state": "training", "epoch": 1, "totalEpochs": 4, "etaSeconds": 30}
        ),
    )


def test_a_status_write_answered_504_after_its_commit_leaves_no_stale_field_behind() -> None:
    # The 504'd write committed a progress poll (etaSeconds among its fields); then the run failed. A Failed
    # status has no ETA: the one the lost reply's write left must not stay behind.
    server = StatusServer()
    reconciler = _training_with_eta(server)
    running = ([job(1)], [pod(running=True)])
    _event(reconciler, server.seen(), *running)
    server.fail = "after"
    with contextlib.suppress(kopf.TemporaryError):
        asyncio.run(reconciler.reconcile(server.seen(), *running, poll=True))
    assert server.body["status"]["etaSeconds"] == 30
    failed = job(
        1, outcome="Failed", reason="BackoffLimitExceeded", message="Job has reached the backoff limit"
    )
    _event(reconciler, server.seen(), [failed], [pod(exit_code=1)])
    assert server.body["status"]["phase"] == "Failed"
    assert "etaSeconds" not in server.body["status"]
    _complete(server.body["status"])
    assert server.writes[-1][0] == "replace"


def test_after_a_504_a_lagging_body_showing_the_older_status_does_not_end_the_doubt() -> None:
    # The watch still shows the status from before the 504'd write (which committed): that is no proof.
    server = StatusServer()
    reconciler = _training_with_eta(server)
    running = ([job(1)], [pod(running=True)])
    _event(reconciler, server.seen(), *running)
    lagging = server.seen()
    server.fail = "after"
    with contextlib.suppress(kopf.TemporaryError):
        asyncio.run(reconciler.reconcile(server.seen(), *running, poll=True))
    failed = job(
        1, outcome="Failed", reason="BackoffLimitExceeded", message="Job has reached the backoff limit"
    )
    _event(reconciler, lagging, [failed], [pod(exit_code=1)])
    assert server.body["status"]["phase"] == "Failed"
    assert "etaSeconds" not in server.body["status"]
    _complete(server.body["status"])


def test_a_failed_final_status_write_is_retried_by_a_reconcile_that_decides_nothing_new() -> None:
    # The write of Succeeded failed; the progress timer's next reconcile sees the same Job and pods.
    server = StatusServer()
    reconciler = _reconciler(server)
    _event(reconciler, server.seen(), [job(1)], [pod(running=True)])
    finished = ([job(1, outcome="Succeeded")], [pod(exit_code=0)])
    server.fail = "before"
    with contextlib.suppress(kopf.TemporaryError):
        _event(reconciler, server.seen(), *finished)
    assert server.body["status"]["phase"] == "Running"
    _event(reconciler, server.seen(), *finished)
    assert server.body["status"]["phase"] == "Succeeded"
    _complete(server.body["status"])


def test_a_status_the_server_already_shows_is_not_written_again() -> None:
    server = StatusServer()
    reconciler = _reconciler(server)
    server.apply_kopf_patch(_handler(reconciler, server.seen(), [job(1)], []))
    _event(reconciler, server.seen(), [job(1)], [])
    assert server.writes == []
