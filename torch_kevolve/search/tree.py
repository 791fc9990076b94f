"""The search tree: every evaluated candidate as a node, kept with the winning kernel.

Why keep it: a stored kernel should say how it was found (which proposals were tried, which failed
and why, when the winner took the lead), and a later search can be replayed or resumed from it.
The JSON form stores each distinct kernel source once (hash -> text) and per node only its config,
score, diagnostic summary and timings, so a tree of a few hundred nodes stays small.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from ..families.base import Candidate

if TYPE_CHECKING:
    from .evaluate import ScoredResult

MEMORY_MODES = ("inherit", "siblings", "combine", "restart")
ROOT = 0


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def ident(cand: Candidate) -> tuple[str, tuple]:
    """What makes two candidates the same kernel: source text and config."""
    return cand.source, cand.config


@dataclass
class Node:
    """One evaluated (or, for the root, virtual) candidate and its MCTS statistics."""

    id: int
    candidate: Candidate | None  # None: the virtual root
    parent: int | None = None
    children: list[int] = field(default_factory=list)
    mode: str = ""  # memory mode of the expansion that made it; "propose" for flat proposals, "" for the root
    prior: float | None = None
    # the ScoredResult, summarized
    ok: bool | None = None  # None: not evaluated (yet)
    time_ms: float | None = None
    diag: str = ""
    stage: str = ""
    seed: int | None = None  # evaluation seed, when the evaluator reports one
    order: int | None = None  # 1-based position in the evaluation sequence
    t_s: float | None = None  # seconds from the search's start to this result
    retime_ms: float | None = None  # re-timing of the leaders after the search
    # MCTS statistics
    visits: int = 0
    value_sum: float = 0.0
    reward: float = 0.0
    best: float = 0.0  # best reward in the subtree, this node included
    stale: int = 0  # expansions in the subtree since ``best`` last improved
    expansions: int = 0  # times this node was expanded
    spent: bool = False  # the synthesizer has nothing more from here; its children may still grow
    exhausted: bool = False  # pruned: never selected again, nor anything below it

    @property
    def origin(self) -> str:
        return "" if self.candidate is None else self.candidate.origin

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def label(self) -> str:
        if self.candidate is None:
            return "root"
        cfg = " ".join(f"{k}={_short(v)}" for k, v in self.candidate.config)
        return f"{self.candidate.template or '?'}[{cfg}]"


def _short(v: Any) -> str:
    if isinstance(v, bool):
        return "T" if v else "F"
    return str(v)


class SearchTree:
    """Nodes by id (the root is id 0), with the identities already tried for de-duplication."""

    def __init__(self, strategy: str = "", seed: int | None = None, baseline_ms: float | None = None) -> None:
        self.strategy = strategy
        self.seed = seed
        self.baseline_ms = baseline_ms
        self.winner: int | None = None  # set by the post-processing step (after re-time / re-verify)
        self.stop_reason: str = ""
        self.nodes: list[Node] = [Node(ROOT, None, mode="")]
        self._idents: set[tuple[str, tuple]] = set()
        self._evals = 0

    # -- building ---------------------------------------------------------------------------------
    @property
    def root(self) -> Node:
        return self.nodes[ROOT]

    def add(self, candidate: Candidate, parent: int = ROOT, mode: str = "restart", prior: float | None = None) -> Node:
        node = Node(len(self.nodes), candidate, parent=parent, mode=mode, prior=prior)
        self.nodes.append(node)
        self.nodes[parent].children.append(node.id)
        self._idents.add(ident(candidate))
        return node

    def record(self, node_id: int, result: "ScoredResult", t_s: float | None = None) -> Node:
        """Attach a node's score; its evaluation order is the order of these calls."""
        node = self.nodes[node_id]
        self._evals += 1
        node.ok = bool(result.ok)
        node.time_ms = result.time_ms
        node.diag = result.diagnostics.summary()
        node.stage = result.diagnostics.stage
        seed = result.evidence.get("seed") if isinstance(result.evidence, dict) else None
        node.seed = seed if isinstance(seed, int) else None
        node.order = self._evals
        node.t_s = t_s
        return node

    # -- queries ----------------------------------------------------------------------------------
    def get(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def __len__(self) -> int:
        return len(self.nodes) - 1  # candidates, not the virtual root

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes[1:])

    def __contains__(self, cand: object) -> bool:
        return isinstance(cand, Candidate) and ident(cand) in self._idents

    def path(self, node_id: int) -> list[Node]:
        """Root -> node: the node's trajectory ("inherit" memory)."""
        out = []
        cur: int | None = node_id
        while cur is not None:
            out.append(self.nodes[cur])
            cur = self.nodes[cur].parent
        return out[::-1]

    def path_to_root(self, node_id: int) -> list[Node]:
        return self.path(node_id)[::-1]

    def siblings(self, node_id: int) -> list[Node]:
        parent = self.nodes[node_id].parent
        if parent is None:
            return []
        return [self.nodes[c] for c in self.nodes[parent].children if c != node_id]

    def best_sibling(self, node_id: int) -> Node | None:
        ok = [s for s in self.siblings(node_id) if s.ok and s.time_ms is not None]
        return min(ok, key=lambda s: (s.time_ms, s.id)) if ok else None

    def evaluated(self) -> list[Node]:
        """Nodes in evaluation order."""
        return sorted((n for n in self if n.order is not None),
                      key=lambda n: n.order)  # type: ignore[arg-type,return-value]

    def best(self) -> Node | None:
        """The fastest verified node (ties: the earlier evaluated)."""
        ok = [n for n in self if n.ok and n.time_ms is not None]
        return min(ok, key=lambda n: (n.time_ms, n.order or 0)) if ok else None

    def depth(self, node_id: int) -> int:
        return len(self.path(node_id)) - 1

    # -- persistence ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """Compact, JSON-able: each source once (hash -> text), each knob-name list once, and per node
        its config values, score, diagnostic summary (failures only), timings and statistics."""
        sources: dict[str, str] = {}
        knobs: list[list[str]] = []
        knob_ids: dict[tuple[str, ...], int] = {}
        nodes = []
        for n in self.nodes[1:]:
            c = n.candidate
            assert c is not None
            h = source_hash(c.source)
            sources.setdefault(h, c.source)
            names = tuple(k for k, _ in c.config)
            if names not in knob_ids:
                knob_ids[names] = len(knobs)
                knobs.append(list(names))
            d: dict[str, Any] = {"id": n.id, "p": n.parent, "src": h, "tpl": c.template, "k": knob_ids[names],
                                 "cfg": [v for _, v in c.config], "m": n.mode}
            if c.origin != "template":
                d["org"] = c.origin
            for key, val, default in (
                ("ok", n.ok, None), ("ms", n.time_ms, None), ("diag", n.diag if not n.ok else "", ""),
                ("stage", n.stage if not n.ok else "", ""), ("seed", n.seed, None), ("ord", n.order, None),
                ("t", n.t_s, None), ("retime", n.retime_ms, None), ("prior", n.prior, None), ("n", n.visits, 0),
                ("w", n.value_sum, 0.0), ("r", n.reward, 0.0), ("e", n.expansions, 0), ("s", n.spent, False),
                ("x", n.exhausted, False),
            ):
                if val != default:
                    # statistics and clock readings are rounded; scores are kept exactly
                    d[key] = float(f"{val:.5g}") if key in ("t", "w", "r", "prior") and math.isfinite(val) else val
            nodes.append(d)
        root = self.root
        return {
            "v": 1, "strategy": self.strategy, "seed": self.seed, "baseline_ms": self.baseline_ms,
            "winner": self.winner, "stop": self.stop_reason,
            "root": {"n": root.visits, "w": float(f"{root.value_sum:.5g}"), "e": root.expansions, "x": root.exhausted},
            "sources": sources, "knobs": knobs, "nodes": nodes,
        }

    @staticmethod
    def from_json(doc: dict | str) -> "SearchTree":
        import json

        if isinstance(doc, str):
            doc = json.loads(doc)
        assert isinstance(doc, dict)
        tree = SearchTree(doc.get("strategy", ""), doc.get("seed"), doc.get("baseline_ms"))
        tree.winner = doc.get("winner")
        tree.stop_reason = doc.get("stop", "")
        r = doc.get("root") or {}
        root = tree.root
        root.visits, root.value_sum = r.get("n", 0), r.get("w", 0.0)
        root.expansions, root.exhausted = r.get("e", 0), r.get("x", False)
        sources, knobs = doc.get("sources") or {}, doc.get("knobs") or []
        for d in sorted(doc.get("nodes") or [], key=lambda d: d["id"]):
            values = [tuple(v) if isinstance(v, list) else v for v in d.get("cfg") or []]
            cand = Candidate(source=sources[d["src"]], config=tuple(zip(knobs[d["k"]], values)) if values else (),
                             origin=d.get("org", "template"), template=d.get("tpl", ""))
            node = tree.add(cand, parent=d["p"], mode=d.get("m", ""), prior=d.get("prior"))
            if node.id != d["id"]:
                raise ValueError(f"search tree JSON: node ids are not dense (got {d['id']}, expected {node.id})")
            node.ok, node.time_ms, node.seed = d.get("ok"), d.get("ms"), d.get("seed")
            node.stage = d.get("stage", "ok" if node.ok else "")
            node.diag = d.get("diag", "ok" if node.ok else "")
            node.order, node.t_s, node.retime_ms = d.get("ord"), d.get("t"), d.get("retime")
            node.visits, node.value_sum, node.reward = d.get("n", 0), d.get("w", 0.0), d.get("r", 0.0)
            node.expansions, node.spent, node.exhausted = d.get("e", 0), d.get("s", False), d.get("x", False)
        tree._evals = max((n.order or 0 for n in tree), default=0)
        for n in reversed(tree.nodes[1:]):  # children have larger ids than their parents
            n.best = max(n.best, n.reward)
            parent = tree.nodes[n.parent if n.parent is not None else ROOT]
            parent.best = max(parent.best, n.best)
        return tree

    # -- rendering --------------------------------------------------------------------------------
    def replay(self) -> str:
        """The search as it happened: evaluation order, scores, and when the lead changed hands."""
        ev = self.evaluated()
        ok = sum(1 for n in ev if n.ok)
        head = (f"search tree: strategy {self.strategy or '?'}, seed {self.seed}, {len(ev)} evaluated "
                f"({ok} verified, {len(ev) - ok} failed), baseline "
                f"{'?' if self.baseline_ms is None else f'{self.baseline_ms:.4g} ms'}")
        lines = [head, f"{'#':>4} {'node':>5} {'parent':>6} {'mode':8} {'t_s':>7}  candidate -> result"]
        best_ms: float | None = None
        lead_changes = []
        for n in ev:
            mark = ""
            if n.ok and n.time_ms is not None:
                res = f"{n.time_ms:.4g} ms"
                if self.baseline_ms and n.time_ms:
                    res += f" ({self.baseline_ms / n.time_ms:.2f}x)"
                if best_ms is None or n.time_ms < best_ms:
                    best_ms = n.time_ms
                    mark = "  <- new best"
                    lead_changes.append(n)
            else:
                res = n.diag or (n.stage + " failed")
            parent = "root" if n.parent == ROOT else f"n{n.parent}"
            t = "" if n.t_s is None else f"{n.t_s:.2f}"
            lines.append(f"{n.order:>4} {'n' + str(n.id):>5} {parent:>6} {n.mode:8} {t:>7}  {n.label()} -> {res}{mark}")
        if lead_changes:
            lines.append("lead changes: " + ", ".join(f"n{n.id}@{n.order}" for n in lead_changes))
        win = self.nodes[self.winner] if self.winner is not None and 0 < self.winner < len(self.nodes) else self.best()
        if win is not None and win.time_ms is not None:
            ms = win.retime_ms if win.retime_ms is not None else win.time_ms
            when = next((n.order for n in lead_changes if n.id == win.id), None)
            lines.append(
                f"winner: n{win.id} {win.label()} {ms:.4g} ms"
                + (f", {self.baseline_ms / ms:.2f}x over baseline" if self.baseline_ms and ms else "")
                + (f", took the lead at evaluation {when}" if when else ", after re-timing")
                + f", path {' > '.join('root' if p.id == ROOT else 'n%d' % p.id for p in self.path(win.id))}"
            )
        else:
            lines.append("winner: none (no verified candidate)")
        if self.stop_reason:
            lines.append(f"stopped: {self.stop_reason}")
        return "\n".join(lines)
