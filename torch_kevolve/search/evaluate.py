"""Score one candidate: compile → verify → time, each failure a value with diagnostics.

This is the in-process evaluator the Foundation search uses; the isolated, parallel harness
(issue 3) keeps the same ``ScoredResult``/``Diagnostics`` contract.
"""
from __future__ import annotations

import math
import os
import random
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..families.base import Candidate, OpFamily
from ..kernels import launch, load_module, needs_interpreter
from ..spec import OpSpec

Timer = Callable[[Callable[[], Any]], float]  # returns milliseconds


def _cpu_timer(fn: Callable[[], Any]) -> float:
    fn()
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _gpu_timer(fn: Callable[[], Any]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def default_timer(device: torch.device | str) -> Timer:
    """do_bench (median, L2 flushed by Triton between runs) on GPU; wall clock on CPU, where the
    interpreter makes times meaningless — they only order candidates reproducibly enough to test."""
    return _gpu_timer if torch.device(device).type == "cuda" else _cpu_timer


@dataclass
class Diagnostics:
    stage: str = "ok"  # "ok" | "static" | "compile" | "plan" | "verify" | "time" | "timeout" | "crash" | "harness"
    error: str | None = None
    case: str | None = None  # the failing input set
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    where: list[int] | None = None  # index of the worst element
    cases_checked: int = 0
    # profile (GPU): registers, spills, shared memory of the compiled kernel; achieved bandwidth
    profile: dict = field(default_factory=dict)

    def summary(self) -> str:
        if self.stage == "ok":
            return f"ok ({self.cases_checked} input sets)"
        s = f"{self.stage} failed"
        if self.case:
            s += f" on {self.case}"
        if self.max_abs_err is not None:
            s += f": max abs err {self.max_abs_err:.3g} at {self.where}"
        if self.error:
            s += f": {self.error.splitlines()[-1][:300] if self.error.strip() else ''}"
        return s


@dataclass
class ScoredResult:
    candidate: Candidate
    ok: bool
    time_ms: float | None
    diagnostics: Diagnostics
    evidence: dict = field(default_factory=dict)


def compare(out: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float,
            slack: torch.Tensor | None = None) -> tuple[bool, float, float, list[int] | None]:
    """Closeness with NaN never passing unless the reference has NaN at the same place. ``slack``: a
    per-element absolute allowance added to the tolerance (``OpFamily.tolerance_slack``)."""
    if out.shape != ref.shape:
        return False, math.inf, math.inf, None
    if out.numel() == 0:
        return True, 0.0, 0.0, None
    o = out.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    nan_o, nan_r = torch.isnan(o), torch.isnan(r)
    bad = nan_o != nan_r
    both = ~(nan_o | nan_r)
    inf_mismatch = both & (torch.isinf(o) | torch.isinf(r)) & (o != r)
    diff = torch.where(both & ~torch.isinf(r), (o - r).abs(), torch.zeros_like(o))
    tol = atol + rtol * r.abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)
    if slack is not None:
        tol = tol + slack.detach().to(torch.float64).cpu().nan_to_num(0.0, posinf=0.0, neginf=0.0)
    bad = bad | inf_mismatch | (diff > tol)
    max_abs = float(diff.max()) if diff.numel() else 0.0
    rel = diff / r.abs().clamp_min(1e-30)
    max_rel = float(rel[both].max()) if bool(both.any()) else 0.0
    if bool(bad.any()):
        flat = int(torch.nonzero(bad.flatten())[0])
        where = list(torch.unravel_index(torch.tensor(flat), bad.shape))
        return False, max(max_abs, math.inf if bool((nan_o != nan_r).any()) else 0.0), max_rel, [int(w) for w in where]
    return True, max_abs, max_rel, None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality (NaN inputs are legitimate and equal to themselves here)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def _aliases(outs: Sequence[torch.Tensor], others: Sequence[torch.Tensor | None]) -> bool:
    ptrs = {t.untyped_storage().data_ptr() for t in others if isinstance(t, torch.Tensor) and t.numel()}
    return any(o.numel() and o.untyped_storage().data_ptr() in ptrs for o in outs)


def kernel_resources(module: Any, kernel: str) -> dict:
    """Registers, spills and shared memory of the kernel's compiled variants (GPU only)."""
    fn = getattr(module, kernel, None)
    caches = getattr(fn, "device_caches", None)
    if not caches:
        return {}
    out: dict = {}
    try:
        for entry in caches.values():
            for ck in entry[0].values():
                out = {"n_regs": int(getattr(ck, "n_regs", -1)), "n_spills": int(getattr(ck, "n_spills", -1)),
                       "shared_bytes": int(getattr(ck.metadata, "shared", -1))}
    except Exception:  # noqa: BLE001 - triton internals differ by version; a profile is optional
        return out
    return out


def plan_resources(module: Any, plan: Any) -> dict:
    """kernel_resources for a plan: its main kernel's alone, or for a multi-kernel plan the max of
    each figure over its kernels (what limits occupancy somewhere) plus ``kernels`` per name."""
    names = getattr(plan, "kernels", None) or (plan.kernel,)
    if len(names) == 1:
        return kernel_resources(module, names[0])
    per = {k: kernel_resources(module, k) for k in names}
    out: dict = {}
    for res in per.values():
        for key, v in res.items():
            out[key] = max(out.get(key, v), v)
    if out:
        out["kernels"] = per
    return out


class Evaluator:
    """Evaluates candidates for one spec. The timer is injected (tests pass a cost model)."""

    def __init__(
        self,
        family: OpFamily,
        spec: OpSpec,
        device: torch.device | str | None = None,
        timer: Timer | None = None,
        seeds: int = 3,
        seed_base: int = 0,
        edge_cases: bool = True,
        fresh_seeds: int = 1,
        floor_bw: float | None = None,
        gate: Any = None,
    ) -> None:
        self.family = family
        self.spec = spec
        self.device = torch.device(device or spec.device.type)
        self.timer = timer or default_timer(self.device)
        self.seeds = [seed_base + 1000 * i + 17 for i in range(seeds)]
        self._cases: list[tuple[str, OpSpec, list]] | None = None
        self._want_edges = edge_cases
        # Fresh inputs for every candidate (deterministic under seed_base): no kernel can be tuned
        # to the fixed seeds it was shown in feedback.
        self._fresh = random.Random(seed_base * 7919 + 1)
        self.fresh_seeds = fresh_seeds
        if floor_bw is None and self.device.type == "cuda":
            from ..hardware import copy_bandwidth  # measured once per device, cached on disk

            floor_bw = copy_bandwidth(self.device)
        self.floor_bw = floor_bw  # bytes/s of a device copy: turns times into % of floor
        if gate is None:
            from ..harness.gate import process_gate  # workers sharing a GPU: time alone, verify together

            from ..harness.gate import ENV

            # a pool sets the gate for workers sharing a GPU; elsewhere (CPU, in-process) none
            gate = process_gate() if self.device.type == "cuda" or os.environ.get(ENV) else None
        from ..harness.gate import NullGate

        self.gate = gate or NullGate()
        self._baselines: dict[str, float | None] = {}
        self._slack: dict[int, list | None] = {}  # per cached case: inputs stay pristine between candidates

    def cases(self) -> list[tuple[str, OpSpec, list]]:
        if self._cases is None:
            cases = [(f"seed{s}", self.spec, self.family.make_inputs(self.spec, s)) for s in self.seeds]
            timing = self.family.timing_inputs(self.spec, self.seeds[0]) if self.seeds else None
            if timing is not None:  # first: candidates and the baseline are timed on the first case
                cases.insert(0, ("timing", self.spec, timing))
            if self._want_edges:
                cases += [(f"edge:{n}", sp, inp) for n, sp, inp in self.family.edge_cases(self.spec)]
            if self.spec.dynamic:  # a bucket: the kernel must hold at both ends of its ranges too
                from ..dynamic import bucket_cases

                cases += [(name, sp, self.family.make_inputs(sp, self.seeds[0] if self.seeds else 0))
                          for name, sp in bucket_cases(self.spec)]
            refs = []
            for name, sp, inp in cases:
                refs.append((name, sp, inp, self.family.reference(sp, inp)))
            self._cases = refs  # type: ignore[assignment]
        return self._cases  # type: ignore[return-value]

    def _fresh_cases(self) -> list[tuple[str, OpSpec, list, list]]:
        out = []
        for _ in range(self.fresh_seeds):
            s = self._fresh.randrange(1, 1 << 30)
            inp = self.family.make_inputs(self.spec, s)
            out.append((f"fresh-seed{s}", self.spec, inp, self.family.reference(self.spec, inp)))
        return out

    def verify(self, cand: Candidate, module: Any, extra: list | None = None) -> Diagnostics:
        n = 0
        cached = self.cases()
        for i, (name, sp, inputs, refs) in enumerate([*cached, *(extra or [])]):  # type: ignore[misc]
            try:
                plan = self.family.call_plan(sp, cand)
            except Exception as e:  # noqa: BLE001 - a bad candidate is a value
                return Diagnostics("plan", f"{type(e).__name__}: {e}", case=name, cases_checked=n)
            before = [None if t is None else t.clone() for t in inputs]
            try:
                outs = launch(module, plan, inputs, device=self.device, poison=True)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            except Exception as e:  # noqa: BLE001
                return Diagnostics("verify", f"{type(e).__name__}: {e}", case=name, cases_checked=n)
            for t, b in zip(inputs, before):
                if t is not None and not _same(t, b):
                    for t2, b2 in zip(inputs, before):  # cached cases must stay pristine for later candidates
                        if t2 is not None:
                            t2.copy_(b2)
                    return Diagnostics("verify", "kernel modified an input", case=name, cases_checked=n)
            if _aliases(outs, [*inputs, *refs]):
                return Diagnostics("verify", "an output aliases an input or reference buffer", case=name, cases_checked=n)
            semantic = self.family.compare(sp, inputs, outs, refs)  # None: numeric, below
            if semantic:
                return Diagnostics("verify", semantic, case=name, cases_checked=n)
            slacks = self._slacks(i if i < len(cached) else None, sp, inputs, refs) if semantic is None else None
            for j, (o, r) in enumerate(zip(outs, refs) if semantic is None else ()):
                rtol, atol = self.family.tolerance(o.dtype)
                ok, mabs, mrel, where = compare(o, r, rtol, atol, slacks[j] if slacks else None)
                if not ok:
                    return Diagnostics(
                        "verify", f"output {j} differs from reference", case=name,
                        max_abs_err=mabs, max_rel_err=mrel, where=where, cases_checked=n,
                    )
            n += 1
        return Diagnostics("ok", cases_checked=n)

    def _slacks(self, case: int | None, sp: OpSpec, inputs: list, refs: list) -> list | None:
        """``tolerance_slack`` of a case, computed once per cached case (it runs a reference)."""
        if case is None:
            return self.family.tolerance_slack(sp, inputs, refs)
        if case not in self._slack:
            self._slack[case] = self.family.tolerance_slack(sp, inputs, refs)
        return self._slack[case]

    def evaluate(self, cand: Candidate) -> ScoredResult:
        try:
            module = load_module(cand.source, interpret=needs_interpreter(self.device))
        except Exception:  # noqa: BLE001
            return ScoredResult(cand, False, None, Diagnostics("compile", traceback.format_exc(limit=3)))
        t0 = time.monotonic()
        with self.gate.shared() as waited_v:  # compiles (first launches) and checks overlap other workers'
            diag = self.verify(cand, module, extra=self._fresh_cases())
        verify_s = time.monotonic() - t0 - waited_v
        if diag.stage != "ok":
            diag.profile["stage_s"] = {"verify": verify_s, "gate_wait": waited_v}
            return ScoredResult(cand, False, None, diag)
        try:
            plan = self.family.call_plan(self.spec, cand)
            inputs = self.cases()[0][2]
            with self.gate.exclusive() as waited_t:  # ...but a timing has the GPU to itself
                t1 = time.monotonic()
                outs = launch(module, plan, inputs, device=self.device)
                ms = self.timer(lambda: launch(module, plan, inputs, device=self.device, outs=outs))
                time_s = time.monotonic() - t1
        except Exception as e:  # noqa: BLE001
            return ScoredResult(cand, False, None, Diagnostics("time", f"{type(e).__name__}: {e}"))
        diag.profile = self.profile(module, plan, ms)
        # where the evaluation's time went (compile is inside verify: the first launches compile)
        diag.profile["stage_s"] = {"verify": verify_s, "time": time_s, "gate_wait": waited_v + waited_t}
        ev = {"cases": [c[0] for c in self.cases()], "seeds": self.seeds, "fresh_seeds": self.fresh_seeds}
        return ScoredResult(cand, True, ms, diag, ev)

    def profile(self, module: Any, plan: Any, ms: float | None) -> dict:
        """Resource use of the compiled kernel; achieved bytes/s and FLOP/s against the device's
        measured ceilings; the floor and whether the op is memory- or compute-bound."""
        from ..hardware import matmul_rate, roofline

        prof: dict = dict(plan_resources(module, plan))
        try:
            nbytes = self.family.floor_bytes(self.spec)
        except NotImplementedError:
            return prof
        flops = self.family.floor_flops(self.spec)
        rate = None
        if flops and self.device.type == "cuda":
            first = next((a for a in self.spec.args if a is not None), None)
            rate = matmul_rate(self.device, first.torch_dtype if first is not None else torch.bfloat16)
        prof.update(roofline(nbytes, flops, ms, self.floor_bw, rate))
        return prof

    def reverify(self, cand: Candidate, seeds: int) -> Diagnostics:
        """More fresh seeds for a result too good to take on trust (>10x over the baseline)."""
        module = load_module(cand.source, interpret=needs_interpreter(self.device))
        saved, self.fresh_seeds = self.fresh_seeds, seeds
        try:
            with self.gate.shared():
                return self.verify(cand, module, extra=self._fresh_cases())
        finally:
            self.fresh_seeds = saved

    def baseline_fn(self, kind: str = "eager") -> Callable[[], Any]:
        """The baseline as a thunk over the first case's inputs. ``"eager"``: the ATen op (for a
        fallback op that is also what Inductor runs); ``"inductor"``: the op compiled alone by
        Inductor (for a contested op Inductor lowers: its kernel is what kevolve must beat)."""
        inputs = self.cases()[0][2]
        if kind == "eager":
            return lambda: self.family.eager(self.spec, inputs)
        if kind != "inductor":
            raise ValueError(f"unknown baseline {kind!r}; expected 'eager' or 'inductor'")
        family, spec = self.family, self.spec
        present = [i for i, t in enumerate(inputs) if t is not None]

        def op(*ts: torch.Tensor) -> Any:
            full: list = [None] * len(inputs)
            for i, t in zip(present, ts):
                full[i] = t
            return family.eager(spec, full)

        compiled = torch.compile(op, backend="inductor", fullgraph=True, dynamic=False)
        args = [inputs[i] for i in present]
        compiled(*args)  # compile outside the timer
        return lambda: compiled(*args)

    def baseline_ms(self, kind: str = "eager") -> float | None:
        """The baseline's time on the same inputs, measured with the same timer (None if it fails)."""
        if kind in self._baselines:
            return self._baselines[kind]
        ms = None
        try:
            fn = self.baseline_fn(kind)
            with self.gate.exclusive():
                ms = self.timer(fn)
        except Exception as e:  # noqa: BLE001 - no baseline: the search still ranks candidates
            import logging

            logging.getLogger("torch_kevolve").warning("kevolve: %s baseline for %s failed: %s: %s", kind,
                                                       self.spec.describe(), type(e).__name__, e)
        self._baselines[kind] = ms
        return ms


# ------------------------------------------------------------------------------------------------
# Cases computed in one process, candidates judged in another
# ------------------------------------------------------------------------------------------------
CASES_FORMAT = 1


def record_cases(evaluator: Evaluator, path: str, fresh: int = 8) -> str:
    """Write ``evaluator``'s verification cases (inputs and reference outputs) plus a pool of
    ``fresh`` unseen cases to ``path``; returns the file's sha256.

    Why: a user's custom op exists only in the process that defined it, so a harness worker cannot
    compute its reference. The caller computes the cases once, workers load them
    (:class:`RecordedEvaluator`) and run the untrusted candidates there, never in the user's process.
    """
    import hashlib

    def cpu(ts: Sequence[torch.Tensor | None]) -> list:
        return [None if t is None else t.detach().cpu() for t in ts]

    doc = {"format": CASES_FORMAT, "spec": evaluator.spec.to_json(), "seeds": list(evaluator.seeds),
           "cases": [(n, sp.to_json(), cpu(i), cpu(r)) for n, sp, i, r in evaluator.cases()],  # type: ignore[misc]
           "fresh": []}
    saved = evaluator.fresh_seeds
    evaluator.fresh_seeds = fresh
    try:
        doc["fresh"] = [(n, sp.to_json(), cpu(i), cpu(r)) for n, sp, i, r in evaluator._fresh_cases()]
    finally:
        evaluator.fresh_seeds = saved
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        torch.save(doc, f)
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


class RecordedEvaluator(Evaluator):
    """An Evaluator over cases another process recorded (:func:`record_cases`): verification and
    timing as usual; fresh cases come from the recorded pool in turn; there is no baseline here (the
    op it would run lives in the recording process)."""

    def __init__(self, family: OpFamily, path: str, digest: str, device: torch.device | str | None = None,
                 timer: Timer | None = None, fresh_seeds: int = 1, gate: Any = None) -> None:
        import hashlib

        raw = open(path, "rb").read()
        if hashlib.sha256(raw).hexdigest() != digest:
            raise ValueError(f"recorded cases {path} do not match their checksum: refusing them")
        import io

        doc = torch.load(io.BytesIO(raw), weights_only=True)
        if doc.get("format") != CASES_FORMAT:
            raise ValueError(f"recorded cases {path}: format {doc.get('format')!r}, expected {CASES_FORMAT}")
        spec = OpSpec.from_json(doc["spec"])
        super().__init__(family, spec, device=device, timer=timer, seeds=0, fresh_seeds=fresh_seeds, gate=gate)
        self.seeds = list(doc["seeds"])
        dev = self.device

        def load(rows: list) -> list:
            return [(n, OpSpec.from_json(sp), [None if t is None else t.to(dev) for t in i],
                     [None if t is None else t.to(dev) for t in r]) for n, sp, i, r in rows]

        self._cases = load(doc["cases"])  # type: ignore[assignment]
        self._pool = load(doc["fresh"])
        self._next = 0

    def _fresh_cases(self) -> list[tuple[str, OpSpec, list, list]]:
        if not self._pool:
            return []
        out = []
        for _ in range(min(self.fresh_seeds, len(self._pool))):
            out.append(self._pool[self._next % len(self._pool)])
            self._next += 1
        return out

    def baseline_fn(self, kind: str = "eager") -> Callable[[], Any]:
        raise RuntimeError("recorded cases carry no baseline: the op runs only in the process that recorded them")
