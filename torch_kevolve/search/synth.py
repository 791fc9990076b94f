"""Synthesizers propose candidate kernels. The template synthesizer needs no LLM.

Two calls: ``propose(family, spec, history, k)`` (a flat list, for strategies that keep no tree) and
the optional ``expand(family, spec, tree, node, k, memory_mode, rng)``, which proposes children of a
search-tree node from a chosen memory (KernelEvolve's modes):

* ``inherit``: the node's trajectory root -> node (refine what this line of proposals did);
* ``siblings``: the node's siblings (learn from the best alternative tried at the same point);
* ``combine``: the node and its best sibling (crossover);
* ``restart``: nothing (a clean proposal, far from what the tree already holds).
"""
from __future__ import annotations

import bisect
import itertools
import logging
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from ..families.base import Candidate, OpFamily
from ..spec import OpSpec
from .tree import MEMORY_MODES, ident

if TYPE_CHECKING:
    from .tree import Node, SearchTree

log = logging.getLogger("torch_kevolve")


class Synthesizer(Protocol):
    name: str

    def propose(self, family: OpFamily, spec: OpSpec, history: Sequence[object], k: int) -> list[Candidate]:
        """Up to ``k`` new candidates for ``spec``, given the scored results so far."""
        ...


@runtime_checkable
class TreeSynthesizer(Protocol):
    """A synthesizer that can also expand a search-tree node under a memory mode."""

    name: str

    def propose(self, family: OpFamily, spec: OpSpec, history: Sequence[object], k: int) -> list[Candidate]: ...

    def expand(self, family: OpFamily, spec: OpSpec, tree: "SearchTree", node: "Node", k: int,
               memory_mode: str, rng: random.Random) -> list[Candidate]:
        """Up to ``k`` candidates not yet in ``tree``, to become children of ``node``; [] when none."""
        ...


def _order_key(v: Any) -> tuple:
    """Knob values sort numerically (bools as 0/1), anything else by its text after the numbers."""
    if isinstance(v, (bool, int, float)):
        return (0, float(v), "")
    return (1, 0.0, str(v))


@dataclass
class _Space:
    """A family's candidate list for one spec as points: one rank per knob (None where absent).

    Ranks are positions in each knob's sorted list of values present in the candidate list, so
    "adjacent" means the next value the family itself offers, whatever its scale (16 -> 32, 2 -> 3).
    Plain Python on purpose: the lists are small (tens to a few thousand), and torch's thread pool
    is slower than a loop for reductions this size on a busy machine.
    """

    cands: list[Candidate]
    index: dict[tuple[str, tuple], int]
    knobs: list[str]
    domains: dict[str, list[tuple]]  # knob -> sorted _order_key of its values
    by_config: dict[tuple[str, frozenset], int]
    points: list[tuple[str, tuple]] = field(default_factory=list)  # (template, ranks) per candidate
    _cols: dict[int, list[float]] = field(default_factory=dict)  # distance columns of listed candidates

    @staticmethod
    def build(cands: Sequence[Candidate]) -> "_Space":
        uniq: list[Candidate] = []
        index: dict[tuple[str, tuple], int] = {}
        for c in cands:
            if ident(c) not in index:
                index[ident(c)] = len(uniq)
                uniq.append(c)
        knobs = sorted({k for c in uniq for k, _ in c.config})
        domains = {k: sorted({_order_key(v) for c in uniq for kk, v in c.config if kk == k}) for k in knobs}
        by_config = {(c.template, frozenset(c.config)): i for i, c in enumerate(uniq)}
        space = _Space(uniq, index, knobs, domains, by_config)
        space.points = [space.point(c) for c in uniq]
        return space

    def rank(self, knob: str, value: Any) -> float:
        dom = self.domains.get(knob)
        if not dom:
            return 0.0
        key = _order_key(value)
        i = bisect.bisect_left(dom, key)
        return float(i) if i < len(dom) and dom[i] == key else i - 0.5  # off-list values fall between

    def point(self, c: Candidate) -> tuple[str, tuple]:
        cfg = c.cfg
        return c.template, tuple(self.rank(k, cfg[k]) if k in cfg else None for k in self.knobs)

    @staticmethod
    def distance(p: tuple[str, tuple], q: tuple[str, tuple]) -> float:
        """Rank steps over shared knobs, +1 per knob only one side has, +1 for another template;
        the same config on another template (all shared knobs equal) is one step."""
        steps = 0.0
        one_sided = 0
        for a, b in zip(p[1], q[1]):
            if a is None or b is None:
                one_sided += a is not b
            else:
                steps += abs(a - b)
        if p[0] != q[0]:
            return 1.0 if steps == 0 else steps + one_sided + 1
        return steps + one_sided

    def column(self, c: Candidate) -> list[float]:
        """Distances from every listed candidate to ``c`` (cached for listed ones)."""
        i = self.index.get(ident(c))
        if i is not None and i in self._cols:
            return self._cols[i]
        q = self.points[i] if i is not None else self.point(c)
        col = [self.distance(p, q) for p in self.points]
        if i is not None:
            self._cols[i] = col
        return col

    def nearest(self, others: Sequence[Candidate]) -> list[float]:
        """Per listed candidate, the distance to the nearest of ``others`` (inf when none)."""
        out = [math.inf] * len(self.cands)
        for c in others:
            out = [min(x, y) for x, y in zip(out, self.column(c))]
        return out


class TemplateSynthesizer:
    """Walks the family's template configuration space; never repeats a (source, config).

    ``propose`` follows the family's preferred order. ``expand`` treats the candidate list as a
    grid (see :class:`_Space`) and moves on it according to the memory mode; it works for any
    family because it only looks at candidates' templates and config knobs.
    """

    name = "template"

    def __init__(self, seeds: Sequence[Candidate] = (), radius: float = 2.0, offlist: bool = True) -> None:
        self._seeds = list(seeds)
        self.radius = radius  # how far "inherit"/"siblings" look for neighbours (rank steps)
        self.offlist = offlist  # "combine" may yield configs outside the list that call_plan accepts
        self._spaces: dict[Any, _Space] = {}

    # -- flat proposals ---------------------------------------------------------------------------
    def propose(self, family: OpFamily, spec: OpSpec, history: Sequence[object], k: int) -> list[Candidate]:
        seen = {(getattr(r, "candidate", r).source, getattr(r, "candidate", r).config) for r in history}
        out: list[Candidate] = []
        for cand in [*self._seeds, *family.candidates(spec)]:
            key = (cand.source, cand.config)
            if key in seen:
                continue
            seen.add(key)
            out.append(cand)
            if len(out) >= k:
                break
        return out

    # -- tree expansion ---------------------------------------------------------------------------
    def space(self, family: OpFamily, spec: OpSpec) -> _Space:
        key: Any = (id(family), spec)
        try:
            hit = self._spaces.get(key)
        except TypeError:  # an unhashable spec: no cache
            return _Space.build([*self._seeds, *family.candidates(spec)])
        if hit is None:
            hit = self._spaces[key] = _Space.build([*self._seeds, *family.candidates(spec)])
        return hit

    def prior(self, family: OpFamily, spec: OpSpec, cand: Candidate) -> float | None:
        """The family lists its likeliest candidates first: prior ~ 1/sqrt(1 + position)."""
        i = self.space(family, spec).index.get(ident(cand))
        return None if i is None else 1.0 / math.sqrt(1.0 + i)

    def expand(self, family: OpFamily, spec: OpSpec, tree: "SearchTree", node: "Node", k: int,
               memory_mode: str, rng: random.Random) -> list[Candidate]:
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode {memory_mode!r}; known: {MEMORY_MODES}")
        if k <= 0:
            return []
        sp = self.space(family, spec)
        fresh = [i for i, c in enumerate(sp.cands) if c not in tree]
        if memory_mode == "restart" or node.candidate is None:
            return self._restart(sp, tree, fresh, k, rng)
        if memory_mode == "inherit":
            trail = [n.candidate for n in tree.path(node.id)[1:-1] if n.candidate is not None]
            return self._neighbours(sp, node.candidate, trail, fresh, k, rng)
        sib = tree.best_sibling(node.id)
        if sib is None or sib.candidate is None:
            return []
        if memory_mode == "siblings":
            others = [s.candidate for s in tree.siblings(node.id) if s.candidate is not None and s.id != sib.id]
            return self._neighbours(sp, sib.candidate, [node.candidate, *others], fresh, k, rng)
        return self._combine(family, spec, sp, tree, node.candidate, sib.candidate, k, rng)

    def _neighbours(self, sp: _Space, centre: Candidate, trail: Sequence[Candidate], fresh: list[int], k: int,
                    rng: random.Random) -> list[Candidate]:
        """Unexplored candidates within ``radius`` of ``centre``, nearest first; among equals, those
        moving away from the trail (keep going the way the trajectory went), then at random."""
        if not fresh:
            return []
        dl = sp.column(centre)
        al = sp.nearest(trail) if trail else [0.0] * len(sp.cands)
        picks = [(dl[i], -al[i], rng.random(), i) for i in fresh if dl[i] <= self.radius]
        picks.sort()
        return [sp.cands[i] for *_, i in picks[:k]]

    def _restart(self, sp: _Space, tree: "SearchTree", fresh: list[int], k: int, rng: random.Random) -> list[Candidate]:
        """Farthest-point picks from everything in the tree (the family's first choice when empty).

        Deterministic: diversity comes from the distance, and ties follow the family's order."""
        if not fresh:
            return []
        placed = [n.candidate for n in tree if n.candidate is not None]
        far = sp.nearest(placed)
        out: list[int] = []
        pool = list(fresh)
        while pool and len(out) < k:
            # farthest first; among equals (and in an empty tree) the family's preferred order
            best = max(pool, key=lambda i: (far[i], -i))
            out.append(best)
            pool.remove(best)
            far = [min(x, y) for x, y in zip(far, sp.column(sp.cands[best]))]
        return [sp.cands[i] for i in out]

    def _combine(self, family: OpFamily, spec: OpSpec, sp: _Space, tree: "SearchTree", a: Candidate, b: Candidate,
                 k: int, rng: random.Random, cap: int = 256) -> list[Candidate]:
        """Crossover: each knob from one parent; listed configs first, then ones call_plan accepts."""
        ca, cb = a.cfg, b.cfg
        listed: list[Candidate] = []
        offlist: list[Candidate] = []
        seen: set = set()
        for tpl_parent in dict.fromkeys([a, b]):
            knobs = [kk for kk, _ in tpl_parent.config]
            options = [list(dict.fromkeys(v for v in (ca.get(kk, cb.get(kk)), cb.get(kk, ca.get(kk))))) for kk in knobs]
            for n, values in enumerate(itertools.product(*options)):
                if n >= cap:
                    break
                cfg = dict(zip(knobs, values))
                if cfg == ca and tpl_parent.template == a.template or cfg == cb and tpl_parent.template == b.template:
                    continue
                key = (tpl_parent.template, frozenset(cfg.items()))
                if key in seen:
                    continue
                seen.add(key)
                i = sp.by_config.get(key)
                if i is not None:
                    if sp.cands[i] not in tree:
                        listed.append(sp.cands[i])
                    continue
                if not self.offlist:
                    continue
                cand = Candidate(source=tpl_parent.source,  # that parent's kernel, recombined config
                                 config=tuple(cfg.items()),  # in the parent's knob order
                                 origin="template:combine", template=tpl_parent.template)
                if cand not in tree:
                    offlist.append(cand)
        rng.shuffle(listed)
        out = listed[:k]
        if len(out) < k and offlist:
            rng.shuffle(offlist)
            for cand in offlist:
                if len(out) >= k:
                    break
                try:
                    family.call_plan(spec, cand)
                except Exception:  # noqa: BLE001 - the family says no: not a candidate
                    continue
                out.append(cand)
        return out


def can_expand(synth: object) -> bool:
    return callable(getattr(synth, "expand", None))


def expand_or_propose(synth: Synthesizer, family: OpFamily, spec: OpSpec, tree: "SearchTree", node: "Node", k: int,
                      mode: str, rng: random.Random) -> list[Candidate]:
    """``expand`` when the synthesizer has it; otherwise its flat proposals (history = the tree)."""
    if can_expand(synth):
        out = synth.expand(family, spec, tree, node, k, mode, rng)  # type: ignore[attr-defined]
    else:
        out = synth.propose(family, spec, [n.candidate for n in tree], k)
    return [c for c in out if c not in tree][:k]


__all__ = ["Synthesizer", "TreeSynthesizer", "TemplateSynthesizer", "can_expand", "expand_or_propose"]
