"""Sharing one GPU between several evaluation workers without spoiling the timings.

A candidate spends most of its evaluation compiling (ptxas and Triton's passes run on the CPU) and
verifying; only the timing needs the GPU to itself. So several workers share a GPU: compile and
verification may overlap (a *shared* hold), timing, baseline included, may not (an *exclusive* hold).

The gate is two ``flock`` files per GPU, the classic fair readers-writer pair: everyone passes a
turnstile first, and a timer keeps it closed while it waits for the verifiers in flight to finish,
so a stream of verifications cannot starve the timings. ``flock`` locks belong to the open file and
the kernel drops them when the process dies, so a worker SIGKILLed mid-timing (hung kernel, job
timeout) never leaves the GPU locked. ``KEVOLVE_GPU_GATE`` (set by the pool for each worker) names
the files; without it the gate does nothing (one worker per GPU, Ray tasks, in-process use).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator

ENV = "KEVOLVE_GPU_GATE"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no gate, one worker per GPU is still correct
    fcntl = None  # type: ignore[assignment]


class NullGate:
    """No sharing: every hold is free."""

    path: str | None = None
    #: called with "wait" when a hold has to wait for another worker and "go" once it has the gate:
    #: the pool stops a job's time-limit clock meanwhile (the holder's own clock is the one running).
    notify: Callable[[str], None] | None = None

    @contextlib.contextmanager
    def shared(self) -> Iterator[float]:
        yield 0.0

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[float]:
        yield 0.0


class GpuGate(NullGate):
    """Readers-writer lock over ``<path>.turn`` and ``<path>.data``. Each hold yields how long it
    waited (seconds), which the evaluator reports so queueing shows up in the diagnostics."""

    def __init__(self, path: str) -> None:
        if fcntl is None:
            raise RuntimeError("GpuGate needs fcntl (POSIX)")
        self.path = path
        self._turn = os.open(path + ".turn", os.O_RDWR | os.O_CREAT, 0o600)
        self._data = os.open(path + ".data", os.O_RDWR | os.O_CREAT, 0o600)
        self.waited_s = 0.0  # total, for logs and tests

    def _lock(self, fd: int, how: int, state: list[bool]) -> None:
        """flock, telling ``notify`` first when it would block (once per hold)."""
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not state[0] and self.notify is not None:
            state[0] = True
            self.notify("wait")
        fcntl.flock(fd, how)

    def _went(self, state: list[bool]) -> None:
        if state[0] and self.notify is not None:
            self.notify("go")

    @contextlib.contextmanager
    def shared(self) -> Iterator[float]:
        t0 = time.monotonic()
        state = [False]
        self._lock(self._turn, fcntl.LOCK_EX, state)
        try:
            self._lock(self._data, fcntl.LOCK_SH, state)
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)
        self._went(state)
        waited = time.monotonic() - t0
        self.waited_s += waited
        try:
            yield waited
        finally:
            fcntl.flock(self._data, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[float]:
        t0 = time.monotonic()
        state = [False]
        self._lock(self._turn, fcntl.LOCK_EX, state)
        try:
            self._lock(self._data, fcntl.LOCK_EX, state)
        except BaseException:
            fcntl.flock(self._turn, fcntl.LOCK_UN)
            raise
        self._went(state)
        waited = time.monotonic() - t0
        self.waited_s += waited
        try:
            yield waited
        finally:
            fcntl.flock(self._data, fcntl.LOCK_UN)
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self._turn, self._data):
            with contextlib.suppress(OSError):
                os.close(fd)


_PROCESS_GATE: NullGate | None = None


def process_gate() -> NullGate:
    """This process's gate, from ``KEVOLVE_GPU_GATE`` (one per process, opened once)."""
    global _PROCESS_GATE
    path = os.environ.get(ENV)
    if _PROCESS_GATE is None or _PROCESS_GATE.path != path:
        _PROCESS_GATE = GpuGate(path) if path and fcntl is not None else NullGate()
    return _PROCESS_GATE


__all__ = ["ENV", "GpuGate", "NullGate", "process_gate"]
