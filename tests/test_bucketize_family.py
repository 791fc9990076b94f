"""The bucketize family (bucketize / searchsorted): aten semantics pinned against eager, every template x
dtype pair x option (Triton interpreter) vs the reference and eager, bit for bit, edge cases, the
candidate space and call plans, GPU compilation (sm_90, no device needed), matching on hand-built and
real post-grad graphs, Inductor's fallback rule, and the backend end to end."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from family_helpers import fake_converter, firsts, pick, run_sm90, with_cfg  # noqa: E402

from torch_kevolve import families as _families

_families.all_families()  # builtins first: registering below must not pre-empt _load_builtin

from torch_kevolve.families import Match, Skip, family_for_op, get_family  # noqa: E402
from torch_kevolve.families import bucketize as BK  # noqa: E402
from torch_kevolve.families.base import Candidate, In, Out  # noqa: E402
from torch_kevolve.families.bucketize import BUCKETIZE, SEARCHSORTED, TEMPLATES, BucketizeFamily  # noqa: E402
from torch_kevolve.kernels import launch, load_module  # noqa: E402
from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # interpreter's numpy noise
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # searchsorted's non-contiguous warning
]

FAM: BucketizeFamily = get_family("bucketize")  # type: ignore[assignment]
NAN, INF = math.nan, math.inf
F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
I8, I16, I32, I64, U8 = torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8
CUDA = DeviceSig("cuda", "NVIDIA H100 80GB HBM3", "sm_90")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def make_spec(op: str = BUCKETIZE, x: tuple = (37, 5), b: tuple = (9,), xd: torch.dtype = F32, bd: torch.dtype = F32,
              sorter: bool = False, right: bool = False, out_int32: bool = False, device: DeviceSig | None = None,
              xt: bool = False) -> OpSpec:
    """A spec from placeholder tensors; ``xt``: the values as a transposed view."""
    xv = torch.empty(tuple(reversed(x)), dtype=xd).T if xt else torch.empty(x, dtype=xd)
    s = torch.empty(b, dtype=I64) if sorter else None
    spec = FAM.spec_for(op, xv, torch.empty(b, dtype=bd), s, right, out_int32)
    return dataclasses.replace(spec, device=device) if device else spec


def run_candidate(spec: OpSpec, cand: Candidate, inputs: list) -> torch.Tensor:
    plan = FAM.call_plan(spec, cand)
    (out,) = launch(load_module(cand.source), plan, inputs, poison=True)
    return out


def assert_exact(out: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape, f"{what}: {out.dtype}{list(out.shape)} vs " \
                                                              f"{ref.dtype}{list(ref.shape)}"
    bad = out != ref
    if bool(bad.any()):
        i = tuple(int(v) for v in torch.nonzero(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} positions differ, first at {i}: {out[i]} vs {ref[i]}")


def check(spec: OpSpec, cand: Candidate, inputs: list, what: str = "") -> None:
    """The kernel vs the reference and eager, exactly (an unwritten poisoned output fails here)."""
    out = run_candidate(spec, cand, inputs)
    assert out.is_contiguous()
    (ref,) = FAM.reference(spec, inputs)
    (eager,) = FAM.eager(spec, inputs)
    assert_exact(ref, eager, f"{what} reference vs eager")
    assert_exact(out, eager, f"{what} {cand.template} {cand.cfg}")








def template_cand(spec: OpSpec, template: str, **over: Any) -> Candidate:
    return with_cfg(next(c for c in FAM.candidates(spec) if c.template == template), **over)


# ------------------------------------------------------------------------------------------------
# registration, aten semantics, the reference
# ------------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert family_for_op(BUCKETIZE) is FAM and family_for_op(SEARCHSORTED) is FAM
    assert set(FAM.ops) == set(FAM.lowered_ops) == {BUCKETIZE, SEARCHSORTED}
    assert family_for_op("aten.searchsorted.Scalar") is None  # never reaches a post-grad graph
    assert family_for_op("aten.scatter_add.default") is get_family("scatter")
    assert set(TEMPLATES) == {"search", "smem", "count", "row"}


def _all_templates(spec: OpSpec) -> list[Candidate]:
    return list(firsts(FAM.candidates(spec)).values())


def test_eager_semantics_pinned() -> None:
    """ATen's search path, pinned: NaN values to the end for both sides, NaN boundaries path-dependent,
    ties, empty boundaries, promotion; the reference and every template agree."""
    b = torch.tensor([1.0, 2.0, 2.0, 3.0, INF])
    x = torch.tensor([0.0, 1.0, 2.0, 2.5, 3.0, 4.0, INF, -INF, NAN, -0.0])
    table = {
        False: [0, 0, 1, 3, 3, 4, 4, 0, 5, 0],
        True: [0, 1, 3, 3, 4, 4, 5, 0, 5, 0],
    }
    bn = torch.tensor([1.0, 2.0, NAN])  # sorted as torch sorts: NaN last
    nan_table = {False: [0, 0, 1, 3, 3, 3, 3, 0, 3, 0], True: [0, 1, 3, 3, 3, 3, 3, 0, 3, 0]}
    cases = []
    for right in (False, True):
        assert torch.bucketize(x, b, right=right).tolist() == table[right]
        assert torch.searchsorted(b, x, right=right).tolist() == table[right]
        assert torch.bucketize(x, bn, right=right).tolist() == nan_table[right]
        cases += [(BUCKETIZE, x, b, None, right, table[right]), (BUCKETIZE, x, bn, None, right, nan_table[right])]
    # [1, nan, nan]: a finite value below everything still walks right past the NaNs (not "0")
    b3 = torch.tensor([1.0, NAN, NAN])
    assert torch.bucketize(torch.tensor([0.5]), b3).tolist() == [3]
    cases.append((BUCKETIZE, torch.tensor([0.5, 1.0, 7.0]), b3, None, False, [3, 3, 3]))
    # empty boundaries: 0 everywhere, NaN too
    cases.append((BUCKETIZE, x, torch.tensor([]), None, True, [0] * 10))
    # promotion: both sides in result_type(boundaries, values)
    assert torch.bucketize(torch.tensor([2**53 + 1]), torch.tensor([2.0**53], dtype=F32), right=True).tolist() == [1]
    assert torch.bucketize(torch.tensor([16777217], dtype=I32), torch.tensor([16777216.0])).tolist() == [0]
    cases.append((BUCKETIZE, torch.tensor([16777217, 16777215], dtype=I32), torch.tensor([16777216.0]), None, False,
                  [0, 0]))
    half = torch.tensor([1.0001], dtype=F16)  # rounds to 1.0 in fp16, compared in fp32 with 1.0001
    assert torch.bucketize(half, torch.tensor([1.0001])).tolist() == [0]
    assert torch.result_type(torch.tensor([1.0]), torch.tensor(1.0, dtype=F64)) == F32  # 0-D does not promote
    x0 = torch.tensor(1.0 + 1e-12, dtype=F64)
    assert torch.searchsorted(torch.tensor([1.0]), x0).item() == 0  # compared in fp32, where x0 == 1
    cases.append((SEARCHSORTED, x0, torch.tensor([1.0]), None, False, 0))
    # sorter: positions in sorted order
    sb = torch.tensor([3.0, 1.0, 2.0])
    srt = torch.tensor([1, 2, 0])
    assert torch.searchsorted(sb, torch.tensor([0.0, 1.5, 2.0, 5.0]), sorter=srt).tolist() == [0, 1, 1, 3]
    cases.append((SEARCHSORTED, torch.tensor([0.0, 1.5, 2.0, 5.0]), sb, srt, False, [0, 1, 1, 3]))
    # per-row sequences
    s2 = torch.tensor([[1.0, 2, 3], [2, 4, 6]])
    assert torch.searchsorted(s2, torch.tensor([[2.0, 5], [2, 5]]), side="right").tolist() == [[2, 3], [1, 2]]
    cases.append((SEARCHSORTED, torch.tensor([[2.0, 5], [2, 5]]), s2, None, True, [[2, 3], [1, 2]]))
    for op, xv, bv, sv, right, want in cases:
        spec = FAM.spec_for(op, xv, bv, sv, right)
        want_t = torch.tensor(want, dtype=I64)
        inputs = [xv, bv, sv]
        assert_exact(FAM.eager(spec, inputs)[0], want_t, "eager")
        assert_exact(FAM.reference(spec, inputs)[0], want_t, "reference")
        for cand in _all_templates(spec):
            assert_exact(run_candidate(spec, cand, inputs), want_t, f"{spec.describe()} {cand.template}")
    # what eager rejects (the family skips these)
    for bad in (lambda: torch.bucketize(torch.tensor([True]), torch.tensor([False, True])),
                lambda: torch.searchsorted(sb, x, sorter=srt.int()),
                lambda: torch.searchsorted(sb, x, sorter=torch.tensor([1, 2, 5])),
                lambda: torch.bucketize(x, s2)):
        with pytest.raises(RuntimeError):
            bad()


_PAIRS = [(F32, F32), (F16, F32), (BF16, BF16), (F64, F32), (I64, F32), (I32, BF16), (U8, I8), (I16, F16),
          (F32, I64), (I64, I64)]


@pytest.mark.parametrize("xd,bd", _PAIRS, ids=[f"{str(a)[6:]}-{str(b)[6:]}" for a, b in _PAIRS])
def test_reference_matches_eager(xd: torch.dtype, bd: torch.dtype) -> None:
    for k, (op, x, b, sorter) in enumerate([(BUCKETIZE, (41, 3), (17,), False), (SEARCHSORTED, (5, 7), (5, 12), True),
                                           (SEARCHSORTED, (40,), (300,), True)]):
        spec = make_spec(op, x, b, xd, bd, sorter=sorter, right=bool(k % 2), out_int32=k == 2)
        inputs = FAM.make_inputs(spec, seed=k)
        assert all(sig is None or sig.matches(t) for sig, t in zip(spec.args, inputs))
        assert_exact(FAM.reference(spec, inputs)[0], FAM.eager(spec, inputs)[0], spec.describe())


def test_make_inputs_have_ties_and_sorted_sequences() -> None:
    spec = make_spec(SEARCHSORTED, (6, 50), (6, 20), F32, F32, sorter=True)
    x, b, s = FAM.make_inputs(spec, 3)
    assert s is not None and s.dtype == I64
    sb = torch.gather(b, 1, s)
    assert bool((sb[:, 1:] >= sb[:, :-1]).all())  # sorted through the sorter
    assert bool((x[:, :, None] == b[:, None, :]).any(-1).float().mean() > 0.1)  # values on boundaries


def test_spec_geometry_and_errors() -> None:
    spec = make_spec(SEARCHSORTED, (4, 6), (4, 9), F16, BF16, sorter=True, right=True, out_int32=True)
    assert spec.family == "bucketize" and spec.consts == (("out_int32", True), ("right", True))
    assert spec.args[2] == TensorSig("int64", (4, 9), (9, 1))
    back = OpSpec.from_json(spec.to_json())
    assert back == spec and back.key == spec.key
    g = FAM.geom(spec)
    assert (g.rows, g.cols, g.bounds, g.per_row, g.two_d) == (4, 6, 9, True, True)
    assert g.common == F32 and g.cmp == 0 and g.bs == (9, 1) and g.ss == (9, 1)  # fp16 with bf16: fp32
    assert FAM.geom(make_spec(xd=I32, bd=BF16)).cmp == 4 and FAM.geom(make_spec(xd=U8, bd=F16)).cmp == 3
    g = FAM.geom(make_spec(x=(37, 5)))  # contiguous values collapse to one dim: no row split
    assert (g.rows, g.cols, g.two_d, g.xs, g.bs) == (1, 185, False, (0, 1), (0, 1))
    g = FAM.geom(make_spec(x=(7, 5), xt=True))  # transposed: two strided dims
    assert (g.rows, g.cols, g.two_d, g.xs) == (7, 5, True, (1, 7))
    g = FAM.geom(FAM.spec_for(BUCKETIZE, torch.empty(()), torch.empty(4)))  # 0-D values
    assert (g.rows, g.cols) == (1, 1)
    g = FAM.geom(FAM.spec_for(SEARCHSORTED, torch.empty(2, 3, 5), torch.empty(2, 3, 4)))  # leading dims collapse
    assert (g.rows, g.cols, g.bounds, g.xs, g.bs) == (6, 5, 4, (5, 1), (4, 1))
    assert FAM.geom(make_spec(xd=I64, bd=U8)).cmp == 2 and FAM.geom(make_spec(xd=F64, bd=F32)).cmp == 1
    assert FAM.geom(make_spec(xd=I16, bd=F16)).common == F16
    e = torch.empty
    for args, needle in [
        ((BUCKETIZE, e(3), e(2, 4)), "2-D"),
        ((SEARCHSORTED, e(3, 5), e(2, 4)), "leading dims"),
        ((SEARCHSORTED, e(3), e(4), e(4, dtype=I32)), "int64"),
        ((SEARCHSORTED, e(3), e(4), e(5, dtype=I64)), "sorter shape"),
        ((BUCKETIZE, e(3, dtype=torch.bool), e(4)), "bool"),
        ((BUCKETIZE, e(3), e(4, dtype=torch.complex64)), "complex"),
        ((BUCKETIZE, e(2, 3, 4).permute(1, 0, 2), e(4)), "collapse"),
        ((BUCKETIZE, e(2, 3, 4).permute(2, 0, 1), e(4)), None),  # [4, (2, 3)]: two strided dims, served
        ((SEARCHSORTED, e(3, 4, 5).transpose(0, 1), e(4, 3, 2)), "collapse"),
        ((BUCKETIZE, e(3), e(())), "0-D"),
    ]:
        if needle is None:
            FAM.spec_for(*args)
            continue
        with pytest.raises(ValueError, match=needle):
            FAM.spec_for(*args)


# ------------------------------------------------------------------------------------------------
# candidates and call plans
# ------------------------------------------------------------------------------------------------

_SPACE = [
    dict(op=BUCKETIZE, x=(1_000_000,), b=(16,)),
    dict(op=BUCKETIZE, x=(4096, 512), b=(1000,), xd=BF16),
    dict(op=SEARCHSORTED, x=(100_000,), b=(100_000,), sorter=True),
    dict(op=SEARCHSORTED, x=(8192, 64), b=(8192, 128), right=True),
    dict(op=SEARCHSORTED, x=(100_000, 1), b=(100_000, 16), xd=I64, bd=F64),
    dict(op=SEARCHSORTED, x=(64, 300), b=(64, 10_000)),
    dict(op=BUCKETIZE, x=(0,), b=(0,)),
]


@pytest.mark.parametrize("kw", _SPACE, ids=[str(i) for i in range(len(_SPACE))])
def test_candidate_space(kw: dict) -> None:
    spec = make_spec(device=CUDA, **kw)
    g = FAM.geom(spec)
    cands = FAM.candidates(spec)
    assert 5 <= len(cands) <= 30, len(cands)
    assert len({(c.template, c.config) for c in cands}) == len(cands)
    templates = {c.template for c in cands}
    assert templates == set(FAM.templates_for(spec))
    expect_first = ("row" if g.bounds <= BK._SMEM_MAX else "search") if g.per_row else \
        ("count" if g.bounds <= 32 else "smem" if g.bounds <= BK._SMEM_MAX else "search")
    assert cands[0].template == expect_first
    for c in cands:
        assert c.origin == "template" and c.config == tuple(sorted(c.config))
        cfg = c.cfg
        assert cfg["num_warps"] in (1, 2, 4, 8)
        if c.template == "count":
            assert cfg["BLOCK"] * cfg["BC"] <= BK._MAX_TILE
        if c.template == "row":
            assert cfg["BLOCK_R"] * _p2(g.bounds) <= BK._SMEM_MAX
        plan = FAM.call_plan(spec, c)
        assert plan.kernel == TEMPLATES[c.template][0] and not plan.pre and not plan.workspace
        assert plan.outputs[0].shape == spec.args[0].shape and plan.outputs[0].fill is None
        assert plan.outputs[0].dtype == ("int32" if spec.const("out_int32") else "int64")
        per_prog = cfg.get("BLOCK", 0) * cfg.get("TILES", 1) if c.template != "row" else None
        if per_prog and g.numel:
            assert plan.grid[0] * per_prog >= g.numel > (plan.grid[0] - 1) * per_prog  # covers, no idle programs
        if c.template == "row":
            assert plan.grid[0] == (-(-g.rows // cfg["BLOCK_R"]) if g.numel else 0)


def _p2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def test_call_plan_binds_kernel_params() -> None:
    """Every kernel parameter bound once, in order; sorter bound to input 2 or aliased to the
    boundaries (never read then); STEPS covers the search; bad configs and templates refused."""
    for spec in (make_spec(), make_spec(SEARCHSORTED, (5, 7), (5, 40), I32, F64, sorter=True, right=True),
                 make_spec(SEARCHSORTED, (300,), (5000,), sorter=True), make_spec(x=(0, 3), b=(0,))):
        g = FAM.geom(spec)
        for c in FAM.candidates(spec):
            plan = FAM.call_plan(spec, c)
            fn = getattr(load_module(c.source), plan.kernel)
            names = [a for a, _ in plan.args]
            # the parameters bound in order; left out: smem's defaulted knobs that are off (bound only when on)
            assert names == list(fn.arg_names)[:len(names)]
            left = list(fn.arg_names)[len(names):]
            if c.template != "smem" or c.cfg.get("FAST"):
                assert left == []
            else:
                assert left == (["FAST", "HALVINGS"] if c.cfg.get("SWZ") else ["SWZ", "FAST", "HALVINGS"])
            args = dict(plan.args)
            assert args["x_ptr"] == In(0) and args["b_ptr"] == In(1) and args["out_ptr"] == Out(0)
            assert args["s_ptr"] == (In(2) if spec.args[2] is not None else In(1))
            assert args["HAS_SORTER"] == (spec.args[2] is not None)
            assert 2 ** args["STEPS"] > g.bounds and (g.bounds == 0 or 2 ** (args["STEPS"] - 1) <= g.bounds)
            if "NB" in args:
                assert args["NB"] >= g.bounds
    spec = make_spec()
    c = firsts(FAM.candidates(spec))["smem"]
    with pytest.raises(ValueError, match="power of two"):
        FAM.call_plan(spec, with_cfg(c, BLOCK=24))
    with pytest.raises(ValueError, match="cannot serve"):
        FAM.call_plan(make_spec(SEARCHSORTED, (3, 4), (3, 5)), c)
    with pytest.raises(ValueError, match="cannot serve"):
        FAM.call_plan(make_spec(b=(5000,)), c)


def test_floor_bytes() -> None:
    spec = make_spec(SEARCHSORTED, (10, 30), (10, 7), F16, F64, sorter=True, out_int32=True)
    assert FAM.floor_bytes(spec) == 300 * (2 + 4) + 70 * 8 + 70 * 8
    assert FAM.floor_bytes(make_spec(x=(100,), b=(9,))) == 100 * (4 + 8) + 9 * 4


# ------------------------------------------------------------------------------------------------
# kernels vs reference and eager
# ------------------------------------------------------------------------------------------------

_LAYOUTS = [  # (op, values shape, boundaries shape, sorter, values transposed)
    (BUCKETIZE, (37, 5), (9,), False, False),
    (SEARCHSORTED, (6, 11), (6, 13), False, False),
    (SEARCHSORTED, (23, 3), (100,), True, True),
    (SEARCHSORTED, (3, 2, 9), (3, 2, 40), True, False),
    (BUCKETIZE, (), (33,), False, False),
    (SEARCHSORTED, (53,), (31,), True, False),
]


@pytest.mark.parametrize("i,pair", list(enumerate(_PAIRS)), ids=[f"{str(a)[6:]}-{str(b)[6:]}" for a, b in _PAIRS])
def test_kernels(i: int, pair: tuple) -> None:
    """Every template (plus one rotating extra config) on two layouts per dtype pair, options rotating."""
    xd, bd = pair
    for k in range(2):
        op, x, b, sorter, xt = _LAYOUTS[(i + k * 3) % len(_LAYOUTS)]
        if op == BUCKETIZE:
            sorter = False
        spec = make_spec(op, x, b, xd, bd, sorter=sorter, right=bool((i + k) % 2), out_int32=(i + k) % 3 == 0, xt=xt)
        inputs = FAM.make_inputs(spec, seed=i * 7 + k)
        for cand in pick(FAM.candidates(spec), rotate=i + k):
            check(spec, cand, inputs, spec.describe())


def test_kernel_configs_cross_blocks() -> None:
    """Programs covering several tiles, partial last tiles, count chunks narrower than M, rows split
    across programs and value blocks narrower than a row, many-step searches (M = 5000, 4096)."""
    spec = make_spec(x=(333,), b=(70,), sorter=False, right=True)
    inputs = FAM.make_inputs(spec, 5)
    for t, over in [("smem", dict(BLOCK=16, TILES=4)), ("count", dict(BLOCK=32, BC=8, TILES=3)),
                    ("count", dict(BLOCK=512, BC=128, TILES=1)), ("search", dict(BLOCK=64))]:
        check(spec, template_cand(spec, t, **over), inputs, t)
    spec = make_spec(SEARCHSORTED, (9, 21), (9, 17), I32, F32, sorter=True)
    inputs = FAM.make_inputs(spec, 6)
    for br, bk in ((1, 4), (4, 8), (16, 32), (2, 1)):
        check(spec, template_cand(spec, "row", BLOCK_R=br, BLOCK_K=bk), inputs, f"row {br}x{bk}")
    for m, t in ((5000, "search"), (4096, "smem")):
        spec = make_spec(SEARCHSORTED, (300,), (m,), F32, F32, sorter=True, right=True)
        inputs = FAM.make_inputs(spec, 7)
        check(spec, template_cand(spec, t, BLOCK=512), inputs, f"M={m}")


@pytest.mark.parametrize("m", [2, 40, 64, 100, 1024, 3000])
def test_smem_swizzle_and_fast(m: int) -> None:
    """smem's knobs, each on and off: the bank swizzle (boundary i at i ^ ((i >> 5) & 31)) and the
    halving search give eager's answer, with and without a sorter (whose reads are swizzled too), left
    and right; candidates offer each both ways (the swizzle from 64 boundaries on: below, it is the
    identity); a knob is bound only when on."""
    j = torch.arange(BK._next_pow2(m))
    sw = j ^ ((j >> 5) & 31)
    assert torch.equal(sw.sort().values, j) and torch.equal(sw[sw], j)  # a permutation, its own inverse
    for sorter in (False, True):
        spec = make_spec(SEARCHSORTED, (257,), (m,), F32, F32, sorter=sorter, right=sorter)
        inputs = FAM.make_inputs(spec, m)
        cfgs = [c.cfg for c in FAM.candidates(spec) if c.template == "smem"]
        assert {c.get("FAST", 0) for c in cfgs} == {0, 1}
        assert {c.get("SWZ", 0) for c in cfgs} == ({0, 1} if BK._next_pow2(m) >= 64 else {0})
        for swz in (0, 1):
            for fast in (0, 1):
                cand = template_cand(spec, "smem", BLOCK=64, TILES=2, SWZ=swz, FAST=fast)
                args = dict(FAM.call_plan(spec, cand).args)
                assert ("SWZ" in args) == bool(swz or fast) and ("FAST" in args) == bool(fast)
                if fast:
                    assert 2 ** args["HALVINGS"] >= m > 2 ** (args["HALVINGS"] - 1)
                check(spec, cand, inputs, f"M={m} SWZ={swz} FAST={fast} sorter={sorter}")


@pytest.mark.parametrize("right", [False, True])
def test_smem_fast_nan_boundaries_replay(right: bool) -> None:
    """With a NaN among the boundaries the answer depends on ATen's search path: the halving search
    would give the count instead, so a program that holds one replays the exact search. Also ties,
    -0.0 against 0.0, infinities and NaN values on the halving path."""
    nan, inf = math.nan, math.inf
    x = torch.tensor([-inf, -5.0, -0.0, 0.0, 1.0, 2.0, 2.5, 3.0, 7.0, 9.0, inf, nan] * 9)
    for b in (torch.tensor([-inf, -1.0, 0.0, 0.0, 2.0, 2.0, 3.0, 7.0, inf, nan, nan] + [nan] * 60),
              torch.tensor([-inf, -1.0, -0.0, 0.0, 2.0, 2.0, 3.0, 7.0] * 1 + [7.0] * 57 + [inf] * 6)):
        spec = FAM.spec_for(BUCKETIZE, x, b, None, right)
        cand = template_cand(spec, "smem", BLOCK=32, TILES=2, SWZ=1, FAST=1)
        check(spec, cand, [x, b, None], f"right={right} nan_boundaries={bool(b.isnan().any())}")
        # what the halving search answers (ATen's step predicate counted): differs from eager with NaN
        # boundaries, so passing above means the replay ran
        counted = torch.stack([(~(b > v) if right else ~(b >= v)).sum() for v in x])
        assert torch.equal(counted, FAM.eager(spec, [x, b, None])[0]) != bool(b.isnan().any())


def test_unsorted_boundaries_only_count_differs() -> None:
    """Unsorted boundaries (torch: undefined result): the search templates still replay eager's path;
    count counts and smem's halving search gives some answer in [0, M] -- documented, not hidden."""
    b = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    x = torch.tensor([0.0, 1.5, 2.5, 3.5, 6.0])
    spec = FAM.spec_for(BUCKETIZE, x, b)
    eager = FAM.eager(spec, [x, b, None])[0]
    for t in ("search", "smem"):
        assert_exact(run_candidate(spec, template_cand(spec, t, FAST=0), [x, b, None]), eager, t)
    halving = run_candidate(spec, template_cand(spec, "smem", FAST=1), [x, b, None])  # a count-like answer
    assert bool(((halving >= 0) & (halving <= len(b))).all())
    counted = run_candidate(spec, template_cand(spec, "count"), [x, b, None])
    assert counted.tolist() == [(b < v).sum().item() for v in x] and not torch.equal(counted, eager)


def test_bad_sorter_never_faults() -> None:
    """Out-of-range sorter entries (eager raises): masked loads, every output written."""
    b, x = torch.tensor([1.0, 2.0, 3.0]), torch.linspace(0, 4, 9)
    s = torch.tensor([2, 7, -5])
    spec = FAM.spec_for(SEARCHSORTED, x, b, s)
    for cand in FAM.candidates(spec):
        out = run_candidate(spec, cand, [x, b, s])
        assert bool(((out >= 0) & (out <= 3)).all())


_EDGE_SPECS = {
    "f32-1d": lambda: make_spec(),
    "f16-f32-right-i32": lambda: make_spec(xd=F16, bd=F32, right=True, out_int32=True),
    "i64-f32-sorter": lambda: make_spec(SEARCHSORTED, (40,), (12,), I64, F32, sorter=True),
    "bf16-rows-sorter": lambda: make_spec(SEARCHSORTED, (4, 6), (4, 8), BF16, BF16, sorter=True, right=True),
    "i32-bf16": lambda: make_spec(xd=I32, bd=BF16),
    "u8-i16-rows": lambda: make_spec(SEARCHSORTED, (3, 5), (3, 7), U8, I16),
}
_COMMON_EDGES = {"ties", "outside_range", "all_equal_boundaries", "one_boundary", "empty_boundaries", "empty_values"}


@pytest.mark.parametrize("key", list(_EDGE_SPECS))
def test_edge_cases(key: str) -> None:
    spec = _EDGE_SPECS[key]()
    g = FAM.geom(spec)
    xd, bd = spec.args[0].torch_dtype, spec.args[1].torch_dtype
    cases = FAM.edge_cases(spec)
    names = {n for n, _, _ in cases}
    expect = set(_COMMON_EDGES) | ({"rows_differ", "strided_values", "three_d"} if g.per_row else
                                   {"strided_values", "zero_d_value", "values_3d", "many_boundaries"})
    if xd.is_floating_point:
        expect |= {"nan_inf_values", "negative_zero"}
    if bd.is_floating_point:
        expect |= {"nan_boundaries", "nan_boundaries_many", "inf_boundaries"}
    assert expect <= names and names - expect <= {"promotion_rounding"}, names ^ expect
    if key in ("i64-f32-sorter", "i32-bf16", "f16-f32-right-i32"):
        assert "promotion_rounding" in names
    cands = firsts(FAM.candidates(spec))
    for name, cspec, inputs in cases:
        assert cspec.op == spec.op and cspec.consts == spec.consts
        assert [None if a is None else a.dtype for a in cspec.args] == [None if a is None else a.dtype for a in spec.args]
        assert all(sig is None or sig.matches(t) for sig, t in zip(cspec.args, inputs))
        for cand in cands.values():
            check(cspec, cand, inputs, f"{key}/{name}")


# ------------------------------------------------------------------------------------------------
# GPU compilation without a GPU
# ------------------------------------------------------------------------------------------------

_SM90_SCRIPT = r"""
fam = get_family("bucketize")
L = torch.long
specs = [  # every CMP mode (fp32, fp64, ints, fp16, bf16), sorters, per-row sequences, M = 1 (STEPS 1)
    fam.spec_for("aten.bucketize.Tensor", e(1000, 7), e(40), None, False, False),
    fam.spec_for("aten.bucketize.Tensor", e(300, dtype=torch.int16), e(1, dtype=torch.float16), None, True, True),
    fam.spec_for("aten.searchsorted.Tensor", e(1000, dtype=torch.int64), e(300, dtype=torch.bfloat16), e(300, dtype=L), True, True),
    fam.spec_for("aten.searchsorted.Tensor", e(50, 3, dtype=torch.uint8).T, e(4000, dtype=torch.float64), None, False, False),
    fam.spec_for("aten.searchsorted.Tensor", e(64, 9, dtype=torch.float16), e(64, 33, dtype=torch.float64), e(64, 33, dtype=L), True, False),
    fam.spec_for("aten.searchsorted.Tensor", e(64, 9, dtype=torch.int32), e(64, 33, dtype=torch.int8), None, False, True),
]
for spec, cand, plan, compiled in each_plan(fam, specs):
    for k in compiled:
        print("OK", spec.args[0].dtype, spec.args[1].dtype, cand.template)
"""


def test_kernels_compile_for_sm90(tmp_path) -> None:
    """Every template under every comparison mode (fp16/bf16 rounding, fp64, ints), with and without a
    sorter, compiles to sm_90 cubin (tl.gather included), no GPU needed. A subprocess: with
    TRITON_INTERPRET=1 at import, triton is interpreter-only for the process."""
    stdout, lines = run_sm90(_SM90_SCRIPT, tmp_path)
    assert {ln.rsplit(" ", 1)[-1] for ln in lines} == {"search", "smem", "count", "row"}, stdout
    # 1-D specs: search, smem, count (M = 4000: no count); per-row: row, search
    assert len(lines) == 3 * 3 + 2 + 2 * 2, stdout


# ------------------------------------------------------------------------------------------------
# match: hand-built graphs (cheap), Inductor's rule, a real post-grad graph via the backend
# ------------------------------------------------------------------------------------------------


def _graph_node(target, args: tuple, kwargs: dict | None = None, out: torch.Tensor | None = None,
                dynamic: bool = False, device: str | None = None):
    """One call in an FX graph whose tensor args are FakeTensor placeholders (optionally symbolic, or
    on a device this machine lacks)."""
    fake = fake_converter(device, dynamic)
    g = torch.fx.Graph()
    phs = []

    def conv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            n = g.placeholder(f"t{len(phs)}")
            n.meta["val"] = fake(v, dynamic and not phs)
            phs.append(n)
            return n
        return v

    fx_args = tuple(conv(a) for a in args)
    fx_kwargs = {k: conv(v) for k, v in (kwargs or {}).items()}
    node = g.call_function(target, fx_args, fx_kwargs)
    node.meta["val"] = fake(out, False) if out is not None else None
    g.output((node,))
    return node, phs


def test_match_handbuilt() -> None:
    x, b, s2 = torch.randn(6, 4), torch.randn(5), torch.randn(6, 9)
    node, (xn, bn) = _graph_node(torch.ops.aten.bucketize.Tensor, (x, b), {"right": True},
                                 out=torch.empty(6, 4, dtype=I64))
    m = FAM.match(node)
    assert isinstance(m, Match), m
    assert m.inputs == [xn, bn, None] and m.result_users == {0: [node]}
    assert m.spec.op == BUCKETIZE and m.spec.consts == (("out_int32", False), ("right", True))
    srt = torch.zeros(6, 9, dtype=I64)
    node, (sn, xn, srn) = _graph_node(torch.ops.aten.searchsorted.Tensor, (s2, x), {"side": "right", "sorter": srt,
                                                                                    "out_int32": True},
                                      out=torch.empty(6, 4, dtype=I32))
    m = FAM.match(node)
    assert isinstance(m, Match), m
    assert m.inputs == [xn, sn, srn] and m.spec.consts == (("out_int32", True), ("right", True))
    assert FAM.geom(m.spec).per_row


@pytest.mark.parametrize(
    "target,args,kwargs,out,kw,needle",
    [
        (torch.ops.aten.bucketize.Tensor, (torch.randn(3, 4), torch.randn(5)), {}, torch.empty(3, 4, dtype=I64),
         dict(dynamic=True), "symbolic"),
        (torch.ops.aten.bucketize.Tensor, (torch.randn(2, 3, 4).permute(1, 0, 2), torch.randn(5)), {},
         torch.empty(3, 2, 4, dtype=I64), {}, "collapse"),
        (torch.ops.aten.bucketize.Tensor, (torch.randn(3).to(torch.complex64), torch.randn(5)), {},
         torch.empty(3, dtype=I64), {}, "complex"),
        (torch.ops.aten.searchsorted.Tensor, (torch.randn(5), torch.randn(3)), {"side": "left", "right": True},
         torch.empty(3, dtype=I64), {}, "eager raises"),
        (torch.ops.aten.bucketize.Tensor, (torch.randn(3, 4), torch.randn(5)), {}, torch.empty(4, 3, dtype=I64).T,
         {}, "contiguous"),
        (torch.ops.aten.relu.default, (torch.randn(3),), {}, torch.empty(3), {}, "not bucketize"),
    ],
    ids=["dynamic", "non-collapsible", "complex", "side-conflict", "non-contiguous-out", "other-op"],
)
def test_match_skips(target, args, kwargs, out, kw, needle) -> None:
    node, _ = _graph_node(target, args, kwargs, out=out, **kw)
    r = FAM.match(node)
    assert isinstance(r, Skip), r
    assert needle in r.reason, r.reason


def test_inductor_fallback_reason() -> None:
    """Inductor lowers both on Triton devices whatever the arguments; CPU calls ATen."""
    args = (torch.randn(3, 4), torch.randn(5))
    cpu, _ = _graph_node(torch.ops.aten.bucketize.Tensor, args, out=torch.empty(3, 4, dtype=I64))
    assert "cpu" in FAM.inductor_fallback_reason(cpu)
    for kwargs in ({}, {"right": True, "out_int32": True}):
        gpu, _ = _graph_node(torch.ops.aten.bucketize.Tensor, args, kwargs, out=torch.empty(3, 4, dtype=I64),
                             device="cuda")
        assert FAM.inductor_fallback_reason(gpu) is None
    ss, _ = _graph_node(torch.ops.aten.searchsorted.Tensor, (torch.randn(3, 5), torch.randn(3, 4)),
                        {"sorter": torch.zeros(3, 5, dtype=I64)}, out=torch.empty(3, 4, dtype=I64), device="cuda")
    assert FAM.inductor_fallback_reason(ss) is None


def test_backend_end_to_end(store_dir, tmp_path) -> None:
    """torch.compile(backend="kevolve") on CPU: what reaches the post-grad graph (recorded by a user
    pass that runs before ours), which calls match or skip, and the served ones replaced by searched
    kernels (custom-op route) with eager-equal results."""
    from torch_kevolve import stats
    from torch_kevolve.lowering import REPORTS

    seen: list[tuple[str, Any, str | None]] = []

    def record(graph: torch.fx.Graph) -> None:
        for n in graph.nodes:
            if str(n.target) in FAM.ops:
                seen.append((str(n.target), FAM.match(n), FAM.inductor_fallback_reason(n)))

    def f(x, b, s, y, bs, srt, x3):
        return (torch.bucketize(x, b) * 2,
                torch.bucketize(x.half(), b, right=True, out_int32=True),  # fp16 values, fp32 boundaries
                torch.searchsorted(s, y, side="right"),  # per-row sequences
                torch.searchsorted(bs, x, sorter=srt),  # unsorted boundaries with their sorter
                torch.searchsorted(b, 0.25),  # a Python scalar: full([1]) into the Tensor overload
                torch.bucketize(x3, b))  # values whose dims do not collapse: skipped, ATen

    g = torch.Generator().manual_seed(0)
    b = torch.sort(torch.randn(7, generator=g)).values
    x = torch.cat([torch.randn(40, generator=g), b[:3], torch.tensor([math.nan])])
    s = torch.sort(torch.randn(3, 6, generator=g), -1).values
    y = torch.cat([torch.randn(3, 8, generator=g), s[:, :2]], 1)
    bs = b[torch.randperm(7, generator=g)]  # unsorted, with its sorter
    srt = torch.argsort(bs)
    x3 = torch.randn(2, 3, 4, generator=g).permute(1, 0, 2)
    args = (x, b, s, y, bs, srt, x3)
    ref = f(*args)
    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    opts = {"cache_dir": str(tmp_path / "store"), "executor": "inprocess", "max_candidates": 1,
            "fx_graph_cache": False, "post_grad_custom_pre_pass": record}
    try:
        with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
            out = torch.compile(f, backend="kevolve", options=opts)(*args)
    finally:
        torch._dynamo.reset()
    for o, r in zip(out, ref):
        assert_exact(o, r, "compiled vs eager")
    targets = sorted(t for t, _, _ in seen)
    assert targets == [BUCKETIZE] * 3 + [SEARCHSORTED] * 3, targets
    assert all(why is not None and "cpu" in why for _, _, why in seen)
    skips = [m for _, m, _ in seen if isinstance(m, Skip)]
    assert len(skips) == 1 and "collapse" in skips[0].reason
    matches = [m for _, m, _ in seen if isinstance(m, Match)]
    assert {(m.spec.args[0].dtype, m.spec.args[1].dtype) for m in matches} >= {("float16", "float32")}
    assert sum(m.spec.args[2] is not None for m in matches) == 1 and sum(FAM.geom(m.spec).per_row for m in matches) == 1
    found = [fi for rep in REPORTS for fi in rep if fi.family == "bucketize"]
    assert sorted(fi.status for fi in found) == ["candidate"] * 5 + ["skipped"]
    snap = stats.snapshot()
    assert snap["kernel_calls"] == 5 and snap["rewritten_custom_op"] == 5, snap
