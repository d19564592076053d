"""`kubegraft operator` (the CLI entry point the chart runs) starts a working operator."""

from __future__ import annotations

import base64
import json
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


def test_operator_json_logs_are_one_object_per_line_and_hold_no_secret_values(
    cluster: Cluster, tmp_path: Path
) -> None:
    secret_value = "wJalrXUtnFEMI-kubegraft-log-sentinel"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-credentials", "namespace": "default"},
            "data": {
                "AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIAKUBEGRAFTSENTINEL").decode(),
                "AWS_SECRET_ACCESS_KEY": base64.b64encode(secret_value.encode()).decode(),
            },
        }
    )
    metrics_port, liveness_port = free_port(), free_port()
    env = cluster.env(operator_process_env(metrics_port))
    kubegraft = str(Path(sys.executable).with_name("kubegraft"))
    args = [kubegraft, "operator", "--standalone", "--all-namespaces", "--metrics-port", str(metrics_port)]
    args += [f"--liveness=http://127.0.0.1:{liveness_port}/healthz", "--log-format", "json", "--verbose"]
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        cluster.wait_for(lambda: OperatorEnv.http(f"http://127.0.0.1:{metrics_port}/readyz"), timeout=60)
        manifest = {"apiVersion": API_VERSION, "kind": "TransferJob", "metadata": {"name": "json-logs"}}
        storage = {"secretRef": {"name": "s3-credentials"}, "endpoint": "http://127.0.0.1:1"}
        cluster.apply({**manifest, "spec": stand_in_spec("succeed", 0.1, epochs=1, storage=storage)})
        # A run that fails (exit 78): its warnings and Events go through the same JSON formatter.
        broken = {"apiVersion": API_VERSION, "kind": "TransferJob", "metadata": {"name": "json-logs-broken"}}
        cluster.apply({**broken, "spec": stand_in_spec("invalid", 0.1, epochs=1)})

        def finished() -> bool:
            phases = [
                ((cluster.get(API_VERSION, "transferjobs", name) or {}).get("status") or {}).get("phase")
                for name in ("json-logs", "json-logs-broken")
            ]
            return phases == ["Succeeded", "Failed"]

        cluster.wait_for(finished, timeout=60)
    finally:
        process.terminate()  # the shutdown lines are logged too
        process.wait(timeout=30)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) and r["message"] and r["severity"] for r in records)
    assert {r["object"]["name"] for r in records if "object" in r} >= {"json-logs", "json-logs-broken"}
    messages = [r["message"] for r in records]
    assert any(m.startswith("kubegraft operator: trainer image") for m in messages)  # startup
    assert any("SIGTERM" in m for m in messages)  # and shutdown
    text = log_path.read_text()
    assert secret_value not in text and "AKIAKUBEGRAFTSENTINEL" not in text
