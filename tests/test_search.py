"""The Foundation search: a timer is injected, failures are scored values, the fastest verified wins."""
from __future__ import annotations

import dataclasses

import torch

from torch_kevolve.config import Settings
from torch_kevolve.families import get_family
from torch_kevolve.families.base import Candidate
from torch_kevolve.search import Evaluator, TemplateSynthesizer, exhaustive_search, search_spec

FAM = get_family("embedding_bag")


def _spec():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 12, generator=g)
    idx = torch.randint(0, 40, (25,), generator=g)
    off = torch.tensor([0, 3, 3, 10, 18])
    return FAM.spec_for(w, idx, off, mode=1)


class CostModel:
    """Deterministic 'timer': ms from the candidate's config, so the optimum is known."""

    def __init__(self, evaluator_ref: list) -> None:
        self.ref = evaluator_ref
        self.calls = 0

    def __call__(self, fn) -> float:
        fn()
        self.calls += 1
        cand = self.ref[0]
        return 1.0 + abs(cand.cfg.get("BLOCK_D", 64) - 16) / 16 + cand.cfg.get("num_warps", 4) / 100


def test_fastest_verified_wins_and_broken_candidate_is_a_value():
    spec = _spec()
    good = FAM.candidates(spec)[:4]
    broken_src = good[0].source.replace("tl.store(", "tl.store(out_ptr + 0 * ", 1)  # writes the wrong place
    broken = dataclasses.replace(good[0], source=broken_src, origin="test:broken")
    syntax = dataclasses.replace(good[1], source="import triton\ndef oops(:\n", origin="test:syntax")
    current: list[Candidate] = [good[0]]

    class Tracking(Evaluator):
        def evaluate(self, cand):
            current[0] = cand
            return super().evaluate(cand)

    ev = Tracking(FAM, spec, timer=CostModel(current), seeds=2)
    out = exhaustive_search(FAM, spec, TemplateSynthesizer(seeds=[broken, syntax]), ev, max_candidates=6)
    by_origin = {r.candidate.origin: r for r in out.results}
    assert not by_origin["test:syntax"].ok and by_origin["test:syntax"].diagnostics.stage == "compile"
    assert not by_origin["test:broken"].ok and by_origin["test:broken"].diagnostics.stage == "verify"
    assert by_origin["test:broken"].diagnostics.case is not None
    ok = [r for r in out.results if r.ok]
    assert ok and out.best is not None
    assert out.best.time_ms == min(r.time_ms for r in ok)


def test_search_spec_packages_an_entry():
    spec = _spec()
    entry, outcome = search_spec(FAM, spec, Settings(max_candidates=2, seeds=2), timer=lambda fn: (fn(), 1.0)[1])
    assert entry is not None and entry.spec == spec
    assert entry.meta["search"]["evaluated"] == 2
    assert entry.meta["evidence"]["checks"] >= 2 + 1  # seeds + edge cases
    assert entry.meta["proposer"] == "template"


def test_suspicious_speedup_is_reverified_and_a_cheat_dropped():
    """A kernel right on the evaluator's seeds but wrong elsewhere, timed as 100x: re-verification
    with more fresh seeds must catch it before it is accepted."""
    spec = _spec()
    good = FAM.candidates(spec)[:2]
    ev = Evaluator(FAM, spec, timer=lambda fn: (fn(), 1.0)[1], seeds=1, fresh_seeds=0)
    calls = {"n": 0}

    def reverify(cand, seeds):
        calls["n"] += 1
        from torch_kevolve.search.evaluate import Diagnostics
        return Diagnostics("verify", "wrong on fresh inputs", case="fresh-seed1") if calls["n"] == 1 else Diagnostics("ok")

    ev.reverify = reverify
    ev.baseline_ms = lambda: 100.0
    out = exhaustive_search(FAM, spec, TemplateSynthesizer(), ev, max_candidates=2, retime_top=0)
    assert calls["n"] == 2  # the first 100x winner failed, the second passed
    assert out.best is not None and out.best.evidence.get("reverified_fresh_seeds") == 4
    assert sum(not r.ok for r in out.results) == 1


def test_fresh_seed_per_candidate_differs():
    spec = _spec()
    ev = Evaluator(FAM, spec, timer=lambda fn: 1.0, seeds=1)
    a = ev._fresh_cases()[0][0]
    b = ev._fresh_cases()[0][0]
    assert a != b and a.startswith("fresh-seed")
    assert Evaluator(FAM, spec, seeds=1)._fresh_cases()[0][0] == a  # deterministic under seed_base


def test_output_aliasing_an_input_or_reference_is_rejected():
    """A plan that hands back an input's (or the reference's) storage as output must never pass,
    even though its values are then trivially 'right'."""
    from torch_kevolve.search.evaluate import _aliases

    spec = _spec()
    ev = Evaluator(FAM, spec, timer=lambda fn: 1.0, seeds=1)
    _, _, inputs, refs = ev.cases()[0]
    assert _aliases([inputs[0]], [*inputs, *refs])
    assert _aliases([refs[0].view(-1)[:4]], [*inputs, *refs])
    assert not _aliases([inputs[0].clone()], [*inputs, *refs])

    import torch_kevolve.search.evaluate as E

    real_launch = E.launch
    try:  # a 'kernel' whose output is the reference buffer itself
        E.launch = lambda module, plan, inp, device=None, poison=False, outs=None: [refs[0]]
        diag = ev.verify(FAM.candidates(spec)[0], module=None)
    finally:
        E.launch = real_launch
    assert diag.stage == "verify" and "aliases" in (diag.error or "")
