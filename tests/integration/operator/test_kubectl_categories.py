"""kubectl and the TransferJob's categories: not in `kubectl get all`, listed by `kubectl get kubegraft`."""

from __future__ import annotations

from tests.harness.cluster import Cluster
from tests.integration.operator.conftest import API_VERSION, stand_in_spec


def test_get_all_leaves_transferjobs_out_and_get_kubegraft_lists_them(cluster: Cluster) -> None:
    manifest = {"apiVersion": API_VERSION, "kind": "TransferJob", "metadata": {"name": "categories"}}
    cluster.apply({**manifest, "spec": stand_in_spec()})
    everything = cluster.kubectl("get", "all", "-n", "default", "-o", "name")
    assert "transferjob" not in everything.stdout + everything.stderr
    ours = cluster.kubectl("get", "kubegraft", "-n", "default", "-o", "name")
    assert ours.stdout.split() == ["transferjob.kubegraft.io/categories"]
