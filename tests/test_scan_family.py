"""The scan family (cumsum / cumprod / logcumsumexp): eager semantics pinned (int promotion, the
``dtype`` kwarg, inf/NaN rules), every template x op x dtype (Triton interpreter) vs the float64
reference and eager, edge cases, carries across blocks and chunks, rounding on real-valued rows, the
candidate space and multi-step plans, GPU compilation (sm_90, no device), matching the variants'
nodes in real post-grad graphs (reverse, exclusive, masked, dtype kwarg), and the backend end to end."""
from __future__ import annotations

import dataclasses
import math
import pytest
import torch
from family_helpers import (compile_and_record, family_nodes, firsts, relu_node, run_kevolve_backend,  # noqa: E402
                            run_sm90, with_cfg)
from family_helpers import fake_node as _node  # noqa: E402

from torch_kevolve import families as _families

_families.all_families()

from torch_kevolve.families import Match, Skip, family_for_op, get_family  # noqa: E402
from torch_kevolve.families.base import Candidate, In, Out, Ws  # noqa: E402
from torch_kevolve.families.scan import CUMPROD, CUMSUM, LOGCUMSUMEXP, TEMPLATES, ScanFamily  # noqa: E402
from torch_kevolve.kernels import launch, load_module  # noqa: E402
from torch_kevolve.search.evaluate import compare  # noqa: E402
from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

FAM: ScanFamily = get_family("scan")  # type: ignore[assignment]
NAN, INF = math.nan, math.inf
F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
I8, I16, I32, I64, U8, BOOL = torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool
CUDA = DeviceSig("cuda", "NVIDIA H100 80GB HBM3", "sm_90")
_FN = {CUMSUM: torch.cumsum, CUMPROD: torch.cumprod}


def make_spec(op: str = CUMSUM, shape: tuple = (5, 37), dim: int = 1, dtype: torch.dtype = F32,
              out: torch.dtype | None = None, device: DeviceSig | None = None, transposed: bool = False) -> OpSpec:
    x = torch.empty(tuple(reversed(shape)), dtype=dtype).T if transposed else torch.empty(shape, dtype=dtype)
    spec = FAM.spec_for(op, x, dim, out)
    return dataclasses.replace(spec, device=device) if device else spec


def template_cands(spec: OpSpec) -> dict[str, Candidate]:
    """One candidate per template (the CUDA space offers all), with interpreter-sized blocks."""
    cands = firsts(FAM.candidates(dataclasses.replace(spec, device=CUDA)))
    small = {"tile": dict(BLOCK_P=4, BLOCK_L=16), "rows": dict(BLOCK_L=16), "cols": dict(BLOCK_P=16, BLOCK_L=4),
             "chunked": dict(BLOCK_P=2, BLOCK_L=16, BLOCK_C=2)}
    out = {t: with_cfg(c, **small[t]) for t, c in cands.items()}
    for t in TEMPLATES:
        if t not in out:
            out[t] = Candidate(TEMPLATES[t][1], tuple(sorted(dict(small[t], num_warps=4, num_stages=1).items())),
                               template=t)
    return out


def assert_close(out: torch.Tensor, ref: torch.Tensor, what: str, exact: bool = False) -> None:
    """Shape and dtype equal; values within the family's tolerance (``exact``: bit-equal), NaN where
    the reference has NaN, infinities equal."""
    assert out.dtype == ref.dtype and out.shape == ref.shape, f"{what}: {out.dtype}{list(out.shape)} vs " \
                                                              f"{ref.dtype}{list(ref.shape)}"
    rtol, atol = (0.0, 0.0) if exact else FAM.tolerance(out.dtype)
    ok, mabs, mrel, where = compare(out, ref, rtol, atol)
    assert ok, f"{what}: max abs {mabs} rel {mrel} at {where}: {out.flatten()[:8]} vs {ref.flatten()[:8]}"


def check(spec: OpSpec, cand: Candidate, inputs: list, what: str = "", exact: bool = False) -> torch.Tensor:
    """The candidate's output, checked against the float64 reference (and eager against it)."""
    (o,) = launch(load_module(cand.source), FAM.call_plan(spec, cand), inputs, poison=True)
    (r,) = FAM.reference(spec, inputs)
    (e,) = FAM.eager(spec, inputs)
    assert o.is_contiguous()
    assert_close(e, r, f"{what}: eager vs reference", exact)
    assert_close(o, r, f"{what}: {cand.template} {cand.cfg}", exact)
    return o


# ------------------------------------------------------------------------------------------------
# registration, eager semantics, the reference
# ------------------------------------------------------------------------------------------------


def test_registered() -> None:
    for op in (CUMSUM, CUMPROD, LOGCUMSUMEXP):
        assert family_for_op(op) is FAM
    assert set(FAM.ops) == set(FAM.lowered_ops) == {CUMSUM, CUMPROD, LOGCUMSUMEXP}
    assert family_for_op("aten.cummax.default") is get_family("cumextrema")  # not duplicated here
    assert set(TEMPLATES) == {"tile", "rows", "cols", "chunked"}


def test_eager_semantics_pinned() -> None:
    """int/bool cumsum and cumprod promote to int64, the dtype kwarg converts first, logcumsumexp's
    infinities; the spec records the output dtype, and every template agrees with eager."""
    ints = torch.tensor([2**30, 2**30, 2**30, -5], dtype=I32)
    assert torch.cumsum(ints, 0).dtype == I64 and torch.cumsum(ints, 0)[2] == 3 * 2**30  # no int32 wrap
    assert torch.cumprod(torch.tensor([True, False]), 0).dtype == I64
    assert torch.cumsum(torch.tensor([1.7, 2.9]), 0, dtype=I32).tolist() == [1, 3]  # truncated, then summed
    lse = torch.tensor([-INF, -INF, 0.0, INF, 1.0])
    assert torch.logcumsumexp(lse, 0).tolist() == [-INF, -INF, 0.0, INF, INF]
    cases = [
        (CUMSUM, ints, None, I64),
        (CUMPROD, torch.tensor([True, True, False, True]), None, I64),
        (CUMSUM, torch.tensor([1.7, 2.9, -0.5]), I32, I32),
        (CUMSUM, torch.tensor([1, 2, 3], dtype=I8), F16, F16),
        (CUMPROD, torch.tensor([3, 5, 7, 11, 13, 17], dtype=I16), I16, I16),  # wraps in int16 like eager
        (LOGCUMSUMEXP, lse, None, F32),
        (LOGCUMSUMEXP, torch.tensor([NAN, 1.0, -INF]), None, F32),
    ]
    for op, x, dt, want in cases:
        spec = FAM.spec_for(op, x, 0, dt)
        assert FAM.out_dtype(spec) == want and spec.const("out_dtype") == str(want)[6:]
        (e,) = FAM.eager(spec, [x])
        assert e.dtype == want
        for t, cand in template_cands(spec).items():
            check(spec, cand, [x], f"{op} {x.dtype}->{want}", exact=not want.is_floating_point)


@pytest.mark.parametrize("op,dt", [(CUMSUM, F32), (CUMSUM, I32), (CUMSUM, BOOL), (CUMPROD, F16), (CUMPROD, I64),
                                   (LOGCUMSUMEXP, F64), (LOGCUMSUMEXP, BF16), (CUMSUM, U8)])
def test_reference_matches_eager(op: str, dt: torch.dtype) -> None:
    for k, (shape, dim) in enumerate([((6, 50), 1), ((31, 4), 0), ((3, 9, 5), 1)]):
        spec = make_spec(op, shape, dim, dt)
        inputs = FAM.make_inputs(spec, seed=k)
        assert spec.args[0].matches(inputs[0])
        assert_close(FAM.eager(spec, inputs)[0], FAM.reference(spec, inputs)[0], spec.describe(),
                     exact=op != LOGCUMSUMEXP and dt not in (F16, BF16))


def test_make_inputs_keep_scans_exact() -> None:
    """cumsum inputs on a 1/8 grid and cumprod inputs of balanced powers of two: a float32 scan in
    any order is exact (no overflow even along 20k elements, also along dim 0)."""
    for op, shape, dim in ((CUMSUM, (3, 20000), 1), (CUMPROD, (3, 20000), 1), (CUMPROD, (5000, 3), 0)):
        spec = make_spec(op, shape, dim)
        (x,) = FAM.make_inputs(spec, 7)
        r = _FN[op](x.double(), dim)
        assert bool(torch.isfinite(r).all()) and torch.equal(_FN[op](x, dim).double(), r)
        if op == CUMPROD:
            assert bool((x == 0).any()) and bool((x.abs() == 2).any()) and r.abs().max() <= 4  # pairs may straddle rows
    x = FAM.make_inputs(make_spec(LOGCUMSUMEXP, (4, 100)), 0)[0]
    assert x.std() > 1


def test_spec_geometry_and_errors() -> None:
    spec = make_spec(CUMPROD, (4, 6, 5), -2, BF16)
    assert spec.family == "scan" and spec.consts == (("dim", 1), ("out_dtype", "bfloat16"))
    assert spec.args == (TensorSig("bfloat16", (4, 6, 5), (30, 5, 1)),)
    back = OpSpec.from_json(spec.to_json())
    assert back == spec and back.key == spec.key
    g = FAM.geom(spec)
    assert (g.outer, g.length, g.inner, g.lanes) == (4, 6, 5, 20)
    assert make_spec(CUMSUM, dtype=I32).const("out_dtype") == "int64"
    assert make_spec(CUMSUM, dtype=I32).key != make_spec(CUMSUM, dtype=I32, out=I32).key
    e = torch.empty
    for args, needle in [
        ((CUMSUM, e(3, 4), 2), "out of range"),
        ((CUMSUM, e(3, 4, dtype=torch.complex64), 0), "complex"),
        ((LOGCUMSUMEXP, e(3, 4, dtype=I32), 0), "logcumsumexp of torch.int32"),
        ((CUMSUM, e(3, 4), 0, BOOL), "output dtype"),
        ((CUMSUM, e(2, 3, 4).permute(1, 0, 2), 2), "collapse"),
        (("aten.cummax.default", e(3), 0), "is not"),
    ]:
        with pytest.raises(ValueError, match=needle):
            FAM.spec_for(*args)


def test_floor_bytes_and_fallback_rule() -> None:
    assert FAM.floor_bytes(make_spec(shape=(10, 30), dtype=F16)) == 300 * 4
    assert FAM.floor_bytes(make_spec(shape=(10, 30), dtype=I32)) == 300 * 12
    assert FAM.floor_bytes(make_spec(shape=(1024, 16384))) == 1024 * 16384 * 8  # the floor


# ------------------------------------------------------------------------------------------------
# candidate space and plans
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,shape,dt,first", [
    (CUMSUM, (1024, 16384), F32, "rows"),  # the case: long rows, many lanes
    (CUMSUM, (4, 1 << 20), F32, "chunked"),  # long rows, too few lanes to fill the device
    (LOGCUMSUMEXP, (4096, 128), F16, "tile"),  # short rows: several per program
    (CUMPROD, (3000, 37), F64, "tile"),
    (CUMSUM, (8, 9000), I32, "chunked"),
])
def test_candidates_gpu(op: str, shape: tuple, dt: torch.dtype, first: str) -> None:
    spec = make_spec(op, shape, 1, dt, device=CUDA)
    g = FAM.geom(spec)
    cands = FAM.candidates(spec)
    assert 5 <= len(cands) <= 30 and len({(c.template, c.config) for c in cands}) == len(cands)
    assert cands[0].template == first
    if g.length > 2048:  # long rows: the serial-chunk template with stage/warp variants, and the two-pass plan
        assert {c.template for c in cands} == {"tile", "rows", "chunked"}
        assert len({c.cfg["num_stages"] for c in cands if c.template == "rows"}) >= 2
    cap = 4096 if FAM.out_dtype(spec).itemsize <= 4 else 2048
    for c in cands:
        cfg = c.cfg
        assert cfg.get("BLOCK_P", 1) * cfg["BLOCK_L"] <= cap and cfg["num_warps"] in (1, 2, 4, 8, 16)
        plan = FAM.call_plan(spec, c)
        assert plan.outputs[0].shape == spec.args[0].shape and plan.outputs[0].dtype == spec.const("out_dtype")
        if c.template == "tile":
            assert plan.grid == (-(-g.lanes // cfg["BLOCK_P"]),) and not plan.pre
        elif c.template == "rows":
            assert plan.grid == (g.lanes,) and not plan.pre
        else:
            chunks = -(-g.length // cfg["BLOCK_L"])
            assert plan.kernels == ("scan_chunk_reduce", "scan_chunk_scan")
            assert plan.grid == plan.pre[0].grid == (chunks, -(-g.lanes // cfg["BLOCK_P"]))
            assert plan.workspace[0].shape == (g.lanes * chunks,)
            assert plan.workspace[0].dtype == {0: "float32", 1: "float64", 3: "int64"}[
                1 if dt == F64 else 0 if op != CUMSUM or dt.is_floating_point else 3]


def test_cols_first_for_non_last_dims() -> None:
    """A scan over dim 0 (lanes contiguous) starts with ``cols``: one program per (inner block, outer
    index), whole rows per tile; a layout with too many outer indices for grid y is refused."""
    spec = make_spec(CUMPROD, (4096, 1024), 0, device=CUDA)
    cands = FAM.candidates(spec)
    assert cands[0].template == "cols" and sum(c.template == "cols" for c in cands) >= 3
    c = cands[0].cfg
    assert c["BLOCK_P"] == 256 and FAM.call_plan(spec, cands[0]).grid == (1024 // 256, 1)
    spec3 = make_spec(CUMSUM, (6, 300, 40), 1, device=CUDA)
    plan = FAM.call_plan(spec3, FAM.candidates(spec3)[0])
    assert plan.kernel == "scan_cols" and plan.grid == (-(-40 // FAM.candidates(spec3)[0].cfg["BLOCK_P"]), 6)
    assert not any(c.template == "cols" for c in FAM.candidates(make_spec(device=CUDA)))  # last dim: none
    with pytest.raises(ValueError, match="grid y"):
        FAM.call_plan(make_spec(CUMSUM, (70_000, 3, 2), 1), template_cands(spec)["cols"])


def test_interpreter_candidates_and_plan_binding() -> None:
    """CPU specs get small tiles; every parameter of every step bound once, in order; empty problems
    launch nothing; bad configs refused."""
    cands = FAM.candidates(make_spec(shape=(3, 5000)))
    assert {c.template for c in cands} == {"tile", "rows", "chunked"} and cands[0].template == "chunked"
    assert all(c.cfg.get("BLOCK_P", 1) * c.cfg["BLOCK_L"] <= 256 for c in cands)
    spec = make_spec(CUMPROD, (3, 600), 1, I16)
    for t, c in template_cands(spec).items():
        plan = FAM.call_plan(spec, c)
        mod = load_module(c.source)
        for st in plan.steps:
            assert [a for a, _ in st.args] == list(getattr(mod, st.kernel).arg_names), st.kernel
            args = dict(st.args)
            assert args["x_ptr"] == In(0) and args["y_ptr"] == Out(0) and args["OP"] == 1 and args["KIND"] == 3
            assert args.get("w_ptr", Ws(0)) == Ws(0)
        empty = FAM.call_plan(make_spec(shape=(4, 0)), c)
        assert all(0 in st.grid for st in empty.steps)
    c = template_cands(make_spec())["tile"]
    with pytest.raises(ValueError, match="power of two"):
        FAM.call_plan(make_spec(), with_cfg(c, BLOCK_L=24))
    with pytest.raises(ValueError, match="unknown"):
        FAM.call_plan(make_spec(), dataclasses.replace(c, template="nope", source="x"))
    with pytest.raises(ValueError, match="lane blocks"):
        FAM.call_plan(make_spec(shape=(70_000, 3)), with_cfg(template_cands(make_spec())["chunked"], BLOCK_P=1))


# ------------------------------------------------------------------------------------------------
# kernels vs reference and eager
# ------------------------------------------------------------------------------------------------

_LAYOUTS = [((5, 37), 1, False), ((37, 5), 0, False), ((3, 9, 5), 1, False), ((7, 13), 0, True), ((41,), 0, False),
            ((2, 3, 33), -1, False)]
_KERNEL_CASES = [  # (op, input dtype, dtype kwarg)
    (CUMSUM, F32, None), (CUMSUM, F16, None), (CUMSUM, BF16, None), (CUMSUM, I32, None), (CUMSUM, BOOL, None),
    (CUMSUM, U8, I32), (CUMSUM, F64, None), (CUMSUM, F16, F32),
    (CUMPROD, F32, None), (CUMPROD, I64, None), (CUMPROD, F16, None), (CUMPROD, I8, None),
    (LOGCUMSUMEXP, F32, None), (LOGCUMSUMEXP, F16, None), (LOGCUMSUMEXP, F64, None),
]


@pytest.mark.parametrize("i", range(len(_KERNEL_CASES)),
                         ids=[f"{op[5:-8]}-{str(d)[6:]}-{str(o)[6:]}" for op, d, o in _KERNEL_CASES])
def test_kernels(i: int) -> None:
    """Every template x op x dtype, layouts (scan dim last, first, middle, strided, 1-D) rotating;
    cumsum/cumprod on exact inputs and integer outputs bit-exact."""
    op, dt, out = _KERNEL_CASES[i]
    for k in range(2):
        shape, dim, tr = _LAYOUTS[(i + 3 * k) % len(_LAYOUTS)]
        spec = make_spec(op, shape, dim, dt, out, transposed=tr)
        inputs = FAM.make_inputs(spec, seed=3 * i + k)
        od = FAM.out_dtype(spec)
        exact = op != LOGCUMSUMEXP and od not in (F16, BF16)
        for t, cand in template_cands(spec).items():
            check(spec, cand, inputs, spec.describe(), exact=exact)


def test_carries_across_blocks_and_chunks() -> None:
    """A carry through many tiles, partial last tiles, lanes split across programs, the chunk fold over
    several BLOCK_C blocks, a NaN / inf / zero arriving in a later chunk."""
    x = torch.randint(-8, 8, (3, 203)).float() / 8
    x[1, 150] = NAN
    x[2, 17] = INF
    x[0, 100] = 0.0
    for op in (CUMSUM, CUMPROD, LOGCUMSUMEXP):
        xi = x if op != CUMPROD else torch.where(x.abs() > 0.5, -1.0, 1.0) * torch.where(x == 0, 0.0, 1.0)
        spec = FAM.spec_for(op, xi, 1)
        cands = template_cands(spec)
        exact = op != LOGCUMSUMEXP
        for over in (dict(BLOCK_P=1, BLOCK_L=16), dict(BLOCK_P=2, BLOCK_L=32), dict(BLOCK_P=4, BLOCK_L=256)):
            check(spec, with_cfg(cands["tile"], **over), [xi], f"{op} tile {over}", exact)
        check(spec, with_cfg(cands["rows"], BLOCK_L=32), [xi], f"{op} rows", exact)
        for over in (dict(BLOCK_P=1, BLOCK_L=16, BLOCK_C=2), dict(BLOCK_P=2, BLOCK_L=64, BLOCK_C=4),
                     dict(BLOCK_P=4, BLOCK_L=256, BLOCK_C=1)):
            check(spec, with_cfg(cands["chunked"], **over), [xi], f"{op} chunked {over}", exact)


def test_rounding_on_real_rows() -> None:
    """Normal (not grid) values over a long row: the reassociated fp32 scans stay within tolerance of
    float64 (cumsum, logcumsumexp; cumprod of values near 1)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3000, generator=g)
    for op, xi in ((CUMSUM, x), (LOGCUMSUMEXP, x * 4), (CUMPROD, 1 + x / 100)):
        spec = FAM.spec_for(op, xi, 1)
        cands = template_cands(spec)
        check(spec, with_cfg(cands["rows"], BLOCK_L=256), [xi], f"{op} rows")
        check(spec, with_cfg(cands["chunked"], BLOCK_P=1, BLOCK_L=256, BLOCK_C=4), [xi], f"{op} chunked")


def test_logcumsumexp_fast_path_and_guard() -> None:
    """LSE_FAST (one exp and one log per element against the chunk max) on and off, every template
    (chunked with REV on and off), fp32 and fp64: chunks the guard serves (normal values, -inf
    holes, a chunk far below the carry, a whole -inf chunk) and chunks it refuses (a spread over 64,
    NaN, +inf, and the +inf carry after it) all match the float64 reference; on plain rows the fast
    path really runs (its bits differ from the pairwise combine's)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 150, generator=g, dtype=F64) * 3
    x[1, :16] -= 500.0  # a chunk far below the next: a = exp(carry - top) underflows to 0
    x[1, 40] = -200.0  # a spread over 64 inside one chunk: refused
    x[2, ::7] = -INF  # holes the fast path keeps exact
    x[3, 16:32] = -INF  # a whole -inf chunk
    x[4, 50] = INF  # +inf, then a +inf carry for every later chunk
    x[5, 90] = NAN
    for dt in (F32, F64):
        xi = x.to(dt)
        for layout, dim, temps in ((xi, 1, ("tile", "rows", "chunked")), (xi.T.contiguous(), 0, ("tile", "cols"))):
            spec = FAM.spec_for(LOGCUMSUMEXP, layout, dim)
            cands = template_cands(spec)
            for t, cand in cands.items():
                if t not in temps:
                    continue
                variants = [dict(REV=r) for r in (0, 1)] if t == "chunked" else [{}]
                for extra in variants:
                    outs = {}
                    for fast in (0, 1):
                        c = with_cfg(cand, LSE_FAST=fast, **extra)
                        outs[fast] = check(spec, c, [layout], f"{dt} {t} fast={fast} {extra}")
                    if dim == 1:
                        assert not torch.equal(outs[0][0], outs[1][0]), f"{dt} {t}: the fast path did not run"
    plan = FAM.call_plan(FAM.spec_for(CUMSUM, x.float(), 1), template_cands(FAM.spec_for(CUMSUM, x.float(), 1))["rows"])
    assert dict(plan.args)["LSE_FAST"] == 0  # only logcumsumexp takes it


_EDGE_SPECS = {
    "cumsum-f32": lambda: make_spec(),
    "cumsum-i32": lambda: make_spec(CUMSUM, (37, 5), 0, I32),
    "cumsum-i64-to-i32": lambda: make_spec(CUMSUM, (4, 20), 1, I64, I32),
    "cumprod-f16": lambda: make_spec(CUMPROD, (3, 9, 5), 1, F16),
    "cumprod-i64": lambda: make_spec(CUMPROD, (4, 20), 1, I64),
    "logcumsumexp-f32": lambda: make_spec(LOGCUMSUMEXP, (4, 20), 1, F32),
    "logcumsumexp-bf16": lambda: make_spec(LOGCUMSUMEXP, (20,), 0, BF16),
}
_COMMON_EDGES = {"one_element", "zero_d", "empty_scan", "no_lanes", "length_two", "long_rows", "dim0_strided",
                 "middle_dim", "padded_rows"}
_FLOAT_EDGES = {"nan_middle", "nan_first_last", "infinities", "zeros_and_inf", "all_neg_inf"}


@pytest.mark.parametrize("key", list(_EDGE_SPECS))
def test_edge_cases(key: str) -> None:
    spec = _EDGE_SPECS[key]()
    dt = spec.args[0].torch_dtype
    cases = FAM.edge_cases(spec)
    assert {n for n, _, _ in cases} == _COMMON_EDGES | (_FLOAT_EDGES if dt.is_floating_point else {"dtype_extremes"})
    long_len = next(i[0].shape[-1] for n, _, i in cases if n == "long_rows")
    assert long_len > 2 * max(c.cfg["BLOCK_L"] for c in FAM.candidates(spec))  # crosses every block
    cands = template_cands(spec)
    od = FAM.out_dtype(spec)
    for name, cspec, inputs in cases:
        assert cspec.op == spec.op and cspec.const("out_dtype") == spec.const("out_dtype")
        assert cspec.args[0].dtype == spec.args[0].dtype and cspec.args[0].matches(inputs[0])
        for t, cand in cands.items():
            check(cspec, cand, inputs, f"{key}/{name}", exact=spec.op != LOGCUMSUMEXP and od not in (F16, BF16))


def test_default_interpreter_candidates_pass_edge_cases() -> None:
    """The first proposals for a CPU spec (what a search tries first) on every edge case."""
    spec = make_spec(CUMSUM, (3, 100), 1, F32)
    firsts_ = firsts(FAM.candidates(spec))
    assert set(firsts_) == {"tile", "rows", "chunked"}
    for name, cspec, inputs in FAM.edge_cases(spec):
        for cand in firsts_.values():
            check(cspec, cand, inputs, name, exact=True)


# ------------------------------------------------------------------------------------------------
# GPU compilation without a GPU
# ------------------------------------------------------------------------------------------------

_SM90_SCRIPT = r"""
fam = get_family("scan")
specs = [  # every OP x accumulator KIND, a dtype conversion, a strided scan dim, the issue's shape
    fam.spec_for("aten.cumsum.default", e(1024, 16384), 1),
    fam.spec_for("aten.cumsum.default", e(8, 9000, dtype=torch.int32), 1),
    fam.spec_for("aten.cumprod.default", e(8, 9000, dtype=torch.bfloat16), 1),
    fam.spec_for("aten.logcumsumexp.default", e(9000, 8, dtype=torch.float64).T, 1),
    fam.spec_for("aten.logcumsumexp.default", e(8, 9000, dtype=torch.float16), 1),
    fam.spec_for("aten.cumprod.default", e(8, 9000, dtype=torch.uint8), 1, torch.float32),
    fam.spec_for("aten.cumprod.default", e(4096, 1024), 0),  # a non-last dim: cols
]
for spec, cand, plan, compiled in each_plan(fam, specs):
    for k, c in compiled.items():
        print("OK", spec.op, cand.template, k, resources(c.asm["cubin"]))
"""


def test_kernels_compile_for_sm90(tmp_path) -> None:
    """Every template and step kernel, for every op and accumulator dtype, compiles to sm_90 cubin
    without spilling (a subprocess: TRITON_INTERPRET=1 at import makes triton interpreter-only)."""
    import re

    stdout, lines = run_sm90(_SM90_SCRIPT, tmp_path)
    assert {ln.split()[3] for ln in lines} == {"scan_tile", "scan_rows", "scan_cols", "scan_chunk_reduce", "scan_chunk_scan"}, stdout
    assert len(lines) == 6 * 4 + 5, stdout  # every spec: tile, rows, chunked (2 kernels); dim 0: + cols
    local = [int(m.group(1)) for ln in lines if (m := re.search(r"local (\d+)", ln))]
    assert local and all(v == 0 for v in local), stdout  # no spills (when cuobjdump is there)


# ------------------------------------------------------------------------------------------------
# match: a real post-grad graph (the variants), and the backend end to end
# ------------------------------------------------------------------------------------------------


def _variants(x, m, xi):
    return (torch.cumsum(x, 1),
            torch.flip(torch.cumsum(torch.flip(x, [1]), 1), [1]),  # reverse: rev -> cumsum -> rev
            torch.cumsum(x, 0) - x,  # exclusive
            torch.cumsum(x * m, 1),  # masked
            torch.cumsum(xi, 1),  # int32 -> int64
            torch.cumprod(x.half(), 1, dtype=torch.float32),
            torch.logcumsumexp(x, 0))


def test_match_real_graph() -> None:
    """The post-grad graph Inductor hands to passes: each scan node (the reverse scan's too, between
    its flips) matches with the right dim / output dtype; on CPU each is an ATen fallback."""
    from torch_kevolve.detect import long_tail_reason

    x, m, xi = torch.randn(4, 8), (torch.rand(4, 8) > 0.5).float(), torch.randint(0, 5, (4, 8), dtype=I32)
    graphs, out = compile_and_record(_variants, x, m, xi)
    for o, r in zip(out, _variants(x, m, xi)):
        assert_close(o, r, "inductor vs eager")
    nodes = family_nodes(graphs, FAM)
    got = []
    for n in nodes:
        mt = FAM.match(n)
        assert isinstance(mt, Match), mt
        assert mt.inputs == [n.args[0]] and mt.result_users == {0: [n]}
        assert "Triton device" in FAM.inductor_fallback_reason(n) and "cpu" in long_tail_reason(n)
        got.append((mt.spec.op, mt.spec.const("dim"), mt.spec.const("out_dtype"), str(n.args[0].target)))
    assert sorted(got) == sorted([
        (CUMSUM, 1, "float32", "arg0_1"), (CUMSUM, 1, "float32", "prims.rev.default"), (CUMSUM, 0, "float32", "arg0_1"),
        (CUMSUM, 1, "float32", "aten.mul.Tensor"), (CUMSUM, 1, "int64", "arg2_1"),
        (CUMPROD, 1, "float32", "prims.convert_element_type.default"), (LOGCUMSUMEXP, 0, "float32", "arg0_1"),
    ]), got
    assert isinstance(FAM.match(relu_node()), Skip)


def test_match_handbuilt_cuda_and_skips() -> None:
    """On CUDA (fake tensors) the scans are lowered by Inductor: contested (the baseline is Inductor's
    kernel); the same calls match on CPU; skips say why (dynamic shapes, a non-contiguous result, complex)."""
    from torch_kevolve.detect import CONTESTED, long_tail_reason

    aten = torch.ops.aten
    x = torch.randn(6, 40)
    for target, kw, out_dt in ((aten.cumsum.default, {}, F32), (aten.cumsum.default, {"dtype": F64}, F64),
                               (aten.logcumsumexp.default, {}, F32), (aten.cumprod.default, {}, F32)):
        n = _node(target, x, (1,), torch.empty(6, 40, dtype=out_dt), device="cuda", kwargs=kw)
        assert FAM.inductor_fallback_reason(n) is None  # (a CUDA spec needs a real device: DeviceSig)
        m = FAM.match(_node(target, x, (1,), torch.empty(6, 40, dtype=out_dt), kwargs=kw))
        assert isinstance(m, Match) and m.spec.const("out_dtype") == str(out_dt)[6:]
        assert long_tail_reason(n, "auto") == CONTESTED and long_tail_reason(n, "none") is None
    xi = torch.randint(0, 3, (6, 40), dtype=I32)
    assert isinstance(FAM.match(_node(aten.cumsum.default, xi, (0,), torch.empty(6, 40, dtype=I64))), Match)
    for node, needle in (
        (_node(aten.cumsum.default, x, (1,), x, dynamic=True), "symbolic"),
        (_node(aten.cumsum.default, x, (0,), torch.empty(40, 6).T), "contiguous"),
        (_node(aten.cumsum.default, x.to(torch.complex64), (0,), x.to(torch.complex64)), "complex"),
        (_node(aten.logcumsumexp.default, xi, (0,), xi), "logcumsumexp of torch.int32"),
    ):
        sk = FAM.match(node)
        assert isinstance(sk, Skip) and needle in sk.reason, sk


def test_backend_end_to_end(store_dir, tmp_path) -> None:
    """torch.compile(backend="kevolve") on CPU: the scans searched (custom-op route) and the results
    equal eager's; the unserved layout (dims that do not collapse) left to ATen."""
    def f(x, xi, z):
        return (torch.cumsum(x, 1) - x, torch.cumsum(xi, 0), torch.logcumsumexp(x, 1) * 2, torch.cumprod(z, 2))

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-8, 8, (4, 21), generator=g).float() / 8
    xi = torch.randint(-9, 9, (13, 3), generator=g, dtype=I32)
    z = torch.randn(2, 3, 4, generator=g).permute(1, 0, 2)
    ref = f(x, xi, z)
    out, found, snap = run_kevolve_backend(f, (x, xi, z), tmp_path, "scan")
    for o, r in zip(out, ref):
        assert_close(o, r, "compiled vs eager", exact=o.dtype == I64)
    assert sorted(fi.status for fi in found) == ["candidate"] * 3 + ["skipped"], found
    assert snap["kernel_calls"] == 3 and snap["rewritten_custom_op"] == 3, snap
