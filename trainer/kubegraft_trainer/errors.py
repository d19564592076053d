"""Domain errors of the trainer: a `FailureReason`, a one-sentence message, and whether a retry can help.

Every module of the trainer raises `TrainerError` for failures that the user or the operator must see; the
entry point turns it into the termination message and the process exit code (`ExitCode`). Messages are shown
in the TransferJob's status, so they never hold credentials.
"""

from __future__ import annotations

from kubegraft.runtime import ExitCode, FailureReason

__all__ = ["FailureReason", "TrainerError", "WorkerLostError"]


class TrainerError(Exception):
    """A failure the trainer reports: reason (a `FailureReason`), message, and whether retrying may help.

    Args:
        reason: A `kubegraft.runtime.FailureReason` constant, e.g. ``FailureReason.DATASET_NOT_FOUND``.
        message: One human sentence; never holds secrets.
        retryable: True for infrastructure trouble (timeouts, throttling) that a new pod may not meet.
    """

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.retryable = retryable

    @property
    def exit_code(self) -> ExitCode:
        """The process exit code: `ExitCode.RETRYABLE` if a retry may help, else `ExitCode.INVALID`."""
        return ExitCode.RETRYABLE if self.retryable else ExitCode.INVALID

    def __reduce__(self) -> tuple[object, ...]:
        # Keeps the keyword-only flag when the error crosses a process or thread boundary by pickling.
        return (_rebuild, (self.reason, self.message, self.retryable))


def _rebuild(reason: str, message: str, retryable: bool) -> TrainerError:
    return TrainerError(reason, message, retryable=retryable)


class WorkerLostError(TrainerError):
    """Another worker of a multi-worker run failed, and this one stopped with it (reason WorkerLost).

    Retryable, with its own exit code (`ExitCode.WORKER_LOST`) that the Job's podFailurePolicy ignores: the
    retry is charged to the worker that failed, not to every worker it took down.
    """

    def __init__(self, message: str) -> None:
        super().__init__(FailureReason.WORKER_LOST, message, retryable=True)

    @property
    def exit_code(self) -> ExitCode:
        """`ExitCode.WORKER_LOST`."""
        return ExitCode.WORKER_LOST

    def __reduce__(self) -> tuple[object, ...]:
        return (WorkerLostError, (self.message,))
