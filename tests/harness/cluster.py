"""A throwaway Kubernetes "cluster" on 127.0.0.1: the enriched API emulator, a kubeconfig and a test kubelet.

Who uses it: integration and e2e tests (the `cluster` fixture below), the e2e demo (`python -m
tests.harness`), and benchmarks. Everything a real cluster would be reached through is real here: an HTTP API
server (kmock's emulator, enriched by `tests.harness.emulator`, in its own process), a kubeconfig file that
kubectl, kopf and the `kubernetes` client read, and a kubelet (`tests.harness.kubelet.TestKubelet`, in a
background thread) that runs Jobs' pods as local subprocesses.

Example (a script or a test)::

    with Cluster(tmp_path, pod_env={"PATH": venv_bin}) as cluster:
        operator = cluster.start_operator()
        cluster.apply(transferjob_manifest)
        cluster.wait_for(lambda: cluster.get(API_VERSION, "transferjobs", "demo"), timeout=30)
        print(cluster.kubelet.log_path(pod_name).read_text())

Errors from the API server raise `ApiError` with the server's `Status` (code, reason, message, details).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import pytest

from tests.harness.emulator import ApiError
from tests.harness.faults import STATS_PATH, FaultPlan
from tests.harness.kubelet import ImagePredicate, TestKubelet

__all__ = ["ApiError", "Cluster", "OperatorProcess", "cluster"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OPERATOR_ARGS = ("--all-namespaces", "--verbose", "-m", "kubegraft_operator.main")
EMULATOR_START_TIMEOUT = 30.0

T = TypeVar("T")
JsonObj = dict[str, Any]


def _python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for our own Python subprocesses: the repository importable, warnings not fatal."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class OperatorProcess:
    """A `kopf run` process against the cluster, its output in a log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, args: Sequence[str]) -> None:
        self.popen = popen
        self.log_path = log_path
        self.args = list(args)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log_text(self) -> str:
        """Everything the operator printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> int:
        """SIGKILL, as a crashed or OOM-killed operator pod: no cleanup runs. Returns the exit status."""
        if self.alive:
            self.popen.kill()
        return self.popen.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, as a pod deletion: kopf stops gracefully (SIGKILL after `timeout`). Returns the status."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Block until `text` appears in the log.

        Raises:
            TimeoutError: with the log's tail when it does not appear, or the process exits first.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            if not self.alive:
                break
            time.sleep(0.1)
        raise TimeoutError(
            f"{text!r} not in the operator log (alive={self.alive}):\n{self.log_text()[-4000:]}"
        )


class Cluster:
    """The emulator, a kubeconfig, an API client and a test kubelet; a context manager.

    Args:
        workdir: where the kubeconfig, logs and pod directories go (a temporary directory in tests).
        gpus: `nvidia.com/gpu` capacity of the test node.
        pullable_images: which images the node can pull (others fail with ErrImagePull); default all.
        pod_env: environment for every pod process on top of a minimal base (e.g. {"PATH": venv_bin}).
        start_kubelet: False for tests that need only the API server.
        node_labels: extra labels of the test node (for pods' nodeSelector).
        node_taints: taints of the test node, e.g. [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}].
        namespace: the kubeconfig's default namespace.
        faults: serve the API a second time through `tests.harness.faults` with this plan; operators started
            by `start_operator` talk to that faulty port (`operator_kubeconfig`), everything else does not.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        gpus: int = 1,
        pullable_images: ImagePredicate | None = None,
        pod_env: Mapping[str, str] | None = None,
        start_kubelet: bool = True,
        namespace: str = "default",
        node_labels: Mapping[str, str] | None = None,
        node_taints: Sequence[Mapping[str, str]] | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.namespace = namespace
        self.kubeconfig = self.workdir / "kubeconfig.yaml"
        self.url = ""
        self.faults = faults
        self.faulty_url = ""
        self.operator_kubeconfig = self.kubeconfig
        self._gpus = gpus
        self._pullable_images = pullable_images
        self._pod_env = dict(pod_env or {})
        self._start_kubelet = start_kubelet
        self._node_labels = dict(node_labels or {})
        self._node_taints = [dict(t) for t in node_taints or []]
        self._emulator: subprocess.Popen[bytes] | None = None
        self._kubelet: TestKubelet | None = None
        self._api_client: Any = None
        self._operators: list[OperatorProcess] = []
        self._plurals: dict[tuple[str, str], tuple[str, bool]] = {}

    # -- lifecycle ----------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the emulator, write the kubeconfig and start the kubelet.

        Raises:
            RuntimeError: when the emulator does not come up (its log is in the message).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "emulator.url"
        ready.unlink(missing_ok=True)
        self.emulator_log = self.workdir / "emulator.log"
        with self.emulator_log.open("wb") as log:
            self._emulator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.harness.emulator",
                    "--port",
                    "0",
                    "--ready-file",
                    str(ready),
                    "--pod-logs-dir",
                    str(self.workdir / "kubelet"),
                    *(["--faults", self.faults.to_json()] if self.faults is not None else []),
                ],
                cwd=REPO_ROOT,
                env=_python_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + EMULATOR_START_TIMEOUT
        while not ready.exists():
            if self._emulator.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator did not start:\n{self.emulator_log.read_text()[-4000:]}")
            time.sleep(0.05)
        urls = ready.read_text().split()
        self.url = urls[0]
        self._write_kubeconfig(self.kubeconfig, self.url)
        if self.faults is not None:
            self.faulty_url = urls[1]
            self.operator_kubeconfig = self.workdir / "operator-kubeconfig.yaml"
            self._write_kubeconfig(self.operator_kubeconfig, self.faulty_url)
        if self._start_kubelet:
            self._kubelet = TestKubelet(
                self.url,
                self.workdir / "kubelet",
                gpus=self._gpus,
                pullable_images=self._pullable_images,
                pod_env=self._pod_env,
                node_labels=self._node_labels,
                node_taints=self._node_taints,
            )
            self._kubelet.start()

    @property
    def emulator_pid(self) -> int | None:
        """The emulator process's id while it runs (benchmarks read its CPU time)."""
        return self._emulator.pid if self._emulator is not None else None

    def stop(self) -> None:
        """Stop operators, the kubelet (killing pod processes) and the emulator. Safe to call twice."""
        for operator in self._operators:
            operator.kill()
        self._operators.clear()
        if self._kubelet is not None:
            self._kubelet.stop()
            self._kubelet = None
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        if self._emulator is not None:
            if self._emulator.poll() is None:
                self._emulator.terminate()
                try:
                    self._emulator.wait(10)
                except subprocess.TimeoutExpired:
                    self._emulator.kill()
                    self._emulator.wait()
            self._emulator = None

    def _write_kubeconfig(self, path: Path, url: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubegraft-test", "cluster": {"server": url}}],
            # A token so that clients which insist on credentials (kopf's login) find some; nothing checks it.
            "users": [{"name": "kubegraft-test", "user": {"token": "kubegraft-test-token"}}],
            "contexts": [
                {
                    "name": "kubegraft-test",
                    "context": {
                        "cluster": "kubegraft-test",
                        "user": "kubegraft-test",
                        "namespace": self.namespace,
                    },
                }
            ],
            "current-context": "kubegraft-test",
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML

    def fault_tally(self) -> JsonObj:
        """What the faulty port injected and what was created through it (`faults.FaultTally.as_json`).

        Raises:
            RuntimeError: when the cluster runs without faults.
        """
        if not self.faulty_url:
            raise RuntimeError("this cluster serves no faulty port (Cluster(faults=None))")
        with urllib.request.urlopen(self.faulty_url + STATS_PATH, timeout=30) as response:
            tally: JsonObj = json.loads(response.read())
            return tally

    # -- clients ------------------------------------------------------------------------------------------

    @property
    def kubelet(self) -> TestKubelet:
        """The test kubelet (and Job controller).

        Raises:
            RuntimeError: when the cluster was started without one.
        """
        if self._kubelet is None:
            raise RuntimeError("this cluster runs no kubelet (start_kubelet=False) or is stopped")
        return self._kubelet

    @property
    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` configured from the kubeconfig (created on first use)."""
        if self._api_client is None:
            import kubernetes

            self._api_client = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api_client

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses (kubectl, kopf, scripts) that points them at this cluster."""
        env = _python_env(extra)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60.0, kubectl: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the cluster (`.tools/bin/kubectl` when present, else the one on PATH).

        Raises:
            subprocess.CalledProcessError: with `check` and a non-zero exit (its stderr in `.stderr`).
        """
        binary = kubectl or self.kubectl_path()
        return subprocess.run(
            [binary, "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    @staticmethod
    def kubectl_path() -> str:
        """The kubectl binary: the project's 1.35 in `.tools/bin` when fetched, else the one on PATH."""
        tools = REPO_ROOT / ".tools" / "bin" / "kubectl"
        return str(tools) if tools.exists() else "kubectl"

    # -- REST ---------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call; returns the decoded JSON response.

        Raises:
            ApiError: for any non-2xx answer, with the server's Status.
        """
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                status = json.loads(raw)
            except ValueError:
                status = {"message": raw.decode(errors="replace")}
            raise ApiError(
                exc.code, status.get("reason", ""), status.get("message", ""), status.get("details")
            ) from None

    def resource(self, api_version: str, kind_or_plural: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind or plural of `api_version`, from the server's discovery.

        Raises:
            KeyError: when the server does not serve it.
        """
        key = (api_version, kind_or_plural)
        if key not in self._plurals:
            prefix = "/api/" if "/" not in api_version else "/apis/"
            for res in self.request("GET", prefix + api_version)["resources"]:
                if "/" in res["name"]:
                    continue
                value = (res["name"], bool(res["namespaced"]))
                self._plurals[(api_version, res["name"])] = value
                self._plurals[(api_version, res["kind"])] = value
        return self._plurals[key]

    def path(
        self, api_version: str, kind_or_plural: str, name: str | None = None, namespace: str | None = None
    ) -> str:
        """The URL path of a collection or object (namespaced kinds default to the cluster's namespace)."""
        plural, namespaced = self.resource(api_version, kind_or_plural)
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if namespaced and namespace != "*":
            prefix += f"/namespaces/{namespace or self.namespace}"
        return f"{prefix}/{plural}" + (f"/{name}" if name else "")

    def apply(self, manifest: Mapping[str, Any]) -> JsonObj:
        """Create the object, or merge-patch it when it exists (like `kubectl apply` without the 3-way diff).

        Raises:
            ApiError: e.g. 422 Invalid when admission rejects it (`.message` is the server's).
        """
        meta = manifest.get("metadata", {})
        namespace = meta.get("namespace")
        name = meta.get("name")
        if name:
            path = self.path(manifest["apiVersion"], manifest["kind"], name, namespace)
            try:
                body = {k: v for k, v in manifest.items() if k != "status"}
                result: JsonObj = self.request(
                    "PATCH", path, body, content_type="application/merge-patch+json"
                )
                return result
            except ApiError as exc:
                if exc.code != 404:
                    raise
        path = self.path(manifest["apiVersion"], manifest["kind"], None, namespace)
        created: JsonObj = self.request("POST", path, dict(manifest))
        return created

    def get(
        self, api_version: str, kind_plural: str, name: str, namespace: str | None = None
    ) -> JsonObj | None:
        """The object, or None when it does not exist."""
        try:
            obj: JsonObj = self.request("GET", self.path(api_version, kind_plural, name, namespace))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise
        return obj

    def list(
        self,
        api_version: str,
        kind_plural: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[JsonObj]:
        """Objects of a kind; `namespace="*"` lists all namespaces."""
        params = {
            k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v
        }
        items: list[JsonObj] = self.request(
            "GET", self.path(api_version, kind_plural, None, namespace), params=params
        )["items"]
        return items

    def patch(
        self,
        api_version: str,
        kind_plural: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        content_type: str = "application/merge-patch+json",
    ) -> JsonObj:
        """Patch an object (merge patch by default; a list with `application/json-patch+json`)."""
        path = self.path(api_version, kind_plural, name, namespace) + (
            f"/{subresource}" if subresource else ""
        )
        result: JsonObj = self.request("PATCH", path, patch, content_type=content_type)
        return result

    def delete(
        self,
        api_version: str,
        kind_plural: str,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str = "Background",
    ) -> bool:
        """Delete an object (dependents are garbage-collected); False when it did not exist."""
        try:
            self.request(
                "DELETE",
                self.path(api_version, kind_plural, name, namespace),
                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation_policy},
            )
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def events(
        self, namespace: str | None = None, *, involved_name: str | None = None
    ) -> builtins.list[JsonObj]:
        """Core `v1` Events (what kopf and `kubectl get events` use), oldest first."""
        selector = f"involvedObject.name={involved_name}" if involved_name else None
        items = self.list("v1", "events", namespace or self.namespace, field_selector=selector)
        return sorted(items, key=lambda e: int(e["metadata"].get("resourceVersion", 0)))

    @staticmethod
    def wait_for(
        predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, message: str = ""
    ) -> T:
        """Poll `predicate` until it returns something truthy; return that.

        Raises:
            TimeoutError: after `timeout` seconds, with `message` and the last value.
        """
        deadline = time.monotonic() + timeout
        value = predicate()
        while not value:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout}s waiting: {message or predicate!r}; last {value!r}"
                )
            time.sleep(interval)
            value = predicate()
        return value

    # -- operators ----------------------------------------------------------------------------------------

    def start_operator(
        self, *args: str, env: Mapping[str, str] | None = None, log_name: str | None = None
    ) -> OperatorProcess:
        """Start `python -m kopf run <args>` against this cluster (its faulty port when it has `faults`).

        Args:
            args: `kopf run` arguments; default `--all-namespaces --verbose -m kubegraft_operator.main`.
            env: extra environment for the operator process.
            log_name: file name of its log under `workdir` (default operator-<n>.log).
        """
        run_args = list(args) or list(DEFAULT_OPERATOR_ARGS)
        log_path = self.workdir / (log_name or f"operator-{len(self._operators) + 1}.log")
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", *run_args],
                cwd=REPO_ROOT,
                env={**self.env(env), "KUBECONFIG": str(self.operator_kubeconfig)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        operator = OperatorProcess(popen, log_path, run_args)
        self._operators.append(operator)
        return operator

    def diagnostics(self) -> str:
        """Logs of the emulator, operators and pods: what a failing test should print."""
        parts = [
            f"--- emulator ({self.emulator_log})\n{self.emulator_log.read_text(errors='replace')[-3000:]}"
        ]
        for operator in self._operators:
            parts.append(f"--- operator {operator.args} ({operator.log_path})\n{operator.log_text()[-6000:]}")
        if self._kubelet is not None:
            parts.append(self._kubelet.diagnostics())
        return "\n".join(parts)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh cluster per test (emulator + kubelet, pods run with this interpreter's bin/ first on PATH).

    On a failing test, the emulator, operator and pod logs are added to the report.
    """
    venv_bin = str(Path(sys.executable).parent)
    pod_env = {"PATH": os.pathsep.join((venv_bin, os.environ.get("PATH", "")))}
    with Cluster(tmp_path / "cluster", pod_env=pod_env) as running:
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used a Cluster shows the emulator, operator and pod logs in its report.

    The Cluster may be a fixture value itself or the `.cluster` of one. Each phase's report is also kept on
    the item as `rep_<phase>` (e.g. `rep_call`) for fixtures that look at the outcome in their teardown.
    """
    report = yield
    setattr(item, f"rep_{report.when}", report)
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            candidate = value if isinstance(value, Cluster) else getattr(value, "cluster", None)
            if isinstance(candidate, Cluster) and candidate.url:
                with contextlib.suppress(Exception):
                    report.sections.append((f"cluster {candidate.workdir}", candidate.diagnostics()))
    return report
