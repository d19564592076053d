"""What `model.fit` needs to train under `MultiWorkerMirroredStrategy` with Keras 3 (TensorFlow backend).

`devices.configure_devices` calls `install_keras_fixes` when it makes the strategy; `stages` fits on
`distributable` datasets. Keras 3.15 fails two ways under a multi-worker strategy (keras-team/keras#20585,
tensorflow/tensorflow#72388: "Attempt to convert a value (PerReplica...)"):

1. before the first step, `_maybe_symbolic_build` hands the whole `(x, y)` batch to `strategy.reduce`, which
   takes one tensor, not a nest: `devices.build_from_one_replica` (called before every fit) builds from the
   dataset's element spec instead, as it does for uneven batches on one worker;
2. after each step, `reduce_per_replica` averages the step's metrics with `strategy.reduce("MEAN", v,
   axis=0)`, which refuses scalars: `install_keras_fixes` reduces scalars across replicas with `axis=None`.
   It changes nothing unless the strategy spans several workers.

When a worker fails (a crash, an OOM kill, a lost node), the others cannot go on: their collectives abort
within seconds (TensorFlow's coordination service misses the worker's heartbeats, or gRPC cannot reach it)
and `model.fit` raises. `lost_worker` recognises that error, so the trainer exits with
`ExitCode.WORKER_LOST` (reason WorkerLost, naming the lost worker) instead of an unexplained TrainingError;
the Job replaces every failed index, and the new pod set resumes together from the chief's last checkpoint.

The dataset rule: every worker reads the same sequence (same seed) and keeps its share
(`AutoShardPolicy.DATA`); a dataset not backed by files would fall back to that with a warning, this says it
outright.
"""

from __future__ import annotations

import re
from typing import Any

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

from kubegraft_trainer.cluster import WorkerCluster
from kubegraft_trainer.errors import WorkerLostError

_INSTALLED = False

# A task in TensorFlow's words: "/job:worker/replica:0/task:1" (or "/job:worker/task:1").
_TASK = re.compile(r"/job:worker(?:/replica:\d+)?/task:(\d+)")
# What an aborted collective or the coordination service says when a peer is gone or restarted.
_PEER_MARKERS = ("collective ops is aborted", "unhealthy", "coordination service", "heartbeat")
_DETAIL_CHARS = 240


def _rank(value: Any) -> int | None:
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    shape = getattr(value, "shape", None)
    return None if shape is None else shape.rank


def install_keras_fixes() -> None:
    """Patch Keras' TensorFlow trainer for multi-worker strategies (idempotent; see the module docstring)."""
    global _INSTALLED  # noqa: PLW0603 - a process-wide patch, installed once
    if _INSTALLED:
        return
    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: tf.distribute.Strategy, reduction: str) -> Any:
        if reduction not in ("auto", "mean") or not tf_trainer._collective_all_reduce_multi_worker(strategy):
            return original_reduce(values, strategy, reduction)

        def reduce(value: Any) -> Any:
            if not (isinstance(value, tf.distribute.DistributedValues) or tf.is_tensor(value)):
                return value
            return strategy.reduce("MEAN", value, axis=0 if _rank(value) else None)

        return tree.map_structure(reduce, values)

    tf_trainer.reduce_per_replica = reduce_per_replica
    _INSTALLED = True


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` spans several workers (processes that train together)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        strategy.extended._num_workers > 1
    )


def distributable(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with data sharding: each worker keeps its share of the same sequence of elements."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _detail(message: str) -> str:
    """The line of a TensorFlow error that says why (after "aborted by:"), else its last line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "aborted by:" in line:
            return line.split("aborted by:", 1)[1].strip()[:_DETAIL_CHARS]
    return (lines[-1] if lines else "")[:_DETAIL_CHARS]


def lost_worker(exc: BaseException, cluster: WorkerCluster) -> WorkerLostError | None:
    """The `WorkerLostError` for `exc` when it says another worker failed, else None.

    TensorFlow raises `UnavailableError` when a peer stops answering (crashed, killed, its node lost), and
    other `OpError`s (aborted, failed precondition) when it was restarted under the same address; both name
    the peer as ``/job:worker/replica:0/task:<i>``. An error with neither mark is this worker's own.

    Args:
        exc: What the run raised (its causes are looked at too).
        cluster: This worker's cluster.
    """
    for error in _chain(exc):
        if not isinstance(error, tf.errors.OpError):
            continue
        text = str(error.message)
        if not (
            isinstance(error, tf.errors.UnavailableError)
            or any(marker in text.lower() for marker in _PEER_MARKERS)
        ):
            continue
        peers = sorted({int(i) for i in _TASK.findall(text)} - {cluster.index})
        who = " and ".join(f"worker {i}" for i in peers) if peers else "another worker"
        return WorkerLostError(
            f"worker {cluster.index} of {cluster.workers} lost {who} ({type(error).__name__}: "
            f"{_detail(text)}); every worker restarts and resumes from the run's last checkpoint"
        )
    return None
