"""The custom-op route at run time: guard the verified signature, fall back to ATen on any trouble."""
from __future__ import annotations

import dataclasses

import torch

from torch_kevolve import stats
from torch_kevolve.families import get_family
from torch_kevolve.lowering import runtime
from torch_kevolve.lowering.custom_op import OP

FAM = get_family("embedding_bag")


def _case(n_bags=5):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(30, 8, generator=g)
    idx = torch.randint(0, 30, (12,), generator=g)
    off = torch.tensor([0, 2, 2, 7, 9][:n_bags])
    return w, idx, off


def test_runs_the_kernel_inside_its_signature():
    w, idx, off = _case()
    spec = FAM.spec_for(w, idx, off)
    runtime.install(spec, FAM.candidates(spec)[0])
    stats.reset()
    out = OP(runtime.spec_handle(spec), [w, idx, off, None])[0]
    torch.testing.assert_close(out, FAM.eager(spec, [w, idx, off, None])[0])
    assert stats.snapshot() == {"kernel_calls": 1}


def test_outside_signature_takes_aten(caplog):
    w, idx, off = _case()
    spec = FAM.spec_for(w, idx, off)
    runtime.install(spec, FAM.candidates(spec)[0])
    stats.reset()
    w2 = torch.randn(30, 16)[:, ::2]  # same shape, other strides
    out = OP(runtime.spec_handle(spec), [w2, idx, off, None])[0]
    torch.testing.assert_close(out, torch.nn.functional.embedding_bag(idx, w2, off, mode="sum"))
    assert stats.snapshot() == {"runtime_fallbacks": 1}


def test_kernel_failing_at_run_time_is_never_used_again():
    w, idx, off = _case()
    spec = FAM.spec_for(w, idx, off, mode=1)
    good = FAM.candidates(spec)[0]
    bad = dataclasses.replace(good, source=good.source + "\n\ndef _broken():\n    pass\n",
                              template="bag_per_program")
    ld = runtime.install(spec, bad)
    ld.plan = dataclasses.replace(ld.plan, kernel="_broken")  # launching it raises
    stats.reset()
    for _ in range(2):
        out = OP(runtime.spec_handle(spec), [w, idx, off, None])[0]
        torch.testing.assert_close(out, FAM.eager(spec, [w, idx, off, None])[0])
    assert stats.snapshot() == {"runtime_fallbacks": 2}


def test_graph_from_cache_with_entry_gone_runs_aten(store_dir):
    w, idx, off = _case(4)
    spec = FAM.spec_for(w, idx, off, include_last_offset=True)
    handle = runtime.spec_handle(spec)
    runtime._registry.pop(handle, None)
    stats.reset()
    out = OP(handle, [w, idx, off, None])[0]
    torch.testing.assert_close(out, FAM.eager(spec, [w, idx, off, None])[0])
    assert stats.snapshot() == {"runtime_fallbacks": 1}
