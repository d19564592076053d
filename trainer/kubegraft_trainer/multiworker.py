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

The dataset rule: every worker reads the same sequence (same seed) and keeps its share
(`AutoShardPolicy.DATA`); a dataset not backed by files would fall back to that with a warning, this says it
outright.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

_INSTALLED = False


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


def array_dataset(x: Any, y: Any, batch_size: int, *, shuffle: bool, seed: int) -> tf.data.Dataset:
    """A batched dataset of in-memory arrays for a multi-worker fit (shuffled alike on every worker)."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return distributable(dataset.batch(batch_size))
