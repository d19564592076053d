"""End-to-end fixtures: one cluster (emulator + kubelet), one real operator and one S3 for the whole e2e tier.

Everything is real except the Kubernetes API server and kubelet, which the harness emulates: SeaweedFS serves
S3, `kopf run -m kubegraft_operator.main` runs as its own process, and each training pod is `kubegraft train`
as a local subprocess reading its spec from the ConfigMap volume and its keys from the Secret.

Starting all of that and training costs minutes on two cores, so the session shares one `E2E` environment:
the data set (Fashion-MNIST classes 0-4, 100 train images per class, `fashion_transfer`) and the pretrained
backbone (`pretrained_backbone`) are uploaded once, and each test applies its own TransferJob with its own
name and output prefix.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import Cluster, OperatorProcess
from tests.harness.fashion import FashionTransfer
from tests.harness.ports import free_port
from tests.harness.s3 import SeaweedFS, bucket_name
from tests.harness.transfer import TransferInputs, stage_inputs

NAMESPACE = "e2e"
SECRET = "s3-credentials"
OPERATOR_START_TIMEOUT = 90.0


@dataclass
class E2E:
    """The shared end-to-end environment."""

    cluster: Cluster
    operator: OperatorProcess
    metrics_url: str
    s3: SeaweedFS
    inputs: TransferInputs
    data: FashionTransfer
    namespace: str = NAMESPACE

    def transferjob(
        self,
        name: str,
        *,
        dataset_uri: str | None = None,
        stages: list[dict[str, Any]] | None = None,
        backoff_limit: int = 2,
        augment: bool = True,
    ) -> dict[str, Any]:
        """A TransferJob for the shared data set and backbone, publishing to ``models/<name>/``.

        Args:
            name: metadata.name (also the output prefix, so that tests never share a model repository).
            dataset_uri: another data set; default the shared one.
            stages: the stages; default a 3-epoch head stage and a 2-epoch fine-tune of the whole network.
            backoff_limit: runPolicy.backoffLimit.
            augment: random horizontal flips. They also make the head stage train through the frozen backbone
                (no cached features), so it lasts long enough for the operator's progress polls (every second
                here) to show it in the status.
        """
        return {
            "apiVersion": "kubegraft.io/v1alpha1",
            "kind": "TransferJob",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "dataset": {"uri": dataset_uri or self.inputs.dataset_uri, "imageSize": 32, "seed": 42},
                "model": {
                    "backbone": "MobileNetV2",
                    "weights": self.inputs.weights_uri,
                    "head": {"hidden": [64], "dropout": 0.2},
                },
                "stages": stages
                or [
                    {"name": "head", "trainable": 0, "epochs": 3, "learningRate": 0.003},
                    {"name": "finetune", "trainable": "all", "epochs": 2, "learningRate": 0.0003},
                ],
                "augmentation": {"horizontalFlip": augment},
                "output": {"uri": f"s3://{self.inputs.bucket}/models/{name}/"},
                "storage": {
                    "endpoint": self.s3.endpoint,
                    "region": "us-east-1",
                    "addressingStyle": "path",
                    "secretRef": {"name": SECRET},
                },
                "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
                "runPolicy": {"backoffLimit": backoff_limit},
            },
        }

    def pods(self, transferjob: str) -> list[dict[str, Any]]:
        """The trainer pods of a TransferJob, oldest first."""
        pods = self.cluster.list(
            "v1", "pods", self.namespace, label_selector=f"kubegraft.io/transferjob={transferjob}"
        )
        return sorted(pods, key=lambda p: int(p["metadata"].get("resourceVersion", 0)))

    def jobs(self, transferjob: str) -> list[dict[str, Any]]:
        """The Jobs of a TransferJob."""
        return self.cluster.list(
            "batch/v1", "jobs", self.namespace, label_selector=f"kubegraft.io/transferjob={transferjob}"
        )

    def operator_metrics(self) -> str:
        """The operator's /metrics text."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text: str = response.read().decode()
        return text


def _wait_for_metrics(operator: OperatorProcess, url: str) -> None:
    deadline = time.monotonic() + OPERATOR_START_TIMEOUT
    while time.monotonic() < deadline:
        if not operator.alive:
            raise RuntimeError(f"the operator exited at start:\n{operator.log_text()[-4000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
            return
        time.sleep(0.3)
    raise RuntimeError(f"the operator served no /metrics in {OPERATOR_START_TIMEOUT:.0f} s")


@pytest.fixture(scope="session")
def e2e(
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: SeaweedFS,
    fashion_transfer: FashionTransfer,
    pretrained_backbone: Path,
) -> Iterator[E2E]:
    """S3 with the data set and backbone, a cluster with the e2e namespace and Secret, a running operator."""
    bucket = s3_server.create_bucket(bucket_name("e2e"))
    inputs = stage_inputs(
        s3_server.client(),
        bucket,
        "fashion",
        fashion_transfer.train,
        pretrained_backbone,
        create_bucket=False,
    )
    venv_bin = str(Path(sys.executable).parent)
    pod_env = {"PATH": os.pathsep.join((venv_bin, os.environ.get("PATH", "")))}
    with Cluster(tmp_path_factory.mktemp("e2e-cluster"), pod_env=pod_env) as cluster:
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SECRET, "namespace": NAMESPACE},
                "stringData": {
                    "AWS_ACCESS_KEY_ID": s3_server.access_key,
                    "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                },
            }
        )
        port = free_port()
        # Progress polls every second: the trainer's epochs on this tiny data set can take under a second.
        operator = cluster.start_operator(
            env={"KUBEGRAFT_METRICS_PORT": str(port), "KUBEGRAFT_PROGRESS_INTERVAL": "1"}
        )
        url = f"http://127.0.0.1:{port}/metrics"
        _wait_for_metrics(operator, url)
        yield E2E(cluster, operator, url, s3_server, inputs, fashion_transfer)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed e2e test shows the emulator, operator and pod logs of the shared cluster."""
    report = yield
    if report.failed:
        env = getattr(item, "funcargs", {}).get("e2e")
        if isinstance(env, E2E):
            with contextlib.suppress(Exception):
                report.sections.append(("e2e cluster", env.cluster.diagnostics()))
    return report
