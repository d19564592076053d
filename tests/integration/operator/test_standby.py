"""Two real operator replicas sharing a ClusterKopfPeering: only the working one exports TransferJobs."""

from __future__ import annotations

from tests.harness.cluster import Cluster, OperatorProcess
from tests.integration.operator.conftest import (
    API_VERSION,
    OperatorEnv,
    free_port,
    operator_process_env,
    stand_in_spec,
)

PHASE = 'kubegraft_transferjob_phase{namespace="default",phase="Succeeded",transferjob="standby"} 1.0'


def _replica(cluster: Cluster, priority: int, metrics_port: int) -> OperatorProcess:
    operator = cluster.start_operator(
        f"--priority={priority}",
        "--all-namespaces",
        "--peering=kubegraft",
        f"--liveness=http://127.0.0.1:{free_port()}/healthz",
        "-m",
        "kubegraft_operator.main",
        env=operator_process_env(metrics_port),
    )
    cluster.wait_for(lambda: OperatorEnv.http(f"http://127.0.0.1:{metrics_port}/readyz"), timeout=60)
    return operator


def test_a_replica_that_loses_the_peering_stops_exporting_and_exports_again_when_it_works(
    cluster: Cluster,
) -> None:
    cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "kubegraft"}}
    )
    low_port, high_port = free_port(), free_port()
    low = _replica(cluster, 10, low_port)

    def metrics(port: int) -> str:
        return OperatorEnv.http(f"http://127.0.0.1:{port}/metrics") or ""

    manifest = {"apiVersion": API_VERSION, "kind": "TransferJob", "metadata": {"name": "standby"}}
    cluster.apply({**manifest, "spec": stand_in_spec("succeed", 0.1, epochs=1)})
    cluster.wait_for(lambda: PHASE in metrics(low_port), timeout=60, message="the working replica exports")
    assert "kubegraft_operator_active 1.0" in metrics(low_port)

    high = _replica(cluster, 20, high_port)
    cluster.wait_for(
        lambda: 'transferjob="standby"' not in metrics(low_port),
        timeout=60,
        message=f"the paused replica drops its series; log:\n{low.log_text()[-3000:]}",
    )
    assert "kubegraft_operator_active 0.0" in metrics(low_port)
    assert 'kubegraft_transferjobs{phase="Succeeded"} 0.0' in metrics(low_port)
    cluster.wait_for(lambda: PHASE in metrics(high_port), timeout=60, message="the new leader exports")

    high.terminate()  # a graceful exit withdraws from the peering: the other replica resumes at once
    cluster.wait_for(
        lambda: PHASE in metrics(low_port),
        timeout=60,
        message=f"the resumed replica exports again; log:\n{low.log_text()[-3000:]}",
    )
    assert "kubegraft_operator_active 1.0" in metrics(low_port)
