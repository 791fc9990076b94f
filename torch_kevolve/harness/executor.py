"""Executors: where jobs run. One protocol, three places.

* ``local``: :class:`LocalPool` worker processes on this host (the default; isolates crashes/hangs);
* ``inprocess``: the Evaluator in this process (tests, quick GPU paths; no isolation at all);
* ``ray``: the same worker function as Ray tasks, locally or on a cluster (``ray`` imported lazily:
  the GPU machine has no Ray).

``make_executor()`` picks one by name or by ``KEVOLVE_EXECUTOR``.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from ..search.evaluate import ScoredResult, Timer
from .pool import LocalPool
from .worker import EvaluatorCache, Job, JobResult, failed, ray_task, run_job

log = logging.getLogger("torch_kevolve")


@runtime_checkable
class Executor(Protocol):
    def map(self, jobs: Sequence[Job]) -> list[ScoredResult]:
        """Evaluate ``jobs``; ``results[i]`` belongs to ``jobs[i]``; failures are values."""
        ...

    def close(self) -> None: ...


class _ContextManager:
    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(_ContextManager):
    """Worker processes on this host; see :class:`LocalPool` for the arguments."""

    def __init__(self, workers: int | None = None, gpus: list[int] | None = None, timeout_s: float = 60.0,
                 **pool_kwargs: Any) -> None:
        self.pool = LocalPool(workers=workers, gpus=gpus, timeout_s=timeout_s, **pool_kwargs)

    def map(self, jobs: Sequence[Job], timeout_s: float | None = None) -> list[ScoredResult]:
        return self.pool.map(jobs, timeout_s=timeout_s)

    def close(self) -> None:
        self.pool.close()


class InProcessExecutor(_ContextManager):
    """The Evaluator in this process, behind the same static check. A crashing or hanging candidate
    takes the caller with it: use it for trusted templates, tests and injected timers."""

    def __init__(self, timer: Timer | None = None) -> None:
        self.timer = timer  # overrides every job's timer name (e.g. a test's cost model)
        self._cache = EvaluatorCache()

    def map(self, jobs: Sequence[Job]) -> list[ScoredResult]:
        return [run_job(job, self._cache, self.timer).to_scored(job) for job in jobs]

    def close(self) -> None:
        self._cache.clear()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RuntimeError(
            "RayExecutor needs Ray, which is not installed here: `pip install 'torch_kevolve[harness]'` "
            "(or `pip install ray`), or use KEVOLVE_EXECUTOR=local"
        ) from e
    return ray


class RayExecutor(_ContextManager):
    """Jobs as Ray tasks running :func:`~torch_kevolve.harness.worker.ray_task` in reused Ray worker
    processes (warm Evaluators survive between tasks).

    ``address``: None starts/joins a local Ray; ``"auto"`` or ``"ray://..."`` joins a cluster.
    A task exceeding ``timeout_s`` is force-cancelled (its worker process is killed) -> stage
    ``"timeout"``. The clock starts at submission, so at most ``max_in_flight`` tasks (default: what
    the cluster can run at once) are outstanding. ``max_retries=1`` lets Ray rerun a task whose
    worker exited because an earlier task left a sticky CUDA error; a crashing candidate thus runs
    twice before it is reported as ``"crash"``.
    """

    def __init__(
        self,
        address: str | None = None,
        num_gpus_per_job: float = 0,
        timeout_s: float = 60.0,
        num_cpus_per_job: float = 1,
        max_in_flight: int | None = None,
        max_retries: int = 1,
        init_kwargs: dict | None = None,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"ignore_reinit_error": True}
            if address is None:
                kw["include_dashboard"] = False
            kw.update(init_kwargs or {})
            ray.init(address=address, **kw)
            self._owns = True
        self.timeout_s = float(timeout_s)
        self.num_gpus_per_job = num_gpus_per_job
        self.num_cpus_per_job = num_cpus_per_job
        self.max_in_flight = max_in_flight
        remote = ray.remote(ray_task)
        opts = dict(num_cpus=num_cpus_per_job, num_gpus=num_gpus_per_job, max_retries=max_retries,
                    retry_exceptions=False)
        # TRITON_INTERPRET must be in a worker's environment before it imports triton (triton's own
        # helpers read it then), so CPU-spec and CUDA-spec tasks get workers of their own.
        self._remotes = {
            interp: remote.options(runtime_env={"env_vars": {"TRITON_INTERPRET": "1" if interp else "0"}}, **opts)
            for interp in (True, False)
        }

    def _capacity(self) -> int:
        if self.max_in_flight:
            return max(1, int(self.max_in_flight))
        res = self._ray.cluster_resources()
        cap = int(res.get("CPU", 1) // max(self.num_cpus_per_job, 1e-9)) if self.num_cpus_per_job else 1 << 30
        if self.num_gpus_per_job:
            cap = min(cap, int(res.get("GPU", 0) // self.num_gpus_per_job))
        return max(1, cap)

    def map(self, jobs: Sequence[Job], timeout_s: float | None = None) -> list[ScoredResult]:
        ray = self._ray
        from ray.exceptions import RayTaskError, TaskCancelledError

        jobs = list(jobs)
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        results: list[ScoredResult | None] = [None] * len(jobs)
        pending: deque[int] = deque(range(len(jobs)))
        inflight: dict[Any, tuple[int, float]] = {}
        cap = self._capacity()
        try:
            while pending or inflight:
                while pending and len(inflight) < cap:
                    i = pending.popleft()
                    inflight[self._remotes[jobs[i].device_type != "cuda"].remote(jobs[i])] = (i, time.monotonic() + limit)
                next_deadline = min(d for _, d in inflight.values())
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=max(0.0, next_deadline - time.monotonic()))
                for ref in ready:
                    i, _ = inflight.pop(ref)
                    try:
                        res: JobResult = ray.get(ref)
                        results[i] = res.to_scored(jobs[i])
                    except RayTaskError as e:  # the harness code itself raised
                        results[i] = failed(jobs[i], "harness", str(e))
                    except TaskCancelledError as e:
                        results[i] = failed(jobs[i], "timeout", f"task cancelled: {e}")
                    except Exception as e:  # noqa: BLE001 - WorkerCrashedError, NodeDied, OOM: the worker died
                        results[i] = failed(jobs[i], "crash", f"worker died: {type(e).__name__}: {e}")
                now = time.monotonic()
                for ref, (i, d) in list(inflight.items()):
                    if now >= d:
                        ray.cancel(ref, force=True)
                        del inflight[ref]
                        results[i] = failed(jobs[i], "timeout", f"evaluation exceeded {limit:g}s (ray task cancelled)")
        except BaseException:
            for ref in inflight:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001
                    pass
            raise
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------

_EXECUTORS: dict[str, Callable[..., Any]] = {
    "local": LocalExecutor,
    "inprocess": InProcessExecutor,
    "ray": RayExecutor,
}


def register_executor(name: str, factory: Callable[..., Any]) -> None:
    _EXECUTORS[_norm(name)] = factory


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def executor_names() -> list[str]:
    return sorted(_EXECUTORS)


def make_executor(name: str | None = None, **kwargs: Any) -> Executor:
    """An executor by name (``local``, ``inprocess``, ``ray``); None reads ``KEVOLVE_EXECUTOR``
    (default ``local``). ``kwargs`` go to the executor's constructor."""
    chosen = name or os.environ.get("KEVOLVE_EXECUTOR") or "local"
    factory = _EXECUTORS.get(_norm(chosen))
    if factory is None:
        raise ValueError(f"unknown executor {chosen!r} (KEVOLVE_EXECUTOR); known: {executor_names()}")
    return factory(**kwargs)


__all__ = [
    "Executor", "LocalExecutor", "InProcessExecutor", "RayExecutor",
    "make_executor", "register_executor", "executor_names",
]
