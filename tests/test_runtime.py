"""The custom-op route at run time: guard the verified signature, fall back to ATen on any trouble."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from torch_kevolve import stats
from torch_kevolve.families import get_family
from torch_kevolve.families.base import CallPlan, In, Out, OutBuf, Step, Ws
from torch_kevolve.kernels import launch, load_module
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


# -- multi-step plans ------------------------------------------------------------------------------

TWO_STEP_SOURCE = '''import triton
import triton.language as tl


@triton.jit
def scale(x_ptr, ws_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(ws_ptr + i, tl.load(x_ptr + i, mask=i < n) * 2.0, mask=i < n)


@triton.jit
def finish(x_ptr, ws_ptr, bias_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    y = tl.load(ws_ptr + i, mask=m) + tl.load(bias_ptr + i, mask=m) + tl.load(x_ptr + i, mask=m)
    tl.store(out_ptr + i, y, mask=m)
'''


def _two_step_plan(n: int) -> CallPlan:
    return CallPlan(
        kernel="finish", grid=(2,),
        args=(("x_ptr", In(0)), ("ws_ptr", Ws(0)), ("bias_ptr", Ws(1)), ("out_ptr", Out(0)), ("n", n), ("BLOCK", 64)),
        outputs=(OutBuf((n,), "float32"),),
        pre=(Step("scale", (2,), (("x_ptr", In(0)), ("ws_ptr", Ws(0)), ("n", n), ("BLOCK", 64))),),
        workspace=(OutBuf((n,), "float32"), OutBuf((n,), "float32", fill=0.5)),
    )


def test_two_step_plan_through_launch():
    """Steps run in order on per-call workspace (filled where asked, never poisoned); only the
    outputs are returned, poisoned first when verifying."""
    x = torch.randn(100)
    plan = _two_step_plan(100)
    assert [s.kernel for s in plan.steps] == ["scale", "finish"] and plan.kernels == ("scale", "finish")
    (out,) = launch(load_module(TWO_STEP_SOURCE), plan, [x], poison=True)
    torch.testing.assert_close(out, 3 * x + 0.5)
    # A zero-size grid skips its step (as for single-kernel plans).
    (out,) = launch(load_module(TWO_STEP_SOURCE), dataclasses.replace(_two_step_plan(0), grid=(0,)), [x[:0]])
    assert out.shape == (0,)
    with pytest.raises(ValueError, match="Ws\\(2\\)"):
        dataclasses.replace(plan, args=plan.args + (("extra", Ws(2)),))
    # Single-kernel plans are what they were: no pre steps, no workspace, equal to the old fields.
    single = CallPlan("finish", (1,), (), (OutBuf((1,), "float32"),))
    assert single.steps == (single.main,) and single.pre == () and single.workspace == ()


def test_scan_plan_through_the_custom_op():
    """segment_reduce with lengths on scanned starts (pre-step + workspace) via kevolve::run."""
    fam = get_family("segment_reduce")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, generator=g)
    lengths = torch.tensor([3, 0, 10, 1, 0, 26])
    spec = fam.spec_for(x, "max", lengths=lengths)
    for kind in (1, 2):
        cand = next(c for c in fam.candidates(spec) if c.cfg.get("SCAN") == kind)
        ld = runtime.install(spec, cand)
        assert ld.plan is not None and len(ld.plan.pre) == kind and ld.plan.workspace
        stats.reset()
        out = OP(runtime.spec_handle(spec), [x, lengths])[0]
        torch.testing.assert_close(out, fam.eager(spec, [x, lengths])[0])
        assert stats.snapshot() == {"kernel_calls": 1}


def test_step_signature_specializes_like_the_jit():
    """Compiling for a GPU without one must see the signature Triton's JIT would build at launch:
    pointers by dtype (inputs, outputs, workspace), UPPERCASE and ints equal to 1 as constexprs."""
    from torch_kevolve.families.base import CallPlan, In, Out, OutBuf, Step, Ws
    from torch_kevolve.kernels import step_signature
    from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig

    spec = OpSpec("t", "aten.t", (TensorSig("bfloat16", (4,), (1,)), None), (), DeviceSig("cpu", "cpu", ""))
    step = Step("k", (1,), (("x", In(0)), ("y", Out(0)), ("w", Ws(0)), ("BLOCK", 64), ("one", 1),
                            ("n", 7), ("big", 2**40), ("scale", 0.5), ("flag", False)))
    plan = CallPlan("k", (1,), step.args, (OutBuf((4,), "float32"),), workspace=(OutBuf((5,), "int64"),))
    sig, consts = step_signature(spec, plan, step)
    assert sig == {"x": "*bf16", "y": "*fp32", "w": "*i64", "BLOCK": "constexpr", "one": "constexpr",
                   "n": "i32", "big": "i64", "scale": "fp32", "flag": "i1"}
    assert consts == {"BLOCK": 64, "one": 1}
