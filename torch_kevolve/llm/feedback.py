"""Turning evaluation results into what the model reads and what the knowledge base is asked.

Why a module of its own: the same facts (stage, error, failing case, error size, time, % of floor,
bound, registers, spills) feed three consumers, the parent section of a prompt, the sibling and
trajectory summaries, and the retrieval query, and they must agree. A search tree node keeps only a
summary of its result; the full :class:`ScoredResult` is kept by :class:`ResultLog`, which watches
the search's batch evaluations.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..search.tree import ident

if TYPE_CHECKING:
    from ..families.base import Candidate
    from ..search.evaluate import ScoredResult
    from ..search.tree import Node

FAILED_STAGES = ("static", "compile", "plan", "verify", "time", "timeout", "crash", "harness", "parse")


@dataclass
class Feedback:
    """One candidate's result, as much as is known about it."""

    stage: str = ""  # "ok" | a failure stage | "" (not evaluated)
    error: str = ""
    case: str = ""
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    where: list[int] | None = None
    cases_checked: int = 0
    time_ms: float | None = None
    baseline_ms: float | None = None
    profile: dict = field(default_factory=dict)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return self.stage == "ok"

    @property
    def failed(self) -> bool:
        return self.stage in FAILED_STAGES

    @property
    def bound(self) -> str:
        return str(self.profile.get("bound") or "")

    @staticmethod
    def of_result(r: "ScoredResult", baseline_ms: float | None = None) -> "Feedback":
        d = r.diagnostics
        return Feedback(stage="ok" if r.ok else (d.stage if d.stage != "ok" else "verify"), error=d.error or "",
                        case=d.case or "", max_abs_err=d.max_abs_err, max_rel_err=d.max_rel_err, where=d.where,
                        cases_checked=d.cases_checked, time_ms=r.time_ms, baseline_ms=baseline_ms,
                        profile=dict(d.profile or {}), summary=d.summary())

    @staticmethod
    def of_node(n: "Node", baseline_ms: float | None = None) -> "Feedback":
        """From a tree node's summary (when no full result was seen): stage, summary, time."""
        if n.ok is None:
            return Feedback(summary="not evaluated")
        return Feedback(stage="ok" if n.ok else (n.stage or "verify"), error="" if n.ok else n.diag,
                        time_ms=n.time_ms, baseline_ms=baseline_ms, summary=n.diag)

    def headline(self) -> str:
        """One line: the verdict and the figures that matter."""
        if not self.stage:
            return self.summary or "not evaluated"
        if self.ok:
            parts = []
            if self.time_ms is not None:
                parts.append(f"{self.time_ms:.4g} ms")
            if self.baseline_ms and self.time_ms:
                parts.append(f"{self.baseline_ms / self.time_ms:.2f}x vs baseline {self.baseline_ms:.4g} ms")
            p = self.profile
            if isinstance(p.get("pct_of_floor"), (int, float)):
                parts.append(f"{p['pct_of_floor']:.0f}% of floor ({p.get('bound', '?')}-bound)")
            return "verified" + (": " + ", ".join(parts) if parts else "")
        return self.summary or f"{self.stage} failed"

    def render(self, max_error_chars: int = 1500) -> str:
        """Every known fact, one per line, for the parent section of a prompt."""
        lines = [f"- result: {self.headline()}"]
        if self.failed:
            lines.append(f"- failed at stage: {self.stage}" + (f" (input set `{self.case}`)" if self.case else ""))
            if self.max_abs_err is not None:
                rel = f", max rel err {self.max_rel_err:.3g}" if self.max_rel_err is not None else ""
                lines.append(f"- error size: max abs err {self.max_abs_err:.3g}{rel}, "
                             f"first bad element at {self.where}")
            if self.error:
                err = self.error.strip()
                if len(err) > max_error_chars:
                    err = "[...]\n" + err[-max_error_chars:]
                lines.append("- error:\n```\n" + err + "\n```")
        elif self.ok:
            if self.cases_checked:
                lines.append(f"- verified on {self.cases_checked} input sets (random seeds and edge cases)")
            p = self.profile
            for key, label, fmt in (
                ("achieved_GBps", "achieved bandwidth", "{:.1f} GB/s"),
                ("pct_of_bandwidth", "of measured copy bandwidth", "{:.0f}%"),
                ("achieved_TFLOPs", "achieved compute", "{:.1f} TFLOP/s"),
                ("floor_ms", "floor (bytes / bandwidth)", "{:.4g} ms"),
                ("bytes_moved", "bytes that must move", "{:,}"),
                ("n_regs", "registers per thread", "{}"),
                ("n_spills", "register spills", "{}"),
                ("shared_bytes", "shared memory", "{} bytes"),
            ):
                v = p.get(key)
                if isinstance(v, (int, float)) and v >= 0:
                    lines.append(f"- {label}: {fmt.format(v)}")
        return "\n".join(lines)


def _error_words(text: str, limit: int = 12) -> list[str]:
    """The informative words of an error: exception names and the last lines' identifiers."""
    tail = "\n".join(text.strip().splitlines()[-4:])
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_.]{2,}", tail)
    return list(dict.fromkeys(w for w in words if not w.startswith(("File", "line"))))[:limit]


def knowledge_query(fb: Feedback | None, family: str = "", op: str = "", extra: Sequence[str] = ()) -> str:
    """Retrieval query from diagnostics: a memory-bound parent asks for memory passages, a compile
    error for the error's topic, a wrong result for masks/indexing/precision; plus the op's words."""
    q: list[str] = []
    if family:
        q += [family, family.replace("_", " ")]
    if op:
        q.append(op.replace("aten.", "").split(".")[0].replace("_", " "))
    if fb is not None:
        st = fb.stage
        if st in ("compile", "static", "parse"):
            q += ["compile error", "triton", *_error_words(fb.error)]
        elif st == "plan":
            q += ["constexpr", "config", "block size", "launch contract"]
        elif st == "verify" and re.search(r"(Compilation|Interpreter|Name|Type|Attribute|Value)Error", fb.error):
            q += ["compile error", "triton", *_error_words(fb.error)]  # under the interpreter, compiling is running
        elif st == "verify":
            q += ["wrong result", "mask", "boundary", "edge case", "int64", "overflow", "precision"]
            if fb.case:
                q.append(fb.case.replace("_", " ").replace(":", " "))
            if "nan" in (fb.error + fb.case).lower():
                q.append("nan")
            q += _error_words(fb.error, 6)
        elif st in ("timeout", "crash"):
            q += ["out-of-bounds", "illegal memory access", "loop bounds", "int64 addressing", "interpreter slow"]
        elif st == "ok":
            b = fb.bound
            pct = fb.profile.get("pct_of_floor")
            if b == "memory" or (not b and fb.profile.get("bytes_moved")):
                q += ["memory-bound", "memory bandwidth", "coalescing", "in-flight loads", "occupancy", "latency"]
            elif b == "compute":
                q += ["compute-bound", "tensor cores", "tl.dot", "num_stages", "pipelining"]
            if isinstance(pct, (int, float)) and pct < 30:
                q += ["parallelism", "more programs", "latency-bound"]
            if (fb.profile.get("n_spills") or 0) > 0 or (fb.profile.get("n_regs") or 0) > 128:
                q += ["registers", "spills", "occupancy"]
    q += list(extra)
    return " ".join(dict.fromkeys(w for w in q if w))


class ResultLog:
    """Full results by candidate identity, filled by watching the search's batch evaluations."""

    def __init__(self) -> None:
        self._by: dict[tuple, "ScoredResult"] = {}
        self._lock = threading.Lock()

    def observe(self, results: Sequence["ScoredResult"]) -> None:
        with self._lock:
            for r in results:
                self._by.setdefault(ident(r.candidate), r)  # the first (search) result, not a re-time

    def get(self, cand: "Candidate | None") -> "ScoredResult | None":
        if cand is None:
            return None
        with self._lock:
            return self._by.get(ident(cand))

    def feedback(self, node: "Node", baseline_ms: float | None = None) -> Feedback:
        r = self.get(node.candidate)
        if r is not None and node.ok is not None and bool(r.ok) != bool(node.ok):
            r = None  # re-verification changed the verdict: the node is right
        return Feedback.of_result(r, baseline_ms) if r is not None else Feedback.of_node(node, baseline_ms)

    def wrap(self, evaluate_batch: Callable[[Sequence["Candidate"]], list]) -> Callable[[Sequence["Candidate"]], list]:
        def watched(cands: Sequence["Candidate"]) -> list[Any]:
            out = evaluate_batch(cands)
            self.observe(out)
            return out

        return watched


__all__ = ["Feedback", "ResultLog", "knowledge_query", "FAILED_STAGES"]
