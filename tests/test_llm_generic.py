"""The generic path (issue 5, items 5-6): a user's custom op with only a CPU body gets a kernel from the LLM
synthesizer (scripted server on 127.0.0.1) through ``backend="kevolve"``; the search is recorded in the
store entry and replays with no endpoint."""
from __future__ import annotations

import json
import logging
import re

import pytest
import torch

from torch_kevolve import stats
from torch_kevolve.config import Settings
from torch_kevolve.families import family_for_op, get_family
from torch_kevolve.lowering.graph_pass import REPORTS
from torch_kevolve.store import KernelStore

from test_llm import chat_payload, stub_factory  # noqa: F401  (the stub server and its fixture)

OP = "kevolve_gtest.silu_mix.default"


@torch.library.custom_op("kevolve_gtest::silu_mix", mutates_args=(), device_types="cpu")
def silu_mix(x: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    return x * torch.sigmoid(x) + alpha * w


@silu_mix.register_fake
def _(x, w, alpha):
    return torch.empty_like(x)


def fn(x, w):
    return silu_mix(torch.relu(x) - 0.25, w, 0.5) * 2.0


KERNEL = '''import triton
import triton.language as tl


@triton.jit
def kevolve_kernel(in0, in1, out0, N0, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N0
    x = tl.load(in0 + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(in1 + offs, mask=mask, other=0.0).to(tl.float32)
    y = x * SIG + 0.5 * w
    tl.store(out0 + offs, y.to(out0.dtype.element_ty), mask=mask)
'''
BROKEN = KERNEL.replace("SIG", "sigmoid_of_x")  # a name error: the kernel fails when it is first run
FIXED = KERNEL.replace("SIG", "(1.0 / (1.0 + tl.exp(-x)))")


def reply(src: str, block: int = 2048) -> str:
    return f"Flat elementwise kernel.\n```python\n{src}```\n```json\n{json.dumps({'BLOCK': block})}\n```\n"


def responder(body: dict, n: int):
    """A cooperative model: the broken kernel until the prompt shows its error, then the fix."""
    prompt = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return 200, {}, chat_payload(reply(FIXED if "sigmoid_of_x" in prompt else BROKEN))


def _compile(opts: dict, x, w):
    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    with torch._functorch.config.patch(enable_autograd_cache=False):
        return torch.compile(fn, backend="kevolve", options={"fx_graph_cache": False, **opts})(x, w)


def _shape(tree: dict) -> list:
    return [(n["id"], n["p"], n["m"], n["src"], n["cfg"], n.get("org"), n.get("ok"), n.get("diag"), n.get("e"),
             n.get("s"), n.get("x")) for n in tree["nodes"]]


def test_custom_op_gets_a_verified_llm_kernel_stored_reused_and_replayed(stub_factory, tmp_path, monkeypatch, caplog):
    for v in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "KEVOLVE_LLM_REPLAY", "KEVOLVE_SYNTHESIZER"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("KEVOLVE_SHIPPED_DIR", str(tmp_path / "shipped"))
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 96, generator=g), torch.randn(64, 96, generator=g)
    ref = fn(x, w)
    assert family_for_op(OP) is get_family("generic")

    # 1. no LLM configured: the op is found, kept as it is, said once
    from torch_kevolve import log as klog

    monkeypatch.setattr(klog, "_once", set())
    with caplog.at_level(logging.INFO, logger="torch_kevolve"):
        out = _compile({"cache_dir": str(tmp_path / "none"), "executor": "inprocess", "synthesizer": "template"},
                       x, w)
    torch.testing.assert_close(out, ref)
    (f,) = [f for rep in REPORTS for f in rep if f.op == OP]
    assert f.family == "generic" and f.status == "candidate" and "no LLM synthesizer" in f.decision
    assert sum("keeping the op as it is" in r.getMessage() for r in caplog.records) == 1
    assert stats.snapshot().get("searches", 0) == 0

    # 2. the scripted model: broken kernel, error fed back, fix verified, stored, used. Candidates are
    # judged in harness workers over cases this process recorded (the op exists only here): no
    # unverified kernel is ever imported into the user's process.
    stub = stub_factory(responder)
    cache = tmp_path / "cache"
    opts = {"cache_dir": str(cache), "executor": "local", "llm_base_url": stub.url, "llm_model": "stub",
            "llm_api_key": "test", "synthesizer": "llm", "llm_concurrency": 1, "seeds": 1, "max_candidates": 4,
            "search_batch": 1}
    import torch_kevolve.kernels as K
    import torch_kevolve.lowering.runtime as R
    import torch_kevolve.search.evaluate as E

    loaded: list[str] = []
    real_load = K.load_module

    def spy(src, **kw):
        loaded.append(src)
        return real_load(src, **kw)

    for mod in (K, R, E):  # every way a kernel source gets imported in this process
        monkeypatch.setattr(mod, "load_module", spy)
    out = _compile(opts, x, w)
    torch.testing.assert_close(out, ref)
    assert not any("sigmoid_of_x" in src for src in loaded), "the broken kernel ran in the user's process"
    (f,) = [f for rep in REPORTS for f in rep if f.op == OP]
    assert f.decision.startswith("searched now") and f.decision.endswith("custom_op route"), f.decision
    assert stats.snapshot()["kernel_calls"] == 1
    prompts = stub.prompts()
    assert "sigmoid_of_x" not in prompts[0] and "def kevolve_kernel(in0, in1, out0, N0, BLOCK" in prompts[0]
    assert "x * torch.sigmoid(x) + alpha * w" in prompts[0]  # the op's own Python body as the reference
    # one candidate per step (search_batch=1): the broken kernel fails when run in a worker, and the
    # second prompt repairs it with the error
    assert prompts[0].startswith("## Task\nWrite a new kernel")
    assert prompts[1].startswith("## Task\nThe parent kernel fails") and "is not defined" in prompts[1]
    assert "sigmoid_of_x" in prompts[1]
    (entry,) = list(KernelStore.from_settings(Settings.from_env({"cache_dir": str(cache)})).entries())
    assert entry.spec.family == "generic" and entry.spec.op == OP and entry.candidate.source.strip() == FIXED.strip()
    assert entry.candidate.origin == "llm:stub-model" and entry.candidate.cfg == {"BLOCK": 2048, "num_warps": 4}
    transcript = entry.meta["llm"]["transcript"]
    assert len(transcript) == len(stub.bodies)
    assert transcript[0]["result"]["evaluated"]["ok"] is False  # the broken kernel, with its diagnostics
    assert any(ex["result"].get("evaluated", {}).get("ok") for ex in transcript)

    # 3. cache mode: reused, no server calls
    n_calls = len(stub.bodies)
    out = _compile({**opts, "mode": "cache"}, x, w)
    torch.testing.assert_close(out, ref)
    assert len(stub.bodies) == n_calls and stats.snapshot()["kernel_calls"] == 1
    assert stats.snapshot().get("searches", 0) == 0

    # 4. replay from the stored entry, no endpoint: the same tree and winner
    path = KernelStore.from_settings(Settings.from_env({"cache_dir": str(cache)})).path_for(entry.key)
    replay_cache = tmp_path / "replay"
    out = _compile({"cache_dir": str(replay_cache), "executor": "local", "synthesizer": "llm", "search_batch": 1,
                    "llm_replay": str(path), "seeds": 1, "max_candidates": 4}, x, w)
    torch.testing.assert_close(out, ref)
    assert len(stub.bodies) == n_calls
    (again,) = list(KernelStore.from_settings(Settings.from_env({"cache_dir": str(replay_cache)})).entries())
    assert again.candidate == entry.candidate
    t1, t2 = entry.meta["search"]["tree"], again.meta["search"]["tree"]
    assert _shape(t1) == _shape(t2)
    # the same exchanges with the same results (concurrent asks may be recorded in another order)
    by_tag = lambda t: sorted((e["tag"], e["reply"], json.dumps(e["result"], sort_keys=True)) for e in t)  # noqa: E731
    assert by_tag(transcript) == by_tag(again.meta["llm"]["transcript"])
    # ... and the same questions, up to the measured (interpreter wall-clock) times they quote
    nums = lambda t: {e["tag"]: re.sub(r"[0-9][0-9.e+-]*", "#", json.dumps(e["messages"])) for e in t}  # noqa: E731
    assert nums(transcript) == nums(again.meta["llm"]["transcript"])


@torch.library.custom_op("kevolve_gtest::f32_only", mutates_args=(), device_types="cpu")
def f32_only(x: torch.Tensor) -> torch.Tensor:
    assert x.dtype == torch.float32, "float32 only"
    return x * 2


def test_generic_family_semantics_without_a_compile(tmp_path):
    from torch_kevolve.families.generic import GENERIC, KERNEL
    from torch_kevolve.llm.synthesizer import load_transcript
    from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig

    sig = TensorSig("float32", (5, 7), (7, 1))

    def spec(op, consts=()):
        return OpSpec("generic", op, (sig, sig)[: 2 if "silu" in op else 1],
                      (("inputs", ("x", "w")[: 2 if "silu" in op else 1]), ("outputs", (("float32", (5, 7)),)),
                       *consts), DeviceSig.of("cpu"))

    s = spec(OP, (("arg:alpha", 0.5),))
    ins = GENERIC.make_inputs(s, 3)
    assert [t.shape for t in ins] == [(5, 7), (5, 7)] and ins[0].dtype == torch.float32
    (ref,) = GENERIC.reference(s, ins)
    assert ref.dtype == torch.float64  # upcast: the op takes float64
    torch.testing.assert_close(GENERIC.eager(s, ins)[0], silu_mix(*ins, 0.5))
    names = [n for n, _, _ in GENERIC.edge_cases(s)]
    assert names == ["zeros", "large", "nan"]
    s2 = spec("kevolve_gtest.f32_only.default")
    (ref2,) = GENERIC.reference(s2, GENERIC.make_inputs(s2, 0))
    assert ref2.dtype == torch.float32  # the op refuses float64: computed in the input dtype
    plan = GENERIC.call_plan(s, GENERIC.skeleton(s))
    assert plan.kernel == KERNEL and plan.grid == (1,) and [a for a, _ in plan.args] == [
        "in0", "in1", "out0", "N0", "BLOCK"]
    assert GENERIC.candidates(s) == [] and "from scratch" in GENERIC.contract(s)
    with pytest.raises(ValueError):
        GENERIC.call_plan(s, GENERIC.skeleton(s).__class__("", (("BLOCK", 48),)))
    # transcripts load from a bare list, {"transcript": [...]}, or a store entry
    ex = [{"tag": "x1.0", "reply": "hi"}]
    for i, doc in enumerate((ex, {"transcript": ex}, {"meta": {"llm": {"transcript": ex}}})):
        (tmp_path / f"{i}.json").write_text(json.dumps(doc))
        assert load_transcript(str(tmp_path / f"{i}.json")) == ex
