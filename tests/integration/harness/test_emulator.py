"""The enriched emulator behaves like kube-apiserver where kopf, kubectl and the operator rely on it."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import ApiError, Cluster

TJ = "kubegraft.io/v1alpha1"


def transferjob(name: str, **dataset: Any) -> dict[str, Any]:
    """A minimal valid TransferJob manifest (dataset fields overridable)."""
    return {
        "apiVersion": TJ,
        "kind": "TransferJob",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"uri": "s3://data/flowers/", **dataset},
            "output": {"uri": "s3://models/flowers/"},
        },
    }


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One API server (no kubelet) shared by this module's tests; each test uses its own namespace."""
    with Cluster(tmp_path_factory.mktemp("api"), start_kubelet=False) as running:
        yield running


@pytest.fixture
def ns(api: Cluster, request: pytest.FixtureRequest) -> str:
    """A namespace named after the test."""
    name = request.node.name.replace("_", "-")[5:50].strip("-")
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def test_create_copies_namespace_from_url_and_sets_server_fields(api: Cluster, ns: str) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "1"}}
    created = api.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body)
    meta = created["metadata"]
    assert meta["namespace"] == ns
    assert len(meta["uid"]) == 36
    assert int(meta["resourceVersion"]) > 0
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1


def test_generate_name_is_expanded_into_distinct_names(api: Cluster, ns: str) -> None:
    body = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "demo."}, "reason": "Test"}
    names = {
        api.request("POST", f"/api/v1/namespaces/{ns}/events", body)["metadata"]["name"] for _ in range(5)
    }
    assert len(names) == 5
    assert all(n.startswith("demo.") and len(n) == len("demo.") + 5 for n in names)


def test_list_has_kind_api_version_and_resource_version(api: Cluster, ns: str) -> None:
    api.apply({**transferjob("a"), "metadata": {"name": "a", "namespace": ns}})
    listing = api.request("GET", f"/apis/{TJ}/namespaces/{ns}/transferjobs")
    assert listing["kind"] == "TransferJobList"
    assert listing["apiVersion"] == TJ
    assert int(listing["metadata"]["resourceVersion"]) >= 1
    assert [i["metadata"]["name"] for i in listing["items"]] == ["a"]


def test_generation_bumps_only_when_spec_changes(api: Cluster, ns: str) -> None:
    api.apply({**transferjob("gen"), "metadata": {"name": "gen", "namespace": ns}})
    status = api.patch(TJ, "transferjobs", "gen", {"status": {"phase": "Running"}}, ns, subresource="status")
    assert status["metadata"]["generation"] == 1
    labelled = api.patch(TJ, "transferjobs", "gen", {"metadata": {"labels": {"team": "vision"}}}, ns)
    assert labelled["metadata"]["generation"] == 1
    changed = api.patch(TJ, "transferjobs", "gen", {"spec": {"dataset": {"seed": 7}}}, ns)
    assert changed["metadata"]["generation"] == 2
    assert changed["status"] == {"phase": "Running"}  # the main resource keeps the stored status


def test_status_writes_to_main_resource_are_ignored(api: Cluster, ns: str) -> None:
    api.apply({**transferjob("st"), "metadata": {"name": "st", "namespace": ns}})
    patched = api.patch(TJ, "transferjobs", "st", {"status": {"phase": "Hacked"}}, ns)
    assert "status" not in patched


def test_admission_rejects_invalid_transferjob_with_field_path(api: Cluster, ns: str) -> None:
    manifest = {
        **transferjob("bad", validationSplit=0.5, testSplit=0.5),
        "metadata": {"name": "bad", "namespace": ns},
    }
    with pytest.raises(ApiError) as caught:
        api.apply(manifest)
    error = caught.value
    assert error.code == 422
    assert error.reason == "Invalid"
    assert error.message.startswith('TransferJob.kubegraft.io "bad" is invalid: spec.dataset.testSplit')
    assert "spec.dataset.testSplit" in [c["field"] for c in error.details["causes"]]
    assert api.get(TJ, "transferjobs", "bad", ns) is None


def test_admission_rejects_an_invalid_spec_update_and_keeps_the_old_object(api: Cluster, ns: str) -> None:
    api.apply({**transferjob("upd"), "metadata": {"name": "upd", "namespace": ns}})
    with pytest.raises(ApiError, match=r"spec\.dataset\.testSplit"):
        api.patch(TJ, "transferjobs", "upd", {"spec": {"dataset": {"testSplit": 0.95}}}, ns)
    stored = api.get(TJ, "transferjobs", "upd", ns)
    assert stored is not None
    assert stored["spec"]["dataset"]["testSplit"] == 0.15
    assert stored["metadata"]["generation"] == 1


def test_admission_stores_the_defaulted_transferjob(api: Cluster, ns: str) -> None:
    created = api.apply({**transferjob("ok"), "metadata": {"name": "ok", "namespace": ns}})
    assert created["spec"]["dataset"]["validationSplit"] == 0.15
    assert created["spec"]["model"]["backbone"] == "ResNet50"
    assert created["spec"]["runPolicy"]["backoffLimit"] == 3


def _owner_ref(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_deleting_an_owner_cascades_to_jobs_pods_and_configmaps(api: Cluster, ns: str) -> None:
    owner = api.apply({**transferjob("gc"), "metadata": {"name": "gc", "namespace": ns}})
    job = api.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "gc-1", "namespace": ns, "ownerReferences": [_owner_ref(owner)]},
            "spec": {
                "template": {"spec": {"containers": [{"name": "c", "image": "x"}], "restartPolicy": "Never"}}
            },
        }
    )
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "gc-1-abcde", "namespace": ns, "ownerReferences": [_owner_ref(job)]},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }
    )
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "gc-spec", "namespace": ns, "ownerReferences": [_owner_ref(owner)]},
        }
    )
    api.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unowned", "namespace": ns}})
    assert api.delete(TJ, "transferjobs", "gc", ns)
    api.wait_for(lambda: not api.list("v1", "pods", ns), timeout=5, message="pods collected")
    assert api.get("batch/v1", "jobs", "gc-1", ns) is None
    assert [c["metadata"]["name"] for c in api.list("v1", "configmaps", ns)] == ["unowned"]


def test_orphan_propagation_keeps_dependents_without_the_reference(api: Cluster, ns: str) -> None:
    owner = api.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": ns}}
    )
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "dep", "namespace": ns, "ownerReferences": [_owner_ref(owner)]},
        }
    )
    api.delete("v1", "configmaps", "owner", ns, propagation_policy="Orphan")
    dep = api.wait_for(
        lambda: (
            (d := api.get("v1", "configmaps", "dep", ns)) and "ownerReferences" not in d["metadata"] and d
        ),
        timeout=5,
    )
    assert dep["metadata"]["name"] == "dep"


def test_finalizers_hold_deletion_until_removed(api: Cluster, ns: str) -> None:
    api.apply({**transferjob("fin"), "metadata": {"name": "fin", "namespace": ns, "finalizers": ["x/y"]}})
    api.delete(TJ, "transferjobs", "fin", ns)
    held = api.get(TJ, "transferjobs", "fin", ns)
    assert held is not None
    assert held["metadata"]["deletionTimestamp"]
    api.patch(TJ, "transferjobs", "fin", {"metadata": {"finalizers": None}}, ns)
    assert api.get(TJ, "transferjobs", "fin", ns) is None


def test_label_and_field_selectors_filter_lists(api: Cluster, ns: str) -> None:
    for name, team in (("a", "vision"), ("b", "nlp"), ("c", "vision")):
        api.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns, "labels": {"team": team}},
            }
        )

    def names(**selectors: str) -> list[str]:
        return [c["metadata"]["name"] for c in api.list("v1", "configmaps", ns, **selectors)]

    assert names(label_selector="team=vision") == ["a", "c"]
    assert names(label_selector="team in (nlp),team!=vision") == ["b"]
    assert names(label_selector="!team") == []
    assert names(field_selector="metadata.name=b") == ["b"]


def test_stale_resource_version_on_put_is_a_conflict(api: Cluster, ns: str) -> None:
    cm = api.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cas", "namespace": ns}})
    api.patch("v1", "configmaps", "cas", {"data": {"x": "1"}}, ns)
    with pytest.raises(ApiError) as caught:
        api.request("PUT", f"/api/v1/namespaces/{ns}/configmaps/cas", {**cm, "data": {"x": "2"}})
    assert caught.value.code == 409
    assert caught.value.reason == "Conflict"


def test_json_patch_applies_operations(api: Cluster, ns: str) -> None:
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "jp", "namespace": ns},
            "data": {"a": "1"},
        }
    )
    ops = [{"op": "add", "path": "/data/b", "value": "2"}, {"op": "remove", "path": "/data/a"}]
    patched = api.patch("v1", "configmaps", "jp", ops, ns, content_type="application/json-patch+json")
    assert patched["data"] == {"b": "2"}


def test_watch_replays_from_resource_version_with_selectors(api: Cluster, ns: str) -> None:
    start = api.request("GET", f"/api/v1/namespaces/{ns}/configmaps")["metadata"]["resourceVersion"]
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "w1", "namespace": ns, "labels": {"k": "v"}},
        }
    )
    api.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w2", "namespace": ns}})
    api.delete("v1", "configmaps", "w1", ns)
    url = (
        f"{api.url}/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={start}"
        "&labelSelector=k%3Dv&timeoutSeconds=1"
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        events = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w1"),
        ("DELETED", "w1"),
    ]


def test_kubernetes_client_watch_streams_live_events(api: Cluster, ns: str) -> None:
    import kubernetes

    core = kubernetes.client.CoreV1Api(api.api_client)
    watch = kubernetes.watch.Watch()
    seen: list[tuple[str, str]] = []

    def consume() -> None:
        for event in watch.stream(core.list_namespaced_secret, ns, timeout_seconds=5):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 2:
                watch.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.3)  # let the watch connect
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s", "namespace": ns},
            "stringData": {"k": "v"},
        }
    )
    api.patch("v1", "secrets", "s", {"stringData": {"k": "w"}}, ns)
    thread.join(10)
    assert seen == [("ADDED", "s"), ("MODIFIED", "s")]
    secret = core.read_namespaced_secret("s", ns)
    assert secret.data == {"k": "dw=="}  # stringData is stored base64-encoded in data


def test_deleting_a_namespace_deletes_its_objects(api: Cluster) -> None:
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "doomed"}})
    api.apply({**transferjob("x"), "metadata": {"name": "x", "namespace": "doomed"}})
    api.delete("v1", "namespaces", "doomed")
    api.wait_for(lambda: not api.list(TJ, "transferjobs", "doomed"), timeout=5)


def test_discovery_serves_transferjob_and_kopf_peering_resources(api: Cluster) -> None:
    assert api.resource(TJ, "TransferJob") == ("transferjobs", True)
    assert api.resource("kopf.dev/v1", "ClusterKopfPeering") == ("clusterkopfpeerings", False)
    assert api.resource("kopf.dev/v1", "KopfPeering") == ("kopfpeerings", True)
    assert api.resource("coordination.k8s.io/v1", "Lease") == ("leases", True)
    group = api.request("GET", f"/apis/{TJ}")
    tj = next(r for r in group["resources"] if r["name"] == "transferjobs")
    assert tj["shortNames"] == ["tj"]
    assert "transferjobs/status" in [r["name"] for r in group["resources"]]


KUBECTL = Cluster.kubectl_path()


@pytest.mark.skipif(shutil.which(KUBECTL) is None, reason="kubectl not installed (make setup fetches it)")
def test_kubectl_applies_gets_waits_and_deletes(api: Cluster, ns: str, tmp_path: Path) -> None:
    manifest = tmp_path / "tj.json"
    manifest.write_text(json.dumps(transferjob("kc")))
    assert "created" in api.kubectl("apply", "--validate=false", "-n", ns, "-f", str(manifest)).stdout
    again = api.kubectl("apply", "--validate=false", "-n", ns, "-f", str(manifest)).stdout
    assert "unchanged" in again or "configured" in again
    table = api.kubectl("get", "tj", "-n", ns).stdout
    header = ["NAME", "PHASE", "STAGE", "EPOCH", "PROGRESS", "ETA", "VAL-ACC", "AGE"]
    assert table.splitlines()[0].split() == header
    assert "kc" in table
    as_yaml = api.kubectl("get", "tj", "kc", "-n", ns, "-o", "yaml").stdout
    assert "validationSplit: 0.15" in as_yaml
    api.patch(
        TJ,
        "transferjobs",
        "kc",
        {"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}},
        ns,
        subresource="status",
    )
    waited = api.kubectl("wait", "--for=condition=Succeeded", "tj/kc", "-n", ns, "--timeout=10s")
    assert "condition met" in waited.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(transferjob("kc-bad", validationSplit=0.6, testSplit=0.6)))
    rejected = api.kubectl("apply", "--validate=false", "-n", ns, "-f", str(bad), check=False)
    assert rejected.returncode != 0
    assert "spec.dataset.testSplit" in rejected.stderr
    api.request(
        "POST",
        f"/api/v1/namespaces/{ns}/events",
        {
            "metadata": {"generateName": "kc."},
            "involvedObject": {"kind": "TransferJob", "name": "kc", "namespace": ns},
            "reason": "Testing",
            "message": "hello from the test",
            "type": "Normal",
        },
    )
    assert "hello from the test" in api.kubectl("get", "events", "-n", ns).stdout
    assert "deleted" in api.kubectl("delete", "tj", "kc", "-n", ns).stdout
    assert api.get(TJ, "transferjobs", "kc", ns) is None


@pytest.mark.skipif(shutil.which(KUBECTL) is None, reason="kubectl not installed (make setup fetches it)")
def test_kubectl_get_watch_streams_changes(api: Cluster, ns: str) -> None:
    import subprocess

    api.apply({**transferjob("kw"), "metadata": {"name": "kw", "namespace": ns}})
    watcher = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(api.kubeconfig), "get", "tj", "-n", ns, "-w", "--request-timeout=3s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # let the watch connect
        api.patch(TJ, "transferjobs", "kw", {"status": {"phase": "Training"}}, ns, subresource="status")
        out, err = watcher.communicate(timeout=15)
    finally:
        watcher.kill()
    assert "kw" in out, err
    assert "Training" in out, err
