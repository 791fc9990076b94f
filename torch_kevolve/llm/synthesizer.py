"""The LLM synthesizer: proposes kernels by asking a model, shaped by the search's memory mode.

Why it wraps the template synthesizer rather than replacing it: templates are known-good starting
points (the first restart seeds one, so the model gets a parent with real diagnostics), and when the
model yields nothing usable (endpoint down, budget spent, malformed or hostile replies) the search
goes on with template proposals instead of stalling.

One synthesizer (one transport, one budget) per search: :func:`make_synthesizer` builds it from the
settings. To give the model full diagnostics (profile, error sizes), wrap the search's batch
evaluation with :meth:`LLMSynthesizer.watch`; without it the tree's summaries are used.
"""
from __future__ import annotations

import logging
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..families.base import Candidate, OpFamily
from ..log import info_once, warn_once
from ..search.synth import TemplateSynthesizer
from ..search.tree import MEMORY_MODES, ROOT, ident
from ..spec import OpSpec
from .feedback import Feedback, ResultLog, knowledge_query
from .parsing import Contract, extract_contract, parse_reply, to_candidate
from .prompts import PromptContext, build_prompt, retry_message
from .transport import ChatTransport, LLMConfig, Messages, ReplayTransport

if TYPE_CHECKING:
    from ..config import Settings
    from ..knowledge.retrieval import KnowledgeBase
    from ..search.tree import Node, SearchTree
    from ..store import KernelStore

log = logging.getLogger("torch_kevolve")


def _result_label(r: Any) -> str:
    c = r.candidate
    return f"{c.template}[{' '.join(f'{a}={b}' for a, b in c.config)}] ({c.origin})"


def _kind(reason: str) -> str:
    """A rejection's category, for counting: static check, contract, call plan, or parse."""
    if reason.startswith("the static check"):
        return "static"
    if reason.startswith("the module breaks the entry-point contract"):
        return "contract"
    if reason.startswith("the call plan"):
        return "plan"
    return "parse"


@dataclass
class Proposal:
    """One ask of the model and what came of it (kept whether or not it became a candidate)."""

    tag: str
    mode: str
    node: int | None
    ok: bool = False
    reason: str = ""  # why no candidate (parse, static check, contract, plan, duplicate, transport, budget)
    candidate: Candidate | None = None
    turns: int = 0  # chat completions spent (1, or 2 with the parse-error retry)
    notes: list[str] = field(default_factory=list)
    prompt: str = ""  # the user message of the first turn


@dataclass
class _Ask:
    tag: str
    mode: str
    node: int | None
    ctx: PromptContext
    template: Candidate  # whose entry point and config the reply must keep


class LLMSynthesizer:
    """Proposes candidates from an OpenAI-compatible model; a TreeSynthesizer for MCTS & co."""

    name = "llm"

    def __init__(self, transport: ChatTransport, *, fallback: TemplateSynthesizer | None = None,
                 knowledge: "KnowledgeBase | None | bool" = None, store: "KernelStore | None" = None,
                 n_passages: int = 4, n_examples: int = 2, parse_retries: int = 1, llm_prior: float = 0.5,
                 seed_templates: int = 1, repair: bool = True, max_source_chars: int = 14000,
                 results: ResultLog | None = None) -> None:
        self.transport = transport
        self.fallback = fallback or TemplateSynthesizer()
        self._kb_arg = knowledge
        self._kb: "KnowledgeBase | None" = None
        self.store = store
        self.n_passages, self.n_examples = n_passages, n_examples
        self.parse_retries = parse_retries
        self.llm_prior = llm_prior
        self.seed_templates = seed_templates
        self.repair = repair
        self.max_source_chars = max_source_chars
        self.results = results or ResultLog()
        self.proposals: list[Proposal] = []
        self._repaired: set[tuple] = set()
        self._examples: dict[str, list] = {}
        self._calls = 0
        self._restarts = 0
        self._fallbacks = 0

    # -- wiring ------------------------------------------------------------------------------------
    def watch(self, evaluate_batch: Callable[[Sequence[Candidate]], list]) -> Callable[[Sequence[Candidate]], list]:
        """The search's batch evaluation, recording full results for the prompts' diagnostics."""
        return self.results.wrap(evaluate_batch)

    def observe(self, results: Sequence[Any]) -> None:
        self.results.observe(results)

    def prior(self, family: OpFamily, spec: OpSpec, cand: Candidate) -> float | None:
        """PUCT prior: templates keep the family's order; a model's proposal gets ``llm_prior``."""
        if cand.origin.startswith("llm"):
            return self.llm_prior
        p = self.fallback.prior(family, spec, cand)
        return p if p is not None else self.llm_prior

    @property
    def usage(self) -> dict:
        return self.transport.usage.as_dict()

    def summary(self) -> dict:
        """JSON-able account of the search's LLM use (for the stored entry's meta)."""
        reasons: dict[str, int] = {}
        for p in self.proposals:
            if not p.ok:
                key = p.reason.split(":", 1)[0][:60]
                reasons[key] = reasons.get(key, 0) + 1
        return {"model": self.transport.config.model or self.transport._model, "usage": self.usage,
                "proposals": len(self.proposals), "valid": sum(p.ok for p in self.proposals),
                "rejected": reasons, "template_fallbacks": self._fallbacks}

    def transcript(self) -> list[dict]:
        return list(self.transport.transcript)

    def record(self, results: Sequence[Any] = ()) -> list[dict]:
        """Every exchange (tag, messages, reply, ...) with its result: what parsing made of the reply
        (the proposal's verdict) and, for a candidate that was evaluated, its diagnostics. JSON-able;
        :class:`ReplayTransport` reruns the search from it (the extra ``result`` key is ignored)."""
        props = {p.tag: p for p in self.proposals}
        evals: dict = {}
        for r in results:
            c = getattr(r, "candidate", None)
            if c is not None:
                evals.setdefault(ident(c), {"ok": bool(r.ok), "diag": r.diagnostics.summary()})
        out = []
        for ex in self.transcript():
            tag = ex.get("tag", "")
            p = props.get(tag.split(".r", 1)[0])
            res: dict = {}
            if p is not None:
                last = p.turns == 1 or tag != p.tag  # the proposal's verdict belongs to its last turn
                res = {"proposal": ("accepted" if p.ok else p.reason[:2000]) if last else "retried"}
                if last and p.ok and p.candidate is not None and ident(p.candidate) in evals:
                    res["evaluated"] = evals[ident(p.candidate)]
            out.append({**ex, "result": res})
        return out

    # -- context -----------------------------------------------------------------------------------
    def knowledge(self) -> "KnowledgeBase | None":
        if self._kb_arg is False:
            return None
        if self._kb is None:
            if self._kb_arg not in (None, True):
                self._kb = self._kb_arg  # type: ignore[assignment]
            else:
                from ..knowledge.retrieval import KnowledgeBase

                self._kb = KnowledgeBase.load()
        return self._kb

    def _passages(self, family: OpFamily, spec: OpSpec, fb: Feedback | None, template: str) -> list:
        kb = self.knowledge()
        if kb is None or self.n_passages <= 0:
            return []
        extra = [template.replace("_", " "), spec.device.name if spec.device.type == "cuda" else "interpreter"]
        out = kb.search(knowledge_query(fb, family.name, spec.op, extra), k=self.n_passages)
        if spec.device.type == "cuda":  # one slot for the device's own facts when the query did not reach them
            dev = kb.search(f"{spec.device.name} {spec.device.arch} hardware", k=1, exclude=[p.id for p in out])
            if dev and not any("hardware" in p.tags for p in out):
                out = [*out[: self.n_passages - 1], dev[0]]
        return out

    def _store_examples(self, family: OpFamily, spec: OpSpec, exclude: Sequence[str]) -> list[tuple[str, Candidate]]:
        """Best stored kernels of the same family (same op first, then by speedup), not the parents."""
        if self.store is None or self.n_examples <= 0:
            return []
        if family.name not in self._examples:
            rows = []
            try:
                for e in self.store.entries():
                    if e.spec.family != family.name or (e.meta or {}).get("use") is False:
                        continue
                    sp = (e.meta or {}).get("speedup")
                    rows.append((e.spec.op != spec.op, e.spec.key == spec.key, -(sp or 0.0), e.key, e))
            except Exception as e:  # noqa: BLE001 - examples are optional
                log.debug("kevolve: reading store examples failed: %s", e)
            rows.sort(key=lambda r: r[:4])
            self._examples[family.name] = [r[-1] for r in rows]
        out: list[tuple[str, Candidate]] = []
        seen = set(exclude)
        for e in self._examples[family.name]:
            if e.candidate.source in seen:
                continue
            seen.add(e.candidate.source)
            sp = (e.meta or {}).get("speedup")
            timed = isinstance(sp, (int, float)) and e.spec.device.type == "cuda"  # interpreter times mean nothing
            desc = (f"Stored kernel for `{e.spec.describe()}` (template {e.candidate.template or '?'}, "
                    f"{e.candidate.origin}" + (f", {sp:.2f}x" if timed else "")
                    + f"), config {dict(e.candidate.config)}")
            out.append((desc, e.candidate))
            if len(out) >= self.n_examples:
                break
        return out

    def _fb(self, tree: "SearchTree | None", node: "Node") -> Feedback:
        return self.results.feedback(node, tree.baseline_ms if tree is not None else None)

    @staticmethod
    def _label(n: "Node") -> str:
        return f"n{n.id} {n.label()} ({n.origin})"

    def _context(self, family: OpFamily, spec: OpSpec, mode: str, template: Candidate, *,
                 parent: Candidate | None = None, parent_fb: Feedback | None = None,
                 second: Candidate | None = None, second_fb: Feedback | None = None,
                 history: list[tuple[str, Feedback]] | None = None, history_title: str = "",
                 variant: tuple[int, int] = (0, 1)) -> PromptContext:
        contract: Contract = extract_contract(family, spec, template)
        sources = [c.source for c in (parent, second, template) if c is not None]
        return PromptContext(
            family=family, spec=spec, mode=mode, contract=contract, parent=parent, parent_fb=parent_fb,
            second=second, second_fb=second_fb, start=template if parent is None else None,
            history=history or [], history_title=history_title,
            examples=self._store_examples(family, spec, sources),
            passages=self._passages(family, spec, parent_fb, template.template),
            variant=variant, max_source_chars=self.max_source_chars,
        )

    # -- asking --------------------------------------------------------------------------------------
    def _ask(self, family: OpFamily, spec: OpSpec, ask: _Ask) -> Proposal:
        """One proposal: prompt -> reply -> parse; an unusable reply gets its reason back once."""
        prompt = build_prompt(ask.ctx)
        msgs: Messages = prompt.messages()
        prop = Proposal(ask.tag, ask.mode, ask.node, prompt=prompt.text)
        for turn in range(self.parse_retries + 1):
            reply = self.transport.complete(msgs, tag=ask.tag if turn == 0 else f"{ask.tag}.r{turn}")
            prop.turns += 1
            if not reply.ok:
                prop.reason = f"transport: {reply.error}"
                return prop
            parsed = parse_reply(reply.text, ask.ctx.contract)
            why = parsed.reason
            cand = None
            if parsed.ok:
                cand = to_candidate(parsed, ask.template, reply.model or self.transport.config.model)
                try:
                    family.call_plan(spec, cand)
                except Exception as e:  # noqa: BLE001 - the host cannot launch it: the model should know
                    why = f"the call plan rejects the config: {type(e).__name__}: {e}"
            if not why:
                if prop.reason:  # the retry fixed it: keep what was wrong as a note
                    parsed.notes.insert(0, f"accepted after feedback on: {prop.reason.splitlines()[0]}")
                prop.ok, prop.candidate, prop.notes, prop.reason = True, cand, parsed.notes, ""
                return prop
            prop.reason = f"{_kind(why)}: {why}"
            if turn < self.parse_retries:
                msgs = [*msgs, {"role": "assistant", "content": reply.text},
                        {"role": "user", "content": retry_message(why)}]
        return prop

    def _run(self, family: OpFamily, spec: OpSpec, asks: list[_Ask], taken: Callable[[Candidate], bool]
             ) -> list[Candidate]:
        if not asks:
            return []
        workers = max(1, min(len(asks), self.transport.config.concurrency))
        if workers == 1:
            props = [self._ask(family, spec, a) for a in asks]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kevolve-ask") as ex:
                props = list(ex.map(lambda a: self._ask(family, spec, a), asks))
        out: list[Candidate] = []
        for p in props:
            dup = p.candidate is not None and (taken(p.candidate) or any(ident(p.candidate) == ident(c) for c in out))
            if p.ok and dup:
                p.ok, p.reason = False, "duplicate: the reply is a kernel and config already tried"
            if p.ok and p.candidate is not None:
                out.append(p.candidate)
            else:
                log.info("kevolve: LLM proposal %s (%s) rejected: %s", p.tag, p.mode, p.reason.splitlines()[0][:200])
        self.proposals += props
        return out

    def _start_templates(self, family: OpFamily, spec: OpSpec, n: int) -> list[Candidate]:
        """Restarts rewrite the family's templates in turn (one per distinct template, its first config)."""
        firsts: dict[str, Candidate] = {}
        for c in family.candidates(spec):
            firsts.setdefault(c.template, c)
        pool = list(firsts.values())
        if not pool:  # no templates (the generic family): the contract's skeleton is the starting point
            sk = family.skeleton(spec)
            pool = [sk] if sk is not None else []
        out = [pool[(self._restarts + i) % len(pool)] for i in range(n)] if pool else []
        self._restarts += n
        return out

    def _repairs(self, tree: "SearchTree", node: "Node") -> list["Node"]:
        """Failed model proposals next to ``node`` (its children and siblings) not yet repaired."""
        near = [tree.get(c) for c in node.children] + (tree.siblings(node.id) if node.id != ROOT else [])
        return [n for n in near if n.ok is False and n.origin.startswith("llm") and n.candidate is not None
                and ident(n.candidate) not in self._repaired]

    # -- the Synthesizer protocol ---------------------------------------------------------------------
    def expand(self, family: OpFamily, spec: OpSpec, tree: "SearchTree", node: "Node", k: int, memory_mode: str,
               rng: random.Random) -> list[Candidate]:
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode {memory_mode!r}; known: {MEMORY_MODES}")
        if k <= 0:
            return []
        self._calls += 1
        seeds: list[Candidate] = []
        if node.id == ROOT and self.seed_templates > 0 and not any(n.origin == "template" for n in tree):
            seeds = self.fallback.expand(family, spec, tree, node, min(k, self.seed_templates), "restart", rng)
        want = k - len(seeds)
        if want <= 0:
            return seeds
        if self.transport.exhausted():
            info_once("kevolve: the LLM budget for this search is spent; template proposals from here")
            return seeds + self._fall(family, spec, tree, node, want, memory_mode, rng)
        asks = self._tree_asks(family, spec, tree, node, want, memory_mode)
        got = self._run(family, spec, asks, lambda c: c in tree or any(ident(c) == ident(s) for s in seeds))
        if not got:
            return seeds + self._fall(family, spec, tree, node, want, memory_mode, rng)
        return seeds + got[:want]

    def _fall(self, family: OpFamily, spec: OpSpec, tree: "SearchTree", node: "Node", k: int, mode: str,
              rng: random.Random) -> list[Candidate]:
        self._fallbacks += 1
        info_once("kevolve: the LLM gave no usable kernel for an expansion; using template proposals for it")
        return self.fallback.expand(family, spec, tree, node, k, mode, rng)

    def _tree_asks(self, family: OpFamily, spec: OpSpec, tree: "SearchTree", node: "Node", k: int,
                   mode: str) -> list[_Ask]:
        asks: list[_Ask] = []
        tag = f"x{self._calls}"
        if self.repair:
            for bad in self._repairs(tree, node)[: max(1, k // 2) if k > 1 else 1]:
                assert bad.candidate is not None
                self._repaired.add(ident(bad.candidate))
                ctx = self._context(family, spec, "repair", bad.candidate, parent=bad.candidate,
                                    parent_fb=self._fb(tree, bad),
                                    history=[(self._label(n), self._fb(tree, n)) for n in tree.path(bad.id)[1:-1]],
                                    history_title="The line of kernels that led to it:")
                asks.append(_Ask(f"{tag}.{len(asks)}", "repair", bad.id, ctx, bad.candidate))
        n_new = k - len(asks)
        if n_new <= 0:
            return asks
        everything = [(self._label(n), self._fb(tree, n)) for n in tree.evaluated()][-24:]
        if mode == "restart" or node.candidate is None:
            for i, start in enumerate(self._start_templates(family, spec, n_new)):
                ctx = self._context(family, spec, "restart", start, history=everything,
                                    history_title="Kernels already in the search (do something different):",
                                    variant=(i, n_new))
                asks.append(_Ask(f"{tag}.{len(asks)}", "restart", node.id, ctx, start))
            return asks
        parent, second, history, title = node, None, [], ""
        if mode == "inherit":
            path = tree.path(node.id)[1:-1]
            kids = [tree.get(c) for c in node.children]
            history = [(self._label(n), self._fb(tree, n)) for n in path]
            history += [(f"{self._label(n)} [tried from the parent]", self._fb(tree, n)) for n in kids]
            title = "The line of kernels that led to the parent, then what was already tried from it:"
        else:
            sib = tree.best_sibling(node.id)
            if sib is None or sib.candidate is None:
                return asks  # the strategy only asks for these modes when a verified sibling exists
            history = [(self._label(n), self._fb(tree, n)) for n in [node, *tree.siblings(node.id)] if n.ok is not None]
            title = "Alternatives tried at the same point of the search:"
            if mode == "siblings":
                parent = sib
            else:
                second = sib
        assert parent.candidate is not None
        listed = {label for label, _ in history}
        recent = [n for n in reversed(tree.evaluated()) if n.ok is False and n.id != parent.id
                  and self._label(n) not in listed][:3]  # mistakes made elsewhere in the tree: avoid them
        history += [(f"{self._label(n)} [recent failure elsewhere]", self._fb(tree, n)) for n in reversed(recent)]
        pfb = self._fb(tree, parent)
        for i in range(n_new):
            ctx = self._context(family, spec, "repair" if pfb.failed and mode == "inherit" else mode, parent.candidate,
                                parent=parent.candidate, parent_fb=pfb,
                                second=None if second is None else second.candidate,
                                second_fb=None if second is None else self._fb(tree, second),
                                history=history, history_title=title, variant=(i, n_new))
            asks.append(_Ask(f"{tag}.{len(asks)}", mode, node.id, ctx, parent.candidate))
        return asks

    def propose(self, family: OpFamily, spec: OpSpec, history: Sequence[object], k: int) -> list[Candidate]:
        """Flat proposals (strategies without a tree): improve the best verified result so far, or
        rewrite the templates when nothing has verified; templates when the model gives nothing."""
        if k <= 0:
            return []
        self._calls += 1
        results = [r for r in history if hasattr(r, "candidate") and hasattr(r, "diagnostics")]
        self.observe(results)  # type: ignore[arg-type]
        cands = [getattr(r, "candidate", r) for r in history]
        tried = {ident(c) for c in cands if isinstance(c, Candidate)}
        if not results:  # the first batch: templates first (a verified baseline), then the model
            seeds = self.fallback.propose(family, spec, history, min(k, max(self.seed_templates, 0)))
            tried |= {ident(c) for c in seeds}
        else:
            seeds = []
        want = k - len(seeds)
        if want <= 0 or self.transport.exhausted():
            return seeds + (self.fallback.propose(family, spec, [*history, *seeds], want) if want > 0 else [])
        base = None
        lines = [(_result_label(r), Feedback.of_result(r)) for r in results][-24:]
        ok = [r for r in results if getattr(r, "ok", False) and getattr(r, "time_ms", None) is not None]
        if ok:
            base = min(ok, key=lambda r: r.time_ms)  # type: ignore[attr-defined]
        asks = []
        tag = f"p{self._calls}"
        starts = self._start_templates(family, spec, want)
        for i in range(want):
            if base is not None:
                best: Candidate = base.candidate  # type: ignore[attr-defined]
                ctx = self._context(family, spec, "propose", best, parent=best, parent_fb=Feedback.of_result(base),
                                    history=lines, variant=(i, want))
                asks.append(_Ask(f"{tag}.{i}", "propose", None, ctx, best))
            elif starts:
                ctx = self._context(family, spec, "restart", starts[i], history=lines, variant=(i, want))
                asks.append(_Ask(f"{tag}.{i}", "restart", None, ctx, starts[i]))
        got = self._run(family, spec, asks, lambda c: ident(c) in tried)
        if not got:
            self._fallbacks += 1
            return seeds + self.fallback.propose(family, spec, [*history, *seeds], want)
        return seeds + got[:want]


def load_transcript(path: str) -> list[dict]:
    """A recorded search's exchanges: a transcript file (a JSON list, or ``{"transcript": [...]}``) or
    a store entry file (``meta.llm.transcript``)."""
    import json
    from pathlib import Path

    doc = json.loads(Path(path).expanduser().read_text())
    if isinstance(doc, dict):
        doc = doc.get("transcript") or ((doc.get("meta") or {}).get("llm") or {}).get("transcript")
    if not isinstance(doc, list):
        raise ValueError(f"{path}: no recorded LLM transcript in it (a JSON list, or a store entry with "
                         "meta.llm.transcript)")
    return doc


# -- construction from settings ---------------------------------------------------------------------------
def make_synthesizer(settings: "Settings", store: "KernelStore | None" = None) -> Any:
    """The synthesizer a search should use: ``settings.synthesizer`` "template", "llm", or "auto"
    (the LLM when an endpoint is configured for kevolve: ``KEVOLVE_LLM_BASE_URL`` / ``llm_base_url``,
    ``OPENAI_BASE_URL``, or ``KEVOLVE_LLM_API_KEY``; an ``OPENAI_API_KEY`` alone is not taken as
    consent to spend it). Without one, the template synthesizer, said once in the log."""
    choice = (getattr(settings, "synthesizer", "auto") or "auto").strip().lower()
    replay = getattr(settings, "llm_replay", "") or ""
    if replay:
        info_once("kevolve: replaying recorded LLM exchanges from %s (no endpoint)", replay)
        cfg = LLMConfig(base_url="replay://", model="replay", budget_tokens=0,
                        concurrency=max(1, int(getattr(settings, "llm_concurrency", 1) or 1)))
        return LLMSynthesizer(ReplayTransport(load_transcript(replay), cfg), store=store)
    if choice == "template":
        return TemplateSynthesizer()
    if choice not in ("auto", "llm"):
        raise ValueError(f"synthesizer must be auto, template or llm, got {choice!r}")
    cfg = LLMConfig.resolve(settings)
    usable = cfg.explicit if choice == "auto" else cfg.configured
    if not usable:
        if choice == "llm":
            warn_once("kevolve: synthesizer='llm' but no LLM endpoint is configured (KEVOLVE_LLM_BASE_URL, "
                      "OPENAI_BASE_URL or an API key); searching with the template synthesizer")
        else:
            info_once("kevolve: no LLM endpoint configured (KEVOLVE_LLM_BASE_URL / OPENAI_BASE_URL); "
                      "searching with the template synthesizer")
        return TemplateSynthesizer()
    import importlib.util

    if importlib.util.find_spec("openai") is None:
        warn_once("kevolve: an LLM endpoint is configured but the `openai` package is not installed; "
                  "searching with the template synthesizer")
        return TemplateSynthesizer()
    if store is None:
        try:
            from ..store import KernelStore

            store = KernelStore.from_settings(settings)
        except Exception:  # noqa: BLE001 - examples are optional
            store = None
    info_once("kevolve: searching with the LLM synthesizer at %s (model %s)", cfg.base_url or "api.openai.com",
              cfg.model or "the server's first")
    return LLMSynthesizer(ChatTransport(cfg), store=store)


__all__ = ["LLMSynthesizer", "Proposal", "load_transcript", "make_synthesizer"]
