"""Issue 5's scripted-server scenarios end to end: each one runs a real search (``search_spec``) for a
user's custom op with only a CPU body, against a chat-completions server on 127.0.0.1, with candidates
judged in harness workers over cases this process recorded. Each must end with the correct kernel
stored, and a later compile must reuse it without asking the model again.

One candidate per search step (``search_batch=1``) and one request in flight, so the second prompt is
the model's first chance to see what happened to its first kernel — and must show it."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from torch_kevolve import stats
from torch_kevolve.config import Settings
from torch_kevolve.detect import Finding
from torch_kevolve.families import get_family
from torch_kevolve.lowering.graph_pass import KevolvePass
from torch_kevolve.search import search_spec
from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig
from torch_kevolve.store import KernelStore

from test_llm import chat_payload, stub_factory  # noqa: F401  (the stub server and its fixture)
from test_llm_generic import BROKEN, FIXED, KERNEL, OP, reply

GENERIC = get_family("generic")
SIG = TensorSig("float32", (24, 40), (40, 1))
SPEC = OpSpec("generic", OP, (SIG, SIG), (("inputs", ("x", "w")), ("outputs", (("float32", (24, 40)),)),
                                          ("arg:alpha", 0.5)), DeviceSig.of("cpu"))
WRONG = KERNEL.replace("SIG", "(1.0 / (1.0 + tl.exp(-x)))").replace("0.5 * w", "0.25 * w")  # runs, wrong numbers
GARBAGE = "Use a larger BLOCK and vectorize the loads; that should be faster."


def _settings(tmp_path, url: str) -> Settings:
    return Settings.from_env({"cache_dir": str(tmp_path / "cache"), "shipped_dir": str(tmp_path / "shipped"),
                              "executor": "local", "synthesizer": "llm", "llm_base_url": url, "llm_model": "stub",
                              "llm_api_key": "test", "llm_concurrency": 1, "search_batch": 1, "seeds": 1,
                              "max_candidates": 3, "search": "mcts"})


def _script(first: "str | tuple", *, slow_first_s: float = 0.0):
    """The first request gets ``first`` (a reply, or an HTTP (status, headers, payload)); every later
    one the fixed kernel."""
    lock = threading.Lock()

    def respond(body: dict, n: int):
        if n == 0:
            if slow_first_s:
                time.sleep(slow_first_s)
            if isinstance(first, tuple):
                return first
            return 200, {}, chat_payload(first)
        return 200, {}, chat_payload(reply(FIXED))

    respond.lock = lock  # type: ignore[attr-defined]
    return respond


SCENARIOS = {
    # name: (first reply, what the second prompt must contain (None: there is no repair prompt), extra)
    "correct_first": (reply(FIXED), None, {}),
    "compile_error_then_fix": (reply(BROKEN), ("The parent kernel fails", "sigmoid_of_x", "is not defined"), {}),
    "wrong_result_then_fix": (reply(WRONG), ("The parent kernel fails", "differs from reference", "max abs err"), {}),
    "garbage_then_fix": (GARBAGE, ("Your reply could not be used", "no ```python code block"), {}),
    "timeout_then_success": (reply(FIXED), None, {"slow_first_s": 1.5}),
    "429_then_success": ((429, {"Retry-After": "0.05"}, {"error": {"message": "rate limited"}}), None, {}),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scripted_scenario_ends_with_the_fixed_kernel_stored_and_reused(name, stub_factory, tmp_path, monkeypatch):
    for v in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "KEVOLVE_LLM_REPLAY", "KEVOLVE_SYNTHESIZER"):
        monkeypatch.delenv(v, raising=False)
    first, must, extra = SCENARIOS[name]
    if name == "timeout_then_success":
        monkeypatch.setenv("KEVOLVE_LLM_TIMEOUT_S", "0.5")
    stub = stub_factory(_script(first, **extra))
    settings = _settings(tmp_path, stub.url)
    entry, outcome = search_spec(GENERIC, SPEC, settings)

    assert entry is not None, outcome.stop_reason
    assert entry.candidate.source.strip() == FIXED.strip() and entry.candidate.origin == "llm:stub-model"
    prompts = stub.prompts()
    assert prompts[0].startswith("## Task\nWrite a new kernel") and "def kevolve_kernel(in0, in1, out0, N0" in prompts[0]
    if must is not None:
        assert all(m in prompts[1] for m in must), prompts[1][:600]
    results = outcome.results
    if name in ("compile_error_then_fix", "wrong_result_then_fix"):
        # the bad kernel was evaluated (in a worker) and failed with its diagnostics, then the fix verified
        assert [r.ok for r in results[:2]] == [False, True]
        stage = results[0].diagnostics.stage
        assert stage == "verify"
        if name == "wrong_result_then_fix":
            assert results[0].diagnostics.max_abs_err is not None and results[0].diagnostics.max_abs_err > 0.1
    else:
        assert results[0].ok, results[0].diagnostics.summary()
    if name == "garbage_then_fix":
        # the parse error went back in the same conversation, after the unusable reply
        assert [m["role"] for m in stub.bodies[1]["messages"]] == ["system", "user", "assistant", "user"]
        assert stub.bodies[1]["messages"][2]["content"] == GARBAGE
    if name == "timeout_then_success":
        assert len(stub.bodies) >= 2 and entry.meta["llm"]["usage"]["retries"] >= 1
    if name == "429_then_success":
        assert entry.meta["llm"]["usage"]["retries"] >= 1
    # every exchange is in the entry (one per completion; retried HTTP attempts are counted in usage)
    assert len(entry.meta["llm"]["transcript"]) == len(stub.bodies) - entry.meta["llm"]["usage"]["retries"]

    # stored, then reused by the compile path with no further requests
    store = KernelStore.from_settings(settings)
    assert store.put(entry)
    n = len(stub.bodies)
    stats.reset()
    f = Finding("node", OP, "custom op with no CPU kernel", "generic", "candidate")
    got = KevolvePass(settings, store=store)._resolve(f, SPEC)
    assert got is not None and got.candidate == entry.candidate and f.decision.startswith("stored kernel")
    assert len(stub.bodies) == n and stats.snapshot().get("searches", 0) == 0
