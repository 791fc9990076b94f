"""A small pool of long-lived evaluation worker processes (multiprocessing *spawn*).

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot kill one hung worker, and a worker
that dies breaks the whole executor. Here each worker has its own Pipe; the parent waits on all
pipes and process sentinels with ``multiprocessing.connection.wait`` and handles each worker alone:

* a job running longer than ``timeout_s`` -> SIGKILL, fresh worker, result stage ``"timeout"``;
* a worker that dies mid-job (segfault, abort, ``os._exit``) -> fresh worker, stage ``"crash"``;
* a result carrying a sticky CUDA error -> returned as is, then the worker is replaced.

Workers live across jobs (spawning one and importing torch costs seconds) and keep warm Evaluators.
Spawn would normally re-run the parent's ``__main__`` in each worker (an unguarded user script would
build and compile its model again there; a ``python - <<EOF`` script fails outright); workers need
nothing from it, so ``__main__`` is hidden from multiprocessing while a worker starts.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from collections import deque
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import Any, Sequence

from ..search.evaluate import ScoredResult
from .gate import ENV as GATE_ENV
from .worker import Job, JobResult, WorkerConfig, failed, worker_main

log = logging.getLogger("torch_kevolve")

_ENV_LOCK = threading.Lock()  # os.environ is patched around Process.start (spawn copies it)
_MAX_START_FAILURES = 3


def _exit_text(code: int | None) -> str:
    if code is None:
        return "worker died (exit code unknown)"
    text = f"worker died with exit code {code}"
    if code < 0:
        try:
            text += f" ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return text


@contextlib.contextmanager
def _main_hidden():
    """Spawn records how to re-import ``__main__`` (by path or module name) when a process starts;
    a stub without ``__file__``/``__spec__`` makes it record nothing."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _visible_gpus() -> list[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001
        return []


def _visible_device(gpu: int) -> str:
    """The CUDA_VISIBLE_DEVICES token for the parent's GPU ``gpu`` (respects the parent's own list)."""
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent is None or parent.strip() == "":
        return str(gpu)
    toks = [t.strip() for t in parent.split(",") if t.strip()]
    if not 0 <= gpu < len(toks):
        raise ValueError(f"GPU index {gpu} is not visible (CUDA_VISIBLE_DEVICES={parent!r})")
    return toks[gpu]


def auto_workers_per_gpu(n_gpus: int) -> int:
    """Workers per GPU when not told: enough to keep compiles overlapping (a compile takes one core),
    at most 4, and two cores per worker so verification's host work doesn't starve."""
    return max(1, min(4, (os.cpu_count() or 1) // (2 * max(1, n_gpus))))


@dataclass
class _Worker:
    slot: int
    proc: Any  # multiprocessing.context.SpawnProcess
    conn: Any  # multiprocessing.connection.Connection
    spawned_at: float
    job: int | None = None  # index into the current map's jobs
    started_at: float | None = None  # when the worker picked the job up (the timeout clock)
    ready: bool = False
    waiting_since: float | None = None  # blocked on the GPU gate (another worker's turn): clock paused
    sent_at: float = 0.0  # when the current job was sent (a ready worker acks it at once)

    def ack_deadline(self, start_timeout_s: float, limit: float) -> float:
        """Until when a job may wait for the worker's "started": a worker still starting up gets
        the start-up allowance from its spawn; a ready one, the job's limit from the send."""
        return self.sent_at + limit if self.ready else self.spawned_at + start_timeout_s


class LocalPool:
    """Evaluate :class:`Job` s across ``workers`` spawned processes, results in job order.

    ``gpus``: GPU indices (as the parent sees them); worker ``i`` is pinned to ``gpus[i % len]`` via
    ``CUDA_VISIBLE_DEVICES``; None: every visible GPU, ``[]``: none. ``workers`` defaults to
    ``len(gpus) * workers_per_gpu``, else ``min(cpus, 8)``. ``workers_per_gpu`` (0: auto, up to 4 as
    the CPU cores allow): workers sharing a GPU overlap their compiles and verifications and take
    turns to time, through a :class:`~torch_kevolve.harness.gate.GpuGate` per GPU. ``interpret``: run Triton's interpreter (CPU specs); None:
    when this process has ``TRITON_INTERPRET=1`` or there is no GPU. It is fixed per pool because triton's own ``@jit`` helpers (``tl.sum``'s
    combine function...) read ``TRITON_INTERPRET`` once, when triton is imported.
    ``timeout_s`` bounds one job's evaluation (worker start-up and imports are not counted; they are
    bounded by ``start_timeout_s``). ``progress``: tqdm bar; None shows it on a terminal only.
    """

    def __init__(
        self,
        workers: int | None = None,
        gpus: list[int] | None = None,
        timeout_s: float = 60.0,
        progress: bool | None = None,
        start_timeout_s: float = 300.0,
        threads_per_worker: int | None = None,
        interpret: bool | None = None,
        workers_per_gpu: int = 0,
    ) -> None:
        self.gpus = list(_visible_gpus() if gpus is None else gpus)
        if interpret is None:
            interpret = os.environ.get("TRITON_INTERPRET") == "1" or not self.gpus
        self.interpret = bool(interpret)
        if self.gpus and not workers_per_gpu:
            workers_per_gpu = int(os.environ.get("KEVOLVE_WORKERS_PER_GPU") or 0) or auto_workers_per_gpu(len(self.gpus))
        n = workers if workers is not None else (len(self.gpus) * workers_per_gpu or max(1, min(os.cpu_count() or 1, 8)))
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        self.n = n
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.progress = progress
        self.threads = threads_per_worker or max(1, (os.cpu_count() or 1) // n)
        self._ctx = get_context("spawn")
        self._tmp = tempfile.mkdtemp(prefix="kevolve_pool_")
        self.worker_env: dict[int, dict[str, str]] = {}  # what each slot's worker was started with
        self._closed = False
        self._lock = threading.Lock()  # one map at a time: workers hold one job each
        self._start_failures = 0
        self.restarts = 0  # workers replaced after a crash, timeout or sticky error (for tests/logs)
        self._workers: list[_Worker] = [self._spawn(i) for i in range(n)]

    # -- workers ---------------------------------------------------------------------------------
    def _spawn(self, slot: int) -> _Worker:
        cache = os.path.join(self._tmp, f"triton_cache_{slot}")
        os.makedirs(cache, exist_ok=True)
        env = {"TRITON_CACHE_DIR": cache, "TRITON_INTERPRET": "1" if self.interpret else "0"}
        if self.gpus:
            gpu = self.gpus[slot % len(self.gpus)]
            env["CUDA_VISIBLE_DEVICES"] = _visible_device(gpu)
            if self.n > len(self.gpus):  # workers share this GPU: time one at a time
                env[GATE_ENV] = os.path.join(self._tmp, f"gpu{gpu}.gate")
        self.worker_env[slot] = dict(env)
        cfg = WorkerConfig(slot=slot, parent_pid=os.getpid(), threads=self.threads, triton_cache_dir=cache,
                           interpret=self.interpret, env=tuple(env.items()))
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=worker_main, args=(child_conn, cfg), daemon=True,
                                 name=f"kevolve-eval-{slot}")
        with _ENV_LOCK:  # CUDA_VISIBLE_DEVICES must be in the child's env before it imports torch
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                with _main_hidden():
                    proc.start()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        child_conn.close()
        log.debug("started evaluation worker %d (pid %s)%s", slot, proc.pid,
                  f" on CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if self.gpus else "")
        return _Worker(slot, proc, parent_conn, time.monotonic())

    def _stop(self, w: _Worker, kill: bool) -> None:
        if not kill and w.proc.is_alive():
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
            w.proc.join(timeout=5)
        if w.proc.is_alive():
            w.proc.kill()  # SIGKILL: a hung interpreter loop ignores anything gentler
        w.proc.join(timeout=10)
        try:
            w.conn.close()
        except OSError:
            pass

    def _replace(self, w: _Worker, kill: bool, why: str) -> _Worker:
        log.debug("replacing evaluation worker %d (pid %s): %s", w.slot, w.proc.pid, why)
        self._stop(w, kill)
        self.restarts += 1
        nw = self._spawn(w.slot)
        self._workers[w.slot] = nw
        return nw

    def _start_failed(self, w: _Worker, why: str) -> None:
        self._start_failures += 1
        if self._start_failures >= _MAX_START_FAILURES:
            self._stop(w, kill=True)
            raise RuntimeError(
                f"evaluation workers failed to start {self._start_failures} times in a row (last: {why}); "
                "their stderr says why"
            )

    # -- map -------------------------------------------------------------------------------------
    def map(self, jobs: Sequence[Job], timeout_s: float | None = None) -> list[ScoredResult]:
        """Evaluate ``jobs`` concurrently; ``results[i]`` belongs to ``jobs[i]``. ``timeout_s``
        overrides the pool's per-job limit for this call."""
        with self._lock:
            return self._map(list(jobs), timeout_s)

    def _map(self, jobs: list[Job], timeout_s: float | None) -> list[ScoredResult]:
        if self._closed:
            raise RuntimeError("LocalPool is closed")
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        results: list[ScoredResult | None] = [None] * len(jobs)
        pending: deque[int] = deque(range(len(jobs)))
        bar = _progress(len(jobs), self.progress)
        try:
            while pending or any(w.job is not None for w in self._workers):
                self._dispatch(jobs, pending)
                self._poll(jobs, results, pending, limit, bar)
        except BaseException:
            # Interrupted mid-map: busy workers hold stale jobs; replace them so the pool stays usable.
            for w in list(self._workers):
                if w.job is not None:
                    self._replace(w, kill=True, why="map interrupted")
            raise
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]

    def _dispatch(self, jobs: list[Job], pending: deque[int]) -> None:
        for w in list(self._workers):
            if w.job is not None or not pending:
                continue
            if not w.proc.is_alive():  # died while idle (e.g. its parent thread exited)
                w = self._replace(w, kill=True, why=_exit_text(w.proc.exitcode) + " while idle")
            i = pending.popleft()
            try:
                w.conn.send((i, jobs[i]))
            except (OSError, ValueError):
                pending.appendleft(i)
                self._replace(w, kill=True, why="pipe closed before a job was sent")
                continue
            w.job, w.started_at, w.waiting_since, w.sent_at = i, None, None, time.monotonic()

    def _poll(self, jobs: list[Job], results: list, pending: deque[int], limit: float, bar: Any) -> None:
        busy = [w for w in self._workers if w.job is not None]
        if not busy:
            return
        now = time.monotonic()
        deadlines = [
            (now + limit) if w.waiting_since is not None
            else (w.started_at + limit) if w.started_at is not None else w.ack_deadline(self.start_timeout_s, limit)
            for w in busy
        ]
        wait_s = max(0.0, min(deadlines) - now)
        wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=min(wait_s, 5.0))
        for w in busy:
            done = self._drain(w, jobs, results, bar)
            if done == "dead":
                code = w.proc.exitcode
                if w.job is None:
                    continue  # finished its job, then exited (sticky error): _dispatch replaces it
                if w.started_at is None:
                    pending.appendleft(w.job)
                    w.job = None
                    self._start_failed(w, _exit_text(code) + " before starting a job")
                    self._replace(w, kill=True, why="died during start-up")
                    continue
                i = w.job
                w.job = None
                msg = _exit_text(code) + f" while evaluating job {jobs[i].label()}"
                log.info("evaluation %s", msg)
                results[i] = failed(jobs[i], "crash", msg, worker_pid=w.proc.pid)
                _tick(bar)
                self._replace(w, kill=True, why=msg)
            elif done == "restart":
                self._replace(w, kill=False, why="the worker flagged itself suspect (sticky device error or stray writes)")
        now = time.monotonic()
        for w in list(self._workers):
            if w.job is None:
                continue
            if w.started_at is not None and w.waiting_since is None and now >= w.started_at + limit:
                i = w.job
                w.job = None
                msg = f"evaluation exceeded {limit:g}s (worker killed)"
                log.info("job %s: %s", jobs[i].label(), msg)
                results[i] = failed(jobs[i], "timeout", msg, worker_pid=w.proc.pid)
                _tick(bar)
                self._replace(w, kill=True, why=msg)
            elif w.started_at is None and now >= w.ack_deadline(self.start_timeout_s, limit):
                pending.appendleft(w.job)
                w.job = None
                self._start_failed(w, f"no response within {self.start_timeout_s:g}s of spawning")
                self._replace(w, kill=True, why="start-up timed out")

    def _drain(self, w: _Worker, jobs: list[Job], results: list, bar: Any) -> str | None:
        """Read everything the worker sent. Returns "dead", "restart" or None."""
        status: str | None = None
        while True:
            try:
                if not w.conn.poll():
                    break
                msg = w.conn.recv()
            except (EOFError, OSError):
                return status or "dead"  # a flagged worker exits right after its result
            kind = msg[0]
            if kind == "ready":
                w.ready = True
                self._start_failures = 0
            elif kind == "started" and msg[1] == w.job:
                w.started_at = time.monotonic()
                w.waiting_since = None
                self._start_failures = 0
            elif kind == "gate" and msg[1] == w.job and w.started_at is not None:
                now = time.monotonic()
                if msg[2] == "wait":
                    w.waiting_since = now
                elif w.waiting_since is not None:  # "go": the wait does not count against the limit
                    w.started_at += now - w.waiting_since
                    w.waiting_since = None
            elif kind == "done" and msg[1] == w.job:
                res: JobResult = msg[2]
                i = msg[1]
                results[i] = res.to_scored(jobs[i])
                w.job, w.started_at, w.waiting_since = None, None, None
                _tick(bar)
                if res.restart:
                    status = "restart"
        if status is None and not w.proc.is_alive():
            return "dead"
        return status

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5
        for w in self._workers:
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=5)
            try:
                w.conn.close()
            except OSError:
                pass
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "LocalPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int | None]:
        return [w.proc.pid for w in self._workers]


def _progress(total: int, enabled: bool | None) -> Any:
    if enabled is False or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="evaluating", unit="job", leave=False, disable=None if enabled is None else False)


def _tick(bar: Any) -> None:
    if bar is not None:
        bar.update(1)


__all__ = ["LocalPool"]
