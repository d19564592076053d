"""A worker's place among several, from its pod's environment (`kubegraft_trainer.cluster`)."""

from __future__ import annotations

import json

import pytest

from kubegraft import runtime
from kubegraft_trainer.cluster import from_env
from kubegraft_trainer.errors import TrainerError

POD = {
    runtime.ENV_WORKERS: "3",
    runtime.ENV_JOB_NAME: "flowers-2",
    runtime.ENV_WORKER_SERVICE: "flowers-2",
    runtime.ENV_WORKER_PORT: "2222",
    runtime.ENV_COMPLETION_INDEX: "1",
}


def test_a_lone_trainer_has_no_cluster() -> None:
    assert from_env({}) is None
    assert from_env({runtime.ENV_WORKERS: "1", runtime.ENV_COMPLETION_INDEX: "0"}) is None


def test_every_worker_derives_the_same_cluster_from_the_job_and_service_names() -> None:
    cluster = from_env(POD)
    assert cluster is not None
    assert cluster.addresses == (
        "flowers-2-0.flowers-2:2222",
        "flowers-2-1.flowers-2:2222",
        "flowers-2-2.flowers-2:2222",
    )
    assert (cluster.index, cluster.workers, cluster.chief) == (1, 3, False)
    assert cluster.tf_config() == {
        "cluster": {"worker": list(cluster.addresses)},
        "task": {"type": "worker", "index": 1},
    }
    others = [from_env({**POD, runtime.ENV_COMPLETION_INDEX: str(i)}) for i in (0, 2)]
    assert [c.addresses for c in others if c is not None] == [cluster.addresses] * 2
    assert others[0] is not None and others[0].chief


def test_the_test_kubelet_s_stand_in_dns_maps_hostnames_to_loopback_ports() -> None:
    stand_in = {
        "flowers-2-0.flowers-2:2222": "127.0.0.1:4000",
        "flowers-2-1.flowers-2:2222": "127.0.0.1:4001",
    }
    cluster = from_env({**POD, runtime.ENV_WORKERS: "2", runtime.ENV_TEST_ADDRESSES: json.dumps(stand_in)})
    assert cluster is not None
    assert cluster.addresses == ("127.0.0.1:4000", "127.0.0.1:4001")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({runtime.ENV_COMPLETION_INDEX: None}, runtime.ENV_COMPLETION_INDEX),
        ({runtime.ENV_COMPLETION_INDEX: "3"}, runtime.ENV_COMPLETION_INDEX),
        ({runtime.ENV_WORKERS: "two"}, runtime.ENV_WORKERS),
        ({runtime.ENV_JOB_NAME: None}, runtime.ENV_JOB_NAME),
    ],
)
def test_an_incomplete_worker_environment_is_a_clear_error_naming_the_variable(
    change: dict[str, str | None], named: str
) -> None:
    env = {k: v for k, v in {**POD, **change}.items() if v is not None}
    with pytest.raises(TrainerError) as caught:
        from_env(env)
    assert named in caught.value.message
