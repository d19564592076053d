"""Which worker this process is when several train together, and the `TF_CONFIG` that says so to TensorFlow.

`kubegraft_trainer.run` calls `from_env` first thing, before any TensorFlow op: with `spec.workers` > 1 the
operator renders one Indexed Job whose pods carry `KUBEGRAFT_WORKERS`, `KUBEGRAFT_JOB_NAME`,
`KUBEGRAFT_WORKER_SERVICE`, `KUBEGRAFT_WORKER_PORT`, and the Job controller sets `JOB_COMPLETION_INDEX`.
Worker i answers at `<job>-<i>.<service>:<port>` (its hostname in the headless Service's subdomain), so every
worker derives the same cluster from its environment alone, and `model.configure_devices` makes a
`MultiWorkerMirroredStrategy` of it.

Worker 0 is the chief: it alone serves progress to the operator, writes the run's checkpoints and publishes
the model; the others train in lockstep and write their checkpoints to their own scratch (TensorFlow asks
every worker to save, and only the chief's copy is the run's).

Test only: `KUBEGRAFT_TEST_ADDRESSES` (set by the test kubelet, never in a cluster) maps those addresses to
loopback ports, since processes on one host cannot all listen on the same port.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from kubegraft.runtime import (
    ENV_COMPLETION_INDEX,
    ENV_JOB_NAME,
    ENV_TEST_ADDRESSES,
    ENV_WORKER_PORT,
    ENV_WORKER_SERVICE,
    ENV_WORKERS,
    WORKER_PORT,
    FailureReason,
)
from kubegraft_trainer.errors import TrainerError

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class WorkerCluster:
    """The workers of one run and this process's place among them.

    Attributes:
        index: This worker's index (JOB_COMPLETION_INDEX).
        addresses: ``host:port`` of every worker, by index.
    """

    index: int
    addresses: tuple[str, ...]

    @property
    def workers(self) -> int:
        """How many workers train together."""
        return len(self.addresses)

    @property
    def chief(self) -> bool:
        """Whether this is worker 0, the one that reports, checkpoints and publishes."""
        return self.index == 0

    def tf_config(self) -> dict[str, object]:
        """The `TF_CONFIG` of this worker: the cluster's workers and this task."""
        return {"cluster": {"worker": list(self.addresses)}, "task": {"type": "worker", "index": self.index}}


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise TrainerError(
                FailureReason.INVALID_SPEC, f"{name} is not set: a multi-worker pod needs it from its Job"
            )
        return default
    try:
        return int(raw)
    except ValueError:
        raise TrainerError(FailureReason.INVALID_SPEC, f"{name} must be an integer, not {raw!r}") from None


def from_env(env: Mapping[str, str] | None = None) -> WorkerCluster | None:
    """This worker's cluster from the pod's environment, or None when it trains alone.

    Raises:
        TrainerError: The multi-worker variables are incomplete or out of range (InvalidSpec).
    """
    env = os.environ if env is None else env
    workers = _int(env, ENV_WORKERS, 1)
    if workers <= 1:
        return None
    index = _int(env, ENV_COMPLETION_INDEX)
    if not 0 <= index < workers:
        raise TrainerError(
            FailureReason.INVALID_SPEC, f"{ENV_COMPLETION_INDEX}={index} is outside 0..{workers - 1}"
        )
    job, service = env.get(ENV_JOB_NAME, ""), env.get(ENV_WORKER_SERVICE, "")
    if not job or not service:
        raise TrainerError(
            FailureReason.INVALID_SPEC, f"{ENV_JOB_NAME} and {ENV_WORKER_SERVICE} name the workers"
        )
    port = _int(env, ENV_WORKER_PORT, WORKER_PORT)
    addresses = [f"{job}-{i}.{service}:{port}" for i in range(workers)]
    stand_in = env.get(ENV_TEST_ADDRESSES)
    if stand_in:
        mapping = json.loads(stand_in)
        addresses = [str(mapping.get(a, a)) for a in addresses]
    return WorkerCluster(index, tuple(addresses))


def export_tf_config(cluster: WorkerCluster) -> None:
    """Put the cluster into `TF_CONFIG`, where `MultiWorkerMirroredStrategy` reads it."""
    os.environ[TF_CONFIG] = json.dumps(cluster.tf_config())
