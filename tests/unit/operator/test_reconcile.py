"""Reconcile against a recording fake of `kube`: idempotent acts, writes only on change, Events once."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client as k8s

from kubegraft_operator import metrics
from kubegraft_operator.config import OperatorConfig
from kubegraft_operator.kube import Kube
from kubegraft_operator.observation import observe_job
from kubegraft_operator.progress_client import ProgressClient
from kubegraft_operator.reconcile import Reconciler
from kubegraft_operator.rendering import job_created_event_name
from tests.unit.operator.factories import job, pod, transferjob, with_spec

JOB_CREATED_EVENT = job_created_event_name(transferjob(), 1)


class RecordingKube(Kube):
    """Kube that records calls instead of making them; `existing` names answer 409 on create.

    Events created by name are calls of kind "event"; `events` holds (type, reason) of every Event posted
    (created, or through `post_event`).
    """

    def __init__(self, existing: set[str] | None = None) -> None:
        super().__init__(k8s.ApiClient())
        self.calls: list[tuple[str, str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.existing = existing or set()

    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        name = body["metadata"]["name"]
        new = name not in self.existing
        if body["kind"] == "Event":
            self.calls.append(("event", name, body))
            if new:
                self.events.append((body["type"], body["reason"]))
            return new
        self.calls.append(("create", name, body))
        return new

    async def delete(self, path: str, what: str) -> bool:
        self.calls.append(("delete", path.rsplit("/", 1)[-1], None))
        return True

    async def patch(self, path: str, patch: Mapping[str, Any], what: str) -> None:
        self.calls.append(("patch", path, patch))

    async def replace_status(self, path: str, status: Mapping[str, Any], what: str) -> None:
        self.calls.append(("replace", path, {"status": dict(status)}))

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
    # The first process posted JobCreated: its fixed name answers 409.
    kube = RecordingKube(existing={"flowers-1", "flowers-1-spec", JOB_CREATED_EVENT})
    _run(_reconciler(kube), transferjob(), [], [])
    created = [c[1] for c in kube.calls if c[0] == "create"]
    assert created == ["flowers-1-spec", "flowers-1"]
    assert kube.events == []


class LostReplyKube(RecordingKube):
    """The first Job create commits, then its reply is lost (504): the next create of it answers 409."""

    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        created = await super().create(path, body)
        if body["kind"] == "Job" and created:
            self.existing.add(body["metadata"]["name"])
            raise kopf.TemporaryError("create Job flowers-1 failed with HTTP 504 (Timeout)", delay=5)
        return created


def test_a_job_create_whose_reply_was_lost_still_posts_job_created_once() -> None:
    kube = LostReplyKube()
    reconciler = _reconciler(kube)
    with contextlib.suppress(kopf.TemporaryError):
        _run(reconciler, transferjob(), [], [])
    assert kube.events == []
    _run(reconciler, transferjob(), [], [])  # 409: the Job is there
    _run(reconciler, transferjob(), [job(1)], [])
    assert kube.events == [("Normal", "JobCreated")]
    (event,) = [c[2] for c in kube.calls if c[0] == "event"]
    assert event["metadata"]["name"] == JOB_CREATED_EVENT
    assert event["message"] == "Created Job flowers-1 for run 1."


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
    acts = [(c[0], c[1]) for c in kube.calls if c[0] in ("create", "delete")]
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
    assert job_patches == [
        {"metadata": {"annotations": {"kubegraft.io/suspended": "true"}}, "spec": {"suspend": True}}
    ]
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


class ThrottledEventKube(RecordingKube):
    """The first Event create answers 429."""

    throttled = False

    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        if body["kind"] == "Event" and not self.throttled:
            self.throttled = True
            raise kopf.TemporaryError("create Event failed with HTTP 429 (Too Many Requests)", delay=1)
        return await super().create(path, body)


def test_a_job_created_event_whose_post_failed_is_posted_by_the_next_reconcile() -> None:
    kube = ThrottledEventKube()
    reconciler = _reconciler(kube)
    _run(reconciler, transferjob(), [], [])
    assert kube.events == []
    _run(reconciler, transferjob(), [job(1)], [])
    _run(reconciler, transferjob(), [job(1)], [pod(running=True)])
    assert [e for e in kube.events if e[1] == "JobCreated"] == [("Normal", "JobCreated")]


# ---- status through kopf's patch (own handlers) and direct writes (Job/Pod events) ---------------------


def _apply(body: dict[str, Any], kopf_patch: kopf.Patch) -> dict[str, Any]:
    """What the API server holds after kopf applied `kopf_patch` (merge part, then its functions)."""
    import jsonpatch

    merged = copy.deepcopy(body)
    _merge_into(merged, dict(kopf_patch))
    ops = kopf.Patch(fns=kopf_patch.fns).as_json_patch(merged)
    return dict(jsonpatch.apply_patch(merged, ops))


def _merge_into(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _status_writes(kube: RecordingKube) -> list[dict[str, Any]]:
    return [c[2]["status"] for c in kube.calls if c[0] in ("patch", "replace") and c[1].endswith("/status")]


def _stored_status(body: dict[str, Any], kube: RecordingKube) -> dict[str, Any]:
    """The status the API server holds after `kube`'s direct writes (merge deltas, whole replacements)."""
    status = copy.deepcopy(body.get("status") or {})
    for kind, path, sent in kube.calls:
        if kind == "replace":
            status = copy.deepcopy(sent["status"])
        elif kind == "patch" and path.endswith("/status"):
            _merge_into(status, sent["status"])
    return status


def test_from_its_own_handler_the_status_rides_on_kopfs_patch_not_a_request_of_its_own() -> None:
    kube = RecordingKube()
    patch = kopf.Patch()
    tj = transferjob()
    asyncio.run(_reconciler(kube).reconcile(tj, [], [], patch=patch, defer_status=True))
    assert _status_writes(kube) == []
    stored = _apply(tj, patch)
    assert stored["status"]["phase"] == "Pending"
    assert stored["status"]["jobName"] == "flowers-1"
    assert stored["metadata"]["annotations"]["kubegraft.io/run"] == "1"


def test_a_deferred_status_never_puts_back_an_older_one_written_meanwhile() -> None:
    # The creation handler decides "Pending"; before kopf applies its patch, a Pod event reconciles and
    # writes "Running" directly. kopf's patch, applied last, must leave "Running" in place.
    kube = RecordingKube()
    reconciler = _reconciler(kube)
    tj = transferjob()
    patch = kopf.Patch()
    asyncio.run(reconciler.reconcile(tj, [], [], patch=patch, defer_status=True))
    asyncio.run(reconciler.reconcile(tj, [job(1)], [pod(running=True)]))
    api = copy.deepcopy(tj)
    api["status"] = _stored_status(tj, kube)
    stored = _apply(api, patch)
    assert stored["status"]["phase"] == "Running"
    assert stored["status"]["run"] == 1
    assert stored["status"]["jobName"] == "flowers-1"


def test_a_crash_before_kopf_applied_the_status_is_repaired_by_the_restarted_operator() -> None:
    # The first process created the Job and decided the status, then died before kopf patched anything.
    first = RecordingKube()
    asyncio.run(_reconciler(first).reconcile(transferjob(), [], [], patch=kopf.Patch(), defer_status=True))
    restarted = RecordingKube(existing={"flowers-1", "flowers-1-spec", JOB_CREATED_EVENT})
    patch = kopf.Patch()
    tj = transferjob()
    asyncio.run(_reconciler(restarted).reconcile(tj, [], [], patch=patch, defer_status=True))
    assert [c[1] for c in restarted.calls if c[0] == "create"] == ["flowers-1-spec", "flowers-1"]
    assert restarted.events == []
    assert _apply(tj, patch)["status"]["phase"] == "Pending"


# ---- trainer notices as Events ----------------------------------------------------------------------------

_NOTICES = [
    {"reason": "BatchNormReestimated", "message": "Backbone features had collapsed; BN re-estimated."},
    {"reason": "NoTransferGain", "message": "0.40 is below the raw-pixel baseline 0.50."},
]


def _finished(notices: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    message = {"state": "succeeded", "metrics": {"test_accuracy": 0.4}, "notices": notices}
    return [job(1, outcome="Succeeded")], [pod(exit_code=0, term_message=message)]


def _posted(kube: RecordingKube) -> list[tuple[str, str, str]]:
    return [
        (c[1], c[2]["type"], c[2]["reason"])
        for c in kube.calls
        if c[0] == "event" and c[2]["reason"] != "JobCreated"
    ]


def _recorded_notices(kube: RecordingKube) -> str | None:
    for call in kube.calls:
        if call[0] == "patch" and not call[1].endswith("/status"):
            value = call[2]["metadata"]["annotations"].get("kubegraft.io/notices-emitted")
            if value is not None:
                return str(value)
    return None


def test_each_trainer_notice_is_one_event_of_its_type_and_the_count_is_recorded() -> None:
    kube = RecordingKube()
    _run(_reconciler(kube), transferjob(), *_finished(_NOTICES))
    assert _posted(kube) == [
        ("flowers.0b5e7d3c.r1.n0", "Normal", "BatchNormReestimated"),
        ("flowers.0b5e7d3c.r1.n1", "Warning", "NoTransferGain"),
    ]
    assert _recorded_notices(kube) == "1/2"


def test_notices_recorded_as_posted_are_not_posted_again_after_a_restart() -> None:
    kube = RecordingKube()
    tj = transferjob(annotations={"kubegraft.io/notices-emitted": "1/2"})
    _run(_reconciler(kube), tj, *_finished(_NOTICES))
    assert _posted(kube) == []


def test_only_notices_newer_than_the_record_are_posted() -> None:
    kube = RecordingKube()
    tj = transferjob(annotations={"kubegraft.io/notices-emitted": "1/1"})
    _run(_reconciler(kube), tj, *_finished(_NOTICES))
    assert [p[0] for p in _posted(kube)] == ["flowers.0b5e7d3c.r1.n1"]
    assert _recorded_notices(kube) == "1/2"


def test_a_crash_between_posting_and_recording_leaves_one_event_per_notice() -> None:
    # The Events exist (409 on their fixed names) but the count was never recorded: no new Event.
    kube = RecordingKube(existing={"flowers.0b5e7d3c.r1.n0", "flowers.0b5e7d3c.r1.n1"})
    before = metrics.NOTICES.labels(reason="NoTransferGain")._value.get()
    _run(_reconciler(kube), transferjob(), *_finished(_NOTICES))
    assert metrics.NOTICES.labels(reason="NoTransferGain")._value.get() == before
    assert _recorded_notices(kube) == "1/2"


def test_a_new_run_posts_its_own_notices_from_zero() -> None:
    kube = RecordingKube()
    tj = transferjob(annotations={"kubegraft.io/notices-emitted": "1/2"})
    tj["metadata"]["annotations"].update(
        {"kubegraft.io/run": "2", "kubegraft.io/run-spec-hash": job(1).spec_hash}
    )
    message = {"state": "succeeded", "notices": _NOTICES[:1]}
    jobs = [job(2, outcome="Succeeded")]
    pods = [pod(2, exit_code=0, term_message=message)]
    _run(_reconciler(kube), tj, jobs, pods)
    assert [p[0] for p in _posted(kube)] == ["flowers.0b5e7d3c.r2.n0"]


def _allow_list_reconciler(kube: RecordingKube) -> Reconciler:
    config = OperatorConfig(allowed_images=("registry.example.com/ml/*",))
    return Reconciler(config=config, kube=kube, progress=ProgressClient())


def test_a_disallowed_image_gets_no_job_but_a_failed_status_and_a_warning_naming_image_and_setting() -> None:
    kube = RecordingKube()
    tj = transferjob(with_spec(image="evil.io/miner:1"))
    _run(_allow_list_reconciler(kube), tj, [], [])
    assert [c for c in kube.calls if c[0] == "create"] == []
    status = next(c[2] for c in kube.calls if c[1].endswith("/status"))["status"]
    assert status["phase"] == "Failed"
    assert "jobName" not in status
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Failed"]["status"] == "True"
    assert conditions["Failed"]["reason"] == "ImageNotAllowed"
    assert "evil.io/miner:1" in conditions["Failed"]["message"]
    assert "KUBEGRAFT_ALLOWED_IMAGES" in conditions["Failed"]["message"]
    assert kube.events == [("Warning", "ImageNotAllowed")]


def test_a_refused_run_stays_failed_and_creates_nothing_on_later_reconciles() -> None:
    kube = RecordingKube()
    reconciler = _allow_list_reconciler(kube)
    tj = transferjob(with_spec(image="evil.io/miner:1"))
    _run(reconciler, tj, [], [])
    status = next(c[2] for c in kube.calls if c[1].endswith("/status"))["status"]
    kube.calls.clear()
    _run(reconciler, transferjob(with_spec(image="evil.io/miner:1"), status=status), [], [])
    assert [c for c in kube.calls if c[0] == "create"] == []
    assert kube.events == [("Warning", "ImageNotAllowed")]


def test_an_allowed_image_and_the_default_image_create_the_job() -> None:
    for spec in (with_spec(image="registry.example.com/ml/trainer:2"), with_spec()):
        kube = RecordingKube()
        _run(_allow_list_reconciler(kube), transferjob(spec), [], [])
        assert [c[1] for c in kube.calls if c[0] == "create"] == ["flowers-1-spec", "flowers-1"]


def test_a_spec_change_to_a_disallowed_image_stops_the_old_run_and_starts_none() -> None:
    kube = RecordingKube()
    tj = transferjob(
        with_spec(image="evil.io/miner:1"),
        generation=2,
        annotations={"kubegraft.io/run": "1", "kubegraft.io/run-spec-hash": job(1).spec_hash},
    )
    _run(_allow_list_reconciler(kube), tj, [job(1)], [])
    acts = [(c[0], c[1]) for c in kube.calls if c[0] in ("create", "delete")]
    assert acts == [("delete", "flowers-1"), ("delete", "flowers-1-spec")]
    assert ("Warning", "ImageNotAllowed") in kube.events


def test_a_running_job_is_not_touched_when_its_image_is_later_disallowed() -> None:
    kube = RecordingKube()
    spec = with_spec(image="evil.io/miner:1")
    tj = transferjob(spec)
    _run(_allow_list_reconciler(kube), tj, [job(1, spec=spec)], [pod(running=True)])
    assert [c for c in kube.calls if c[0] in ("create", "delete")] == []
    status = next(c[2] for c in kube.calls if c[1].endswith("/status"))["status"]
    assert status["phase"] == "Running"


def test_a_spec_admission_let_through_but_the_model_refuses_fails_with_invalid_spec_naming_the_field() -> (
    None
):
    # The CRD cannot check label key syntax (a regex over map keys is beyond CEL's cost budget): pydantic can.
    kube = RecordingKube()
    tj = transferjob(with_spec(pod={"labels": {"-bad key": "v"}}))
    _run(_reconciler(kube), tj, [], [])
    assert [c for c in kube.calls if c[0] == "create"] == []
    status = next(c[2] for c in kube.calls if c[1].endswith("/status"))["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (status["phase"], failed["status"], failed["reason"]) == ("Failed", "True", "InvalidSpec")
    assert failed["message"].startswith("The spec cannot be run: spec.pod.labels: label key '-bad key'")
    assert "input_value" not in failed["message"]
    assert kube.events == [("Warning", "InvalidSpec")]


def _written_annotations(kube: RecordingKube) -> dict[str, str]:
    found: dict[str, str] = {}
    for call in kube.calls:
        if call[0] == "patch" and "/transferjobs/" in call[1] and not call[1].endswith("/status"):
            found.update({k: v for k, v in call[2]["metadata"]["annotations"].items() if v})
    return found


def test_a_corrected_spec_after_invalid_spec_starts_the_next_run() -> None:
    kube = RecordingKube()
    reconciler = _reconciler(kube)
    _run(reconciler, transferjob(with_spec(pod={"labels": {"-bad": "v"}})), [], [])
    status = next(c[2] for c in kube.calls if c[1].endswith("/status"))["status"]
    assert status["run"] == 1
    recorded = _written_annotations(kube)
    assert recorded["kubegraft.io/run"] == "1"
    kube.calls.clear()
    fixed = transferjob(
        with_spec(pod={"labels": {"ok": "v"}}), generation=2, status=status, annotations=recorded
    )
    _run(reconciler, fixed, [], [])
    assert [c[1] for c in kube.calls if c[0] == "create"] == ["flowers-2-spec", "flowers-2"]


def test_an_invalid_spec_stops_the_running_job_of_the_previous_run_and_a_revert_is_a_new_run() -> None:
    kube = RecordingKube()
    reconciler = _reconciler(kube)
    recorded = {"kubegraft.io/run": "1", "kubegraft.io/run-spec-hash": job(1).spec_hash}
    invalid = transferjob(with_spec(pod={"labels": {"-bad": "v"}}), generation=2, annotations=recorded)
    _run(reconciler, invalid, [job(1)], [])
    assert [(c[0], c[1]) for c in kube.calls if c[0] in ("create", "delete")] == [
        ("delete", "flowers-1"),
        ("delete", "flowers-1-spec"),
    ]
    status = next(c[2] for c in kube.calls if c[1].endswith("/status"))["status"]
    assert (status["run"], status["phase"]) == (2, "Failed")
    annotations = {**recorded, **_written_annotations(kube)}
    kube.calls.clear()
    # Back to run 1's spec, whose Job is gone: a new run, not run 1's old outcome.
    _run(reconciler, transferjob(generation=3, status=status, annotations=annotations), [], [])
    assert [c[1] for c in kube.calls if c[0] == "create"] == ["flowers-3-spec", "flowers-3"]
