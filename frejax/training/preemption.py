"""Preemption: the train loop saves and stops at the same step on every host."""

from __future__ import annotations

import signal
import threading
from typing import Self

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Tells the train loop when to save and stop because the job is preempted.

    One process: a SIGTERM handler sets a flag, read after each step. Several
    processes: JAX's preemption sync point (its notifier handles SIGTERM), so
    every host stops at the same step even though each got the notice at a
    different one; it must be asked at every step, from the same first step.
    Use as a context manager: the previous SIGTERM handler comes back on exit.
    """

    def __init__(self):
        self._received = threading.Event()
        self._previous = None

    def __enter__(self) -> Self:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self._received.set()  # only a flag: the loop saves at the end of its step

    def reached(self, step: int) -> bool:
        """True once the job should save ``step`` and stop."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._received.is_set()
