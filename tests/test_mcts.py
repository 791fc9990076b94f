"""Tree search (MCTS and the other strategies) on a synthetic landscape with a known optimum.

The fake family needs no Triton: its candidates are points on a knob grid, and ``evaluate_batch``
computes a time from the config (a smooth bowl per template, a little deterministic roughness, and
invalid regions that fail). One test at the end runs the real embedding_bag family through
``search_spec``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import statistics
from typing import Any, Sequence

import pytest
import torch

from torch_kevolve.families.base import Candidate, OpFamily, Skip
from torch_kevolve.search import (
    Budget, Diagnostics, ScoredResult, SearchOutcome, SearchTree, TemplateSynthesizer, get_strategy, strategy_names,
)
from torch_kevolve.search.tree import ROOT

SRC = {"rows": "# fake template: rows\n", "tiles": "# fake template: tiles\n"}
BLOCKS = (16, 32, 64, 128, 256)


class FakeFamily(OpFamily):
    """425 candidates on two templates; the landscape (its optimum) depends on ``seed``."""

    name = "fake"

    def __init__(self, seed: int = 0) -> None:
        r = random.Random(seed)
        self.opt = {
            "rows": (r.uniform(4.5, 7.5), r.uniform(4.5, 7.5), r.uniform(0.0, 3.0), r.choice((2, 3))),
            "tiles": (r.uniform(4.5, 7.5), r.uniform(4.5, 7.5), r.uniform(1.0, 3.0), r.uniform(0.0, 2.0)),
        }
        self.base = {"rows": 1.0, "tiles": r.uniform(0.85, 1.15)}
        self.seed = seed
        self._cands = self._grid()

    def _grid(self) -> list[Candidate]:
        out = []
        for bm, bn, nw, ns in itertools.product(BLOCKS, BLOCKS, (1, 2, 4, 8), (2, 3)):
            cfg = (("BLOCK_M", bm), ("BLOCK_N", bn), ("num_warps", nw), ("num_stages", ns))
            out.append(Candidate(SRC["rows"], cfg, "template", "rows"))
        for bm, bn, sp, nw in itertools.product(BLOCKS, BLOCKS, (1, 2, 4), (2, 4, 8)):
            cfg = (("BLOCK_M", bm), ("BLOCK_N", bn), ("SPLIT", sp), ("num_warps", nw))
            out.append(Candidate(SRC["tiles"], cfg, "template", "tiles"))
        return out

    # the landscape -------------------------------------------------------------------------------
    def failure(self, cand: Candidate) -> str | None:
        c = cand.cfg
        if c["BLOCK_M"] * c["BLOCK_N"] > 16384:
            return "compile"  # "out of shared memory"
        if c["num_warps"] == 8 and c["BLOCK_M"] * c["BLOCK_N"] < 1024:
            return "verify"  # "wrong results with idle warps"
        return None

    def cost(self, cand: Candidate) -> float:
        c = cand.cfg
        x, y, w = math.log2(c["BLOCK_M"]), math.log2(c["BLOCK_N"]), math.log2(c["num_warps"])
        x0, y0, w0, e0 = self.opt[cand.template]
        t = 1 + 0.25 * (x - x0) ** 2 + 0.2 * (y - y0) ** 2 + 0.15 * (w - w0) ** 2 + 0.1 * (x - x0) * (y - y0)
        if cand.template == "rows":
            t += 0.08 * (c["num_stages"] != e0)
        else:
            t += 0.12 * (math.log2(c["SPLIT"]) - e0) ** 2
        h = int(hashlib.sha256(f"{self.seed}{cand.template}{cand.config}".encode()).hexdigest()[:8], 16)
        return self.base[cand.template] * t * (1 + 0.01 * (h / 0xFFFFFFFF - 0.5))

    def optimum(self) -> float:
        return min(self.cost(c) for c in self._cands if self.failure(c) is None)

    def evaluate_batch(self, cands: Sequence[Candidate]) -> list[ScoredResult]:
        out = []
        for c in cands:
            stage = self.failure(c)
            if stage:
                out.append(ScoredResult(c, False, None, Diagnostics(stage, f"fake {stage} failure", case="seed17")))
            else:
                out.append(ScoredResult(c, True, self.cost(c), Diagnostics("ok", cases_checked=3)))
        return out

    # OpFamily ------------------------------------------------------------------------------------
    def candidates(self, spec: Any) -> list[Candidate]:
        return list(self._cands)

    def call_plan(self, spec: Any, cand: Candidate) -> Any:
        cfg = cand.cfg
        if cand.template not in SRC or cfg.get("BLOCK_M") not in BLOCKS or cfg.get("BLOCK_N") not in BLOCKS:
            raise ValueError("off the grid")
        return None

    def match(self, node: Any) -> Skip:
        return Skip("fake")

    def eager(self, spec: Any, inputs: Any) -> list[torch.Tensor]:
        raise NotImplementedError

    reference = eager

    def make_inputs(self, spec: Any, seed: int) -> list:
        raise NotImplementedError

    def edge_cases(self, spec: Any) -> list:
        return []


class Found(Exception):
    """Raised by the counting evaluator once the optimum (within 2%) has been evaluated."""


def evals_to_optimum(strategy: str, seed: int, cap: int = 425, **opts: Any) -> int:
    fam = FakeFamily(seed)
    target = fam.optimum() * 1.02
    count = 0

    def evaluate_batch(cands: Sequence[Candidate]) -> list[ScoredResult]:
        nonlocal count
        out = fam.evaluate_batch(cands)
        for r in out:
            count += 1
            if r.ok and r.time_ms <= target:
                raise Found
        return out

    try:
        get_strategy(strategy)(fam, None, TemplateSynthesizer(), evaluate_batch, Budget(max_evals=cap), seed,
                               baseline_ms=2.0, **opts)
    except Found:
        return count
    return cap + 1  # never found within the cap: censored


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(X >= wins) for X ~ Binomial(wins + losses, 1/2); ties dropped."""
    n = wins + losses
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2 ** n


# -- the statistical claim ----------------------------------------------------------------------------
def test_mcts_reaches_the_optimum_in_fewer_evaluations_than_random():
    seeds = range(40)
    m = [evals_to_optimum("mcts", s) for s in seeds]
    rnd = [evals_to_optimum("random", s) for s in seeds]
    wins = sum(a < b for a, b in zip(m, rnd))
    losses = sum(a > b for a, b in zip(m, rnd))
    p = sign_test_p(wins, losses)
    print(f"\nmedian evaluations to the optimum: mcts {statistics.median(m)}, random {statistics.median(rnd)}; "
          f"mcts fewer on {wins}/{len(m)} seeds, more on {losses}; one-sided sign test p = {p:.2e}")
    assert statistics.median(m) < statistics.median(rnd)
    assert p < 0.01


# -- engine behaviour ----------------------------------------------------------------------------------
def _run(strategy: str = "mcts", seed: int = 3, budget: Budget = Budget(max_evals=60), fam_seed: int = 1,
         **opts: Any) -> tuple[FakeFamily, SearchOutcome]:
    fam = FakeFamily(fam_seed)
    out = get_strategy(strategy)(fam, None, TemplateSynthesizer(), fam.evaluate_batch, budget, seed,
                                 baseline_ms=2.0, **opts)
    return fam, out


def test_same_seed_same_sequence_and_different_seed_differs():
    seq = lambda out: [(r.candidate.template, r.candidate.config) for r in out.results]  # noqa: E731
    a, b, c = _run(seed=5)[1], _run(seed=5)[1], _run(seed=6)[1]
    assert seq(a) == seq(b) and len(seq(a)) == 60
    assert seq(a) != seq(c)
    untimed = lambda out: [{k: v for k, v in n.items() if k != "t"} for n in out.tree.to_json()["nodes"]]  # noqa: E731
    assert untimed(a) == untimed(b)  # the whole tree, statistics included, only clock readings differ


@pytest.mark.parametrize("name", ["mcts", "greedy", "evolutionary", "random", "exhaustive"])
def test_every_strategy_runs_and_honours_the_budget(name):
    assert name in strategy_names()
    fam, out = _run(name, budget=Budget(max_evals=23))
    assert len(out.results) == 23 and len(out.tree) == 23
    assert out.best is not None and out.best.time_ms == min(r.time_ms for r in out.results if r.ok)
    assert out.best.time_ms < 2.0 * fam.optimum()
    assert out.strategy == name and "23 evaluations" in out.stop_reason
    assert len({(r.candidate.source, r.candidate.config) for r in out.results}) == 23  # never re-evaluated


def test_patience_and_wall_budget():
    _, out = _run(budget=Budget(max_evals=400, patience=10))
    assert out.stop_reason.startswith("patience")
    best_at = min(i for i, r in enumerate(out.results) if r.ok and r.time_ms == out.best.time_ms)
    # stopped within one batch after 10 evaluations went by without a better verified time
    assert 10 <= len(out.results) - 1 - best_at < 10 + 4
    _, out = _run(budget=Budget(wall_s=0.0))
    assert out.results == [] and "wall" in out.stop_reason


class Spy:
    """A template synthesizer that fails the test if MCTS asks it to expand a node it must not:
    one already exhausted (pruned), below an exhausted node, or spent (nothing more to give)."""

    name = "spy"

    def __init__(self) -> None:
        self.inner = TemplateSynthesizer()
        self.prior, self.propose = self.inner.prior, self.inner.propose
        self.pruned: set[int] = set()
        self.spent: set[int] = set()
        self.calls = 0

    def expand(self, family, spec, tree, node, k, mode, rng):
        assert not any(n.id in self.pruned for n in tree.path(node.id)), f"n{node.id} selected after being pruned"
        assert node.id not in self.spent, f"n{node.id} expanded after it had nothing more to give"
        self.calls += 1
        out = self.inner.expand(family, spec, tree, node, k, mode, rng)
        # what MCTS has marked so far (this call's node may become spent if ``out`` is empty)
        self.pruned |= {n.id for n in tree if n.exhausted}
        self.spent |= {n.id for n in tree if n.spent}
        return out


def test_exhausted_nodes_are_never_selected_again():
    fam = FakeFamily(4)
    spy = Spy()
    out = get_strategy("mcts")(fam, None, spy, fam.evaluate_batch, Budget(max_evals=200), 1, baseline_ms=2.0,
                               stall_limit=2)
    assert len(out.results) == 200
    assert any(n.exhausted for n in out.tree), "a stall limit of 2 should have pruned some branches"
    assert spy.pruned and spy.calls > 200 // 4


def test_search_ends_when_everything_is_spent():
    """A tiny space and no budget: every candidate evaluated exactly once, then a clean stop."""
    fam = FakeFamily(2)
    fam._cands = [c for c in fam.candidates(None) if c.template == "rows" and c.cfg["num_stages"] == 2][:40]
    spy = Spy()
    out = get_strategy("mcts")(fam, None, spy, fam.evaluate_batch, Budget(), 0, baseline_ms=2.0, stall_limit=2)
    assert len(out.tree) == len(out.results) == 40
    assert out.stop_reason == "search space exhausted"
    assert out.best is not None and out.best.time_ms == pytest.approx(fam.optimum())
    assert spy.spent or spy.pruned


def test_failed_candidates_stay_in_the_tree_with_diagnostics():
    fam, out = _run(budget=Budget(max_evals=80), fam_seed=0)
    failed = [n for n in out.tree if n.ok is False]
    assert failed, "the landscape has invalid regions; some should have been tried"
    assert all(n.stage in ("compile", "verify") and "fake" in n.diag and n.reward == 0 for n in failed)
    assert sum(1 for r in out.results if not r.ok) == len(failed)


def test_tree_json_round_trip_and_replay():
    fam, out = _run(budget=Budget(max_evals=30))
    tree = out.tree
    tree.winner = tree.best().id
    doc = json.loads(json.dumps(tree.to_json()))
    assert len(doc["sources"]) == 2  # one per template, not one per node
    back = SearchTree.from_json(doc)
    assert back.to_json() == doc
    for a, b in zip(tree, back):
        assert (a.id, a.parent, a.candidate, a.ok, a.time_ms, a.order, a.mode, a.children) == \
               (b.id, b.parent, b.candidate, b.ok, b.time_ms, b.order, b.mode, b.children)
    text = back.replay()
    lines = text.splitlines()
    assert lines[0].startswith("search tree: strategy mcts, seed 3, 30 evaluated")
    assert sum("<- new best" in ln for ln in lines) >= 1
    assert f"winner: n{tree.winner}" in text and "failed" in text
    assert len(json.dumps(doc)) < 300 * 30  # compact: a few hundred bytes per node


def test_memory_modes_produce_the_right_children():
    fam = FakeFamily(0)
    synth = TemplateSynthesizer()
    rng = random.Random(0)
    tree = SearchTree("test")
    # restart from an empty tree: the family's first choice, then far-apart picks (both templates)
    first = synth.expand(fam, None, tree, tree.root, 6, "restart", rng)
    assert first[0] == fam.candidates(None)[0] and len(first) == 6
    assert {c.template for c in first} == {"rows", "tiles"}
    a = tree.add(fam.candidates(None)[100], ROOT, "restart")  # rows BM=64 BN=64 nw=4 ns=2 (a grid point)
    tree.record(a.id, fam.evaluate_batch([a.candidate])[0])
    ca = a.candidate.cfg
    # inherit: same template with one knob one step away, or the same config on the other template
    kids = synth.expand(fam, None, tree, a, 10, "inherit", rng)
    assert len(kids) == 10

    def one_step(c: Candidate, ref: dict) -> bool:
        if c.template != "rows":  # the other template: every knob both have is the same
            return all(c.cfg[k] == ref[k] for k in c.cfg if k in ref)
        moved = [k for k in c.cfg if c.cfg[k] != ref[k]]
        if len(moved) != 1:
            return False
        k = moved[0]
        scale = {"num_warps": (1, 2, 4, 8), "num_stages": (2, 3)}.get(k, BLOCKS)
        return abs(scale.index(c.cfg[k]) - scale.index(ref[k])) == 1

    assert all(one_step(c, ca) for c in kids)
    assert sum(c.template == "rows" for c in kids) == 7  # 2 + 2 + 2 knob moves, num_stages 2 -> 3
    # siblings: neighbours of the best sibling
    b = tree.add(next(c for c in fam.candidates(None) if c.template == "tiles" and c.cfg == {
        "BLOCK_M": 32, "BLOCK_N": 32, "SPLIT": 2, "num_warps": 4}), ROOT, "restart")
    tree.record(b.id, fam.evaluate_batch([b.candidate])[0])
    assert b.ok
    sib = synth.expand(fam, None, tree, a, 4, "siblings", rng)
    assert sib and all(c.template == "tiles" for c in sib)
    assert all(sum(c.cfg[k] != b.candidate.cfg[k] for k in c.cfg) == 1 for c in sib)
    # combine: every knob from one of the two parents
    comb = synth.expand(fam, None, tree, a, 50, "combine", rng)
    assert comb
    for c in comb:
        for k, v in c.config:
            assert v in {ca.get(k), b.candidate.cfg.get(k)} - {None}
        assert (c.template, c.config) not in {(a.candidate.template, a.candidate.config),
                                              (b.candidate.template, b.candidate.config)}
    # restart with a populated tree: far from both nodes
    far = synth.expand(fam, None, tree, a, 3, "restart", rng)
    near = {(c.template, c.config) for c in kids + sib}
    assert far and not near & {(c.template, c.config) for c in far}
    # never propose what the tree holds; nothing new -> []
    for c in fam.candidates(None):
        if c not in tree:
            tree.add(c, ROOT, "restart")
    for mode in ("inherit", "siblings", "combine", "restart"):
        assert [c for c in synth.expand(fam, None, tree, a, 4, mode, rng) if c.origin == "template"] == []


def test_combine_keeps_only_configs_the_family_accepts():
    fam = FakeFamily(0)
    fam._cands = [c for c in fam.candidates(None) if c.cfg["BLOCK_M"] != 64]  # 64 accepted but not listed
    synth, tree, rng = TemplateSynthesizer(), SearchTree(), random.Random(1)
    rows = [c for c in fam.candidates(None) if c.template == "rows"]
    a = tree.add(next(c for c in rows if c.cfg == {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 2}))
    b = tree.add(next(c for c in rows if c.cfg == {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 2, "num_stages": 2}))
    for n in (a, b):
        tree.record(n.id, fam.evaluate_batch([n.candidate])[0])
    out = synth.expand(fam, None, tree, a, 20, "combine", rng)
    assert len(out) == 2 ** 3 - 2  # three knobs differ; the parents themselves excluded
    assert all(fam.call_plan(None, c) is None for c in out)


def test_expand_falls_back_to_propose_for_plain_synthesizers():
    fam = FakeFamily(0)

    class Plain:
        name = "plain"

        def propose(self, family, spec, history, k):
            seen = {(getattr(h, "candidate", h).source, getattr(h, "candidate", h).config) for h in history}
            return [c for c in family.candidates(spec) if (c.source, c.config) not in seen][:k]

    out = get_strategy("mcts")(fam, None, Plain(), fam.evaluate_batch, Budget(max_evals=12), 0, baseline_ms=2.0)
    assert [r.candidate for r in out.results] == fam.candidates(None)[:12]


# -- settings and the real family ----------------------------------------------------------------------
def test_budget_settings(monkeypatch):
    from torch_kevolve.config import Settings, parse_budget
    from torch_kevolve.search import settings_budget

    assert parse_budget("64") == (64, None) and parse_budget("120s") == (None, 120.0)
    assert parse_budget("64,120s") == (64, 120.0) and parse_budget("") == (None, None)
    with pytest.raises(ValueError, match="KEVOLVE_BUDGET"):
        parse_budget("lots")
    monkeypatch.setenv("KEVOLVE_BUDGET", "12,30s")
    monkeypatch.setenv("KEVOLVE_PATIENCE", "5")
    monkeypatch.setenv("KEVOLVE_SEARCH", "Greedy")
    s = Settings.from_env()
    assert s.search == "greedy" and s.patience == 5
    assert settings_budget(s, on_cpu=True) == Budget(12, 30.0, 5)
    assert settings_budget(Settings(), on_cpu=True) == Budget(4, 120.0, None)  # max_candidates -1: auto
    assert settings_budget(Settings(), on_cpu=False) == Budget(None, 120.0, None)
    assert settings_budget(Settings(max_candidates=7, search_budget_s=9), on_cpu=True) == Budget(7, 9.0, None)
    monkeypatch.setenv("KEVOLVE_BUDGET", "soon")
    with pytest.raises(ValueError, match="KEVOLVE_BUDGET"):
        Settings.from_env()
    with pytest.raises(ValueError, match="unknown kevolve option"):
        Settings.from_env({"budgett": "3"})
    with pytest.raises(ValueError, match="unknown search strategy"):
        get_strategy("annealing")


def test_search_spec_with_mcts_stores_the_tree(monkeypatch, store_dir, capsys):
    from torch_kevolve import cli
    from torch_kevolve.config import Settings
    from torch_kevolve.families import get_family
    from torch_kevolve.search import search_spec
    from torch_kevolve.store import KernelStore

    fam = get_family("embedding_bag")
    g = torch.Generator().manual_seed(0)
    spec = fam.spec_for(torch.randn(30, 8, generator=g), torch.randint(0, 30, (12,), generator=g),
                        torch.tensor([0, 2, 5, 9]), mode=0)
    monkeypatch.setenv("KEVOLVE_SEARCH", "mcts")
    monkeypatch.setenv("KEVOLVE_BUDGET", "4")
    settings = Settings.from_env({"seeds": 1})
    entry, outcome = search_spec(fam, spec, settings, timer=lambda fn: (fn(), 1.0)[1])
    assert entry is not None
    search = entry.meta["search"]
    assert search["strategy"] == "mcts" and search["evaluated"] == 4 and len(search["trials"]) == 4
    tree = SearchTree.from_json(search["tree"])
    assert len(tree) == 4 and tree.winner is not None and tree.get(tree.winner).candidate == entry.candidate
    assert all(n.parent == ROOT and n.mode == "restart" for n in tree)  # the root's first expansion
    assert tree.evaluated()[0].candidate == fam.candidates(spec)[0]  # the family's default first
    assert KernelStore.from_settings(Settings.from_env()).put(entry)
    assert cli.main(["cache", "show", entry.key, "--tree"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("search tree: strategy mcts") and "winner: n" in out
