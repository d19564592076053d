"""`kubectl create namespace|secret|configmap` (typed clients, protobuf bodies) work against the emulator."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster
from tests.harness.emulator import ApiError, decode_protobuf


def _field(number: int, value: bytes) -> bytes:
    return bytes([number << 3 | 2, len(value)]) + value


def _entry(key: str, value: bytes) -> bytes:
    return _field(1, key.encode()) + _field(2, value)


def _envelope(kind: str, raw: bytes) -> bytes:
    type_meta = _field(1, b"v1") + _field(2, kind.encode())
    return b"k8s\x00" + _field(1, type_meta) + _field(2, raw)


def test_a_protobuf_secret_decodes_to_its_json_object_with_base64_data() -> None:
    meta = _field(1, b"s3") + _field(3, b"team") + _field(11, _entry("app", b"x"))
    raw = _field(1, meta) + _field(2, _entry("key", b"\x00secret")) + _field(3, b"Opaque")
    assert decode_protobuf(_envelope("Secret", raw)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3", "namespace": "team", "labels": {"app": "x"}},
        "data": {"key": base64.b64encode(b"\x00secret").decode()},
        "type": "Opaque",
    }


def test_other_protobuf_kinds_are_refused_as_unsupported_media() -> None:
    with pytest.raises(ApiError) as caught:
        decode_protobuf(_envelope("Pod", _field(1, _field(1, b"p"))))
    assert caught.value.code == 415


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path / "cluster", start_kubelet=False) as running:
        yield running


def test_kubectl_create_namespace_secret_and_configmap(cluster: Cluster) -> None:
    cluster.kubectl("create", "namespace", "team-a")
    cluster.kubectl(
        "create", "secret", "generic", "creds", "--from-literal=AWS_ACCESS_KEY_ID=k", "-n", "team-a"
    )
    cluster.kubectl("create", "configmap", "settings", "--from-literal=mode=fast", "-n", "team-a")
    assert cluster.get("v1", "namespaces", "team-a") is not None
    secret = cluster.get("v1", "secrets", "creds", "team-a")
    assert secret is not None
    assert base64.b64decode(secret["data"]["AWS_ACCESS_KEY_ID"]) == b"k"
    configmap = cluster.get("v1", "configmaps", "settings", "team-a")
    assert configmap is not None
    assert configmap["data"] == {"mode": "fast"}
