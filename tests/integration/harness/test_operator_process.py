"""A real `kopf run` process works against the emulator (with a throwaway operator, not kubegraft's)."""

from __future__ import annotations

from tests.harness.cluster import Cluster

TJ = "kubegraft.io/v1alpha1"
TOY = ("--standalone", "--all-namespaces", "--verbose", "-m", "tests.integration.harness.toy_operator")


def test_kopf_operator_reacts_to_a_transferjob_and_its_children_are_collected(cluster: Cluster) -> None:
    operator = cluster.start_operator(*TOY)
    cluster.apply(
        {
            "apiVersion": TJ,
            "kind": "TransferJob",
            "metadata": {"name": "toy"},
            "spec": {"dataset": {"uri": "s3://data/x/"}, "output": {"uri": "s3://models/x/"}},
        }
    )
    tj = cluster.wait_for(
        lambda: (
            (obj := cluster.get(TJ, "transferjobs", "toy")) and obj.get("status", {}).get("phase") and obj
        ),
        timeout=30,
        message=f"the toy operator's status; log:\n{operator.log_text()[-2000:]}",
    )
    assert tj["status"]["phase"] == "Ready"
    configmap = cluster.get("v1", "configmaps", "toy-toy")
    assert configmap is not None
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == tj["metadata"]["uid"]
    assert configmap["data"] == {"backbone": "ResNet50"}  # the operator saw the defaulted spec
    assert any("toy operator handled toy" in e.get("message", "") for e in cluster.events())
    cluster.delete(TJ, "transferjobs", "toy")
    cluster.wait_for(lambda: cluster.get("v1", "configmaps", "toy-toy") is None, timeout=10)
    assert operator.kill() == -9
    assert "Handler 'create_fn' succeeded" in operator.log_text()


def test_kopf_peering_lets_one_of_two_operators_work_and_the_other_take_over(cluster: Cluster) -> None:
    cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "default"}}
    )
    env = {"TOY_PEERING_LIFETIME": "3"}
    peering = ("--all-namespaces", "--peering=default", "-m", "tests.integration.harness.toy_operator")
    low = cluster.start_operator("--priority=10", *peering, env=env)
    high = cluster.start_operator("--priority=20", *peering, env=env)

    def peers() -> int:
        obj = cluster.get("kopf.dev/v1", "clusterkopfpeerings", "default") or {}
        return len(obj.get("status") or {})

    cluster.wait_for(lambda: peers() == 2, timeout=30, message="both operators announce themselves")
    cluster.apply(toy_transferjob("first"))
    cluster.wait_for(lambda: phase(cluster, "first"), timeout=30)
    assert "toy operator handled first" in high.log_text()
    assert "toy operator handled first" not in low.log_text()
    high.kill()
    cluster.apply(toy_transferjob("second"))
    cluster.wait_for(lambda: phase(cluster, "second"), timeout=30, message="the low-priority peer takes over")
    assert "toy operator handled second" in low.log_text()


def toy_transferjob(name: str) -> dict[str, object]:
    """A minimal valid TransferJob."""
    return {
        "apiVersion": TJ,
        "kind": "TransferJob",
        "metadata": {"name": name},
        "spec": {"dataset": {"uri": "s3://data/x/"}, "output": {"uri": "s3://models/x/"}},
    }


def phase(cluster: Cluster, name: str) -> str:
    """The TransferJob's status.phase ("" before the operator wrote one)."""
    obj = cluster.get(TJ, "transferjobs", name) or {}
    return str((obj.get("status") or {}).get("phase", ""))
