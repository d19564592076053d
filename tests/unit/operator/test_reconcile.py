"""Reconcile against a recording fake of `kube`: idempotent acts, writes only on change, Events once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client as k8s

from kubegraft_operator.config import OperatorConfig
from kubegraft_operator.kube import Kube
from kubegraft_operator.observation import observe_job
from kubegraft_operator.progress_client import ProgressClient
from kubegraft_operator.reconcile import Reconciler
from tests.unit.operator.factories import job, pod, transferjob, with_spec


class RecordingKube(Kube):
    """Kube that records calls instead of making them; `existing` names answer 409 on create."""

    def __init__(self, existing: set[str] | None = None) -> None:
        super().__init__(k8s.ApiClient())
        self.calls: list[tuple[str, str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.existing = existing or set()

    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        self.calls.append(("create", body["metadata"]["name"], body))
        return body["metadata"]["name"] not in self.existing

    async def delete(self, path: str, what: str) -> bool:
        self.calls.append(("delete", path.rsplit("/", 1)[-1], None))
        return True

    async def patch(self, path: str, patch: Mapping[str, Any], what: str) -> None:
        self.calls.append(("patch", path, patch))

    def post_event(self, transferjob: Mapping[str, Any], type_: str, reason: str, message: str) -> None:  # type: ignore[override]
        self.events.append((type_, reason))


def _reconciler(kube: RecordingKube) -> Reconciler:
    return Reconciler(config=OperatorConfig(), kube=kube, progress=ProgressClient())


def _run(reconciler: Reconciler, tj: dict[str, Any], jobs: list[Any], pods: list[Any]) -> None:
    asyncio.run(reconciler.reconcile(tj, jobs, pods))


def test_first_reconcile_creates_configmap_then_job_and_records_status_and_run() -> None:
    kube = RecordingKube()
    _run(_reconciler(kube), transferjob(), [], [])
    kinds = [(c[0], c[1]) for c in kube.calls]
    assert kinds[:2] == [("create", "flowers-1-spec"), ("create", "flowers-1")]
    status_patch = next(c[2] for c in kube.calls if c[1].endswith("/status"))
    assert status_patch["status"]["phase"] == "Pending"
    annotations = next(c[2] for c in kube.calls if c[0] == "patch" and not c[1].endswith("/status"))
    assert annotations["metadata"]["annotations"]["kubegraft.io/run"] == "1"
    assert kube.events == [("Normal", "JobCreated")]


def test_second_reconcile_after_crash_creates_no_second_job_and_posts_no_duplicate_event() -> None:
    # The Job exists (409) but the TransferJob's annotations were never written: same name, no new run.
    kube = RecordingKube(existing={"flowers-1", "flowers-1-spec"})
    _run(_reconciler(kube), transferjob(), [], [])
    created = [c[1] for c in kube.calls if c[0] == "create"]
    assert created == ["flowers-1-spec", "flowers-1"]
    assert kube.events == []


def test_a_reconcile_with_nothing_new_makes_no_request() -> None:
    kube = RecordingKube()
    reconciler = _reconciler(kube)
    rendered = job(1)
    _run(reconciler, transferjob(), [rendered], [pod(running=True)])
    kube.calls.clear()
    _run(reconciler, transferjob(), [rendered], [pod(running=True)])
    assert kube.calls == []


def test_a_spec_change_deletes_the_running_job_and_its_configmap_then_creates_the_next_run() -> None:
    kube = RecordingKube()
    tj = transferjob(
        with_spec(model={"backbone": "ResNet50"}),
        generation=2,
        annotations={"kubegraft.io/run": "1", "kubegraft.io/run-spec-hash": job(1).spec_hash},
    )
    _run(_reconciler(kube), tj, [job(1)], [])
    acts = [(c[0], c[1]) for c in kube.calls if c[0] != "patch"]
    assert acts == [
        ("delete", "flowers-1"),
        ("delete", "flowers-1-spec"),
        ("create", "flowers-2-spec"),
        ("create", "flowers-2"),
    ]
    assert ("Normal", "RunStopped") in kube.events


def test_suspending_patches_the_job_not_a_new_run() -> None:
    kube = RecordingKube()
    spec = with_spec(runPolicy={"suspend": True})
    _run(_reconciler(kube), transferjob(spec, generation=2), [job(1)], [])
    job_patches = [c[2] for c in kube.calls if c[0] == "patch" and "/jobs/" in c[1]]
    assert job_patches == [{"spec": {"suspend": True}}]
    assert not [c for c in kube.calls if c[0] == "create"]


def test_a_rendered_job_observes_as_its_own_run() -> None:
    from kubegraft_operator.rendering import render_job

    view = observe_job(render_job(transferjob(), 2, 1, OperatorConfig()))
    assert (view.name, view.run, view.transferjob) == ("flowers-2", 2, "flowers")


def test_a_transferjob_being_deleted_is_left_alone() -> None:
    kube = RecordingKube()
    tj = transferjob()
    tj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    _run(_reconciler(kube), tj, [], [])
    assert kube.calls == []


def test_called_from_a_transferjob_handler_the_run_annotations_ride_along_with_kopfs_patch() -> None:
    kube = RecordingKube()
    patch = kopf.Patch()
    asyncio.run(_reconciler(kube).reconcile(transferjob(), [], [], patch=patch))
    assert patch["metadata"]["annotations"]["kubegraft.io/run"] == "1"
    assert not [c for c in kube.calls if c[0] == "patch" and not c[1].endswith("/status")]
