"""The segment_reduce_backward family (``aten._segment_reduce_backward``, sum/mean): both templates
(Triton interpreter) vs the float64 reference and eager autograd of ``torch.segment_reduce`` over
lengths/offsets, dtypes, trailing dims, strided grads and the edge cases; matching on a real training
graph; the candidate space; GPU compilation (sm_90, no device needed)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from torch_kevolve.families import family_for_op, get_family
from torch_kevolve.families.segment_reduce_backward import TEMPLATES, SegmentReduceBackwardFamily
from torch_kevolve.kernels import launch, load_module

from family_helpers import firsts, offline_backward_findings, run_sm90, with_cfg  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

FAM: SegmentReduceBackwardFamily = get_family("segment_reduce_backward")  # type: ignore[assignment]
OP = "aten._segment_reduce_backward.default"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
e = torch.empty


def make_spec(s: int = 6, trail: tuple = (5,), n: int = 40, reduce: str = "sum", offsets: bool = False,
              dtype: torch.dtype = F32, seg_dtype: torch.dtype = torch.int64, grad_row_pad: int = 0,
              seg_stride: int = 1):
    d = 1
    for t in trail:
        d *= t
    g = e(s, d + grad_row_pad, dtype=dtype)[:, :d].unflatten(1, trail) if trail else e(s, 1 + grad_row_pad,
                                                                                       dtype=dtype)[:, 0]
    segs = e((s + offsets) * seg_stride, dtype=seg_dtype)[::seg_stride]
    return FAM.spec_for(g, segs, e(n, *trail, dtype=dtype), reduce, offsets)


def run(spec, cand, inputs) -> torch.Tensor:
    return launch(load_module(cand.source), FAM.call_plan(spec, cand), inputs, poison=True)[0]


def check(spec, cand, inputs, what: str) -> None:
    out = run(spec, cand, inputs)
    ref = FAM.reference(spec, inputs)[0]
    assert out.dtype == ref.dtype and out.shape == ref.shape, what
    atol, rtol = FAM.tolerance(ref.dtype)
    torch.testing.assert_close(out.double(), ref.double(), atol=atol, rtol=rtol, msg=what)


CASES = [
    ("sum_lengths", dict()),
    ("mean_offsets_3d", dict(reduce="mean", offsets=True, trail=(3, 5))),
    ("sum_1d_i32_strided_lengths", dict(trail=(), seg_dtype=torch.int32, seg_stride=3, n=33)),
    ("mean_lengths_grad_row_stride", dict(reduce="mean", grad_row_pad=3, trail=(33,), s=1)),
    ("sum_f16_offsets", dict(dtype=F16, offsets=True)),
    ("mean_bf16_lengths", dict(dtype=BF16, reduce="mean", trail=(2, 4))),
]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_templates_match_reference(template: str, name: str, kw: dict) -> None:
    spec = make_spec(**kw)
    cand = firsts(FAM.candidates(spec))[template]
    for seed in (0, 1):
        check(spec, cand, FAM.make_inputs(spec, seed), f"{template} {name} seed {seed}")


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("kw", [dict(reduce="mean"), dict(offsets=True)], ids=["mean_lengths", "sum_offsets"])
def test_edge_cases(template: str, kw: dict) -> None:
    spec = make_spec(**kw)
    cand = firsts(FAM.candidates(spec))[template]
    names = [name for name, _, _ in FAM.edge_cases(spec)]
    for name, cs, inputs in FAM.edge_cases(spec):
        check(cs, cand, inputs, f"{template} {name}")
    assert {"all_empty", "rows_past_the_segments", "one_segment"} <= set(names)


@pytest.mark.parametrize("kw", [dict(), dict(reduce="mean", offsets=True, trail=(2, 3))], ids=["sum", "mean_off"])
def test_reference_and_eager_agree_with_autograd(kw: dict) -> None:
    """Reference (float64) and eager equal autograd through ``torch.segment_reduce`` itself."""
    spec = make_spec(**kw)
    for name, cs, inputs in [("rand", spec, FAM.make_inputs(spec, 5)), *FAM.edge_cases(spec)]:
        grad, segs, data = inputs
        x = data.double().clone().requires_grad_(True)
        key = "offsets" if cs.const("use_offsets") else "lengths"
        out = torch.segment_reduce(x, str(cs.const("reduce")), **{key: segs.contiguous()}, unsafe=True)
        out.backward(grad.double())
        torch.testing.assert_close(FAM.reference(cs, inputs)[0].double(), x.grad, atol=1e-6, rtol=1e-6, msg=name)
        torch.testing.assert_close(FAM.eager(cs, inputs)[0].double(), x.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_mutations_are_caught() -> None:
    """Wrong kernels fail: mean without the division, the scan off by one segment, rows past the
    rows past the segments given to segment 0 instead of none."""
    spec = make_spec(reduce="mean")
    cs, inputs = [(c, i) for n, c, i in FAM.edge_cases(spec) if n == "rows_past_the_segments"][0]
    cands = firsts(FAM.candidates(spec))
    muts = [("seg_fill", "g = g / tl.maximum(count, 1).to(tl.float32)", "g = g"),
            ("seg_fill", "tl.store(starts_ptr + s + 1, c, mask=s < num_segs)", "tl.store(starts_ptr + s + 1, c - x, mask=s < num_segs)"),
            ("row_gather", "tl.store(rows_ptr + r, tl.full([BLOCK], -1, tl.int32), mask=r < num_rows)",
             "tl.store(rows_ptr + r, tl.full([BLOCK], 0, tl.int32), mask=r < num_rows)")]
    for template, old, new in muts:
        cand = cands[template]
        bad = dataclasses.replace(cand, source=cand.source.replace(old, new))
        assert bad.source != cand.source, old
        out = run(cs, bad, inputs).double()
        assert not torch.allclose(out, FAM.reference(cs, inputs)[0].double(), atol=1e-4, equal_nan=False), old


def test_candidates_and_plans() -> None:
    short = make_spec(s=64, n=64 * 3, trail=(64,))
    cands = FAM.candidates(short)
    assert cands[0].template == "row_gather" and {c.template for c in cands[:2]} == set(TEMPLATES)
    assert len(cands) == len({(c.template, c.config) for c in cands})
    plan = FAM.call_plan(short, cands[0])
    assert [s.kernel for s in plan.steps] == ["srb_scan", "srb_mark_rows", "srb_row_gather"]
    assert plan.outputs[0].fill is None and plan.outputs[0].shape == (192, 64)
    long_off = make_spec(s=4, n=400, offsets=True)
    cand = FAM.candidates(long_off)[0]
    assert cand.template == "seg_fill"
    plan = FAM.call_plan(long_off, cand)
    assert [s.kernel for s in plan.steps] == ["srb_seg_fill"] and plan.outputs[0].fill == 0.0
    with pytest.raises(ValueError):
        FAM.call_plan(short, with_cfg(cands[0], BLOCK_N=48))


def test_unsupported_specs_raise() -> None:
    for reduce in ("max", "min", "prod"):
        with pytest.raises(ValueError, match="reduce"):
            make_spec(reduce=reduce)
    with pytest.raises(ValueError, match="segments"):
        FAM.spec_for(e(4, 3), e(4, dtype=torch.int64), e(9, 3), "sum", True)  # offsets need S + 1


def test_matches_real_training_graph(tmp_path) -> None:
    """The backward of segment_reduce (sum/mean, lengths/offsets) reaches our pass and is a candidate;
    max is skipped (offline mode: nothing searched)."""
    assert family_for_op(OP) is FAM
    lengths = torch.tensor([2, 0, 3, 4])
    offsets = torch.tensor([0, 2, 2, 5, 9])
    for reduce, key, served in [("sum", "lengths", True), ("mean", "offsets", True), ("max", "lengths", False)]:
        x = torch.randn(9, 3, requires_grad=True)
        segs = lengths if key == "lengths" else offsets
        found, seen = offline_backward_findings(
            lambda x, s: torch.segment_reduce(x, reduce, **{key: s}, unsafe=True).square().sum(), (x, segs), OP, tmp_path)
        assert len(found) == 1, (reduce, seen)
        assert (found[0].status == "candidate") == served, (reduce, found[0])
    torch._dynamo.reset()


_SM90_SCRIPT = r"""
fam = get_family("segment_reduce_backward")
specs = [  # seqrec-large-like sum over lengths; mean over offsets in bf16; fp16 1-D data
    fam.spec_for(e(4096, 128), e(4096, dtype=torch.int64), e(524288, 128), "sum", False),
    fam.spec_for(e(4096, 128, dtype=torch.bfloat16), e(4097, dtype=torch.int64), e(524288, 128, dtype=torch.bfloat16),
                 "mean", True),
    fam.spec_for(e(1000, dtype=torch.float16), e(1000, dtype=torch.int32), e(70000, dtype=torch.float16), "mean", False),
]
for spec, cand, plan, compiled in each_plan(fam, specs):
    for k in compiled:
        print("OK", spec.args[0].dtype, cand.template, k)
"""


def test_kernels_compile_for_sm90(tmp_path) -> None:
    """Every template and step kernel (scan, mark, gather, fill) compiles to sm_90 cubin for fp32/bf16/fp16,
    no GPU needed (a subprocess: TRITON_INTERPRET=0)."""
    stdout, ok = run_sm90(_SM90_SCRIPT, tmp_path)
    lines = [ln.split() for ln in ok]
    assert {ln[-1] for ln in lines} == {"srb_scan", "srb_seg_fill", "srb_mark_rows", "srb_row_gather"}, stdout
    # lengths specs: scan + fill, scan + mark + gather; the offsets spec: fill, mark + gather
    assert len(lines) == 5 + 3 + 5, stdout
