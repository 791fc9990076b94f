"""Evaluation jobs as plain data, and the code that runs them inside a worker process.

A job must cross process (and, with Ray, host) boundaries, so it carries the spec as JSON and the
candidate as its fields, and the result comes back as plain data that the parent turns back into a
:class:`ScoredResult`. The same :func:`run_job` runs in LocalPool workers, in Ray tasks and in-process.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..families.base import Candidate
from ..search.evaluate import Diagnostics, ScoredResult
from .static_check import check_source

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ..families.base import OpFamily
    from ..search.evaluate import Evaluator, Timer
    from ..spec import OpSpec

log = logging.getLogger("torch_kevolve")

TIMERS = ("default", "none")
# A CUDA context that saw one of these is unusable for every later launch in the process.
STICKY_CUDA_ERRORS = (
    "illegal memory access",
    "unspecified launch failure",
    "device-side assert",
    "misaligned address",
    "illegal instruction",
)


@dataclass(frozen=True)
class Job:
    """One candidate to evaluate for one spec: picklable plain data (no tensors, no modules)."""

    family: str
    spec_json: dict
    source: str
    config: tuple[tuple[str, Any], ...]
    origin: str = "template"
    template: str = ""
    seeds: int = 3
    seed_base: int = 0
    timer: str = "default"  # "default": do_bench on GPU / wall clock on CPU; "none": verify only
    job_id: str = ""
    baseline: str = ""  # "eager" | "inductor": time the baseline instead of a candidate (no source)
    # Verification cases recorded by the caller (``search.evaluate.record_cases``) for an op that
    # exists only in the caller's process: the worker loads them instead of computing references.
    cases_file: str = ""
    cases_digest: str = ""

    @staticmethod
    def of(
        family: "OpFamily | str",
        spec: "OpSpec",
        cand: Candidate,
        seeds: int = 3,
        seed_base: int = 0,
        timer: str = "default",
        job_id: str = "",
        cases: tuple[str, str] = ("", ""),
    ) -> "Job":
        name = family if isinstance(family, str) else family.name
        return Job(
            family=name, spec_json=spec.to_json(), source=cand.source, config=tuple(cand.config),
            origin=cand.origin, template=cand.template, seeds=seeds, seed_base=seed_base, timer=timer,
            job_id=job_id, cases_file=cases[0], cases_digest=cases[1],
        )

    def candidate(self) -> Candidate:
        return Candidate(source=self.source, config=tuple(tuple(kv) for kv in self.config),  # type: ignore[misc]
                         origin=self.origin, template=self.template)

    @property
    def device_type(self) -> str:
        return str(self.spec_json.get("device", {}).get("type", "cpu"))

    def label(self) -> str:
        return self.job_id or f"{self.family}:{self.template or '?'}:{dict(self.config)}"


def baseline_job(family: "OpFamily | str", spec: "OpSpec", kind: str, seeds: int = 3, seed_base: int = 0,
                 timer: str = "default") -> Job:
    """A job that times the baseline (``"eager"`` or ``"inductor"``) in a worker: the same process,
    timer and inputs as the candidates it is compared with."""
    name = family if isinstance(family, str) else family.name
    return Job(family=name, spec_json=spec.to_json(), source="", config=(), origin="baseline", template=kind,
               seeds=seeds, seed_base=seed_base, timer=timer, job_id=f"baseline:{kind}", baseline=kind)


def make_jobs(
    family: "OpFamily | str",
    spec: "OpSpec",
    cands: Sequence[Candidate],
    seeds: int = 3,
    seed_base: int = 0,
    timer: str = "default",
    cases: tuple[str, str] = ("", ""),
) -> list[Job]:
    """Jobs for ``cands`` on one spec, ids ``"<i>"`` in order; ``cases`` = (file, sha256) of recorded
    verification cases, for ops only the caller's process can run."""
    return [Job.of(family, spec, c, seeds, seed_base, timer, job_id=str(i), cases=cases) for i, c in enumerate(cands)]


@dataclass
class JobResult:
    """What a worker sends back: ScoredResult's fields minus the candidate (the parent has it)."""

    job_id: str
    ok: bool
    time_ms: float | None
    diagnostics: dict
    evidence: dict = field(default_factory=dict)
    pid: int = 0
    wall_s: float = 0.0
    restart: bool = False  # sticky device error or stray writes: the process is suspect, replace it

    def to_scored(self, job: Job) -> ScoredResult:
        known = {f.name for f in fields(Diagnostics)}
        diag = Diagnostics(**{k: v for k, v in self.diagnostics.items() if k in known})
        return ScoredResult(job.candidate(), self.ok, self.time_ms, diag, dict(self.evidence))


def failed(job: Job, stage: str, error: str, **evidence: Any) -> ScoredResult:
    """A failed result produced by the harness itself (timeout, crash), not by the evaluator."""
    return ScoredResult(job.candidate(), False, None, Diagnostics(stage, error), dict(evidence))


def is_sticky_cuda_error(text: str | None) -> bool:
    t = (text or "").lower()
    return any(s in t for s in STICKY_CUDA_ERRORS)


# ------------------------------------------------------------------------------------------------
# Running one job
# ------------------------------------------------------------------------------------------------


def _no_timer(fn: Callable[[], Any]) -> float:
    """Verification only: skip the timing runs; the result's time_ms is None."""
    return None  # type: ignore[return-value]


def _timer_for(name: str) -> "Timer | None":
    if name == "default":
        return None  # the Evaluator's per-device default
    if name == "none":
        return _no_timer
    raise ValueError(f"unknown timer {name!r}; expected one of {TIMERS}")


class EvaluatorCache:
    """Warm Evaluators per (family, spec, seeds, seed_base, timer): reference inputs and outputs are
    built once per worker, not once per candidate. Small LRU: on GPU the cases hold device memory.

    A hostile candidate can write into the cached tensors (an input it "only" mutated, a stray
    out-of-bounds store into a neighbouring allocation) and every later verdict would be wrong, so
    each entry keeps a checksum of its cases' storage and is dropped when a job changed it."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._d: OrderedDict[tuple, tuple[Evaluator, list[int]]] = OrderedDict()
        self.evictions = 0

    @staticmethod
    def key(job: Job, timer: "Timer | None" = None) -> tuple:
        from ..spec import OpSpec

        spec_key = OpSpec.from_json(job.spec_json).key
        return (job.family, spec_key, job.seeds, job.seed_base, job.timer if timer is None else id(timer),
                job.cases_digest)

    def get(self, job: Job, timer: "Timer | None" = None) -> "Evaluator":
        from ..families import get_family
        from ..search.evaluate import Evaluator
        from ..spec import OpSpec

        key = self.key(job, timer)
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
            return hit[0]
        if job.cases_file:
            from ..search.evaluate import RecordedEvaluator

            ev: Evaluator = RecordedEvaluator(get_family(job.family), job.cases_file, job.cases_digest,
                                              timer=timer or _timer_for(job.timer))
        else:
            ev = Evaluator(get_family(job.family), OpSpec.from_json(job.spec_json), timer=timer or _timer_for(job.timer),
                           seeds=job.seeds, seed_base=job.seed_base)
        self._d[key] = (ev, _checksum(ev))  # builds the cases now, outside any candidate's run
        while len(self._d) > self.size:
            self._d.popitem(last=False)
        return ev

    def check(self, job: Job, timer: "Timer | None" = None) -> bool:
        """After a job: drop the entry if its cases changed. True when they were intact."""
        key = self.key(job, timer)
        hit = self._d.get(key)
        if hit is None:
            return True
        try:
            intact = _checksum(hit[0]) == hit[1]
        except Exception:  # noqa: BLE001 - e.g. a dead CUDA context
            intact = False
        if not intact:
            log.info("job %s changed the cached reference cases; rebuilding them", job.label())
            del self._d[key]
            self.evictions += 1
        return intact

    def clear(self) -> None:
        self._d.clear()


def _checksum(ev: "Evaluator") -> list[int]:
    """Byte sums of every cached input/reference storage: cheap (no copies) and order-sensitive
    enough for stray writes, which almost never preserve a storage's byte sum."""
    import torch

    sums = []
    for case in ev.cases():
        for t in list(case[2]) + list(case[3]):
            if t is None:
                continue
            st = t.untyped_storage()
            raw = torch.empty(0, dtype=torch.uint8, device=t.device).set_(st, 0, (st.nbytes(),))
            sums.append(raw.sum(dtype=torch.int64))
    return [int(x) for x in torch.stack(sums).cpu()] if sums else []


def run_job(job: Job, cache: EvaluatorCache | None = None, timer: "Timer | None" = None) -> JobResult:
    """Static check, then the Evaluator. Every failure is a value; a rejected source is never imported."""
    t0 = time.monotonic()

    def result(ok: bool, time_ms: float | None, diag: Diagnostics, evidence: dict | None = None) -> JobResult:
        return JobResult(job.job_id, ok, time_ms, asdict(diag), evidence or {}, os.getpid(), time.monotonic() - t0,
                         restart=is_sticky_cuda_error(diag.error))

    if job.baseline:
        cache = cache if cache is not None else EvaluatorCache(1)
        try:
            ms = cache.get(job, timer).baseline_ms(job.baseline)
        except Exception:  # noqa: BLE001
            return result(False, None, Diagnostics("harness", traceback.format_exc(limit=6)))
        if ms is None:
            return result(False, None, Diagnostics("time", f"the {job.baseline} baseline could not be timed"))
        return result(True, ms, Diagnostics("ok"), {"baseline": job.baseline})
    report = check_source(job.source)
    if not report.ok:
        return result(False, None, Diagnostics("static", "static check rejected the source: " + "; ".join(report.problems)),
                      {"static_problems": list(report.problems)})
    cache = cache if cache is not None else EvaluatorCache(1)
    try:
        ev = cache.get(job, timer)
        r = ev.evaluate(job.candidate())
    except Exception:  # noqa: BLE001 - building the spec, reference or inputs failed: still a value
        return result(False, None, Diagnostics("harness", traceback.format_exc(limit=6)))
    intact = cache.check(job, timer)
    if not intact and "modified an input" not in (r.diagnostics.error or ""):
        # The cached cases changed although no launch's inputs did: the kernel wrote somewhere
        # outside its outputs. Whatever else it hit in this process is suspect too.
        diag = r.diagnostics if not r.ok else Diagnostics(
            "verify", "kernel wrote outside its outputs (cached inputs/references changed)",
            cases_checked=r.diagnostics.cases_checked)
        res = result(False, None, diag, {**r.evidence, "stray_writes": True})
        res.restart = True
    else:
        res = result(r.ok, r.time_ms, r.diagnostics, r.evidence)
    if res.restart:
        cache.clear()  # a dead CUDA context or a corrupted heap: nothing cached is trustworthy
    return res


# ------------------------------------------------------------------------------------------------
# Process setup (LocalPool workers and Ray tasks)
# ------------------------------------------------------------------------------------------------

_PROCESS_CACHE = EvaluatorCache()
_OWN_TRITON_CACHE: str | None = None
_POISONED = False


def prepare_job_env(job: Job) -> None:
    """Interpreter for non-CUDA specs (``@triton.jit`` reads it when a kernel module is imported;
    triton's own helpers read it when triton is imported, hence also the spawn-time env), and a
    Triton cache of this process's own so concurrent workers never share half-written entries."""
    os.environ["TRITON_INTERPRET"] = "0" if job.device_type == "cuda" else "1"
    if _OWN_TRITON_CACHE is None:
        use_triton_cache(_process_triton_dir())


def _process_triton_dir() -> str:
    """``<tmp>/kevolve_triton_<uid>/<pid>``; siblings of dead processes (killed Ray workers never
    clean up) are removed on the way."""
    import shutil

    base = os.path.join(tempfile.gettempdir(), f"kevolve_triton_{os.getuid()}")
    os.makedirs(base, exist_ok=True)
    for name in os.listdir(base):
        if name.isdigit() and int(name) != os.getpid() and not _alive(int(name)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    own = os.path.join(base, str(os.getpid()))
    os.makedirs(own, exist_ok=True)
    return own


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, not ours to signal
    return True


def use_triton_cache(path: str) -> None:
    global _OWN_TRITON_CACHE
    _OWN_TRITON_CACHE = path
    os.environ["TRITON_CACHE_DIR"] = path


def triton_interpreting() -> bool:
    """Whether triton was imported in interpreter mode (its stdlib ``@jit`` helpers say so)."""
    try:
        from triton.language import standard

        return type(standard._sum_combine).__name__ == "InterpretedFunction"
    except Exception:  # noqa: BLE001 - layout changed: trust the environment
        return os.environ.get("TRITON_INTERPRET") == "1"


def mode_mismatch(job: Job, interpret: bool | None = None) -> str | None:
    """Why a process whose triton was imported with(out) the interpreter cannot run ``job``."""
    if interpret is None:
        interpret = triton_interpreting()
    wants = job.device_type != "cuda"
    if wants == interpret:
        return None
    return (f"this worker runs Triton {'interpreted' if interpret else 'compiled'}, but the spec's device is "
            f"{job.device_type!r}: TRITON_INTERPRET is read when triton is imported, so use a pool started with "
            f"interpret={wants}")


def die_with_parent(parent_pid: int | None = None) -> None:
    """Linux: SIGKILL this process when the parent goes (even on SIGKILL of the parent, where
    daemon cleanup never runs). Note the kernel ties it to the parent *thread* that started us."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort; daemon=True still covers orderly exits
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)  # the parent died before prctl took effect


def ray_task(job: Job) -> JobResult:
    """Ray remote entry: the worker function, run in a (reused) Ray worker process."""
    global _POISONED
    if _POISONED:
        # An earlier task left this process suspect (dead CUDA context, stray writes). Exiting makes
        # Ray retry this task (max_retries) on a fresh worker instead of failing it here.
        os._exit(70)
    mismatch = mode_mismatch(job)
    if mismatch:
        return JobResult(job.job_id, False, None, asdict(Diagnostics("harness", mismatch)), pid=os.getpid())
    prepare_job_env(job)
    res = run_job(job, _PROCESS_CACHE)
    if res.restart:
        _POISONED = True
    return res


@dataclass(frozen=True)
class WorkerConfig:
    slot: int
    parent_pid: int
    threads: int | None = None
    interpret: bool = True
    triton_cache_dir: str | None = None
    env: tuple[tuple[str, str], ...] = ()


def worker_main(conn: "Connection", cfg: WorkerConfig) -> None:
    """LocalPool worker loop: ``(index, Job)`` in, ``("started", index)`` then ``("done", index,
    JobResult)`` out; ``None`` stops it. Imports happen before the first job, so a job's timeout
    measures evaluation only."""
    die_with_parent(cfg.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.environ.update(dict(cfg.env))  # already inherited at spawn; repeated for clarity
    if cfg.triton_cache_dir:
        use_triton_cache(cfg.triton_cache_dir)
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from ..families import all_families

    all_families()  # register builtin families now, not inside the first job's clock
    try:
        conn.send(("ready", os.getpid()))
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg is None:
                break
            idx, job = msg
            conn.send(("started", idx))
            from .gate import process_gate

            # waiting for another worker's GPU turn is not this job's time: the pool pauses its clock
            process_gate().notify = lambda ev, _i=idx: conn.send(("gate", _i, ev))
            try:
                mismatch = mode_mismatch(job)
                if mismatch:
                    res = JobResult(job.job_id, False, None, asdict(Diagnostics("harness", mismatch)), pid=os.getpid())
                else:
                    prepare_job_env(job)
                    res = run_job(job, _PROCESS_CACHE)
            except BaseException:  # noqa: BLE001 - never let a job kill the loop silently
                res = JobResult(job.job_id, False, None, asdict(Diagnostics("harness", traceback.format_exc(limit=6))),
                                pid=os.getpid())
            conn.send(("done", idx, res))
            if res.restart:
                break  # the parent starts a fresh worker in this slot
    except (BrokenPipeError, EOFError, OSError):
        pass  # parent went away
    finally:
        try:
            conn.close()
        except OSError:
            pass


__all__ = [
    "Job", "JobResult", "baseline_job", "make_jobs", "failed", "run_job", "EvaluatorCache", "is_sticky_cuda_error",
    "prepare_job_env", "use_triton_cache", "mode_mismatch", "triton_interpreting", "die_with_parent", "ray_task", "worker_main", "WorkerConfig", "TIMERS",
]
