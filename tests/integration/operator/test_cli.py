"""`kubegraft operator` (the CLI entry point the chart runs) starts a working operator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness.cluster import REPO_ROOT, Cluster
from tests.integration.operator.conftest import (
    API_VERSION,
    OperatorEnv,
    free_port,
    operator_process_env,
    stand_in_spec,
)


def test_kubegraft_operator_command_serves_readiness_metrics_creates_jobs_and_enforces_allowed_images(
    cluster: Cluster, tmp_path: Path
) -> None:
    metrics_port, liveness_port = free_port(), free_port()
    env = cluster.env(operator_process_env(metrics_port))
    kubegraft = str(Path(sys.executable).with_name("kubegraft"))
    args = [kubegraft, "operator", "--standalone", "--all-namespaces", "--metrics-port", str(metrics_port)]
    args.append(f"--liveness=http://127.0.0.1:{liveness_port}/healthz")
    args += ["--allowed-image", "registry.example.com/ml/*"]
    with (tmp_path / "operator.log").open("wb") as log:
        process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        cluster.wait_for(lambda: OperatorEnv.http(f"http://127.0.0.1:{metrics_port}/readyz"), timeout=60)
        assert OperatorEnv.http(f"http://127.0.0.1:{liveness_port}/healthz") is not None
        manifest = {"apiVersion": API_VERSION, "kind": "TransferJob", "metadata": {"name": "cli"}}
        cluster.apply({**manifest, "spec": stand_in_spec("succeed", 0.1, epochs=1)})
        cluster.wait_for(lambda: cluster.get("batch/v1", "jobs", "cli-1"), timeout=30)
        metrics = OperatorEnv.http(f"http://127.0.0.1:{metrics_port}/metrics") or ""
        assert "kubegraft_runs_started_total 1.0" in metrics
        # An image outside --allowed-image: no Job, a Failed status naming image and setting, an Event.
        refused = {**manifest, "metadata": {"name": "cli-refused"}}
        cluster.apply({**refused, "spec": stand_in_spec("succeed", 0.1, epochs=1, image="evil.io/miner:1")})

        def failed() -> dict[str, Any] | None:
            body = cluster.get(API_VERSION, "transferjobs", "cli-refused") or {}
            status = body.get("status") or {}
            return status if status.get("phase") == "Failed" else None

        status = cluster.wait_for(failed, timeout=30)
        condition = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert condition["reason"] == "ImageNotAllowed"
        assert "evil.io/miner:1" in condition["message"]
        assert "KUBEGRAFT_ALLOWED_IMAGES" in condition["message"]
        assert cluster.get("batch/v1", "jobs", "cli-refused-1") is None
        reasons = [e["reason"] for e in cluster.events() if e["involvedObject"]["name"] == "cli-refused"]
        assert "ImageNotAllowed" in reasons
    finally:
        process.kill()
        process.wait()
