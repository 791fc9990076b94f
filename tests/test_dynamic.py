"""Dynamic shapes (issue 11 part 1): symbolic sizes are served in power-of-two buckets, one compile and
one search per bucket, verified at the bucket's ends, guarded in the graph, correct inside and outside."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from torch_kevolve import dynamic as dyn
from torch_kevolve import stats
from torch_kevolve.families import get_family
from torch_kevolve.lowering.graph_pass import REPORTS
from torch_kevolve.spec import OpSpec

FAM = get_family("embedding_bag")


@pytest.mark.parametrize("n,want", [(0, (0, 0)), (1, (1, 1)), (2, (2, 2)), (3, (3, 4)), (4, (3, 4)), (5, (5, 8)),
                                    (8, (5, 8)), (9, (9, 16)), (1000, (513, 1024)), (1024, (513, 1024))])
def test_bucket_of(n, want):
    assert dyn.bucket_of(n) == want
    lo, hi = want
    assert lo <= n <= hi


def _spec(B: int, L: int = 4, D: int = 8) -> OpSpec:
    w = torch.randn(50, D)
    return FAM.spec_for(w, torch.randint(0, 50, (B * L,)), torch.arange(B) * L)


def _bucketed(B: int) -> OpSpec:
    s = _spec(B)
    (lo_b, hi_b), (lo_n, hi_n) = dyn.bucket_of(B), dyn.bucket_of(4 * B)
    return dataclasses.replace(s, dynamic=(("size", 1, 0, "s7", lo_n, hi_n), ("size", 2, 0, "s3", lo_b, hi_b)))


def test_keys_mask_the_size_inside_a_bucket_only():
    a, b, c = _bucketed(5), _bucketed(7), _bucketed(9)
    assert a != b and a.key == b.key  # the hint differs, the bucket does not
    assert a.key != c.key  # another bucket
    assert a.key != _spec(5).key  # a bucket is not the static spec of its hint
    renamed = dataclasses.replace(b, dynamic=tuple((k, i, d, {"s7": "s0", "s3": "s9"}[s], lo, hi)
                                                   for k, i, d, s, lo, hi in b.dynamic))
    assert renamed.key == a.key  # symbol names are the graph's; the key names them by appearance
    assert OpSpec.from_json(a.to_json()) == a and "dynamic" not in _spec(5).to_json()
    assert "[buckets s7∈[17,32], s3∈[5,8]]" in a.describe()


def test_static_keys_are_unchanged_by_the_dynamic_field():
    import json
    from pathlib import Path

    for p in (Path(__file__).resolve().parent.parent / "kernel_cache").rglob("*.json"):
        doc = json.loads(p.read_text())
        assert OpSpec.from_json(doc["spec"]).key == doc["key"]


def test_inside_concretize_and_bucket_ends():
    s = _bucketed(6)
    w = torch.randn(50, 8)
    ok = [w, torch.randint(0, 50, (28,)), torch.arange(7) * 4, None]
    assert dyn.inside(s, ok)
    assert not dyn.inside(s, [w, torch.randint(0, 50, (40,)), torch.arange(7) * 4, None])  # N outside
    assert not dyn.inside(s, [w, torch.randint(0, 50, (28,)), torch.arange(9) * 4, None])  # B outside
    assert not dyn.inside(s, [torch.randn(51, 8), *ok[1:]])  # a static size differs
    assert not dyn.inside(s, [w, ok[1].to(torch.int32), ok[2], None])
    c = dyn.concretize(s, ok)
    assert not c.dynamic and c.args[1].shape == (28,) and c.args[2].shape == (7,)
    assert FAM.call_plan(c, FAM.candidates(c)[0]).grid  # a plan for the concrete sizes
    ends = dict(dyn.bucket_cases(s))
    assert ends["bucket-lo"].args[1].shape == (17,) and ends["bucket-lo"].args[2].shape == (5,)
    assert ends["bucket-hi"].args[1].shape == (32,) and ends["bucket-hi"].args[2].shape == (8,)
    # a symbolic stride follows the (bucketed) size it derives from
    s2 = dataclasses.replace(s, args=(dataclasses.replace(s.args[0], shape=(50, 8), stride=(8, 1)), *s.args[1:]),
                             dynamic=(("size", 0, 1, "d", 5, 8), ("stride", 0, 0, "", 0, 0)))
    (_, lo), (_, hi) = dyn.bucket_cases(s2)
    assert lo.args[0].shape == (50, 5) and lo.args[0].stride == (5, 1) and hi.args[0].stride == (8, 1)


class Bags(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(40, 8, mode="sum")

    def forward(self, idx, off):
        return self.bag(idx, off) * 2.0


def _inputs(B: int, g: torch.Generator) -> tuple:
    return torch.randint(0, 40, (4 * B,), generator=g), torch.arange(B) * 4


def test_dynamic_batch_compiles_once_per_bucket_and_stays_correct(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setenv("KEVOLVE_SHIPPED_DIR", str(tmp_path / "shipped"))
    torch.manual_seed(0)
    model = Bags().eval()
    g = torch.Generator().manual_seed(0)
    opts = {"cache_dir": str(tmp_path / "store"), "executor": "inprocess", "max_candidates": 2, "seeds": 1,
            "fx_graph_cache": False}
    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    counters.clear()
    c = torch.compile(model, backend="kevolve", options=opts, dynamic=True)
    compiles = []
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
        for B in (5, 7, 8, 6, 12, 16, 9, 3, 4, 6):
            x = _inputs(B, g)
            torch.testing.assert_close(c(*x), model(*x))
            compiles.append(counters["stats"]["unique_graphs"])
    # buckets of B (and of N = 4B, which moves with it): (4,8] (8,16] (2,4] -> three graphs, three searches
    assert compiles == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    snap = stats.snapshot()
    assert snap["searches"] == 3 and snap["kernel_calls"] == 10 and snap.get("runtime_fallbacks", 0) == 0
    found = [f for rep in REPORTS for f in rep if f.family == "embedding_bag"]
    assert len(found) == 3 and all("[buckets" in f.detail and f.decision.endswith("custom_op route") for f in found)
    from torch_kevolve.config import Settings
    from torch_kevolve.store import KernelStore

    entries = list(KernelStore.from_settings(Settings.from_env({"cache_dir": opts["cache_dir"]})).entries())
    assert len(entries) == 3 and all(e.spec.dynamic for e in entries)
    for e in entries:  # each was verified at the ends of its buckets
        assert {"bucket-lo", "bucket-hi"} <= set(e.meta["evidence"]["cases"])

    # cache mode, a new process's view: a size in a stored bucket gets the stored kernel (the graph is
    # guarded on that bucket); a size outside every stored bucket recompiles and keeps Inductor's path
    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    c2 = torch.compile(model, backend="kevolve", options={**opts, "mode": "cache"}, dynamic=True)
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
        for B in (7, 40, 33):
            x = _inputs(B, g)
            torch.testing.assert_close(c2(*x), model(*x))
    decisions = [f.decision for rep in REPORTS for f in rep if f.family == "embedding_bag"]
    assert len(decisions) == 2  # 40 and 33 share the unguarded graph Inductor made
    assert decisions[0].startswith("stored kernel") and decisions[1].startswith("Inductor (cache mode")
    assert stats.snapshot()["kernel_calls"] == 1
    assert stats.snapshot().get("searches", 0) == 0


def test_families_without_dynamic_support_skip_symbolic_nodes(tmp_path, monkeypatch):
    monkeypatch.setenv("KEVOLVE_SHIPPED_DIR", str(tmp_path / "shipped"))
    assert not get_family("generic").dynamic_ok  # its constants hold the output shapes

    def f(x):
        return torch.cummax(x, 1).values * 2

    torch._dynamo.reset()
    REPORTS.clear()
    opts = {"cache_dir": str(tmp_path / "store"), "mode": "cache", "fx_graph_cache": False}
    c = torch.compile(f, backend="kevolve", options=opts, dynamic=True)
    x = torch.randn(5, 6)
    torch.testing.assert_close(c(x), f(x))
    (fi,) = [f for rep in REPORTS for f in rep if f.family == "cumextrema"]
    if get_family("cumextrema").dynamic_ok:
        assert "[buckets" in fi.detail
    else:
        assert fi.status == "skipped" and "dynamic shapes" in fi.detail
