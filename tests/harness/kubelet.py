"""A test kubelet and Job controller: runs the cluster's Jobs as local processes, like a one-node cluster.

Who uses it: `tests.harness.cluster.Cluster` starts one per cluster; tests reach it as `cluster.kubelet` to
kill pods, simulate OOM kills and preemption, and read pod logs.

Why: the kmock emulator has no controllers, so nothing would ever run a Job. This module plays the two parts
of Kubernetes that the operator depends on, through the API only (list+watch, create, patch `/status`), so the
operator sees exactly what it would see on a real cluster:

- the Job controller (`kube-controller-manager`): creates pods from `spec.template` (labels `job-name`,
  `controller-uid` and their `batch.kubernetes.io/` forms, a controller ownerReference), honours
  `spec.suspend` (no pods; active ones deleted; `Suspended` condition), `backoffLimit` (reason
  `BackoffLimitExceeded`), `podFailurePolicy` (`FailJob` on exit codes → reason `PodFailurePolicy`; `Ignore`
  on pod conditions such as `DisruptionTarget`; `Count`), `activeDeadlineSeconds` (reason `DeadlineExceeded`),
  and writes `status` like the real controller: `active`/`ready`/`succeeded`/`failed`, `startTime`,
  `completionTime`, and the conditions `SuccessCriteriaMet`+`Complete` or `FailureTarget`+`Failed`; it
  deletes finished Jobs after `ttlSecondsAfterFinished` (the TTL controller);
- the scheduler: a single node with `gpus` `nvidia.com/gpu`, `node_labels` and `node_taints` (nodeSelector and
  tolerations are checked, in the scheduler's filter order); a pod asking for more than is free stays Pending
  with `PodScheduled=False`, reason `Unschedulable`, message `0/1 nodes are available: 1 Insufficient
  nvidia.com/gpu.` (retried when GPUs free up);
- the kubelet: image "pulls" (`pullable_images` predicate; others wait in `ErrImagePull` then
  `ImagePullBackOff`), env (`value`, `secretKeyRef`, `configMapKeyRef`, `fieldRef`, `envFrom`; a missing
  Secret or key waits in `CreateContainerConfigError` with the kubelet's message, e.g. `secret "x" not found`,
  and is retried), volumes (`configMap`, `secret` and `emptyDir` materialized as directories under the pod's
  directory), then runs `command + args` as a local subprocess.

Containers cannot see `/etc/kubegraft`, so paths are rewritten: any env value, argument or workingDir that
starts with a volumeMount's `mountPath` (or with the `terminationMessagePath`) is rewritten to the host
directory (file) that stands for it; that is how the trainer finds its spec through `KUBEGRAFT_SPEC`. Each pod
gets its own loopback address 127.0.0.N as `podIP`, exported as `KUBEGRAFT_PROGRESS_BIND`, so several pods can
serve the same progress port; `KUBEGRAFT_TERMINATION_LOG` points at the pod's termination message file, whose
content becomes `containerStatuses[].state.terminated.message`. Pod stdout+stderr go to `log_path(pod)`.

Indexed Jobs (`completionMode: Indexed`) run one pod per index as the real controller does: pod
`<job>-<index>-<random>` with the `batch.kubernetes.io/job-completion-index` annotation and label,
`JOB_COMPLETION_INDEX` in every container's env, hostname `<job>-<index>`; a failed index is replaced
(after the back-off, within `backoffLimit`), a succeeded one is done, `status.completedIndexes` lists them and
the Job completes when every index has succeeded. Cluster DNS is not emulated: for a pod in a `subdomain`,
the kubelet stands in for it through `KUBEGRAFT_TEST_ADDRESSES` (`kubegraft.runtime.ENV_TEST_ADDRESSES`), a
JSON object mapping each `<job>-<i>.<subdomain>:<containerPort>` of the Job to a free `127.0.0.1` port, the
same for all of the Job's pods and retries (every process here shares one network namespace).

Limits: one container per pod is run (init containers and sidecars are not); `restartPolicy: OnFailure` is
treated as `Never`; no probes (a running container is ready); non-indexed completions/parallelism beyond 1 are
honoured only as counts; pod backoff between retries is `pod_backoff_seconds` (real: 10 s doubling).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import random
import secrets
import shutil
import signal
import socket
import string
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from kubegraft.runtime import (
    ANNOTATION_COMPLETION_INDEX,
    ENV_COMPLETION_INDEX,
    ENV_TEST_ADDRESSES,
    PROGRESS_PORT,
)
from tests.harness.ports import free_port

JsonObj = dict[str, Any]
ImagePredicate = Callable[[str], bool]

GPU_RESOURCE = "nvidia.com/gpu"
OOM_ANNOTATION = "kubegraft.io/test-oom-kill-after-seconds"  # test hook: OOM-kill the container after N s
MAX_TERMINATION_MESSAGE = 4096
RESYNC_SECONDS = 0.25  # timers (deadlines, back-off, TTL) and scheduling retries
FULL_RESYNC_SECONDS = 5.0  # every Job, as a safety net behind the watches
_NAME_ALPHABET = string.ascii_lowercase + string.digits


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> float:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


def _key(obj: JsonObj) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


class ContainerConfigError(Exception):
    """The container cannot start yet: a referenced Secret/ConfigMap or key is missing (retried)."""


class PodRuntime:
    """What the kubelet knows about one pod: its directory, process, IP, status and fate."""

    def __init__(self, pod: JsonObj, root: Path) -> None:
        self.namespace, self.name = _key(pod)
        self.uid: str = pod["metadata"]["uid"]
        self.pod = pod
        self.dir = root / f"{self.namespace}_{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "container.log"
        self.termination_log = self.dir / "termination-log"
        self.process: asyncio.subprocess.Process | None = None
        self.ip: str | None = None
        self.gpus = _gpu_request(pod)
        self.bound = False
        self.holds_resources = False  # GPUs and the pod IP, from binding until the container is gone
        self.deleted = False
        self.oom = False
        self.task: asyncio.Task[None] | None = None
        self.status: JsonObj = {"phase": "Pending", "conditions": [], "qosClass": "Burstable"}


def _gpu_request(pod: JsonObj) -> int:
    total = 0
    for container in pod.get("spec", {}).get("containers", []):
        resources = container.get("resources", {})
        value = resources.get("limits", {}).get(GPU_RESOURCE) or resources.get("requests", {}).get(
            GPU_RESOURCE
        )
        total += int(value or 0)
    return total


class TestKubelet:
    """The test node: Job controller, scheduler and kubelet in a background thread with its own event loop.

    Args:
        api_url: the API server (emulator) URL.
        workdir: pod directories (volumes, logs, termination messages) go here.
        gpus: `nvidia.com/gpu` capacity of the node.
        pullable_images: which images can be pulled; default: every image.
        pod_env: environment every container starts from (e.g. `PATH` with the venv's bin/ first), under the
            container's own env.
        pod_backoff_seconds: delay before a failed Job pod is replaced.
        node_labels: labels of the node beyond `kubernetes.io/hostname|os|arch` (pods' `nodeSelector` must
            match them).
        node_taints: taints of the node (`{"key", "value", "effect"}`); pods must tolerate NoSchedule ones.
        max_grace_seconds: cap on `terminationGracePeriodSeconds` when pods are deleted (SIGTERM, then
            SIGKILL).
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        api_url: str,
        workdir: Path,
        *,
        gpus: int = 1,
        pullable_images: ImagePredicate | None = None,
        pod_env: Mapping[str, str] | None = None,
        pod_backoff_seconds: float = 0.2,
        max_grace_seconds: float = 3.0,
        node_name: str = "kubegraft-test-node",
        node_labels: Mapping[str, str] | None = None,
        node_taints: list[JsonObj] | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.workdir = Path(workdir)
        # Host paths never rewritten into a pod's volumes (see `_prepare`'s `rewrite`).
        self._host_roots = tuple(
            sorted(
                {
                    str(Path(sys.prefix).resolve()),
                    str(Path(sys.prefix)),
                    str(Path(sys.base_prefix)),
                    str(Path(__file__).resolve().parents[2]),
                    str(self.workdir.resolve()),
                    str(self.workdir),
                }
            )
        )
        self.gpus = gpus
        self.pullable_images: ImagePredicate = pullable_images or (lambda image: True)
        self.pod_env = dict(pod_env or {})
        self.pod_backoff_seconds = pod_backoff_seconds
        self.max_grace_seconds = max_grace_seconds
        self.node_name = node_name
        self.node_labels = {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **(node_labels or {}),
        }
        self.node_taints = list(node_taints or [])
        self._jobs: dict[tuple[str, str], JsonObj] = {}
        self._pods: dict[tuple[str, str], JsonObj] = {}
        self._runtimes: dict[str, PodRuntime] = {}  # by pod uid
        self._counted: dict[str, set[str]] = {}  # job uid -> uids of terminated pods already counted
        self._last_failure: dict[str, float] = {}  # job uid -> when its last pod failed (for backoff)
        self._used_ips: set[str] = set()
        self._job_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._gpus_used = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._pods_by_owner: dict[str, set[tuple[str, str]]] = {}  # owner uid -> pod keys (may be stale)
        self._addresses: dict[str, dict[str, str]] = {}  # job uid -> stand-in DNS of its indexed pods
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._errors: list[str] = []

    # -- lifecycle (called from the test thread) ------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread; returns once the first lists of Jobs and Pods are loaded."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._thread_main, name="test-kubelet", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"the test kubelet did not start: {self._errors}")

    def stop(self) -> None:
        """Kill every pod process and stop the thread."""
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(30)
        self._loop = None

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coro: Awaitable[Any], timeout: float = 30.0) -> Any:
        if self._loop is None:
            raise RuntimeError("the test kubelet is not running")

        async def wrapper() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    # -- test controls ------------------------------------------------------------------------------------

    def runtime(self, pod_name: str, namespace: str = "default") -> PodRuntime:
        """The kubelet's record of a pod (its dir, process, IP, in-memory status).

        Raises:
            KeyError: when the kubelet never saw the pod.
        """
        for runtime in list(self._runtimes.values()):
            if runtime.name == pod_name and runtime.namespace == namespace:
                return runtime
        raise KeyError(f"no pod {namespace}/{pod_name} on this node")

    def log_path(self, pod_name: str, namespace: str = "default") -> Path:
        """The file with the pod's container stdout and stderr."""
        return self.runtime(pod_name, namespace).log_path

    def pod_dir(self, pod_name: str, namespace: str = "default") -> Path:
        """The pod's host directory (volumes, termination log, log)."""
        return self.runtime(pod_name, namespace).dir

    def kill(self, pod_name: str, sig: int = signal.SIGKILL, namespace: str = "default") -> bool:
        """Send `sig` to the pod's container process group (SIGKILL: a crashed container). False if none."""
        runtime = self.runtime(pod_name, namespace)
        process = runtime.process
        if process is None or process.returncode is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        return True

    def oom_kill(self, pod_name: str, namespace: str = "default") -> bool:
        """SIGKILL the container and report it as `OOMKilled` (exit code 137)."""
        self.runtime(pod_name, namespace).oom = True
        return self.kill(pod_name, signal.SIGKILL, namespace)

    def preempt(
        self, pod_name: str, namespace: str = "default", reason: str = "PreemptionByScheduler"
    ) -> None:
        """Disrupt a pod: add condition DisruptionTarget=True, then terminate it (podFailurePolicy Ignore)."""
        runtime = self.runtime(pod_name, namespace)

        async def disrupt() -> None:
            self._set_condition(runtime, "DisruptionTarget", "True", reason, "the pod was preempted")
            await self._patch_pod_status(runtime)
            await self._terminate_process(runtime, grace=0.5)

        self._call(disrupt())

    def pods(self, namespace: str | None = None) -> list[JsonObj]:
        """The kubelet's cached view of pods (from its watch)."""
        return [p for (ns, _), p in list(self._pods.items()) if namespace is None or ns == namespace]

    def diagnostics(self) -> str:
        """Each pod's status summary and the tail of its log, plus kubelet errors."""
        parts = []
        for runtime in list(self._runtimes.values()):
            log = runtime.log_path.read_text(errors="replace")[-3000:] if runtime.log_path.exists() else ""
            parts.append(
                f"--- pod {runtime.namespace}/{runtime.name} ip={runtime.ip} "
                f"phase={runtime.status.get('phase')} "
                f"containers={json.dumps(runtime.status.get('containerStatuses', []))[:800]}\n{log}"
            )
        if self._errors:
            parts.append("--- kubelet errors\n" + "\n".join(self._errors[-20:]))
        return "\n".join(parts)

    # -- API helpers --------------------------------------------------------------------------------------

    async def _api(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> Any:
        assert self._session is not None
        headers = {"Content-Type": content_type or "application/json"} if body is not None else {}
        data = None if body is None else json.dumps(body)
        async with self._session.request(method, self.api_url + path, data=data, headers=headers) as response:
            payload = await response.json(content_type=None)
            if response.status >= 400:
                raise ApiCallError(response.status, payload if isinstance(payload, dict) else {})
            return payload

    async def _get_optional(self, path: str) -> JsonObj | None:
        try:
            result: JsonObj = await self._api("GET", path)
        except ApiCallError as exc:
            if exc.code == 404:
                return None
            raise
        return result

    # -- main loop ----------------------------------------------------------------------------------------

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        ) as session:
            self._session = session
            jobs_loaded, pods_loaded = asyncio.Event(), asyncio.Event()
            tasks = [
                asyncio.create_task(
                    self._informer("/apis/batch/v1/jobs", self._jobs, jobs_loaded, self._on_job)
                ),
                asyncio.create_task(self._informer("/api/v1/pods", self._pods, pods_loaded, self._on_pod)),
            ]
            try:
                await asyncio.wait_for(asyncio.gather(jobs_loaded.wait(), pods_loaded.wait()), 20)
            except TimeoutError:
                self._errors.append("initial list of jobs/pods timed out")
            self._ready.set()
            tasks.append(asyncio.create_task(self._resync_loop()))
            await self._stopping.wait()
            for task in tasks:
                task.cancel()
            for runtime in list(self._runtimes.values()):
                runtime.deleted = True
                await self._terminate_process(runtime, grace=0.0)
            pending = [*tasks, *self._tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _informer(
        self,
        path: str,
        cache: dict[tuple[str, str], JsonObj],
        loaded: asyncio.Event,
        on_change: Callable[[str, JsonObj], None],
    ) -> None:
        """List, then watch from the list's resourceVersion; relist on 410 or a broken stream."""
        assert self._session is not None
        while True:
            try:
                listing = await self._api("GET", path)
                fresh = {_key(o): o for o in listing["items"]}
                for key, obj in list(cache.items()):
                    if key not in fresh:
                        del cache[key]
                        on_change("DELETED", obj)
                for obj in fresh.values():
                    self._remember(cache, obj)
                    on_change("ADDED", obj)
                loaded.set()
                rv = listing["metadata"]["resourceVersion"]
                url = f"{self.api_url}{path}?watch=true&resourceVersion={rv}"
                async with self._session.get(url) as response:
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break
                        if event["type"] == "BOOKMARK":
                            continue
                        obj = event["object"]
                        if event["type"] == "DELETED":
                            cache.pop(_key(obj), None)
                        else:
                            self._remember(cache, obj)
                        on_change(event["type"], obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors.append(f"informer {path}: {exc!r}")
                await asyncio.sleep(0.5)

    @staticmethod
    def _remember(cache: dict[tuple[str, str], JsonObj], obj: JsonObj) -> None:
        """Keep the newer of the cached and the given version (writes' responses can beat watch events)."""
        key = _key(obj)
        old_meta = (cache.get(key) or {}).get("metadata", {})
        meta = obj["metadata"]
        same = old_meta.get("uid") == meta.get("uid")
        if same and int(old_meta.get("resourceVersion", 0)) > int(meta.get("resourceVersion", 0)):
            return
        cache[key] = obj

    def _on_job(self, event_type: str, job: JsonObj) -> None:
        if event_type != "DELETED":
            self._spawn(self._sync_job(_key(job)))

    def _on_pod(self, event_type: str, pod: JsonObj) -> None:
        uid = pod["metadata"].get("uid", "")
        for owner in pod["metadata"].get("ownerReferences") or []:
            self._pods_by_owner.setdefault(owner.get("uid", ""), set()).add(_key(pod))
        runtime = self._runtimes.get(uid)
        if event_type == "DELETED" or pod["metadata"].get("deletionTimestamp"):
            if runtime is not None and not runtime.deleted:
                runtime.deleted = True
                if runtime.process is None or runtime.process.returncode is not None:
                    self._release(runtime)  # no container: nothing to wait for
                grace = pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
                self._spawn(self._terminate_process(runtime, grace=min(float(grace), self.max_grace_seconds)))
        elif runtime is None and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            runtime = PodRuntime(pod, self.workdir)
            self._runtimes[uid] = runtime
            runtime.task = self._spawn(self._run_pod(runtime))
        elif runtime is not None:
            runtime.pod = pod
        owner = self._job_owner(pod)
        if owner is not None:
            self._spawn(self._sync_job(owner))

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors.append(f"{exc!r}")

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _resync_loop(self) -> None:
        """Timers (deadlines, retry back-off, TTLs) every tick; every Job every FULL_RESYNC_SECONDS.

        Everything else is driven by watch events, so that a thousand idle Jobs cost (almost) nothing.
        """
        loop = asyncio.get_running_loop()
        next_full = loop.time() + FULL_RESYNC_SECONDS
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            full = loop.time() >= next_full
            if full:
                next_full = loop.time() + FULL_RESYNC_SECONDS
            for key, job in list(self._jobs.items()):
                spec = job.get("spec", {})
                if _finished(job):
                    if spec.get("ttlSecondsAfterFinished") is not None:
                        await self._expire_job(job)
                elif full or spec.get("activeDeadlineSeconds") is not None or self._backing_off(job):
                    await self._sync_job(key)

    def _backing_off(self, job: JsonObj) -> bool:
        failed_at = self._last_failure.get(job["metadata"]["uid"])
        return failed_at is not None and time.monotonic() - failed_at < self.pod_backoff_seconds + 1.0

    async def _expire_job(self, job: JsonObj) -> None:
        """The TTL-after-finished controller: delete a finished Job (GC takes its pods) after its TTL."""
        finished_at = max(
            (
                c.get("lastTransitionTime", "")
                for c in job.get("status", {}).get("conditions", [])
                if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            ),
            default="",
        )
        ttl = int(job["spec"]["ttlSecondsAfterFinished"])
        if finished_at and time.time() - _parse_time(finished_at) >= ttl:
            namespace, name = _key(job)
            self._jobs.pop((namespace, name), None)
            with contextlib.suppress(ApiCallError):
                await self._api(
                    "DELETE",
                    f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
                    {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
                )

    # -- Job controller -----------------------------------------------------------------------------------

    @staticmethod
    def _job_owner(pod: JsonObj) -> tuple[str, str] | None:
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "Job" and ref.get("controller"):
                return (pod["metadata"].get("namespace", ""), ref["name"])
        return None

    def _job_pods(self, job: JsonObj) -> list[JsonObj]:
        uid = job["metadata"]["uid"]
        keys = self._pods_by_owner.get(uid, set())
        pods = [self._pods[k] for k in list(keys) if k in self._pods]
        return [
            p for p in pods if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
        ]

    async def _sync_job(self, key: tuple[str, str]) -> None:
        """Reconcile one Job (serialized per Job: concurrent syncs would create duplicate pods)."""
        lock = self._job_locks.setdefault(key, asyncio.Lock())
        async with lock:
            await self._sync_job_locked(key)

    async def _sync_job_locked(self, key: tuple[str, str]) -> None:  # noqa: PLR0912 - one flat branch per Kubernetes rule reads better than helpers
        job = self._jobs.get(key)
        if job is None:
            return
        namespace, name = key
        uid = job["metadata"]["uid"]
        spec, old_status = job.get("spec", {}), job.get("status", {}) or {}
        status = json.loads(json.dumps(old_status))
        conditions: list[JsonObj] = status.setdefault("conditions", [])
        pods = self._job_pods(job)
        active = [p for p in pods if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        counted = self._counted.setdefault(uid, set())
        fail_reason: tuple[str, str] | None = None
        for pod in pods:
            pod_uid, phase = pod["metadata"]["uid"], pod.get("status", {}).get("phase")
            if pod_uid in counted or phase not in ("Succeeded", "Failed"):
                continue
            counted.add(pod_uid)
            if phase == "Succeeded":
                status["succeeded"] = status.get("succeeded", 0) + 1
                continue
            self._last_failure[uid] = time.monotonic()
            action, message = _failure_policy_action(spec.get("podFailurePolicy"), pod)
            if action == "Ignore":
                continue
            status["failed"] = status.get("failed", 0) + 1
            if action == "FailJob":
                fail_reason = ("PodFailurePolicy", message)
        if _finished(job):
            return
        suspended = bool(spec.get("suspend"))
        if fail_reason is None and status.get("failed", 0) > int(spec.get("backoffLimit", 6)):
            fail_reason = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        deadline = spec.get("activeDeadlineSeconds")
        if (
            fail_reason is None
            and deadline is not None
            and not suspended
            and status.get("startTime")
            and time.time() - _parse_time(status["startTime"]) >= int(deadline)
        ):
            fail_reason = ("DeadlineExceeded", "Job was active longer than specified deadline")
        completions = int(spec.get("completions", 1) or 1)
        indexed = spec.get("completionMode") == "Indexed"
        done_indexes = {_index(p) for p in pods if p.get("status", {}).get("phase") == "Succeeded"}
        if indexed:
            status["completedIndexes"] = _index_ranges(i for i in done_indexes if i is not None)
        succeeded_enough = (
            len(done_indexes & set(range(completions))) >= completions
            if indexed
            else status.get("succeeded", 0) >= completions
        )
        if fail_reason is not None:
            await self._delete_pods(active)
            active = []
            _set_job_condition(conditions, "FailureTarget", "True", *fail_reason)
            _set_job_condition(conditions, "Failed", "True", *fail_reason)
        elif succeeded_enough:
            await self._delete_pods(active)
            active = []
            _set_job_condition(
                conditions,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            )
            _set_job_condition(
                conditions,
                "Complete",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            )
            status["completionTime"] = _now()
        elif suspended:
            if active:
                await self._delete_pods(active)
                active = []
            _set_job_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended")
            status.pop("startTime", None)
        else:
            if any(c["type"] == "Suspended" and c["status"] == "True" for c in conditions):
                _set_job_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed")
            status.setdefault("startTime", _now())
            parallelism = int(spec.get("parallelism", 1) if spec.get("parallelism") is not None else 1)
            since_failure = time.monotonic() - self._last_failure.get(uid, 0.0)
            if indexed:
                running = {_index(p) for p in active}
                missing = [i for i in range(completions) if i not in done_indexes | running]
                wanted = min(len(missing), parallelism - len(active))
                if wanted > 0 and since_failure >= self.pod_backoff_seconds:
                    for index in missing[:wanted]:
                        created = await self._try_create_pod(job, index)
                        if created is None:
                            break
                        active.append(created)
            else:
                wanted = min(parallelism, completions - status.get("succeeded", 0)) - len(active)
                if wanted > 0 and since_failure >= self.pod_backoff_seconds:
                    for _ in range(wanted):
                        created = await self._try_create_pod(job)
                        if created is None:
                            break
                        active.append(created)
        status["active"] = len(active)
        status["ready"] = sum(1 for p in active if p.get("status", {}).get("phase") == "Running")
        status["terminating"] = 0
        status.setdefault("succeeded", 0)
        status.setdefault("failed", 0)
        if not conditions:
            status.pop("conditions")
        if status != old_status:
            updated = await self._api(
                "PATCH",
                f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}/status",
                {"status": status},
                "application/merge-patch+json",
            )
            self._remember(self._jobs, updated)

    async def _try_create_pod(self, job: JsonObj, index: int | None = None) -> JsonObj | None:
        """`_create_pod`, or None when the API refuses it with 403 (a ResourceQuota): then, like the Job
        controller, a `FailedCreate` Event on the Job and a retry after the back-off."""
        try:
            return await self._create_pod(job, index)
        except ApiCallError as exc:
            if exc.code != 403:
                raise
            self._last_failure[job["metadata"]["uid"]] = time.monotonic()
            await self._failed_create(job, str(exc.status.get("message", exc)))
            return None

    async def _failed_create(self, job: JsonObj, message: str) -> None:
        """The Job controller's Warning Event `FailedCreate` on `job` (as `kubectl describe job` shows it)."""
        namespace, name = _key(job)
        now = _now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": name,
                "namespace": namespace,
                "uid": job["metadata"]["uid"],
            },
            "type": "Warning",
            "reason": "FailedCreate",
            "message": f"Error creating: {message}",
            "source": {"component": "job-controller"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(ApiCallError):
            await self._api("POST", f"/api/v1/namespaces/{namespace}/events", event)

    async def _delete_pods(self, pods: list[JsonObj]) -> None:
        for pod in pods:
            namespace, name = _key(pod)
            with contextlib.suppress(ApiCallError):
                await self._api("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")

    async def _create_pod(self, job: JsonObj, index: int | None = None) -> JsonObj:
        """A pod from the Job's template (of completion index `index` for an Indexed Job)."""
        namespace, name = _key(job)
        uid = job["metadata"]["uid"]
        template = json.loads(json.dumps(job["spec"]["template"]))
        meta = template.get("metadata", {}) or {}
        labels = dict(meta.get("labels") or {})
        annotations = dict(meta.get("annotations") or {})
        pod_spec = template.get("spec", {})
        if index is not None:
            labels[ANNOTATION_COMPLETION_INDEX] = annotations[ANNOTATION_COMPLETION_INDEX] = str(index)
            pod_spec["hostname"] = f"{name}-{index}"
            field = {"fieldPath": f"metadata.annotations['{ANNOTATION_COMPLETION_INDEX}']"}
            for container in pod_spec.get("containers") or []:
                env = container.setdefault("env", [])
                env.insert(0, {"name": ENV_COMPLETION_INDEX, "valueFrom": {"fieldRef": field}})
        labels.update(
            {
                "job-name": name,
                "controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "batch.kubernetes.io/controller-uid": uid,
            }
        )
        suffix = "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
        stem = name if index is None else f"{name}-{index}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{stem}-{suffix}",
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": pod_spec,
        }
        created: JsonObj = await self._api("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        self._remember(self._pods, created)
        self._on_pod("ADDED", created)
        return created

    # -- scheduler + kubelet ------------------------------------------------------------------------------

    def _unschedulable_message(self, runtime: PodRuntime) -> str | None:
        """Why the node cannot take the pod, in the scheduler's words (its filter order); None if it can."""
        spec = runtime.pod.get("spec", {})
        never = " preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        tolerations = spec.get("tolerations") or []
        for taint in self.node_taints:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not any(
                _tolerates(t, taint) for t in tolerations
            ):
                value = f": {taint['value']}" if taint.get("value") else ""
                untolerated = f"{{{taint['key']}{value}}}"
                return f"0/1 nodes are available: 1 node(s) had untolerated taint {untolerated}.{never}"
        selector = spec.get("nodeSelector") or {}
        if any(self.node_labels.get(k) != v for k, v in selector.items()):
            return f"0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.{never}"
        if runtime.gpus > self._free_gpus():
            victims = (
                never
                if runtime.gpus > self.gpus
                else (" preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.")
            )
            return f"0/1 nodes are available: 1 Insufficient {GPU_RESOURCE}.{victims}"
        return None

    def _free_gpus(self) -> int:
        return self.gpus - self._gpus_used

    def _release(self, runtime: PodRuntime) -> None:
        """Give back the pod's GPUs and IP (idempotent): its container exited or it never started one."""
        if runtime.holds_resources:
            runtime.holds_resources = False
            self._gpus_used -= runtime.gpus
            if runtime.ip is not None:
                self._used_ips.discard(runtime.ip)

    def _allocate_ip(self) -> str:
        """A loopback address no other pod (of this or a concurrent test cluster) is serving progress on."""
        rng = random.Random()
        for _ in range(1000):
            ip = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
            if ip not in self._used_ips and _port_free(ip, PROGRESS_PORT):
                self._used_ips.add(ip)
                return ip
        raise RuntimeError("no free loopback address for a pod")

    async def _patch_pod_status(self, runtime: PodRuntime) -> None:
        if runtime.deleted:
            return
        try:
            updated = await self._api(
                "PATCH",
                f"/api/v1/namespaces/{runtime.namespace}/pods/{runtime.name}/status",
                {"status": runtime.status},
                "application/merge-patch+json",
            )
        except ApiCallError as exc:
            if exc.code == 404:
                runtime.deleted = True
                return
            raise
        self._remember(self._pods, updated)

    @staticmethod
    def _set_condition(
        runtime: PodRuntime, type_: str, status: str, reason: str = "", message: str = ""
    ) -> None:
        conditions = runtime.status.setdefault("conditions", [])
        for cond in conditions:
            if cond["type"] == type_:
                if cond["status"] != status:
                    cond["lastTransitionTime"] = _now()
                cond.update({"status": status, "reason": reason, "message": message})
                if not reason:
                    cond.pop("reason")
                if not message:
                    cond.pop("message")
                return
        cond = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": _now()}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        conditions.append(cond)

    def _container_status(self, container: JsonObj, state: JsonObj, *, ready: bool = False) -> JsonObj:
        return {
            "name": container.get("name", "main"),
            "image": container.get("image", ""),
            "imageID": "",
            "ready": ready,
            "restartCount": 0,
            "started": "running" in state,
            "state": state,
        }

    async def _run_pod(self, runtime: PodRuntime) -> None:
        pod = runtime.pod
        spec = pod.get("spec", {})
        containers = spec.get("containers") or [{}]
        container = containers[0]
        # Schedule.
        while not runtime.deleted:
            message = self._unschedulable_message(runtime)
            if message is None:
                runtime.bound = runtime.holds_resources = True
                self._gpus_used += runtime.gpus
                break
            if not any(c.get("message") == message for c in runtime.status["conditions"]):
                self._set_condition(runtime, "PodScheduled", "False", "Unschedulable", message)
                await self._patch_pod_status(runtime)
            await asyncio.sleep(RESYNC_SECONDS)
        if runtime.deleted:
            return
        runtime.ip = self._allocate_ip()
        self._set_condition(runtime, "PodScheduled", "True")
        self._set_condition(runtime, "Initialized", "True")
        self._set_condition(runtime, "Ready", "False", "ContainersNotReady", "containers with unready status")
        self._set_condition(
            runtime, "ContainersReady", "False", "ContainersNotReady", "containers with unready status"
        )
        runtime.status.update(
            {
                "hostIP": "127.0.0.1",
                "podIP": runtime.ip,
                "podIPs": [{"ip": runtime.ip}],
                "startTime": _now(),
                "containerStatuses": [
                    self._container_status(container, {"waiting": {"reason": "ContainerCreating"}})
                ],
            }
        )
        with contextlib.suppress(ApiCallError):
            await self._api(
                "PATCH",
                f"/api/v1/namespaces/{runtime.namespace}/pods/{runtime.name}",
                {"spec": {"nodeName": self.node_name}},
                "application/merge-patch+json",
            )
        await self._patch_pod_status(runtime)
        # Pull the image.
        image = container.get("image", "")
        if not self.pullable_images(image):
            pull_message = (
                f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": not found'
            )
            runtime.status["containerStatuses"] = [
                self._container_status(
                    container, {"waiting": {"reason": "ErrImagePull", "message": pull_message}}
                )
            ]
            await self._patch_pod_status(runtime)
            await asyncio.sleep(1.0)
            runtime.status["containerStatuses"] = [
                self._container_status(
                    container,
                    {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": f'Back-off pulling image "{image}"',
                        }
                    },
                )
            ]
            await self._patch_pod_status(runtime)
            return  # stays Pending until deleted
        # Resolve env and volumes (retried while a Secret/ConfigMap is missing).
        while True:
            if runtime.deleted:
                return
            try:
                env, argv, cwd = await self._prepare(runtime, container)
                break
            except ContainerConfigError as exc:
                runtime.status["containerStatuses"] = [
                    self._container_status(
                        container, {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                    )
                ]
                await self._patch_pod_status(runtime)
                await asyncio.sleep(1.0)
        await self._start_and_wait(runtime, container, env, argv, cwd)

    async def _start_and_wait(
        self, runtime: PodRuntime, container: JsonObj, env: dict[str, str], argv: list[str], cwd: Path
    ) -> None:
        if runtime.deleted:  # deleted while its env was being resolved
            self._release(runtime)
            return
        started_at = _now()
        exit_code: int
        run_error = ""
        executable = shutil.which(argv[0], path=env.get("PATH")) if argv else None
        if executable is None:
            exit_code = 128
            run_error = f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH'
        else:
            with runtime.log_path.open("ab") as log:
                runtime.process = await asyncio.create_subprocess_exec(
                    executable,
                    *argv[1:],
                    env=env,
                    cwd=cwd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            runtime.status["phase"] = "Running"
            self._set_condition(runtime, "Ready", "True")
            self._set_condition(runtime, "ContainersReady", "True")
            runtime.status["containerStatuses"] = [
                self._container_status(container, {"running": {"startedAt": started_at}}, ready=True)
            ]
            await self._patch_pod_status(runtime)
            oom_after = runtime.pod["metadata"].get("annotations", {}).get(OOM_ANNOTATION)
            if oom_after is not None:
                self._spawn(self._oom_later(runtime, float(oom_after)))
            returncode = await runtime.process.wait()
            exit_code = returncode if returncode >= 0 else 128 - returncode
        self._release(runtime)
        if runtime.deleted:
            return
        message = ""
        if runtime.termination_log.exists():
            message = runtime.termination_log.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        if (
            not message
            and exit_code != 0
            and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            tail = runtime.log_path.read_bytes()[-2048:] if runtime.log_path.exists() else b""
            message = b"\n".join(tail.splitlines()[-80:]).decode(errors="replace")
        reason = "Completed" if exit_code == 0 else "OOMKilled" if runtime.oom else "Error"
        if run_error:
            reason, message = "StartError", run_error
        terminated: JsonObj = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": _now(),
            "containerID": f"test://{runtime.uid}",
        }
        if message:
            terminated["message"] = message
        runtime.status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        runtime.status["containerStatuses"] = [self._container_status(container, {"terminated": terminated})]
        self._set_condition(runtime, "Ready", "False", "PodCompleted" if exit_code == 0 else "PodFailed")
        self._set_condition(
            runtime, "ContainersReady", "False", "PodCompleted" if exit_code == 0 else "PodFailed"
        )
        await self._patch_pod_status(runtime)

    async def _oom_later(self, runtime: PodRuntime, seconds: float) -> None:
        await asyncio.sleep(seconds)
        process = runtime.process
        if process is not None and process.returncode is None:
            runtime.oom = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    async def _terminate_process(self, runtime: PodRuntime, grace: float) -> None:
        process = runtime.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    # -- env and volumes ----------------------------------------------------------------------------------

    async def _object(self, namespace: str, kind: str, name: str) -> JsonObj:
        obj = await self._get_optional(f"/api/v1/namespaces/{namespace}/{kind}s/{name}")
        if obj is None:
            raise ContainerConfigError(f'{kind} "{name}" not found')
        return obj

    async def _secret_data(self, namespace: str, name: str) -> dict[str, str]:
        secret = await self._object(namespace, "secret", name)
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        data.update(secret.get("stringData") or {})
        return data

    async def _configmap_data(self, namespace: str, name: str) -> dict[str, str]:
        return dict((await self._object(namespace, "configmap", name)).get("data") or {})

    async def _prepare(  # noqa: PLR0912 - one flat branch per Kubernetes rule reads better than helpers
        self, runtime: PodRuntime, container: JsonObj
    ) -> tuple[dict[str, str], list[str], Path]:
        """Materialize volumes and resolve env; return (env, argv, cwd) with container paths rewritten."""
        namespace, pod = runtime.namespace, runtime.pod
        volumes = {v["name"]: v for v in pod.get("spec", {}).get("volumes") or []}
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})
            host = runtime.dir / "volumes" / mount["name"]
            host.mkdir(parents=True, exist_ok=True)
            files: dict[str, str] = {}
            source: JsonObj | None = None
            if "configMap" in volume:
                source = volume["configMap"]
                try:
                    files = await self._configmap_data(namespace, source["name"])
                except ContainerConfigError:
                    if not source.get("optional"):
                        raise
            elif "secret" in volume:
                source = volume["secret"]
                try:
                    files = await self._secret_data(namespace, source["secretName"])
                except ContainerConfigError:
                    if not source.get("optional"):
                        raise
            if source is not None and source.get("items"):
                files = {item["path"]: files[item["key"]] for item in source["items"] if item["key"] in files}
            for rel, content in files.items():
                target = host / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
            if mount.get("subPath"):
                host = host / mount["subPath"]
            mounts.append((mount["mountPath"].rstrip("/") or "/", host))
        termination_path = container.get("terminationMessagePath", "/dev/termination-log")
        mounts.append((termination_path, runtime.termination_log))
        mounts.sort(key=lambda m: len(m[0]), reverse=True)

        def rewrite(value: str) -> str:
            if any(value == root or value.startswith(root + "/") for root in self._host_roots):
                # The node's own files (this interpreter, the project, the kubelet's pod dirs) stay where
                # they are even when they live under a mount path such as /tmp (pytest, CI clones).
                return value
            for mount_path, host in mounts:
                if value == mount_path or value.startswith(mount_path + "/"):
                    return str(host) + value[len(mount_path) :]
            return value

        env: dict[str, str] = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(runtime.dir),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "HOSTNAME": pod.get("spec", {}).get("hostname") or runtime.name,
        }
        addresses = self._stand_in_dns(pod)
        if addresses:
            env[ENV_TEST_ADDRESSES] = json.dumps(addresses, sort_keys=True)
        env.update(self.pod_env)
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = await self._secret_data(namespace, source["secretRef"]["name"])
            else:
                data = await self._configmap_data(namespace, source["configMapRef"]["name"])
            env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            env[var["name"]] = await self._env_value(runtime, var)
        env = {k: rewrite(v) for k, v in env.items()}
        env["KUBEGRAFT_TERMINATION_LOG"] = str(runtime.termination_log)
        env["KUBEGRAFT_PROGRESS_BIND"] = runtime.ip or "127.0.0.1"
        argv = [rewrite(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        cwd = Path(rewrite(container["workingDir"])) if container.get("workingDir") else runtime.dir
        cwd.mkdir(parents=True, exist_ok=True)
        return env, argv, cwd

    def _stand_in_dns(self, pod: JsonObj) -> dict[str, str]:
        """For an Indexed Job's pod in a subdomain: `<job>-<i>.<subdomain>:<port>` -> a free loopback port.

        One map per Job, made when its first pod starts and kept for its retries, so every worker of every
        attempt finds the others at the same addresses.
        """
        subdomain = pod.get("spec", {}).get("subdomain")
        owner = next(
            (r for r in pod["metadata"].get("ownerReferences") or [] if r.get("kind") == "Job"), None
        )
        job = self._jobs.get((pod["metadata"].get("namespace", ""), owner["name"])) if owner else None
        if not subdomain or job is None or job.get("spec", {}).get("completionMode") != "Indexed":
            return {}
        uid = job["metadata"]["uid"]
        if uid not in self._addresses:
            name, completions = job["metadata"]["name"], int(job["spec"].get("completions") or 1)
            ports = [
                int(p["containerPort"])
                for c in job["spec"]["template"]["spec"].get("containers") or []
                for p in c.get("ports") or []
            ]
            self._addresses[uid] = {
                f"{name}-{i}.{subdomain}:{port}": f"127.0.0.1:{free_port()}"
                for i in range(completions)
                for port in ports
            }
        return self._addresses[uid]

    @staticmethod
    async def _key_ref_value(
        namespace: str,
        kind: str,
        ref: JsonObj,
        load: Callable[[str, str], Awaitable[dict[str, str]]],
    ) -> str:
        """One key of a Secret or ConfigMap, as secretKeyRef and configMapKeyRef read it."""
        try:
            data = await load(namespace, ref["name"])
        except ContainerConfigError:
            if ref.get("optional"):
                return ""
            raise
        if ref["key"] not in data:
            if ref.get("optional"):
                return ""
            raise ContainerConfigError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
        return data[ref["key"]]

    async def _env_value(self, runtime: PodRuntime, var: JsonObj) -> str:
        if "valueFrom" not in var:
            return str(var.get("value", ""))
        source = var["valueFrom"]
        namespace = runtime.namespace
        if "secretKeyRef" in source:
            return await self._key_ref_value(namespace, "Secret", source["secretKeyRef"], self._secret_data)
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return await self._key_ref_value(namespace, "ConfigMap", ref, self._configmap_data)
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            meta = runtime.pod["metadata"]
            values = {
                "metadata.name": runtime.name,
                "metadata.namespace": namespace,
                "metadata.uid": runtime.uid,
                "status.podIP": runtime.ip or "",
                "status.hostIP": "127.0.0.1",
                "spec.nodeName": self.node_name,
                "spec.serviceAccountName": runtime.pod.get("spec", {}).get("serviceAccountName", "default"),
            }
            if path.startswith("metadata.labels['"):
                return str(meta.get("labels", {}).get(path[len("metadata.labels['") : -2], ""))
            if path.startswith("metadata.annotations['"):
                return str(meta.get("annotations", {}).get(path[len("metadata.annotations['") : -2], ""))
            return str(values.get(path, ""))
        if "resourceFieldRef" in source:
            return "0"
        return ""


class ApiCallError(Exception):
    """A failed API call from the kubelet."""

    def __init__(self, code: int, status: JsonObj) -> None:
        super().__init__(f"{code}: {status.get('message', status)}")
        self.code = code
        self.status = status


def _finished(job: JsonObj) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status", {}) or {}).get("conditions", []) or []
    )


def _tolerates(toleration: JsonObj, taint: JsonObj) -> bool:
    """Whether a pod toleration tolerates a node taint (Kubernetes' matching rules)."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return bool(
        toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", "")
    )


def _set_job_condition(conditions: list[JsonObj], type_: str, status: str, reason: str, message: str) -> None:
    now = _now()
    for cond in conditions:
        if cond["type"] == type_:
            if cond["status"] != status:
                cond["lastTransitionTime"] = now
            cond.update({"status": status, "reason": reason, "message": message, "lastProbeTime": now})
            return
    conditions.append(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastProbeTime": now,
            "lastTransitionTime": now,
        }
    )


def _failure_policy_action(policy: JsonObj | None, pod: JsonObj) -> tuple[str, str]:
    """The podFailurePolicy action for a failed pod (FailJob, Ignore, Count) and the controller's message."""
    if not policy:
        return "Count", ""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    namespace, name = _key(pod)
    for index, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action", "Count")
        on_codes = rule.get("onExitCodes")
        if on_codes:
            values = {int(v) for v in on_codes.get("values", [])}
            for status in statuses:
                if on_codes.get("containerName") and status.get("name") != on_codes["containerName"]:
                    continue
                code = (status.get("state", {}).get("terminated") or {}).get("exitCode")
                if code is None or code == 0:
                    continue
                matched = code in values if on_codes.get("operator", "In") == "In" else code not in values
                if matched:
                    message = (
                        f"Container {status.get('name')} for pod {namespace}/{name} "
                        f"failed with exit code {code} "
                        f"matching {action} rule at index {index}"
                    )
                    return action, message
        for wanted in rule.get("onPodConditions") or []:
            for cond in pod.get("status", {}).get("conditions") or []:
                if cond.get("type") == wanted.get("type") and cond.get("status") == wanted.get(
                    "status", "True"
                ):
                    message = (
                        f"Pod {namespace}/{name} has condition {cond['type']} "
                        f"matching {action} rule at index {index}"
                    )
                    return action, message
    return "Count", ""


def _port_free(ip: str, port: int) -> bool:
    """Whether `ip:port` can be bound (no other pod's progress server holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


def _index(pod: JsonObj) -> int | None:
    """An Indexed Job pod's completion index (its annotation), or None."""
    value = (pod.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_COMPLETION_INDEX)
    return int(value) if value is not None else None


def _index_ranges(indexes: Iterable[int]) -> str:
    """`status.completedIndexes` as the Job controller writes it: sorted, runs collapsed (`0-2,5`)."""
    ordered = sorted(set(indexes))
    parts: list[str] = []
    start = prev = None
    for i in [*ordered, None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ",".join(parts)
