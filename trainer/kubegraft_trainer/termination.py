"""SIGTERM (node drain, preemption, pod deletion): stop at once and exit so the retried pod resumes.

Kubernetes sends SIGTERM and kills the container after the pod's ``terminationGracePeriodSeconds``.
`on_sigterm` (entered by `kubegraft_trainer.run.main`) turns the signal into `TerminationRequested`, raised
in the main thread at its next Python instruction: during ``fit`` that is the next batch boundary (a
training step is one call into TensorFlow). Training already checkpoints after every epoch
(`kubegraft_trainer.checkpoints`), so what the retry resumes from is in storage by then; the epoch in
progress is redone. A checkpoint being written when the signal comes is finished first (`shielded`), so the
last save is never cut short. `main` reports the termination and exits with `ExitCode.TERMINATED` (143, what
a shell reports for a process killed by SIGTERM) within seconds, well inside the default 30 s.

`TerminationRequested` derives from `BaseException`, like `KeyboardInterrupt`: the ``except Exception``
fallbacks in storage and elsewhere do not swallow it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["TerminationRequested", "on_sigterm", "shielded"]


class TerminationRequested(BaseException):
    """SIGTERM arrived: the run stops and the process exits for a retry to resume."""


_state = threading.local()
_pending = threading.Event()
_raised = threading.Event()


def _depth() -> int:
    return int(getattr(_state, "depth", 0))


def _handler(signum: int, frame: FrameType | None) -> None:
    if _raised.is_set():
        return  # already stopping: a second SIGTERM must not interrupt the shutdown
    if _depth():
        _pending.set()  # raised when the shielded block (a checkpoint save) ends
        return
    _raised.set()
    raise TerminationRequested


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A block SIGTERM does not interrupt (a checkpoint save); the termination is raised after it."""
    _state.depth = _depth() + 1
    try:
        yield
    finally:
        _state.depth = _depth() - 1
        if not _depth() and _pending.is_set() and not _raised.is_set():
            _pending.clear()
            if threading.current_thread() is threading.main_thread():
                _raised.set()
                raise TerminationRequested


@contextlib.contextmanager
def on_sigterm() -> Iterator[None]:
    """While inside, SIGTERM raises `TerminationRequested` in the main thread (elsewhere: does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: Any = signal.signal(signal.SIGTERM, _handler)
    _pending.clear()
    _raised.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
