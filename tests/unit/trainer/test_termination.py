"""SIGTERM becomes `TerminationRequested` in the main thread, after any checkpoint save in progress."""

from __future__ import annotations

import os
import signal

import pytest

from kubegraft_trainer.termination import TerminationRequested, on_sigterm, shielded


def test_sigterm_raises_termination_requested_inside_and_restores_the_previous_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TerminationRequested), on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_during_a_shielded_save_is_raised_once_the_save_ends() -> None:
    finished = False
    with pytest.raises(TerminationRequested), on_sigterm():
        with shielded():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            finished = True
        pytest.fail("TerminationRequested was not raised after the shielded block")
    assert finished


def test_not_an_exception_so_broad_fallbacks_do_not_swallow_it() -> None:
    assert not issubclass(TerminationRequested, Exception)
