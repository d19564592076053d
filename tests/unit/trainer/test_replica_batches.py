"""Batches under several replicas: none leaves a replica without an example (`kubegraft_trainer.devices`)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kubegraft_trainer.devices import eval_batch_size, feed_every_replica, per_replica_batch


def _shares(rows: int, replicas: int) -> list[int]:
    """How tf.distribute splits a batch of ``rows``: `per_replica_batch` each, the last replica the rest."""
    share = per_replica_batch(rows, replicas)
    return [max(0, min(share, rows - i * share)) for i in range(replicas)]


def _batches(dataset: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_a_last_batch_of_one_image_is_repeated_once_per_replica_and_full_batches_pass_unchanged() -> None:
    x = np.arange(97 * 2, dtype="float32").reshape(97, 2)
    y = np.arange(97, dtype="int32")
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)

    out = _batches(feed_every_replica(batched, 2))

    assert [len(b[1]) for b in out] == [32, 32, 32, 2]
    for (bx, by), (ox, oy) in zip(_batches(batched)[:3], out[:3], strict=True):
        np.testing.assert_array_equal(ox, bx)
        np.testing.assert_array_equal(oy, by)
    last_x, last_y = out[3]
    np.testing.assert_array_equal(last_y, [96, 96])  # each replica's half is the whole batch
    np.testing.assert_array_equal(last_x, [x[96], x[96]])


@pytest.mark.parametrize(("rows", "replicas"), [(1, 2), (3, 4), (5, 4), (6, 4), (2, 8), (7, 8)])
def test_a_repeated_batch_gives_each_of_several_replicas_one_whole_copy(rows: int, replicas: int) -> None:
    x = np.arange(rows, dtype="float32")[:, None] + np.zeros((rows, 3), "float32")
    y = np.arange(rows, dtype="int32")
    assert 0 in _shares(rows, replicas)  # as given, a replica would get nothing

    ((out_x, out_y),) = _batches(feed_every_replica(tf.data.Dataset.from_tensors((x, y)), replicas))

    assert _shares(len(out_y), replicas) == [rows] * replicas
    np.testing.assert_array_equal(out_y.reshape(replicas, rows), np.tile(y, (replicas, 1)))
    np.testing.assert_array_equal(out_x, np.tile(x, (replicas, 1)))


def test_batches_that_feed_every_replica_and_one_replica_datasets_are_left_alone() -> None:
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((21, 1), "float32"), np.zeros(21, "int32")))
    assert [len(y) for _, y in _batches(feed_every_replica(dataset.batch(8), 2))] == [8, 8, 5]
    one = dataset.batch(10)
    assert feed_every_replica(one, 1) is one


@pytest.mark.parametrize(
    ("examples", "batch", "replicas", "expected"),
    [
        (20, 32, 2, 32),  # one batch of 20: 10 and 10
        (65, 32, 2, 33),  # 32 + 32 + 1 would leave a replica empty: 33 + 32
        (97, 32, 2, 33),  # 33 + 33 + 31
        (5, 32, 4, 32),  # no batching of 5 feeds 4 replicas: the batch is repeated instead
        (65, 32, 1, 32),  # one replica: as asked
        (3, 1, 2, 3),  # a batch of 1 leaves a replica empty itself: 3 in one batch (2 and 1)
    ],
)
def test_evaluation_batches_are_sized_so_that_every_replica_gets_an_example(
    examples: int, batch: int, replicas: int, expected: int
) -> None:
    size = eval_batch_size(examples, batch, replicas)

    assert size == expected
    if size != batch:
        batches = [min(size, examples - start) for start in range(0, examples, size)]
        assert all(0 not in _shares(rows, replicas) for rows in batches)
