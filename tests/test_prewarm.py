"""``kevolve prewarm`` on the small zoo: CPU, the interpreter, a deterministic cost model. Interrupted
after the second stored search, then resumed: every miss is stored once, nothing is searched twice,
and a later compile in cache mode finds every searchable spec in the store."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from torch_kevolve import queue, stats, zoo
from torch_kevolve.cli import main
from torch_kevolve.config import Settings
from torch_kevolve.lowering import REPORTS
from torch_kevolve.prewarm import Report, format_report, prewarm
from torch_kevolve.store import KernelStore


def cost_model(fn):
    fn()  # runs the candidate (the harness checks it); its "time" is a constant: deterministic
    return 1.0


def _settings() -> Settings:
    return Settings.from_env({"budget": "2", "seeds": 1, "executor": "inprocess"})


def test_interrupt_resume_then_all_hits(store_dir, monkeypatch):
    puts: Counter[str] = Counter()
    real_put = KernelStore.put

    def counting_put(self, entry):
        ok = real_put(self, entry)
        if ok:
            puts[entry.key] += 1
        return ok

    monkeypatch.setattr(KernelStore, "put", counting_put)
    settings = _settings()

    # run 1: compile the whole small zoo (offline: queue the misses), interrupt after the 2nd stored kernel
    done: list[str] = []

    def interrupt_after_two(row):
        if row.status == "searched":
            done.append(row.key)
            if len(done) == 2:
                raise KeyboardInterrupt

    first = Report()
    with pytest.raises(KeyboardInterrupt):
        prewarm(settings=settings, timer=cost_model, progress=False, on_done=interrupt_after_two, report=first)
    assert first.interrupted and sorted(first.compiled) == sorted(zoo.MODELS) and not first.compile_errors
    queued = {e["key"]: e for e in queue.read(store_dir)}
    assert set(puts) == set(done) and not set(done) & set(queued)  # stored ones left the queue, the rest wait
    families = {e["spec"]["family"] for e in queued.values()} | {k.split("/")[0] for k in done}
    assert {"embedding_bag", "jagged", "segment_reduce", "bucketize", "cumextrema", "generic"} <= families

    # run 2 (resume): compiles again (stored specs are hits now, not queued again), searches the rest
    stats.reset()
    second = prewarm(settings=settings, timer=cost_model, progress=False)
    status = {r.key: r.status for r in second.rows}
    assert not set(done) & {k for k, s in status.items() if s == "searched"}  # nothing redone
    assert set(status) == set(queued)  # exactly what was left waiting
    assert len(queued) - 1 <= stats.snapshot().get("searches", 0) <= len(queued)  # once each (generic: not at all)
    assert all(n == 1 for n in puts.values()), puts  # every miss stored exactly once
    generic = [k for k in status if k.startswith("generic/")]
    assert len(generic) == 1 and status[generic[0]] == "unserved"  # no LLM: nothing to propose
    assert set(puts) == (set(done) | set(status)) - set(generic)
    assert all(s == "searched" for k, s in status.items() if k not in generic)
    left = queue.read(store_dir)
    assert [e["key"] for e in left] == generic and "status" not in left[0]  # kept for a run with an LLM
    text = format_report(second)
    assert "speedup" in text and "% floor" in text and "searched" in text

    # run 3: nothing left to do (the custom op is tried again: answered at once, nothing searched)
    stats.reset()
    third = prewarm(settings=settings, timer=cost_model, progress=False, compile_models=False)
    assert [r.status for r in third.rows] == ["unserved"] and stats.snapshot().get("searches", 0) == 0

    # a later compile of each model in cache mode: every searchable op served from the store
    stored = set(puts)
    for name, build in zoo.MODELS.items():
        model, inputs = build(size="small")
        torch._dynamo.reset()
        REPORTS.clear()
        stats.reset()
        with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
            ref = model(*inputs)
            out = torch.compile(model, backend="kevolve", options={"mode": "cache", "fx_graph_cache": False})(*inputs)
        torch.testing.assert_close(out, ref)
        found = [f for rep in REPORTS for f in rep if f.match is not None and f.family != "generic"]
        assert all(f.decision.startswith("stored kernel (user store)") for f in found), [(f.family, f.decision) for f in found]
        assert all(f.match.spec.key in stored for f in found)
        assert stats.snapshot().get("searches", 0) == 0
        assert stats.snapshot().get("store_hits", 0) == len(found)
        if found:
            assert stats.snapshot().get("kernel_calls", 0) >= 1


def test_cli_prewarm_target_json(store_dir, capsys):
    """A user target (module:function) alone: the zoo is not compiled; the HSTU block queues nothing."""
    rc = main(["prewarm", "torch_kevolve.zoo.models:make_hstu", "--executor", "inprocess", "--budget", "2",
               "--json", "--no-progress"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["compiled"] == ["torch_kevolve.zoo.models:make_hstu"] and doc["rows"] == [] and not doc["interrupted"]
    assert main(["prewarm", "--models", "nope", "--no-progress"]) == 2


def _spec(n: int):
    from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig

    return OpSpec("embedding_bag", "aten._embedding_bag.default", (TensorSig("torch.float32", (n, 4), (4, 1)),), (),
                  DeviceSig("cpu", "cpu", "interpreter"))


def test_queue_edits_keep_other_items(store_dir):
    a, b, c = _spec(10), _spec(11), _spec(12)
    for s in (a, b, c):
        assert queue.record(store_dir, s)
    assert queue.remove(store_dir, [b.key]) == 1
    assert queue.mark(store_dir, c.key, status="no_kernel") and not queue.mark(store_dir, b.key, status="x")
    assert queue.record(store_dir, b) and not queue.record(store_dir, c)  # appends after a rewrite still work
    items = {e["key"]: e for e in queue.read(store_dir)}
    assert set(items) == {a.key, b.key, c.key} and items[c.key]["status"] == "no_kernel"
    assert not list(store_dir.glob(".queue.jsonl.*.tmp"))


def test_no_kernel_is_marked_then_skipped(store_dir, monkeypatch):
    """A search that evaluates candidates but verifies none: kept queued, marked, skipped next time."""
    import torch_kevolve.search as search_mod
    from torch_kevolve.search.strategies import SearchOutcome

    calls = []

    def failing_search(family, spec, settings, timer=None):
        calls.append(spec.key)
        return None, SearchOutcome(None, results=[object()], stop_reason="budget")

    monkeypatch.setattr(search_mod, "search_spec", failing_search)
    s = _spec(20)
    queue.record(store_dir, s)
    r1 = prewarm(settings=_settings(), compile_models=False, progress=False)
    assert [r.status for r in r1.rows] == ["no_kernel"] and calls == [s.key]
    assert queue.read(store_dir)[0]["status"] == "no_kernel"
    r2 = prewarm(settings=_settings(), compile_models=False, progress=False)
    assert [r.status for r in r2.rows] == ["skipped"] and calls == [s.key]
    r3 = prewarm(settings=_settings(), compile_models=False, progress=False, retry_failed=True)
    assert [r.status for r in r3.rows] == ["no_kernel"] and len(calls) == 2
    assert "no_kernel" in format_report(r3)


def test_other_device_specs_stay_queued(store_dir):
    from dataclasses import replace

    from torch_kevolve.spec import DeviceSig

    s = replace(_spec(30), device=DeviceSig("cuda", "NVIDIA H100 80GB HBM3", "sm_90"))
    queue.record(store_dir, s)
    r = prewarm(settings=_settings(), compile_models=False, progress=False)
    assert [(x.status, "H100" in x.detail) for x in r.rows] == [("skipped", True)]
    assert [e["key"] for e in queue.read(store_dir)] == [s.key]
