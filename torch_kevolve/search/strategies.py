"""Search strategies, by name: each drives a synthesizer and a batch evaluator within a budget.

Every strategy has one signature::

    run(family, spec, synth, evaluate_batch, budget, rng, *, baseline_ms=None, batch=..., **options) -> SearchOutcome

``evaluate_batch(list[Candidate]) -> list[ScoredResult]`` is the only way a strategy scores
candidates, so the in-process Evaluator loop and the parallel harness are interchangeable; a
strategy never sees the Evaluator. Every strategy records what it tried in a :class:`SearchTree`.
The re-timing of the leaders and the re-verification of suspicious speedups are not a strategy's
business: :func:`finalize` applies them to any strategy's outcome.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from ..families.base import Candidate, OpFamily
from ..spec import OpSpec
from .evaluate import Diagnostics, ScoredResult
from .synth import Synthesizer, can_expand, expand_or_propose
from .tree import ROOT, Node, SearchTree

log = logging.getLogger("torch_kevolve")

EvaluateBatch = Callable[[Sequence[Candidate]], "list[ScoredResult]"]


# -- budget ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """How much a search may spend. ``None`` = no limit on that axis.

    ``patience``: stop after that many evaluations without improving the best verified time
    (counted from the start while nothing has verified).
    """

    max_evals: int | None = None
    wall_s: float | None = None
    patience: int | None = None

    @staticmethod
    def parse(text: str | None, patience: int | None = None) -> "Budget":
        """``"64"`` evaluations, ``"120s"`` wall seconds, ``"64,120s"`` both."""
        from ..config import parse_budget

        evals, wall = parse_budget(text or "")
        return Budget(evals, wall, patience)


class Progress:
    """A running budget: evaluations spent, wall clock, evaluations since the best improved."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.t0 = time.monotonic()
        self.evals = 0
        self.best_ms: float | None = None
        self.since_best = 0
        self.stop_reason = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def note(self, results: Sequence[ScoredResult]) -> None:
        for r in results:
            self.evals += 1
            if r.ok and r.time_ms is not None and (self.best_ms is None or r.time_ms < self.best_ms):
                self.best_ms, self.since_best = r.time_ms, 0
            else:
                self.since_best += 1

    def done(self) -> bool:
        b = self.budget
        if b.max_evals is not None and self.evals >= b.max_evals:
            self.stop_reason = f"budget: {self.evals} evaluations"
        elif b.wall_s is not None and self.elapsed() >= b.wall_s:
            self.stop_reason = f"budget: {self.elapsed():.1f}s wall"
        elif b.patience is not None and self.since_best >= b.patience:
            self.stop_reason = f"patience: {self.since_best} evaluations without a better verified time"
        return bool(self.stop_reason)

    def room(self, k: int) -> int:
        """How many of ``k`` wanted evaluations the budget still allows."""
        if self.budget.max_evals is not None:
            k = min(k, self.budget.max_evals - self.evals)
        return max(0, k)


# -- outcome ----------------------------------------------------------------------------------------
@dataclass
class SearchOutcome:
    best: ScoredResult | None
    results: list[ScoredResult] = field(default_factory=list)  # in evaluation order
    baseline_ms: float | None = None
    wall_s: float = 0.0
    tree: SearchTree | None = None
    strategy: str = ""
    stop_reason: str = ""
    node_ids: list[int] = field(default_factory=list)  # tree node of results[i]
    baseline_kind: str = "eager"  # what baseline_ms measured: "eager" or "inductor"

    @property
    def speedup(self) -> float | None:
        if self.best is None or not self.best.time_ms or not self.baseline_ms:
            return None
        return self.baseline_ms / self.best.time_ms


class Strategy(Protocol):
    def __call__(self, family: OpFamily, spec: OpSpec, synth: Synthesizer, evaluate_batch: EvaluateBatch,
                 budget: Budget, rng: random.Random | int | None, **options: object) -> SearchOutcome: ...


_STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    def deco(fn: Strategy) -> Strategy:
        _STRATEGIES[name] = fn
        return fn

    return deco


def get_strategy(name: str) -> Strategy:
    try:
        return _STRATEGIES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown search strategy {name!r} (KEVOLVE_SEARCH); known: {strategy_names()}") from None


def strategy_names() -> list[str]:
    return sorted(_STRATEGIES)


# -- shared machinery -------------------------------------------------------------------------------
def _rng(rng: random.Random | int | None) -> tuple[random.Random, int | None]:
    if isinstance(rng, random.Random):
        return rng, None
    return random.Random(rng), rng


def _baseline(b: object) -> float | None:
    v = b() if callable(b) else b
    return float(v) if isinstance(v, (int, float)) and v > 0 else None


class _Run:
    """State every strategy shares: the tree, the budget, the results, and the reward."""

    def __init__(self, name: str, family: OpFamily, spec: OpSpec, synth: Synthesizer, evaluate_batch: EvaluateBatch,
                 budget: Budget, rng: random.Random | int | None, baseline_ms: object) -> None:
        self.family, self.spec, self.synth, self.evaluate_batch = family, spec, synth, evaluate_batch
        self.rng, seed = _rng(rng)
        self.progress = Progress(budget)
        self.baseline = _baseline(baseline_ms)
        self.tree = SearchTree(name, seed, self.baseline)
        self.outcome = SearchOutcome(None, [], self.baseline, 0.0, self.tree, name)
        self._ref_ms: float | None = None  # reward reference when there is no baseline: first verified time
        self._prior = getattr(synth, "prior", None)

    def add(self, cands: Sequence[Candidate], parent: int, mode: str) -> list[Node]:
        out = []
        for c in cands:
            if c in self.tree:
                continue
            prior = self._prior(self.family, self.spec, c) if callable(self._prior) else None
            out.append(self.tree.add(c, parent, mode, prior))
        return out

    def evaluate(self, nodes: Sequence[Node]) -> list[ScoredResult]:
        """Score ``nodes`` in one batch, record them in the tree and the budget."""
        if not nodes:
            return []
        results = list(self.evaluate_batch([n.candidate for n in nodes]))  # type: ignore[misc]
        if len(results) != len(nodes):
            raise RuntimeError(f"evaluate_batch returned {len(results)} results for {len(nodes)} candidates")
        t = self.progress.elapsed()
        for n, r in zip(nodes, results):
            self.tree.record(n.id, r, t)
            n.reward = self.reward(r)
            self.outcome.results.append(r)
            self.outcome.node_ids.append(n.id)
            log.debug("candidate %s %s (%s): %s %s", r.candidate.template, r.candidate.cfg, n.mode,
                      r.diagnostics.summary(), r.time_ms)
        self.progress.note(results)
        return results

    def reward(self, r: ScoredResult) -> float:
        """Speedup over the baseline, gated on correctness (a failed candidate earns 0)."""
        if not r.ok or not r.time_ms or r.time_ms <= 0:
            return 0.0
        if self.baseline:
            return self.baseline / r.time_ms
        if self._ref_ms is None:
            self._ref_ms = r.time_ms
        return self._ref_ms / r.time_ms

    def expand(self, node: Node, k: int, mode: str) -> list[Candidate]:
        return expand_or_propose(self.synth, self.family, self.spec, self.tree, node, k, mode, self.rng)

    def finish(self) -> SearchOutcome:
        o = self.outcome
        o.wall_s = self.progress.elapsed()
        o.stop_reason = self.progress.stop_reason or self.tree.stop_reason or "search space exhausted"
        self.tree.stop_reason = o.stop_reason
        ok = [r for r in o.results if r.ok and r.time_ms is not None]
        o.best = min(ok, key=lambda r: r.time_ms) if ok else None  # type: ignore[arg-type,return-value]
        return o


# -- strategies -------------------------------------------------------------------------------------
@register_strategy("exhaustive")
def exhaustive(family: OpFamily, spec: OpSpec, synth: Synthesizer, evaluate_batch: EvaluateBatch, budget: Budget,
               rng: random.Random | int | None = None, *, baseline_ms: object = None, batch: int = 8,
               **_: object) -> SearchOutcome:
    """The synthesizer's flat proposals, in its order, until the budget or the proposals run out."""
    run = _Run("exhaustive", family, spec, synth, evaluate_batch, budget, rng, baseline_ms)
    while not run.progress.done():
        room = run.progress.room(batch)
        proposals = synth.propose(family, spec, run.outcome.results, room) if room else []
        if not proposals:
            break
        run.evaluate(run.add(proposals, ROOT, "propose"))
    return run.finish()


@register_strategy("random")
def random_search(family: OpFamily, spec: OpSpec, synth: Synthesizer, evaluate_batch: EvaluateBatch, budget: Budget,
                  rng: random.Random | int | None = None, *, baseline_ms: object = None, batch: int = 4,
                  **_: object) -> SearchOutcome:
    """Uniform without replacement over the family's candidate list: the baseline other strategies
    must beat (the synthesizer is not consulted)."""
    run = _Run("random", family, spec, synth, evaluate_batch, budget, rng, baseline_ms)
    pool = list(dict.fromkeys(family.candidates(spec)))
    run.rng.shuffle(pool)
    while pool and not run.progress.done():
        room = run.progress.room(batch)
        take, pool = pool[:room], pool[room:]
        run.evaluate(run.add(take, ROOT, "restart"))
    return run.finish()


@register_strategy("greedy")
def greedy(family: OpFamily, spec: OpSpec, synth: Synthesizer, evaluate_batch: EvaluateBatch, budget: Budget,
           rng: random.Random | int | None = None, *, baseline_ms: object = None, batch: int = 4, beam: int = 2,
           **_: object) -> SearchOutcome:
    """Beam hill-climbing: expand the ``beam`` fastest verified nodes with "inherit" (their
    neighbours); when every leader's neighbourhood is spent, restart from the root."""
    run = _Run("greedy", family, spec, synth, evaluate_batch, budget, rng, baseline_ms)
    tree = run.tree
    while not run.progress.done():
        leaders = sorted((n for n in tree if n.ok and n.time_ms is not None and not n.exhausted),
                         key=lambda n: (n.time_ms, n.id))[:beam]
        fresh: list[Node] = []
        per = max(1, math.ceil(batch / max(1, len(leaders))))
        for lead in leaders:
            room = run.progress.room(batch) - len(fresh)
            if room <= 0:
                break
            kids = run.add(run.expand(lead, min(per, room), "inherit"), lead.id, "inherit")
            if not kids:
                lead.exhausted = True
            fresh += kids
        if not fresh:
            fresh = run.add(run.expand(tree.root, run.progress.room(batch), "restart"), ROOT, "restart")
            if not fresh:
                break
        run.evaluate(fresh)
    return run.finish()


@register_strategy("evolutionary")
def evolutionary(family: OpFamily, spec: OpSpec, synth: Synthesizer, evaluate_batch: EvaluateBatch, budget: Budget,
                 rng: random.Random | int | None = None, *, baseline_ms: object = None, batch: int = 4,
                 population: int = 8, crossover: float = 0.5, **_: object) -> SearchOutcome:
    """A steady-state genetic search: the ``population`` fastest verified nodes breed; a child is a
    crossover ("combine" with the parent's best sibling) or a mutation ("inherit"), parents picked
    by binary tournament. The initial population is a "restart" batch from the root."""
    run = _Run("evolutionary", family, spec, synth, evaluate_batch, budget, rng, baseline_ms)
    tree, r = run.tree, run.rng
    run.evaluate(run.add(run.expand(tree.root, run.progress.room(population), "restart"), ROOT, "restart"))
    while not run.progress.done():
        pop = sorted((n for n in tree if n.ok and n.time_ms is not None), key=lambda n: (n.time_ms, n.id))[:population]
        want = run.progress.room(batch)
        kids: list[Node] = []
        tries = 0
        while pop and len(kids) < want and tries < 4 * want:
            tries += 1
            a, b = r.choice(pop), r.choice(pop)
            parent = a if (a.time_ms, a.id) <= (b.time_ms, b.id) else b
            modes = ["combine", "inherit"] if r.random() < crossover else ["inherit", "combine"]
            for mode in modes:
                got = run.add(run.expand(parent, 1, mode), parent.id, mode)
                if got:
                    kids += got
                    break
        if not kids:  # the population's neighbourhoods are spent: fresh blood
            kids = run.add(run.expand(tree.root, want, "restart"), ROOT, "restart")
            if not kids:
                break
        run.evaluate(kids)
    return run.finish()


@register_strategy("mcts")
def mcts(family: OpFamily, spec: OpSpec, synth: Synthesizer, evaluate_batch: EvaluateBatch, budget: Budget,
         rng: random.Random | int | None = None, *, baseline_ms: object = None, batch: int = 4,
         c_explore: float = 0.25, max_weight: float = 0.75, widen_c: float = 1.0, widen_alpha: float = 0.5,
         stall_limit: int = 6, use_priors: bool = True, **_: object) -> SearchOutcome:
    """Monte-Carlo tree search over candidate kernels.

    * Selection: from the root, descend by PUCT when the options carry priors (the template
      synthesizer's come from the family's candidate order), else UCT. At a non-root node the
      options are its live children and the node itself ("expand here again", valued at its own
      reward, visited once per expansion), so a good node keeps being refined while its children
      are worse. The root grows (a "restart") by progressive widening: while it has fewer than
      ``widen_c * visits ** widen_alpha`` children. Exhausted nodes are never entered.
    * Value: a mix of the mean and the best reward below a node (``max_weight``: deterministic
      optimization cares about the best descendant, the mean guards against one lucky leaf),
      min-max normalized over the verified rewards seen so far (as MuZero does), so the exploration
      constant does not depend on the scale of speedups.
    * Expansion: ``synth.expand`` is asked for ``batch`` children under a memory mode. The root
      always uses "restart"; other nodes choose among "inherit" / "siblings" / "combine" (the latter
      two need a verified sibling) by a UCB1 bandit shared by the whole tree, whose payoff is 1 when
      the expansion beat the best reward below the node. A mode that yields nothing falls back to
      the others; a node none of them can grow is *spent* (never expanded again, its children still
      grow); a spent node with nothing alive below it is exhausted.
    * Evaluation: one ``evaluate_batch`` call per expansion.
    * Backpropagation: reward = speedup over the baseline (or, with none, over the first verified
      time), 0 when the candidate failed; failures stay in the tree with their diagnostics.
    * Backtracking: a non-root node whose subtree has gone ``stall_limit`` expansions without a
      better reward is exhausted (pruned), so selection moves to other promising branches.

    Defaults were tuned on tests/test_mcts.py's synthetic landscape (c_explore 0.1-1.0, max_weight
    0.5-1.0, widening 0.3-0.6, batch 2-8 all within ~1.5x of each other there).
    """
    run = _Run("mcts", family, spec, synth, evaluate_batch, budget, rng, baseline_ms)
    tree, r = run.tree, run.rng
    arms: dict[str, list[float]] = {m: [0, 0.0] for m in ("inherit", "siblings", "combine")}
    ok_rewards: list[float] = []
    has_expand = can_expand(synth)

    def norm(v: float) -> float:
        if not ok_rewards:
            return 0.0
        lo, hi = min(ok_rewards), max(ok_rewards)
        return 0.5 if hi <= lo else min(1.0, max(0.0, (v - lo) / (hi - lo)))

    def value(n: Node) -> float:
        return (1 - max_weight) * norm(n.q) + max_weight * norm(n.best)

    def score(parent: Node, options: list[Node]) -> list[float]:
        """UCT/PUCT over the live children and, for a non-root node, the node itself ("expand
        here again": its own reward, visited once per expansion)."""
        stats = [(norm(parent.reward), parent.expansions, parent.prior) if o is parent else
                 (value(o), o.visits, o.prior) for o in options]
        priors = [p for _, _, p in stats]
        if use_priors and all(p is not None for p in priors):
            total = sum(priors) or 1.0  # type: ignore[arg-type]
            root_n = math.sqrt(max(parent.visits, 1))
            return [v + c_explore * (p / total) * root_n / (1 + n) for v, n, p in stats]  # type: ignore[operator]
        explore = math.log(max(parent.visits, 1))
        return [v + c_explore * math.sqrt(explore / max(n, 1)) for v, n, _ in stats]

    def select() -> Node | None:
        node = tree.root
        while True:
            live = [tree.get(c) for c in node.children if not tree.get(c).exhausted]
            grows = not node.exhausted and not node.spent
            if node.id == ROOT:
                # the root grows (a restart) by progressive widening: widen_c * visits ** widen_alpha children
                if grows and (not live or len(node.children) < math.ceil(widen_c * node.visits ** widen_alpha)):
                    return node
                if not live:
                    return None  # nothing left anywhere
                options = live
            else:
                if not live:
                    if grows:
                        return node
                    node.exhausted = True  # spent, and nothing alive below: dead
                    node = tree.root
                    continue
                options = live + [node] if grows else live
            s = score(node, options)
            top = max(s)
            pick = r.choice([o for o, v in zip(options, s) if v >= top - 1e-12])
            if pick is node:
                return node
            node = pick

    def modes_for(node: Node) -> list[str]:
        if node.id == ROOT or not has_expand:
            return ["restart"]
        avail = ["inherit"] + (["siblings", "combine"] if tree.best_sibling(node.id) is not None else [])
        total = sum(arms[m][0] for m in avail)
        untried = [m for m in avail if not arms[m][0]]
        r.shuffle(untried)
        tried = sorted((m for m in avail if arms[m][0]),
                       key=lambda m: -(arms[m][1] / arms[m][0] + math.sqrt(2 * math.log(max(total, 1)) / arms[m][0])))
        return untried + tried

    while not run.progress.done():
        node = select()
        if node is None:
            tree.stop_reason = "search space exhausted"
            break
        k = run.progress.room(batch)
        kids: list[Node] = []
        used = ""
        for mode in modes_for(node):
            kids = run.add(run.expand(node, k, mode), node.id, mode)
            if kids:
                used = mode
                break
        if not kids:
            if node.id == ROOT:
                node.exhausted = True  # not even a restart: the search space is spent
            else:
                node.spent = True
            log.debug("mcts: n%d spent (nothing new to propose)", node.id)
            continue
        node.expansions += 1
        before = node.best
        run.evaluate(kids)
        for kid in kids:
            kid.visits, kid.value_sum, kid.best = 1, kid.reward, kid.reward
            if kid.ok:
                ok_rewards.append(kid.reward)
        top = max(kid.reward for kid in kids)
        for anc in tree.path_to_root(node.id):
            anc.visits += len(kids)
            anc.value_sum += sum(kid.reward for kid in kids)
            if top > anc.best * (1 + 1e-9) + 1e-12:
                anc.best, anc.stale = top, 0
            else:
                anc.stale += 1
                if anc.id != ROOT and anc.stale >= stall_limit and not anc.exhausted:
                    anc.exhausted = True
                    log.debug("mcts: branch n%d stalled after %d expansions: backtracking", anc.id, anc.stale)
        if used in arms:
            arms[used][0] += 1
            arms[used][1] += 1.0 if top > before else 0.0
    return run.finish()


# -- post-processing ----------------------------------------------------------------------------------
def finalize(
    outcome: SearchOutcome,
    evaluate_batch: EvaluateBatch | None,
    reverify: Callable[[Candidate, int], Diagnostics] | None = None,
    reverify_seeds: int = 4,
    retime_top: int = 3,
    suspicious_speedup: float = 10.0,
) -> SearchOutcome:
    """Applied to every strategy's outcome: re-time the leaders (their first timing was taken among
    many others' runs), then re-verify a speedup above ``suspicious_speedup`` with more fresh seeds
    (more often a verification gap than a miracle), dropping leaders that fail it."""
    tree = outcome.tree
    node_of = {id(r): n for r, n in zip(outcome.results, outcome.node_ids)}
    ok = sorted((r for r in outcome.results if r.ok and r.time_ms is not None),
                key=lambda r: r.time_ms)  # type: ignore[arg-type,return-value]
    leaders = ok[:retime_top]
    if leaders and evaluate_batch is not None:
        again = evaluate_batch([r.candidate for r in leaders])
        for r, a in zip(leaders, again):
            if a.ok and a.time_ms is not None:
                r.time_ms = min(r.time_ms, a.time_ms)  # type: ignore[type-var]
                if tree is not None and id(r) in node_of:
                    tree.get(node_of[id(r)]).retime_ms = a.time_ms
        ok.sort(key=lambda r: r.time_ms)  # type: ignore[arg-type,return-value]
    baseline = outcome.baseline_ms
    while reverify is not None and ok and baseline and ok[0].time_ms and baseline / ok[0].time_ms > suspicious_speedup:
        diag = reverify(ok[0].candidate, reverify_seeds)
        if diag.stage == "ok":
            ok[0].evidence["reverified_fresh_seeds"] = reverify_seeds
            break
        log.warning("candidate %s failed re-verification of a %.1fx speedup: %s", ok[0].candidate.cfg,
                    baseline / ok[0].time_ms, diag.summary())
        ok[0].ok, ok[0].diagnostics = False, diag
        if tree is not None and id(ok[0]) in node_of:
            n = tree.get(node_of[id(ok[0])])
            n.ok, n.diag, n.stage = False, "re-verification: " + diag.summary(), diag.stage
        ok.pop(0)
    outcome.best = ok[0] if ok else None
    if tree is not None:
        tree.winner = node_of.get(id(outcome.best)) if outcome.best is not None else None
    return outcome


__all__ = [
    "Budget", "Progress", "SearchOutcome", "Strategy", "EvaluateBatch", "register_strategy", "get_strategy",
    "strategy_names", "finalize", "exhaustive", "random_search", "greedy", "evolutionary", "mcts",
]
