"""Devices, distribution strategy and precision of a run; called once by `kubegraft_trainer.run.train`.

One replica per GPU under a `tf.distribute.MirroredStrategy`, with ``mixed_float16``; without GPUs float32 and
the default strategy. Two environment variables change that:

- ``KUBEGRAFT_EXPECTED_GPUS`` (the operator sets it from ``resources.gpus``): a pod that sees fewer GPUs than
  it asked for fails at once (`FailureReason.GPUS_UNAVAILABLE`, exit 78) instead of training for hours on
  fewer devices, or on the CPU.
- ``KUBEGRAFT_LOGICAL_CPUS=N`` (tests and benchmarks; no GPU visible): split the CPU into N logical devices
  and mirror over them, a real MirroredStrategy with N replicas, so every multi-replica code path runs on a
  machine without GPUs. It must be read before TensorFlow initialises its devices (the first op does), so
  `configure_devices` is the first thing a run does with TensorFlow.
- ``KUBEGRAFT_PRECISION`` (tests and benchmarks): the Keras dtype policy to train under instead of the
  default above (``float32``, ``mixed_float16`` or ``mixed_bfloat16``), e.g. ``mixed_bfloat16`` on a CPU to
  run the mixed-precision numerics (float32 softmax and loss, float32 exported outputs) without a GPU.

Batch sizes follow the Keras convention: a stage's ``batchSize`` is the global batch of one optimizer step,
split evenly across the replicas (`per_replica_batch`), so the learning rate means the same for any number of
replicas.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import keras
import tensorflow as tf

from kubegraft.runtime import ENV_EXPECTED_GPUS, FailureReason
from kubegraft_trainer.cluster import WorkerCluster, export_tf_config
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.multiworker import install_keras_fixes

__all__ = [
    "ENV_LOGICAL_CPUS",
    "ENV_PRECISION",
    "build_from_one_replica",
    "configure_devices",
    "eval_batch_size",
    "feed_every_replica",
    "per_replica_batch",
    "replica_devices",
]

log = logging.getLogger(__name__)

ENV_LOGICAL_CPUS = "KUBEGRAFT_LOGICAL_CPUS"  # tests and benchmarks: mirror over N logical CPU devices
ENV_PRECISION = "KUBEGRAFT_PRECISION"  # tests and benchmarks: the dtype policy instead of the default
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _env_count(name: str) -> int:
    """A non-negative integer from the environment (0 when unset or empty)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise TrainerError(FailureReason.INVALID_SPEC, f"${name} must be a non-negative integer, got {raw!r}")
    return value


def _precision(default: str | None) -> None:
    """Set the global dtype policy: ``$KUBEGRAFT_PRECISION`` when set, else ``default`` (None: leave it)."""
    chosen = os.environ.get(ENV_PRECISION, "").strip() or default
    if chosen is None:
        return
    if chosen not in PRECISIONS:
        raise TrainerError(
            FailureReason.INVALID_SPEC,
            f"${ENV_PRECISION} must be one of {', '.join(PRECISIONS)}, got {chosen!r}",
        )
    keras.mixed_precision.set_global_policy(chosen)


def _logical_cpus(count: int) -> list[str]:
    """Split the first physical CPU into ``count`` logical devices; their names."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as exc:  # TensorFlow already initialised its devices: keep what it has if it fits
        have = len(tf.config.list_logical_devices("CPU"))
        if have != count:
            raise TrainerError(
                FailureReason.TRAINING_ERROR,
                f"${ENV_LOGICAL_CPUS}={count} needs setting before TensorFlow starts, and it has {have} "
                f"logical CPU(s) already: {exc}",
            ) from exc
    return [device.name for device in tf.config.list_logical_devices("CPU")][:count]


def configure_devices(cluster: WorkerCluster | None = None) -> tf.distribute.Strategy:
    """Pick the distribution strategy and precision for the visible devices (and the other workers).

    With GPUs: ``mixed_float16`` and a MirroredStrategy over all of them (one replica per GPU). Without:
    float32 (the global policy is left as it is) and the default strategy, or with ``$KUBEGRAFT_LOGICAL_CPUS``
    of 2 or more a MirroredStrategy over that many logical CPU devices. ``$KUBEGRAFT_PRECISION``, when set,
    replaces the policy (on GPUs too). With several workers (``cluster``):
    a MultiWorkerMirroredStrategy over every worker's GPUs (one replica per GPU, or one per worker without),
    its ``TF_CONFIG`` exported first; it must exist before any other TensorFlow op, like logical devices.

    Args:
        cluster: This worker's place among several (`cluster.from_env`), or None to train alone.

    Returns:
        The strategy under whose scope models are built and compiled.

    Raises:
        TrainerError: The pod asked for more GPUs (``$KUBEGRAFT_EXPECTED_GPUS``) than TensorFlow sees
            (GpusUnavailable, not retried), or an environment variable is not a count.
    """
    expected = _env_count(ENV_EXPECTED_GPUS)
    logical = _env_count(ENV_LOGICAL_CPUS)
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) < expected:
        raise TrainerError(
            FailureReason.GPUS_UNAVAILABLE,
            f"the pod asked for {expected} GPU(s) (resources.gpus) but TensorFlow sees {len(gpus)}: check "
            "the node's GPU driver and device plugin, and that the image's TensorFlow is built with CUDA",
        )
    if cluster is not None:
        return _multi_worker(cluster, gpus)
    if not gpus:
        _precision(None)
        if logical >= 2:
            devices = _logical_cpus(logical)
            log.info("%d logical CPU devices: MirroredStrategy over %s", len(devices), ", ".join(devices))
            return tf.distribute.MirroredStrategy(devices)
        return tf.distribute.get_strategy()
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)
    _precision("mixed_float16")
    log.info("%d GPU(s): %s with MirroredStrategy", len(gpus), keras.mixed_precision.global_policy().name)
    return tf.distribute.MirroredStrategy()


def _multi_worker(cluster: WorkerCluster, gpus: list[Any]) -> tf.distribute.Strategy:
    """The MultiWorkerMirroredStrategy of ``cluster`` (gRPC between workers, NCCL between GPUs)."""
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)
    _precision("mixed_float16" if gpus else None)
    export_tf_config(cluster)
    install_keras_fixes()
    log.info(
        "worker %d of %d, %d GPU(s): MultiWorkerMirroredStrategy", cluster.index, cluster.workers, len(gpus)
    )
    return tf.distribute.MultiWorkerMirroredStrategy()


def per_replica_batch(global_batch: int, replicas: int) -> int:
    """Examples each replica computes per step: the global batch split evenly (the last replica may get less).

    Args:
        global_batch: A stage's ``batchSize``, the examples of one optimizer step over all replicas.
        replicas: Replicas in sync.

    Returns:
        ``ceil(global_batch / replicas)``.
    """
    return -(-global_batch // max(1, replicas))


def _feeds_every_replica(rows: int, replicas: int) -> bool:
    """Whether a batch of ``rows`` split as tf.distribute splits it (`per_replica_batch` each, the last
    replica the rest) gives every replica at least one example."""
    return rows == 0 or per_replica_batch(rows, replicas) * (replicas - 1) < rows


def feed_every_replica(dataset: tf.data.Dataset, replicas: int) -> tf.data.Dataset:
    """``dataset`` of ``(x, y)`` batches with each batch that would leave a replica no example repeated.

    tf.distribute splits a batch evenly across the replicas (`per_replica_batch` each, the last one the
    rest), so the last batch of an epoch can leave a replica empty: 1 image on 2 replicas gives 1 and 0. An
    empty batch breaks training (TensorFlow's oneDNN Conv2D returns its empty input unchanged, so the layer
    after it fails with "Incompatible shapes: [0,32,32,3] vs. [16]", and BatchNormalization's statistics of
    no examples are NaN). Such a batch is repeated ``replicas`` times instead, so that each replica
    computes the whole batch: Keras averages the replicas' mean losses, which is the batch's mean loss,
    so the step is the one a single replica takes (same gradient, same BatchNormalization statistics).
    The epoch's logged training loss and accuracy count that batch ``replicas`` times. Other batches pass
    unchanged; with one replica the dataset is returned as is.

    Args:
        dataset: Batches of ``(x, y)`` (a stage's training batches, or evaluation batches).
        replicas: Replicas in sync.

    Returns:
        The dataset whose every batch gives every replica an example.
    """
    if replicas <= 1:
        return dataset
    count = tf.constant(replicas, tf.int32)

    def fill(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        rows = tf.shape(x)[0]
        share = (rows + count - 1) // count
        times = tf.where(share * (count - 1) >= rows, count, 1)
        return _repeat_rows(x, times), _repeat_rows(y, times)

    return dataset.map(fill)


def _repeat_rows(tensor: tf.Tensor, times: tf.Tensor) -> tf.Tensor:
    """``tensor``'s rows ``times`` times over, one whole copy after the other."""
    multiples = tf.concat([[times], tf.ones([tf.rank(tensor) - 1], tf.int32)], axis=0)
    return tf.tile(tensor, multiples)


def eval_batch_size(examples: int, batch_size: int, replicas: int) -> int:
    """The evaluation batch size from ``batch_size`` up whose batches of ``examples`` feed every replica.

    Evaluation results do not depend on the batching, but a last batch smaller than the replicas need
    would leave one of them empty (`feed_every_replica`, which repeats such a batch, would count it several
    times in the metrics). This picks the first size from ``max(batch_size, replicas)`` on, over at most
    ``batch_size`` sizes, whose batches all give every replica an example; ``batch_size`` when none does
    (then `feed_every_replica` repeats the last batch) or with one replica.

    Args:
        examples: Examples in the split.
        batch_size: The stage's batch size.
        replicas: Replicas in sync.

    Returns:
        The batch size to evaluate with.
    """
    if replicas <= 1 or examples <= 0:
        return batch_size
    start = max(batch_size, replicas)
    for size in range(start, start + batch_size + 1):
        if _feeds_every_replica(size, replicas) and _feeds_every_replica(examples % size, replicas):
            return size
    return batch_size


def build_from_one_replica(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Let ``model.fit`` and ``model.evaluate`` build the model under several replicas without reading data.

    Keras 3 (3.15 at least) builds a model created under a strategy from the first batch of a fresh pass
    over the data, averaged over the replicas with ``strategy.reduce("MEAN", batch, axis=None)``. That fails
    two ways: the element-wise sum refuses replicas that got different numbers of examples ("Inputs to
    operation AddN ... must have the same size and shape"), as a validation split of 35 images does on 2
    replicas (18 and 17); and the extra pass advances a dataset that reshuffles every pass, so an N-replica
    run would train on other batch orders than a one-replica run (which builds without that pass). The build
    needs only shapes and dtypes: this gives it the dataset's element spec, and only where there is none
    (an input Keras does not turn into a dataset) the first replica's part of a batch. Nothing changes with
    one replica, or on a Keras without that method.

    Args:
        model: A model built under ``strategy``'s scope, about to be fitted or evaluated.
        strategy: The run's strategy.
    """
    if strategy.num_replicas_in_sync == 1 or not hasattr(model, "_symbolic_build"):
        return

    def first_replica(value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def build(iterator: Any = None, data_batch: Any = None) -> None:
        if data_batch is None and iterator is not None:
            data_batch = _element_spec(iterator)
        if data_batch is None and iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(first_replica, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = build


def _element_spec(iterator: Any) -> Any:
    """The (x, y[, weights]) TensorSpecs of a Keras epoch iterator's dataset, or None if it has none."""
    adapter = getattr(iterator, "data_adapter", None)
    try:
        dataset = adapter.get_tf_dataset() if adapter is not None else None
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None
    return dataset.element_spec if isinstance(dataset, tf.data.Dataset) else None


def replica_devices(strategy: tf.distribute.Strategy) -> list[str]:
    """The devices the replicas run on (the default strategy: the one TensorFlow places ops on)."""
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list
        gpus = tf.config.list_logical_devices("GPU")
        return [(gpus or tf.config.list_logical_devices("CPU"))[0].name]
