"""The backend end to end in this process: each mode, the store answering first, a corrupt entry."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from torch_kevolve import stats
from torch_kevolve.config import Settings
from torch_kevolve.lowering import REPORTS
from torch_kevolve.store import KernelStore


class OneBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(50, 8, mode="mean")

    def forward(self, idx, off, x):
        return self.bag(idx, off) * x


def _inputs():
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 50, (30,), generator=g)
    off = torch.tensor([0, 0, 4, 11, 20, 20, 29])
    return idx, off, torch.randn(7, 8, generator=g)


def _run(options: dict) -> tuple[torch.Tensor, torch.Tensor]:
    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    torch.manual_seed(0)
    m = OneBag().eval()
    inp = _inputs()
    opts = {"fx_graph_cache": False, **options}
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
        return torch.compile(m, backend="kevolve", options=opts)(*inp), m(*inp)


def _decisions() -> list[str]:
    return [f.decision for rep in REPORTS for f in rep if f.family == "embedding_bag"]


def test_off_is_plain_inductor(store_dir):
    out, ref = _run({"mode": "off"})
    torch.testing.assert_close(out, ref)
    assert not REPORTS and stats.snapshot().get("searches", 0) == 0


def test_offline_queues_and_keeps_inductor(store_dir):
    out, ref = _run({"mode": "offline"})
    torch.testing.assert_close(out, ref)
    q = [json.loads(l) for l in (store_dir / "queue.jsonl").read_text().splitlines()]
    assert len(q) == 1 and q[0]["spec"]["family"] == "embedding_bag"
    assert stats.snapshot().get("searches", 0) == 0 and stats.snapshot().get("kernel_calls", 0) == 0
    assert _decisions() == ["Inductor (queued for prewarm)"]


def test_jit_then_cache_then_corrupt(store_dir, caplog):
    out, ref = _run({"mode": "cache"})  # empty store: nothing used, nothing searched
    torch.testing.assert_close(out, ref)
    assert stats.snapshot().get("searches", 0) == 0 and _decisions() == ["Inductor (cache mode, not stored)"]

    out, ref = _run({"mode": "jit", "max_candidates": 2})
    torch.testing.assert_close(out, ref)
    assert stats.snapshot()["searches"] == 1 and stats.snapshot()["kernel_calls"] >= 1
    entries = list(KernelStore.from_settings(Settings.from_env()).entries())
    assert len(entries) == 1 and entries[0].meta["evidence"]["checks"] >= 3

    out, ref = _run({"mode": "cache"})  # now served from the store
    torch.testing.assert_close(out, ref)
    assert stats.snapshot().get("searches", 0) == 0 and stats.snapshot()["store_hits"] == 1
    assert stats.snapshot()["kernel_calls"] >= 1

    # corrupt the entry: skipped with a warning, the model still runs (Inductor's lowering)
    path = next(store_dir.rglob("*.json"))
    path.write_text(path.read_text().replace('"mode"', '"mdoe"', 1))
    with caplog.at_level(logging.WARNING, logger="torch_kevolve"):
        out, ref = _run({"mode": "cache"})
    torch.testing.assert_close(out, ref)
    assert stats.snapshot().get("kernel_calls", 0) == 0
    assert any("checksum" in r.getMessage() or "corrupt" in r.getMessage().lower() for r in caplog.records)


def test_training_graph_forward_left_to_inductor_backward_served(store_dir):
    """In a training graph the forward embedding_bag (its offset2bag/bag_size feed the backward) stays
    with Inductor; the backward op goes to the embedding_bag_backward family; gradients equal eager's."""
    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    m = OneBag()
    idx, off, x = _inputs()
    with torch._functorch.config.patch(enable_autograd_cache=False):
        out = torch.compile(m, backend="kevolve", options={"fx_graph_cache": False, "mode": "jit",
                                                           "max_candidates": 2, "seeds": 1})(idx, off, x)
    out.sum().backward()
    ref_m = OneBag()
    ref_m.load_state_dict(m.state_dict())
    ref = ref_m(idx, off, x)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for p, q in zip(m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    found = [f for rep in REPORTS for f in rep]
    fw = [f for f in found if f.family == "embedding_bag"]
    bw = [f for f in found if f.family == "embedding_bag_backward"]
    assert fw and all("training" in f.detail for f in fw)
    assert bw and stats.snapshot().get("searches", 0) == sum(f.decision.startswith("searched") for f in bw)


def test_kernel_slower_than_baseline_is_stored_but_not_used(store_dir):
    out, ref = _run({"mode": "jit", "max_candidates": 1})
    store = KernelStore.from_settings(Settings.from_env())
    (entry,) = list(store.entries())
    entry.meta.update(use=False, speedup=0.5)  # as a GPU search that lost to Inductor records it
    assert store.put(entry)
    out, ref = _run({"mode": "cache"})
    torch.testing.assert_close(out, ref)
    assert stats.snapshot().get("kernel_calls", 0) == 0 and stats.snapshot()["slower_than_baseline"] == 1
    assert _decisions() == ["Inductor (best kernel found is slower: 0.50x)"]


def test_stored_multi_step_plan_runs_in_the_compiled_graph(store_dir):
    """A stored segment_reduce kernel whose plan has a pre-step and workspace (lengths scanned into
    starts) is used through the custom-op route of a compiled function on CPU."""
    from torch_kevolve.families import get_family
    from torch_kevolve.store import Entry

    fam = get_family("segment_reduce")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(33, 4, generator=g)
    lengths = torch.tensor([4, 0, 7, 1, 0, 21])
    spec = fam.spec_for(x, "sum", lengths=lengths)
    cand = next(c for c in fam.candidates(spec) if c.cfg.get("SCAN") == 2)
    assert len(fam.call_plan(spec, cand).pre) == 2
    assert KernelStore.from_settings(Settings.from_env()).put(Entry(spec, cand, {"test": True}))

    def f(x, lengths):
        return torch.segment_reduce(x, "sum", lengths=lengths)

    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
        out = torch.compile(f, backend="kevolve", options={"fx_graph_cache": False, "mode": "cache"})(x, lengths)
    torch.testing.assert_close(out, f(x, lengths))
    assert stats.snapshot()["kernel_calls"] == 1 and stats.snapshot()["store_hits"] == 1
    decisions = [f.decision for rep in REPORTS for f in rep if f.family == "segment_reduce"]
    assert decisions == ["stored kernel (user store) → custom_op route"]


def test_entry_that_failed_cache_verify_is_not_served(store_dir):
    out, ref = _run({"mode": "jit", "max_candidates": 1})
    store = KernelStore.from_settings(Settings.from_env())
    (entry,) = list(store.entries())
    assert store.update_meta(entry.spec.key, {"verify": {"ok": False, "diag": "test: marked failed"}})
    out, ref = _run({"mode": "cache"})
    torch.testing.assert_close(out, ref)
    assert _decisions() == ["Inductor (stored kernel failed `kevolve cache verify`)"]
    assert stats.snapshot().get("kernel_calls", 0) == 0 and stats.snapshot()["failed_verify_skipped"] == 1
