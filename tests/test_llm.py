"""The LLM synthesizer against a scripted chat-completions server on 127.0.0.1 (no network).

The stub speaks enough of the OpenAI API for the ``openai`` client (``/v1/chat/completions``,
``/v1/models``), answers from a script or a function of the request, counts requests in flight,
and shuts itself down after a deadline even if a test forgets to.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest
import torch

from torch_kevolve.config import Settings
from torch_kevolve.families import get_family
from torch_kevolve.families.base import Candidate
from torch_kevolve.llm import (
    ChatTransport, LLMConfig, LLMSynthesizer, ReplayTransport, extract_contract, make_synthesizer, parse_reply,
)
from torch_kevolve.llm.feedback import Feedback
from torch_kevolve.llm.prompts import PromptContext, build_prompt
from torch_kevolve.llm.transport import retry_after_s
from torch_kevolve.search import Budget, Evaluator, SearchTree, TemplateSynthesizer, get_strategy, search_spec
from torch_kevolve.search.strategies import finalize

FAM = get_family("embedding_bag")
MODEL = "stub-model"


# -- the stub server -----------------------------------------------------------------------------------
def chat_payload(text: str, prompt_tokens: int = 100, completion_tokens: int | None = None) -> dict:
    ct = len(text) // 4 if completion_tokens is None else completion_tokens
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": ct, "total_tokens": prompt_tokens + ct}}


Responder = Callable[[dict, int], "tuple[int, dict, Any]"]


class StubLLM:
    """``responder(body, n) -> (status, headers, payload)``; payload a dict (JSON) or str (text)."""

    def __init__(self, responder: Responder, delay_s: float = 0.0, lifetime_s: float = 120.0,
                 models: tuple[str, ...] = (MODEL,)) -> None:
        self.responder, self.delay_s, self.models = responder, delay_s, models
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def _send(self, status: int, headers: dict, payload: Any) -> None:
                data = json.dumps(payload).encode() if isinstance(payload, (dict, list)) else str(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {}, {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                                     "owned_by": "stub"} for m in stub.models]})
                else:
                    self._send(404, {}, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub._lock:
                    n = len(stub.bodies)
                    stub.bodies.append(body)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    if stub.delay_s:
                        time.sleep(stub.delay_s)
                    status, headers, payload = stub.responder(body, n)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1
                self._send(status, headers, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._deadline = threading.Timer(lifetime_s, self.stop)  # bounded: stops by itself
        self._deadline.daemon = True
        self._deadline.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self._deadline.cancel()
        self.server.shutdown()
        self.server.server_close()

    def prompts(self) -> list[str]:
        """The last user message of each request, in arrival order."""
        return [[m for m in b["messages"] if m["role"] == "user"][-1]["content"] for b in self.bodies]


@pytest.fixture
def stub_factory():
    made: list[StubLLM] = []

    def make(responder: Responder, **kw: Any) -> StubLLM:
        s = StubLLM(responder, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def scripted(replies: list[Any], default: Callable[[int], Any] | None = None) -> Responder:
    """Replies in arrival order; a str is a completion, a tuple is (status, headers, payload)."""
    lock = threading.Lock()
    queue = list(replies)

    def respond(body: dict, n: int) -> tuple[int, dict, Any]:
        with lock:
            item = queue.pop(0) if queue else (default(n) if default else "no more script")
        if isinstance(item, tuple):
            return item
        return 200, {}, chat_payload(item)

    return respond


def transport(url: str, **kw: Any) -> ChatTransport:
    sleeps: list[float] = []
    cfg = LLMConfig(base_url=url, model=kw.pop("model", MODEL), api_key="test", **kw)
    t = ChatTransport(cfg, sleep=sleeps.append)
    t.sleeps = sleeps  # type: ignore[attr-defined]
    return t


# -- the op and the scripted kernels ----------------------------------------------------------------------
def _spec():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 12, generator=g)
    idx = torch.randint(0, 40, (25,), generator=g)
    off = torch.tensor([0, 3, 3, 10, 18])
    return FAM.spec_for(w, idx, off, mode=1)


SPEC = _spec()
TEMPLATE = FAM.candidates(SPEC)[0]  # bag_per_program


def kernel_reply(tag: str, config: dict | None = None, source: str | None = None) -> str:
    """A valid rewrite: the template with a harmless change (a comment), optionally a config block."""
    src = (source or TEMPLATE.source) + f"\n# rewritten by the model: {tag}\n"
    out = f"Process more rows per chunk ({tag}).\n```python\n{src}```\n"
    if config:
        out += f"```json\n{json.dumps(config)}\n```\n"
    return out


TEMPLATE_BY_KERNEL = {FAM.call_plan(SPEC, c).kernel: c for c in FAM.candidates(SPEC)}


def rewrite_of_contract(body: dict, tag: str) -> str:
    """What a cooperative model does: rewrite the kernel whose entry point the prompt asks to keep."""
    prompt = [m for m in body["messages"] if m["role"] == "user"][0]["content"]
    contract = prompt.split("## Entry-point contract", 1)[-1]
    name = next((k for k in TEMPLATE_BY_KERNEL if f"def {k}(" in contract), None)
    return kernel_reply(tag, source=TEMPLATE_BY_KERNEL[name].source if name else None)


HOSTILE = ("Here is a faster kernel.\n```python\nimport os\n" + TEMPLATE.source
           + "\n\ndef _leak():\n    return os.environ\n```\n")
MALFORMED = "Sure! You should use more warps and a larger BLOCK_L; that will be faster."
BROKEN = kernel_reply("broken", source=TEMPLATE.source.replace(
    "acc = tl.zeros([BLOCK_D], dtype=tl.float32)", "acc = tl.zeros([BLOCK_D], dtype=tl.float32) + undefined_scale", 1))


# -- transport ------------------------------------------------------------------------------------------
def test_429_then_success_honours_retry_after(stub_factory):
    stub = stub_factory(scripted([(429, {"Retry-After": "0.03"}, {"error": {"message": "slow down"}}), "hello"]))
    t = transport(stub.url)
    r = t.complete([{"role": "user", "content": "hi"}])
    assert r.ok and r.text == "hello" and r.attempts == 2
    assert t.sleeps == [0.03]  # type: ignore[attr-defined]
    assert t.usage.retries == 1 and t.usage.requests == 2 and t.usage.replies == 1
    assert stub.bodies[0]["model"] == MODEL and stub.bodies[0]["max_tokens"] > 0


def test_500s_exhaust_retries_with_backoff_and_end_as_a_value(stub_factory):
    stub = stub_factory(lambda body, n: (500, {}, {"error": {"message": "boom"}}))
    t = transport(stub.url, max_retries=3, backoff_s=0.5, max_backoff_s=1.5)
    r = t.complete([{"role": "user", "content": "hi"}])
    assert not r.ok and "HTTP 500" in r.error and r.attempts == 4 and len(stub.bodies) == 4
    waits = t.sleeps  # type: ignore[attr-defined]
    assert len(waits) == 3 and waits[0] < waits[1] and all(w <= 1.5 * 1.25 for w in waits)  # doubling, capped
    assert t.usage.failures == 1 and t.usage.replies == 0
    # a client error is not retried
    stub2 = stub_factory(lambda body, n: (400, {}, {"error": {"message": "bad request"}}))
    r2 = transport(stub2.url).complete([{"role": "user", "content": "hi"}])
    assert not r2.ok and "HTTP 400" in r2.error and len(stub2.bodies) == 1


def test_timeout_is_retried_then_reported(stub_factory):
    stub = stub_factory(lambda body, n: (200, {}, chat_payload("late")), delay_s=1.0)
    t = transport(stub.url, timeout_s=0.2, max_retries=1, backoff_s=0.0)
    r = t.complete([{"role": "user", "content": "hi"}])
    assert not r.ok and "Timeout" in r.error and r.attempts == 2


def test_retry_after_forms():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_s({}) is None and retry_after_s({"retry-after": "soon"}) is None


def test_concurrency_limit_and_token_budget_hold(stub_factory):
    def respond(body: dict, n: int) -> tuple[int, dict, Any]:
        prompt = sum(len(m["content"]) for m in body["messages"]) // 4
        return 200, {}, chat_payload("ok " * 40, prompt_tokens=prompt, completion_tokens=min(body["max_tokens"], 60))

    stub = stub_factory(respond, delay_s=0.15)
    t = transport(stub.url, concurrency=2, max_tokens=300, budget_tokens=0)
    replies = t.complete_many([[{"role": "user", "content": f"q{i} " + "x" * 200}] for i in range(6)])
    assert all(r.ok for r in replies) and len(stub.bodies) == 6
    assert stub.max_in_flight == 2 and t.usage.max_in_flight == 2

    stub.bodies.clear()
    budget = 800  # ~111 tokens a call: five fit, the rest are refused
    t2 = transport(stub.url, concurrency=3, max_tokens=300, budget_tokens=budget)
    replies = t2.complete_many([[{"role": "user", "content": f"q{i} " + "x" * 200}] for i in range(8)])
    refused = [r for r in replies if r.error.startswith("budget:")]
    assert refused and len(stub.bodies) == 8 - len(refused) == t2.usage.replies
    assert t2.usage.total_tokens <= budget and t2.usage.refused == len(refused)
    assert t2.exhausted()
    # cost budget: prices per million tokens
    t3 = transport(stub.url, budget_tokens=0, max_tokens=300, price_in=1e4, price_out=1e4, budget_cost=6.0)
    out = [t3.complete([{"role": "user", "content": "x" * 200}]) for _ in range(6)]
    assert any(r.error.startswith("budget: cost") for r in out) and t3.usage.cost <= 6.0


def test_model_defaults_to_the_servers_first(stub_factory):
    stub = stub_factory(scripted(["hi"]), models=("served-model", "other"))
    t = transport(stub.url, model="")
    r = t.complete([{"role": "user", "content": "hi"}])
    assert r.ok and stub.bodies[0]["model"] == "served-model"
    empty = stub_factory(scripted(["hi"]), models=())
    r2 = transport(empty.url, model="").complete([{"role": "user", "content": "hi"}])
    assert not r2.ok and "lists none" in r2.error and not empty.bodies


def test_config_resolution_and_auto_fallback(monkeypatch, caplog):
    for v in ("KEVOLVE_LLM_BASE_URL", "KEVOLVE_LLM_MODEL", "KEVOLVE_LLM_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY",
              "KEVOLVE_SYNTHESIZER"):
        monkeypatch.delenv(v, raising=False)
    from torch_kevolve import log as klog

    monkeypatch.setattr(klog, "_once", set())
    with caplog.at_level(logging.INFO, logger="torch_kevolve"):
        assert isinstance(make_synthesizer(Settings.from_env()), TemplateSynthesizer)
        assert isinstance(make_synthesizer(Settings.from_env()), TemplateSynthesizer)
    said = [r for r in caplog.records if "no LLM endpoint configured" in r.getMessage()]
    assert len(said) == 1  # once
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-consent")
    assert isinstance(make_synthesizer(Settings.from_env()), TemplateSynthesizer)  # a bare key is no opt-in
    assert LLMConfig.resolve(Settings.from_env()).configured
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("KEVOLVE_LLM_MODEL", "m1")
    s = Settings.from_env({"llm_concurrency": 3, "llm_budget_tokens": 1000})
    cfg = LLMConfig.resolve(s)
    assert (cfg.base_url, cfg.model, cfg.api_key, cfg.concurrency, cfg.budget_tokens) == (
        "http://127.0.0.1:9/v1", "m1", "sk-not-consent", 3, 1000)
    assert "sk-not" not in repr(cfg) and "sk-not" not in repr(s)
    synth = make_synthesizer(s)
    assert isinstance(synth, LLMSynthesizer)
    assert isinstance(make_synthesizer(Settings.from_env({"synthesizer": "template"})), TemplateSynthesizer)
    with pytest.raises(ValueError):
        Settings.from_env({"synthesizer": "gpt"})


# -- parsing --------------------------------------------------------------------------------------------
def test_parsing_accepts_valid_and_rejects_with_reasons():
    contract = extract_contract(FAM, SPEC, TEMPLATE)
    ok = parse_reply(kernel_reply("a", {"BLOCK_L": 32, "num_warps": 2, "NEW_KNOB": 1}), contract)
    assert ok.ok and ok.config["BLOCK_L"] == 32 and ok.config["num_warps"] == 2 and "NEW_KNOB" not in ok.config
    assert ok.notes and "NEW_KNOB" in ok.notes[0]
    assert not (p := parse_reply(MALFORMED, contract)).ok and "no ```python code block" in p.reason
    assert not (p := parse_reply(HOSTILE, contract)).ok and "static check" in p.reason and "'os'" in p.reason
    renamed = kernel_reply("b").replace("def embedding_bag_bag_per_program(", "def my_kernel(")
    assert not (p := parse_reply(renamed, contract)).ok and "embedding_bag_bag_per_program" in p.reason
    head, sig, tail = kernel_reply("c").rpartition("BLOCK_L: tl.constexpr, ACC_TILE: tl.constexpr,\n):")  # the kernel's
    swapped = head + "ACC_TILE: tl.constexpr, BLOCK_L: tl.constexpr,\n):" + tail
    assert swapped != kernel_reply("c") and not (p := parse_reply(swapped, contract)).ok and "in this order" in p.reason
    cut = "```python\n" + TEMPLATE.source[:300]
    assert not (p := parse_reply(cut, contract)).ok and "cut off" in p.reason
    assert not (p := parse_reply(kernel_reply("d") + "```json\n{oops\n```", contract)).ok and "JSON" in p.reason
    assert not (p := parse_reply(kernel_reply("e", {"BLOCK_L": "big"}), contract)).ok and "BLOCK_L" in p.reason
    assert not parse_reply("", contract).ok


# -- prompts --------------------------------------------------------------------------------------------
def test_prompt_has_every_part():
    from torch_kevolve.knowledge import KnowledgeBase

    contract = extract_contract(FAM, SPEC, TEMPLATE)
    fb = Feedback(stage="verify", error="output 0 differs from reference", case="edge:odd_dim_33",
                  max_abs_err=0.5, max_rel_err=0.1, where=[2, 32], summary="verify failed on edge:odd_dim_33")
    sibling = Feedback(stage="ok", time_ms=0.8, baseline_ms=1.6,
                       profile={"pct_of_floor": 21.0, "bound": "memory", "achieved_GBps": 700.0, "n_regs": 40},
                       summary="ok")
    example = FAM.candidates(SPEC)[-1]
    kb = KnowledgeBase.load()
    ctx = PromptContext(FAM, SPEC, "siblings", contract, parent=TEMPLATE, parent_fb=fb,
                        history=[("n2 bag_tile[...] (template)", sibling)], history_title="Alternatives tried:",
                        examples=[("Stored kernel for a similar op", example)],
                        passages=kb.search("mask boundary edge case", k=2), variant=(1, 3))
    p = build_prompt(ctx)
    heads = [h for h, _ in p.sections]
    assert heads == ["Task", "Reference (PyTorch)", "Inputs", "Entry-point contract", "Hardware", "Parent",
                     "Search so far", "Examples", "Knowledge", "Reply format"]
    assert "def eager" in p.section("Reference (PyTorch)") and "_embedding_bag" in p.section("Reference (PyTorch)")
    assert "input 0: float32[40, 12]" in p.section("Inputs") and "mode=1" in p.section("Inputs")
    c = p.section("Entry-point contract")
    assert "def embedding_bag_bag_per_program(weight_ptr" in c and "`BLOCK_L`" in c and "grid (5, 1)" in c
    assert "interpreter" in p.section("Hardware")
    par = p.section("Parent")
    assert TEMPLATE.source.strip()[:200] in par and "edge:odd_dim_33" in par and "max abs err 0.5" in par
    hist = p.section("Search so far")
    assert "0.8 ms" in hist and "2.00x" in hist and "21% of floor (memory-bound)" in hist
    assert "proposal 2 of 3" in p.section("Task") and "Alternatives tried" in hist
    assert example.source.strip()[:100] in p.section("Examples")
    assert "###" in p.section("Knowledge") and "```json" in p.section("Reply format")
    msgs = p.messages()
    assert msgs[0]["role"] == "system" and msgs[1]["content"].startswith("## Task")
    # restart: no parent, the template is shown as the starting point; empty sections are left out
    p2 = build_prompt(PromptContext(FAM, SPEC, "restart", contract, start=TEMPLATE))
    assert "Starting point" in p2.section("Parent") and not p2.section("Examples") and not p2.section("Search so far")


# -- end to end: a real small search ----------------------------------------------------------------------
class Recorder:
    """In-process evaluation with a deterministic 'timer': the model's kernels are timed 2x faster,
    so a verified LLM candidate wins; records every candidate that reached the evaluator."""

    def __init__(self) -> None:
        self.ev = Evaluator(FAM, SPEC, timer=lambda fn: (fn(), 1.0)[1], seeds=1)
        self.seen: list[Candidate] = []

    def __call__(self, cands):
        out = []
        for c in cands:
            self.seen.append(c)
            r = self.ev.evaluate(c)
            if r.ok:
                r.time_ms = 0.5 if c.origin.startswith("llm") else 1.0
            out.append(r)
        return out


def test_mcts_search_end_to_end_llm_wins_bad_replies_rejected(stub_factory):
    stub = stub_factory(scripted(
        [MALFORMED, kernel_reply("v1", {"BLOCK_L": 16}),  # garbage, then a fix after the parse error is fed back
         HOSTILE, HOSTILE,  # hostile twice: rejected for good, never evaluated
         BROKEN],  # passes the checks, fails when run: its error must reach a later prompt
        default=lambda n: kernel_reply(f"v{n}")))
    t = transport(stub.url, concurrency=1)
    synth = LLMSynthesizer(t, store=None)
    rec = Recorder()
    batch = synth.watch(rec)
    out = get_strategy("mcts")(FAM, SPEC, synth, batch, Budget(max_evals=6), 0, baseline_ms=1.0, batch=2)
    out = finalize(out, batch, retime_top=1)
    tree = out.tree
    assert len(out.results) == 6
    origins = [n.origin for n in tree]
    assert "template" in origins and origins.count(f"llm:{MODEL}") >= 3
    assert out.best is not None and out.best.candidate.origin == f"llm:{MODEL}"
    assert tree.winner is not None and tree.get(tree.winner).origin.startswith("llm")
    # garbage -> its reason went back to the model once, and the corrected reply was used
    prompts = stub.prompts()
    assert prompts[1].startswith("Your reply could not be used: no ```python code block")
    assert any(c.source.endswith("# rewritten by the model: v1\n") and c.cfg["BLOCK_L"] == 16 for c in rec.seen)
    # hostile: rejected by the static check with the reason, never reached the evaluator
    hostile = [p for p in synth.proposals if p.reason.startswith("static")]
    assert hostile and "'os'" in hostile[0].reason and hostile[0].turns == 2
    assert "static check rejected" in prompts[3]
    assert not any("import os" in c.source for c in rec.seen)
    # the broken kernel was evaluated, failed with diagnostics, and a later prompt carried them
    broken = [n for n in tree if "undefined_scale" in n.candidate.source]
    assert len(broken) == 1 and broken[0].ok is False and "undefined_scale" in broken[0].diag
    later = [p for p in prompts[5:] if p.startswith("## Task")]
    assert later and all("## Entry-point contract" in p for p in later)
    assert any("undefined_scale" in p and "## Search so far" in p for p in later)
    # every first-turn prompt had the parts
    firsts = [p for p in prompts if p.startswith("## Task")]
    for heading in ("## Reference (PyTorch)", "## Inputs", "## Entry-point contract", "## Hardware", "## Knowledge",
                    "## Reply format"):
        assert all(heading in p for p in firsts), heading
    assert any("## Parent\nParent kernel" in p for p in firsts)
    s = synth.summary()
    assert s["valid"] >= 3 and s["rejected"].get("static") == 1 and t.usage.max_in_flight == 1
    assert len(synth.transcript()) == len(stub.bodies)


def test_search_spec_uses_the_settings_llm_stores_and_reuses(stub_factory, store_dir, monkeypatch):
    from torch_kevolve.knowledge import KnowledgeBase, load_passages, user_dir, write_back
    from torch_kevolve.knowledge.retrieval import PACKAGE_DIR
    from torch_kevolve.store import KernelStore

    for v in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(v, raising=False)
    stub = stub_factory(scripted([], default=lambda n: kernel_reply(f"s{n}", {"BLOCK_L": 32})))
    settings = Settings.from_env({"synthesizer": "llm", "llm_base_url": stub.url, "llm_model": MODEL,
                                  "llm_api_key": "test", "llm_concurrency": 2, "executor": "inprocess",
                                  "max_candidates": 3, "seeds": 1, "search": "mcts"})
    entry, outcome = search_spec(FAM, SPEC, settings, timer=lambda fn: (fn(), 1.0)[1])
    assert entry is not None and stub.bodies, "the search asked the model"
    assert any(r.candidate.origin == f"llm:{MODEL}" and r.ok for r in outcome.results)
    store = KernelStore.from_settings(settings)
    # the winner (whoever it is) is stored; store an LLM one too and check it comes back as an example
    llm_res = next(r for r in outcome.results if r.candidate.origin.startswith("llm") and r.ok)
    from torch_kevolve.store import Entry

    llm_entry = Entry(SPEC, llm_res.candidate, {**entry.meta, "proposer": llm_res.candidate.origin})
    assert store.put(llm_entry)
    got = store.get(SPEC)
    assert got is not None and got.candidate.origin == f"llm:{MODEL}"
    # winners write back: the stored kernel becomes a retrievable passage under the user's cache
    path = write_back(got)
    assert path is not None and path.is_relative_to(user_dir()) and not path.is_relative_to(PACKAGE_DIR)
    kb = KnowledgeBase(load_passages([PACKAGE_DIR, user_dir()]))
    hit = kb.search("embedding_bag stored kernel bag_per_program example", k=3)
    assert hit and hit[0].origin == "user" and SPEC.key in hit[0].text
    # a later search sees the stored kernel among its examples
    stub.bodies.clear()
    synth = make_synthesizer(settings)
    assert isinstance(synth, LLMSynthesizer)
    tree = SearchTree("mcts")
    node = tree.add(TEMPLATE)
    tree.record(node.id, Recorder()([TEMPLATE])[0])
    cands = synth.expand(FAM, SPEC, tree, node, 1, "inherit", __import__("random").Random(0))
    assert cands and cands[0].origin == f"llm:{MODEL}"
    assert "## Examples" in stub.prompts()[0] and "rewritten by the model" in stub.prompts()[0]


def test_falls_back_to_templates_when_the_model_gives_nothing(stub_factory):
    stub = stub_factory(lambda body, n: (500, {}, {"error": {"message": "down"}}))
    synth = LLMSynthesizer(transport(stub.url, max_retries=0), knowledge=False)
    rec = Recorder()
    out = get_strategy("mcts")(FAM, SPEC, synth, synth.watch(rec), Budget(max_evals=3), 0, baseline_ms=1.0, batch=2)
    assert len(out.results) == 3 and all(r.candidate.origin.startswith("template") for r in out.results)
    assert out.best is not None
    assert synth.proposals and all(p.reason.startswith("transport: HTTP 500") for p in synth.proposals)
    assert synth.summary()["template_fallbacks"] >= 1
    # budget spent: no request at all, straight to templates
    stub.bodies.clear()
    t = transport(stub.url, budget_tokens=100)
    s2 = LLMSynthesizer(t, knowledge=False)
    tree = SearchTree("mcts")
    got = s2.expand(FAM, SPEC, tree, tree.root, 2, "restart", __import__("random").Random(0))
    assert len(got) == 2 and all(c.origin.startswith("template") for c in got) and not stub.bodies


def test_flat_proposals_for_the_exhaustive_strategy(stub_factory):
    """Strategies without a tree get a template first, then rewrites of the best verified kernel."""
    stub = stub_factory(lambda body, n: (200, {}, chat_payload(rewrite_of_contract(body, f"f{n}"))))
    synth = LLMSynthesizer(transport(stub.url), knowledge=False)
    rec = Recorder()
    out = get_strategy("exhaustive")(FAM, SPEC, synth, synth.watch(rec), Budget(max_evals=3), 0, baseline_ms=1.0,
                                     batch=2)
    assert [r.candidate.origin for r in out.results] == ["template", f"llm:{MODEL}", f"llm:{MODEL}"]
    assert all(r.ok for r in out.results)
    prompts = stub.prompts()
    assert prompts[0].startswith("## Task\nWrite a new kernel") and "Starting point" in prompts[0]
    assert prompts[1].startswith("## Task\nWrite a kernel module for this op that is faster")
    assert "## Parent\nParent kernel" in prompts[1] and "rewritten by the model: f0" in prompts[1]  # the best so far


def test_expansion_asks_concurrently_within_the_limit(stub_factory):
    stub = stub_factory(lambda body, n: (200, {}, chat_payload(rewrite_of_contract(body, f"c{n}"))), delay_s=0.2)
    synth = LLMSynthesizer(transport(stub.url, concurrency=2), knowledge=False, seed_templates=0)
    tree = SearchTree("mcts")
    t0 = time.monotonic()
    got = synth.expand(FAM, SPEC, tree, tree.root, 4, "restart", __import__("random").Random(0))
    assert len(got) == 4 and len({c.source for c in got}) == 4
    # restarts rewrite the family's templates in turn
    assert [c.template for c in got] == ["bag_per_program", "bags_per_block", "bag_tile", "bag_per_program"]
    assert stub.max_in_flight == 2 and time.monotonic() - t0 < 4 * 0.2 + 0.5
    assert all(synth.prior(FAM, SPEC, c) == synth.llm_prior for c in got)
    assert synth.prior(FAM, SPEC, TEMPLATE) == 1.0


def test_replay_reruns_a_recorded_search_without_an_endpoint(stub_factory):
    stub = stub_factory(scripted([MALFORMED], default=lambda n: kernel_reply(f"r{n}", {"BLOCK_L": 8 << (n % 2)})))
    s1 = LLMSynthesizer(transport(stub.url, concurrency=1), knowledge=False)
    out1 = get_strategy("mcts")(FAM, SPEC, s1, s1.watch(Recorder()), Budget(max_evals=4), 3, baseline_ms=1.0, batch=2)
    s2 = LLMSynthesizer(ReplayTransport(json.loads(json.dumps(s1.transcript()))), knowledge=False)
    out2 = get_strategy("mcts")(FAM, SPEC, s2, s2.watch(Recorder()), Budget(max_evals=4), 3, baseline_ms=1.0, batch=2)

    def shape(o):
        return [(n.id, n.parent, n.candidate.source, n.candidate.config, n.candidate.origin, n.ok, n.time_ms)
                for n in o.tree]

    assert shape(out1) == shape(out2)
    by_tag = lambda s: sorted((e["tag"], json.dumps(e["messages"])) for e in s.transcript())  # noqa: E731
    assert by_tag(s1) == by_tag(s2)  # the same questions (concurrent asks may finish in another order)
