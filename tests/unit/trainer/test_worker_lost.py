"""A worker whose peer failed says which one, and exits with the code the Job's podFailurePolicy ignores."""

from __future__ import annotations

import pickle

import tensorflow as tf

from kubegraft.runtime import ExitCode, FailureReason
from kubegraft_trainer.cluster import WorkerCluster
from kubegraft_trainer.errors import TrainerError, WorkerLostError
from kubegraft_trainer.multiworker import lost_worker

CHIEF = WorkerCluster(0, ("a:2222", "b:2222"))
SECOND = WorkerCluster(1, ("a:2222", "b:2222"))
# What TensorFlow 2.21 raised in the chief when worker 1 was SIGKILLed mid-epoch (trimmed).
HEARTBEATS = (
    "Graph execution error:\n\nDetected at node CollectiveReduceV2 defined at (most recent call last):\n"
    "Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are unhealthy "
    "(stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.\n"
)
# ... and in worker 1 when the chief was.
REFUSED = (
    "Graph execution error:\n\nCollective ops is aborted by: failed to connect to all addresses; last error: "
    "UNKNOWN: ipv4:127.0.0.1:59089: Failed to connect to remote host: Connection refused\n"
    "Additional GRPC error information from remote target /job:worker/replica:0/task:0 while calling "
    "/tensorflow.WorkerService/CompleteInstance:\n"
)


def test_the_chief_names_the_worker_whose_heartbeats_stopped_and_exits_75() -> None:
    lost = lost_worker(tf.errors.UnavailableError(None, None, HEARTBEATS), CHIEF)
    assert isinstance(lost, WorkerLostError)
    assert (lost.reason, lost.exit_code, lost.retryable) == (
        FailureReason.WORKER_LOST,
        ExitCode.WORKER_LOST,
        True,
    )
    assert lost.message.startswith("worker 0 of 2 lost worker 1 (UnavailableError: Error reported from")
    assert lost.message.endswith("every worker restarts and resumes from the run's last checkpoint")


def test_a_worker_names_the_chief_it_can_no_longer_reach() -> None:
    lost = lost_worker(tf.errors.UnavailableError(None, None, REFUSED), SECOND)
    assert lost is not None
    assert "lost worker 0 (UnavailableError: failed to connect to all addresses" in lost.message


def test_a_peer_restarted_under_its_address_is_found_behind_keras_wrapping() -> None:
    cause = tf.errors.FailedPreconditionError(
        None, None, "Collective ops is aborted by: /job:worker/task:1 restarted"
    )
    try:
        try:
            raise cause
        except tf.errors.OpError as exc:
            raise RuntimeError("fit failed") from exc
    except RuntimeError as wrapped:
        lost = lost_worker(wrapped, CHIEF)
    assert lost is not None and "lost worker 1 (FailedPreconditionError" in lost.message


def test_errors_of_the_worker_itself_are_not_blamed_on_a_peer() -> None:
    assert (
        lost_worker(tf.errors.InvalidArgumentError(None, None, "Incompatible shapes: [8,5] vs. [8,3]"), CHIEF)
        is None
    )
    assert (
        lost_worker(
            tf.errors.FailedPreconditionError(None, None, "Could not find variable dense/kernel"), CHIEF
        )
        is None
    )
    assert lost_worker(TrainerError(FailureReason.DATASET_EMPTY, "no images"), CHIEF) is None
    assert lost_worker(ValueError("bad"), CHIEF) is None


def test_the_error_keeps_its_exit_code_across_processes() -> None:
    copy = pickle.loads(pickle.dumps(WorkerLostError("worker 0 of 2 lost worker 1")))
    assert isinstance(copy, WorkerLostError) and copy.exit_code == ExitCode.WORKER_LOST
