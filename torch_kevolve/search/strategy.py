"""Searching one spec: pick a strategy and a budget from the settings, evaluate through one batch
seam, post-process the outcome (re-time, re-verify) and package the winner with its search tree.

The strategies themselves live in :mod:`.strategies`; ``exhaustive_search`` is kept for callers
that hold an Evaluator (the Foundation API)."""
from __future__ import annotations

import datetime as _dt
import logging
from typing import Any, TYPE_CHECKING, Sequence

import torch

from .. import stats
from ..families.base import Candidate, OpFamily
from ..spec import OpSpec
from .evaluate import Evaluator, ScoredResult, Timer
from .strategies import Budget, EvaluateBatch, SearchOutcome, finalize, get_strategy
from .synth import Synthesizer

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import Entry

log = logging.getLogger("torch_kevolve")

__all__ = ["SearchOutcome", "exhaustive_search", "search_spec", "sequential_batch", "settings_budget"]


def sequential_batch(evaluator: Evaluator) -> EvaluateBatch:
    """The in-process ``evaluate_batch``: one candidate after another (the parallel harness's
    executor ``map`` replaces this)."""

    def evaluate_batch(cands: Sequence[Candidate]) -> list[ScoredResult]:
        return [evaluator.evaluate(c) for c in cands]

    return evaluate_batch


def settings_budget(settings: "Settings", on_cpu: bool) -> Budget:
    """``KEVOLVE_BUDGET`` parts override ``max_candidates`` / ``search_budget_s``; ``max_candidates``
    -1 means 4 evaluations under the CPU interpreter, unbounded on GPU."""
    from ..config import parse_budget

    evals, wall = parse_budget(settings.budget)
    if evals is None:
        mc: int | None = settings.max_candidates
        evals = (4 if on_cpu else None) if mc is not None and mc < 0 else mc
    if wall is None:
        wall = settings.search_budget_s
    return Budget(max_evals=evals, wall_s=wall, patience=settings.patience)


def exhaustive_search(
    family: OpFamily,
    spec: OpSpec,
    synth: Synthesizer,
    evaluator: Evaluator,
    budget_s: float = 120.0,
    max_candidates: int | None = None,
    retime_top: int = 3,
    batch: int = 8,
    suspicious_speedup: float = 10.0,
) -> SearchOutcome:
    """The synthesizer's proposals in order within a budget, then the shared post-processing."""
    evaluate_batch = sequential_batch(evaluator)
    outcome = get_strategy("exhaustive")(
        family, spec, synth, evaluate_batch, Budget(max_candidates, budget_s), None,
        baseline_ms=evaluator.baseline_ms, batch=batch,
    )
    return finalize(outcome, evaluate_batch, reverify=evaluator.reverify,
                    reverify_seeds=4 * max(1, len(evaluator.seeds)), retime_top=retime_top,
                    suspicious_speedup=suspicious_speedup)


_EXECUTORS: dict[tuple[str, str, int], Any] = {}


def shared_executor(name: str, device_type: str, timeout_s: float, workers_per_gpu: int = 0) -> Any:
    """One executor per (kind, device type) per process: worker start-up (spawn + import torch +
    CUDA init) costs seconds, so workers live across searches and die with the process."""
    import atexit

    from ..harness import make_executor

    key = (name, device_type, workers_per_gpu)
    if key not in _EXECUTORS:
        kw: dict[str, Any] = {"timeout_s": timeout_s}
        if name == "local" and device_type != "cuda":
            kw["gpus"] = []
        elif name == "local" and workers_per_gpu:
            kw["workers_per_gpu"] = workers_per_gpu
        _EXECUTORS[key] = make_executor(name, **kw)
        atexit.register(_EXECUTORS[key].close)
    return _EXECUTORS[key]


def harness_batch(family: OpFamily, spec: OpSpec, settings: "Settings", cases: tuple[str, str] = ("", "")
                  ) -> "EvaluateBatch":
    """Evaluate batches in the isolated harness (static check, worker processes, time limit);
    ``cases``: recorded verification cases (file, sha256) for an op workers cannot run themselves."""
    from ..harness.worker import make_jobs

    executor = shared_executor(settings.executor, spec.device.type, settings.eval_timeout_s, settings.workers_per_gpu)

    def run(cands: list) -> list[ScoredResult]:
        return list(executor.map(make_jobs(family, spec, cands, seeds=settings.seeds, cases=cases)))

    return run


def baseline_kind(family: OpFamily, spec: OpSpec) -> str:
    """What a kernel for ``spec`` must beat: Inductor's own kernel where Inductor lowers the op (on
    CUDA; elsewhere timings are the interpreter's and mean nothing), else the ATen call Inductor
    falls back to, i.e. eager."""
    return "inductor" if spec.op in family.lowered_ops and spec.device.type == "cuda" else "eager"


def harness_baseline(family: OpFamily, spec: OpSpec, settings: "Settings", kind: str) -> float | None:
    """The baseline timed in a harness worker, like the candidates (same process kind and timer)."""
    from ..harness.worker import baseline_job

    executor = shared_executor(settings.executor, spec.device.type, settings.eval_timeout_s, settings.workers_per_gpu)
    (res,) = executor.map([baseline_job(family, spec, kind, seeds=settings.seeds)])
    if not res.ok:
        log.warning("kevolve: %s baseline for %s failed in the harness: %s", kind, spec.describe(), res.diagnostics.summary())
        return None
    return res.time_ms


def search_spec(
    family: OpFamily,
    spec: OpSpec,
    settings: "Settings",
    timer: Timer | None = None,
    synth: Synthesizer | None = None,
    evaluate_batch: EvaluateBatch | None = None,
) -> tuple["Entry | None", SearchOutcome]:
    """Search one spec and package the winner as a store entry (not yet stored).

    ``evaluate_batch`` defaults to the in-process Evaluator loop; pass an executor's batch
    evaluation (e.g. the parallel harness) to score candidates elsewhere."""

    if synth is None:
        from ..llm.synthesizer import make_synthesizer

        synth = make_synthesizer(settings)  # templates unless an LLM endpoint is configured (settings.synthesizer)
    if family.skeleton(spec) is not None and not family.candidates(spec) and not hasattr(synth, "transport"):
        # a family without templates (the generic path) is served by the LLM synthesizer alone
        from ..log import info_once

        why = "no kernel templates for this op and no LLM synthesizer configured"
        info_once("kevolve: %s has %s (KEVOLVE_LLM_BASE_URL); keeping the op as it is", spec.op, why)
        return None, SearchOutcome(None, stop_reason=why)
    stats.bump("searches")
    device = torch.device(spec.device.type)
    on_cpu = device.type != "cuda"
    if on_cpu:
        from ..log import warn_once

        warn_once("searching on CPU under the Triton interpreter: timings mean nothing there, only correctness does")
    bw = None
    if not on_cpu:
        from ..hardware import copy_bandwidth

        bw = copy_bandwidth(device)
    evaluator = Evaluator(family, spec, device=device, timer=timer, seeds=settings.seeds, floor_bw=bw)
    kind = baseline_kind(family, spec)
    in_process = timer is not None or settings.executor == "inprocess"
    caller_only = getattr(family, "caller_process_only", False)
    if not in_process and caller_only and settings.executor != "local":
        # recorded cases travel as a file on this host; remote (Ray) workers could not read it
        from ..log import warn_once

        warn_once("kevolve: %s family: candidates for ops defined in this process are judged by local harness "
                  "workers only; executor %r -> evaluating them in this process", family.name, settings.executor)
        in_process = True
    tmpdir = None
    try:
        if evaluate_batch is None:
            # Injected timers (tests, cost models) only exist in this process; otherwise the harness judges.
            if in_process:
                evaluate_batch = sequential_batch(evaluator)
                baseline = evaluator.baseline_ms(kind)
            elif caller_only:
                # The op exists only here (a user's custom op): compute the cases here, judge the
                # untrusted candidates in workers over them; the baseline is the op itself, run here.
                import tempfile

                from .evaluate import record_cases

                tmpdir = tempfile.mkdtemp(prefix="kevolve-cases-")
                path = f"{tmpdir}/cases.pt"
                cases = (path, record_cases(evaluator, path))
                evaluate_batch = harness_batch(family, spec, settings, cases=cases)
                baseline = evaluator.baseline_ms(kind)
            else:
                evaluate_batch = harness_batch(family, spec, settings)
                baseline = harness_baseline(family, spec, settings, kind)
        else:
            baseline = evaluator.baseline_ms(kind)
        return _search(family, spec, settings, synth, evaluator, evaluate_batch, baseline, kind, on_cpu, bw)
    finally:
        if tmpdir is not None:
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)


def _search(family: OpFamily, spec: OpSpec, settings: "Settings", synth: Any, evaluator: Evaluator,
            evaluate_batch: EvaluateBatch, baseline: float | None, kind: str, on_cpu: bool, bw: float | None,
            ) -> tuple["Entry | None", SearchOutcome]:
    from ..store import Entry

    strategy = get_strategy(settings.search)
    budget = settings_budget(settings, on_cpu)
    watch = getattr(synth, "watch", None)
    if callable(watch):  # the LLM synthesizer reads the full diagnostics of what it proposed
        evaluate_batch = watch(evaluate_batch)
    outcome = strategy(
        family, spec, synth, evaluate_batch, budget, settings.search_seed,
        baseline_ms=baseline,  # before the search: MCTS rewards are speedups over it
        **({"batch": settings.search_batch} if settings.search_batch else {}),
    )
    outcome.baseline_kind = kind
    outcome = finalize(outcome, evaluate_batch, reverify=evaluator.reverify,
                       reverify_seeds=4 * max(1, len(evaluator.seeds)))
    log.info(
        "searched %s with %s: %d candidates, %d verified, best %s ms vs baseline %s ms in %.1fs (%s)",
        spec.describe(), outcome.strategy, len(outcome.results), sum(r.ok for r in outcome.results),
        None if outcome.best is None else f"{outcome.best.time_ms:.4f}",
        None if outcome.baseline_ms is None else f"{outcome.baseline_ms:.4f}", outcome.wall_s, outcome.stop_reason,
    )
    if outcome.best is None:
        return None, outcome
    best = outcome.best
    floor_ms = family.floor_bytes(spec) / bw * 1e3 if bw else None
    meta = {
        "time_ms": best.time_ms,
        "baseline_ms": outcome.baseline_ms,
        "baseline": "Inductor's kernel for the op" if kind == "inductor" else "eager (Inductor falls back to the same ATen kernel)",
        "baseline_kind": kind,
        "speedup": outcome.speedup,
        "floor_ms": floor_ms,
        "pct_of_floor": None if floor_ms is None or not best.time_ms else 100.0 * floor_ms / best.time_ms,
        "timer": "interpreter wall clock (meaningless)" if on_cpu else "triton.testing.do_bench median",
        "evidence": {**best.evidence, "checks": best.diagnostics.cases_checked},
        "profile": best.diagnostics.profile,
        "proposer": best.candidate.origin,
        # the LLM's account and every exchange with its result, in the entry itself: stored atomically
        # with the kernel under its checksum, shipped and pruned with it (KEVOLVE_LLM_REPLAY reruns it)
        **({"llm": {**synth.summary(), **({"transcript": synth.record(outcome.results)}
                                          if callable(getattr(synth, "record", None)) else {})}}
           if callable(getattr(synth, "summary", None)) else {}),
        "search": {
            "strategy": outcome.strategy,
            "evaluated": len(outcome.results),
            "verified": sum(r.ok for r in outcome.results),
            "wall_s": outcome.wall_s,
            "trials": [
                {"template": r.candidate.template, "config": r.candidate.cfg, "ok": r.ok,
                 "time_ms": r.time_ms, "diag": r.diagnostics.summary()}
                for r in outcome.results
            ],
            "stop": outcome.stop_reason,
            "budget": {"max_evals": budget.max_evals, "wall_s": budget.wall_s, "patience": budget.patience},
            "tree": outcome.tree.to_json() if outcome.tree is not None else None,
        },
        # Stored either way (so nobody searches this key again), but used only where it was measured
        # faster than the baseline on this device; interpreter timings decide nothing.
        "use": on_cpu or outcome.speedup is None or outcome.speedup >= 1.0,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": spec.device.name,
        "versions": dict(spec.versions),
    }
    return Entry(spec=spec, candidate=best.candidate, meta=meta), outcome
