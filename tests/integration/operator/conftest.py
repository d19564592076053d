"""One emulator cluster and one real `kopf run` operator shared by the operator's integration tests.

Starting the operator takes seconds on these shared CPUs, so the module shares one cluster and one operator
(each test uses its own TransferJob names); a test that kills the operator leaves a fresh one behind.
Pods run `stand_in_trainer.py` (the runtime contract without TensorFlow) through KUBEGRAFT_TRAINER_COMMAND.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import Cluster, OperatorProcess
from tests.harness.ports import free_port

STAND_IN = Path(__file__).with_name("stand_in_trainer.py")
API_VERSION = "kubegraft.io/v1alpha1"
UNPULLABLE = "registry.invalid/"


def operator_process_env(metrics_port: int) -> dict[str, str]:
    """The operator's environment: the stand-in trainer as the container command, a free metrics port."""
    return {
        "KUBEGRAFT_TRAINER_COMMAND": json.dumps([sys.executable, str(STAND_IN)]),
        "KUBEGRAFT_METRICS_PORT": str(metrics_port),
    }


@dataclass
class OperatorEnv:
    """The shared cluster, the operator now running against it, and helpers the tests share."""

    cluster: Cluster
    operator: OperatorProcess
    metrics_port: int
    liveness_port: int

    def start_operator(self) -> OperatorProcess:
        """Start a (new) operator process; wait until it serves readiness."""
        self.operator = self.cluster.start_operator(
            "--standalone",
            "--all-namespaces",
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
            "-m",
            "kubegraft_operator.main",
            env=operator_process_env(self.metrics_port),
        )
        self.cluster.wait_for(lambda: self.http(f"http://127.0.0.1:{self.metrics_port}/readyz"), timeout=60)
        return self.operator

    @staticmethod
    def http(url: str) -> str | None:
        """GET a URL's body, or None when it does not answer 200."""
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text: str = response.read().decode()
                return text
        except OSError:
            return None

    def metrics(self) -> str:
        """The operator's /metrics text."""
        return self.http(f"http://127.0.0.1:{self.metrics_port}/metrics") or ""

    def apply(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Create or merge-patch TransferJob `name` in the default namespace."""
        manifest = {
            "apiVersion": API_VERSION,
            "kind": "TransferJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.cluster.apply(manifest)

    def transferjob(self, name: str) -> dict[str, Any]:
        """The TransferJob (it must exist)."""
        body = self.cluster.get(API_VERSION, "transferjobs", name)
        assert body is not None, f"TransferJob {name} is gone"
        return body

    def status(self, name: str) -> dict[str, Any]:
        """The TransferJob's status ({} before the operator wrote one)."""
        return dict(self.transferjob(name).get("status") or {})

    def wait_status(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0, what: str = ""
    ) -> dict[str, Any]:
        """Wait until the status satisfies `predicate`; return it."""
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.status(name)
            return predicate(last)

        try:
            self.cluster.wait_for(check, timeout=timeout, interval=0.25)
        except TimeoutError as exc:
            raise AssertionError(
                f"{name}: {what} not reached in {timeout}s; status {json.dumps(last)}"
            ) from exc
        return last

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        """One condition of the TransferJob's status."""
        for condition in self.status(name).get("conditions", []):
            if condition["type"] == type_:
                return dict(condition)
        raise AssertionError(f"{name} has no {type_} condition: {self.status(name)}")

    def jobs(self, name: str) -> list[dict[str, Any]]:
        """The Jobs of TransferJob `name` (the emulator ignores selectors: filtered here)."""
        return [
            j
            for j in self.cluster.list("batch/v1", "jobs")
            if j["metadata"].get("labels", {}).get("kubegraft.io/transferjob") == name
        ]

    def pods(self, name: str) -> list[dict[str, Any]]:
        """The trainer pods of TransferJob `name`."""
        return [
            p
            for p in self.cluster.list("v1", "pods")
            if p["metadata"].get("labels", {}).get("kubegraft.io/transferjob") == name
        ]

    def event_reasons(self, name: str) -> list[str]:
        """Reasons of the Events about TransferJob `name`, oldest first."""
        return [e["reason"] for e in self.cluster.events() if e.get("involvedObject", {}).get("name") == name]


def stand_in_spec(
    mode: str = "succeed", seconds: float = 0.2, epochs: int = 3, **extra: Any
) -> dict[str, Any]:
    """A TransferJob spec the stand-in trainer runs: `mode` and seconds per epoch in the dataset URI."""
    spec: dict[str, Any] = {
        "dataset": {"uri": f"file:///stand-in/{mode}/{seconds}"},
        "output": {"uri": "file:///models/stand-in"},
        "model": {"backbone": "MobileNetV2", "weights": "none"},
        "stages": [{"name": "head", "epochs": epochs}],
        "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
    }
    spec.update(extra)
    return spec


@pytest.fixture(scope="module")
def operator_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorEnv]:
    """A cluster (one GPU; images under registry.invalid/ unpullable) and a running operator."""
    venv_bin = str(Path(sys.executable).parent)
    pod_env = {"PATH": os.pathsep.join((venv_bin, os.environ.get("PATH", "")))}
    workdir = tmp_path_factory.mktemp("operator-cluster")
    with Cluster(
        workdir, gpus=1, pod_env=pod_env, pullable_images=lambda image: not image.startswith(UNPULLABLE)
    ) as cluster:
        env = OperatorEnv(cluster, None, free_port(), free_port())  # type: ignore[arg-type]
        started = time.monotonic()
        env.start_operator()
        print(f"operator ready in {time.monotonic() - started:.1f}s")
        yield env


@pytest.fixture
def op(operator_env: OperatorEnv, request: pytest.FixtureRequest) -> Iterator[OperatorEnv]:
    """The shared operator environment; its logs are added to the report of a failing test."""
    yield operator_env
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        request.node.add_report_section("call", "cluster", operator_env.cluster.diagnostics())
