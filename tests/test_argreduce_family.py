"""The argreduce family (argmax / argmin over a dim or flat): eager semantics pinned (first index of
the extremum, NaN counts as the extremum for both, -0.0 ties 0.0), every template x op x dtype x
layout (Triton interpreter) vs the reference and eager, bit for bit, edge cases, long rows through
the split plan, the candidate space, GPU compilation (sm_90, no device), matching real post-grad
nodes, and the backend end to end (contested on CPU with contest="all")."""
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
from torch_kevolve.families.argreduce import ARGMAX, ARGMIN, TEMPLATES, ArgReduceFamily, reduced_shape  # noqa: E402
from torch_kevolve.families.base import Candidate, In, Out, Ws  # noqa: E402
from torch_kevolve.kernels import launch, load_module  # noqa: E402
from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

FAM: ArgReduceFamily = get_family("argreduce")  # type: ignore[assignment]
NAN, INF = math.nan, math.inf
F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
I8, I16, I32, I64, U8 = torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8
DTYPES = (F32, F16, BF16, F64, I8, I16, I32, I64, U8)
CUDA = DeviceSig("cuda", "NVIDIA H100 80GB HBM3", "sm_90")


def make_spec(op: str = ARGMAX, shape: tuple = (5, 37), dim: int | None = 1, dtype: torch.dtype = F32,
              keepdim: bool = False, device: DeviceSig | None = None, transposed: bool = False) -> OpSpec:
    x = torch.empty(tuple(reversed(shape)), dtype=dtype).T if transposed else torch.empty(shape, dtype=dtype)
    spec = FAM.spec_for(op, x, dim, keepdim)
    return dataclasses.replace(spec, device=device) if device else spec


def template_cands(spec: OpSpec, pair: bool = False) -> dict[str, Candidate]:
    """One candidate per template with interpreter-sized blocks (the CUDA space offers both);
    ``pair``: also each with the tuple-reduction combine (TWO_PASS off)."""
    cands = firsts(FAM.candidates(dataclasses.replace(spec, device=CUDA)))
    n = FAM.geom(spec).length
    long_n = min(4 * max(1 << (n - 1).bit_length(), 16) + 1, 3001)  # FAM.edge_cases' long rows (flat: 2 of them)
    persist_l = 1 << (max(n, 2 * long_n) - 1).bit_length()  # tile_persist is one-shot: BLOCK_L >= every L
    small = {"tile_persist": dict(BLOCK_P=2, BLOCK_L=persist_l, PERSIST=1), "tile": dict(BLOCK_P=4, BLOCK_L=32), "split": dict(BLOCK_P=2, BLOCK_L=32, BLOCK_C=4),
             "cols": dict(BLOCK_P=16, BLOCK_L=4), "cols_split": dict(BLOCK_P=16, BLOCK_L=4, CHUNK_L=8, BLOCK_C=2)}
    out = {t: with_cfg(c, **small[t], TWO_PASS=True) for t, c in cands.items()}
    for t in TEMPLATES:
        if t not in out:
            out[t] = Candidate(TEMPLATES[t][1], tuple(sorted(dict(small[t], num_warps=4, num_stages=1,
                                                                 TWO_PASS=True).items())), template=t)
    if pair:
        out.update({f"{t}-pair": with_cfg(c, TWO_PASS=False) for t, c in list(out.items())})
    # the NaN-absorbing two-reduction structure (TWO_PASS=2) of every template, for floats: on integers
    # it is TWO_PASS=1's computation (no NaN to absorb, the same max then first index)
    if spec.args[0].torch_dtype.is_floating_point:
        out.update({f"{t}-nanmax": with_cfg(c, TWO_PASS=2) for t, c in list(out.items()) if not t.endswith("-pair")})
    return out


def check(spec: OpSpec, cand: Candidate, inputs: list, what: str = "") -> None:
    (o,) = launch(load_module(cand.source), FAM.call_plan(spec, cand), inputs, poison=True)
    (r,) = FAM.reference(spec, inputs)
    (e,) = FAM.eager(spec, inputs)
    for name, t in (("reference", r), (f"{cand.template} {cand.cfg}", o)):
        assert t.dtype == I64 and t.shape == e.shape and t.is_contiguous(), f"{what} {name}: {t.dtype}{list(t.shape)}"
        assert torch.equal(t, e), f"{what} {name}: {t.flatten()[:12].tolist()} vs eager {e.flatten()[:12].tolist()}"


# ------------------------------------------------------------------------------------------------
# registration, semantics, specs
# ------------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert family_for_op(ARGMAX) is FAM and family_for_op(ARGMIN) is FAM
    assert set(FAM.ops) == set(FAM.lowered_ops) == {ARGMAX, ARGMIN}
    assert set(TEMPLATES) == {"tile", "cols", "split", "cols_split", "tile_persist"}


def test_eager_semantics_pinned() -> None:
    """First index of the extremum, the first NaN for both ops, -0.0 ties 0.0, -inf rows; every
    template agrees on each, including rows longer than one block."""
    table = [  # values, argmax, argmin
        ([2.0, 5, 5, 1, 1], 1, 3),
        ([1.0, NAN, 3, NAN, -1], 1, 1),
        ([-0.0, 0.0, -1, -1], 0, 2),
        ([-INF, -INF, -INF], 0, 0),
        ([INF, 1, INF, -INF, -INF], 0, 3),
        ([3.0], 0, 0),
    ]
    for vals, amax, amin in table:
        x = torch.tensor(vals)
        assert (int(x.argmax()), int(x.argmin())) == (amax, amin), vals
        for op, want in ((ARGMAX, amax), (ARGMIN, amin)):
            for dim in (0, None):
                spec = FAM.spec_for(op, x, dim)
                assert int(FAM.reference(spec, [x])[0]) == want
                for cand in template_cands(spec, pair=True).values():
                    check(spec, cand, [x], f"{op} {vals}")
    # ints: first of equal extremes; keepdim shapes; 0-D
    xi = torch.tensor([[3, 7, 7, -2, -2]], dtype=I16)
    assert xi.argmax(1).tolist() == [1] and xi.argmin(1, keepdim=True).tolist() == [[3]]
    assert torch.tensor(4.0).argmax(0).shape == () and torch.tensor(4.0).argmax(0, keepdim=True).shape == ()
    with pytest.raises(RuntimeError):
        torch.tensor([True]).argmax()
    with pytest.raises((RuntimeError, IndexError)):
        torch.empty(3, 0).argmax(1)


@pytest.mark.parametrize("dt", DTYPES, ids=[str(d)[6:] for d in DTYPES])
def test_reference_matches_eager(dt: torch.dtype) -> None:
    for k, (op, shape, dim, keep) in enumerate([(ARGMAX, (6, 50), 1, False), (ARGMIN, (31, 4), 0, True),
                                                (ARGMAX, (3, 9, 5), None, False), (ARGMIN, (3, 9, 5), 1, True)]):
        spec = make_spec(op, shape, dim, dt, keep)
        inputs = FAM.make_inputs(spec, seed=k + 1)
        assert spec.args[0].matches(inputs[0])
        assert torch.equal(FAM.reference(spec, inputs)[0], FAM.eager(spec, inputs)[0]), spec.describe()


def test_spec_geometry_and_errors() -> None:
    spec = make_spec(ARGMIN, (4, 6, 5), -2, BF16, keepdim=True)
    assert spec.family == "argreduce" and spec.consts == (("dim", 1), ("flat", False), ("keepdim", True))
    assert spec.args == (TensorSig("bfloat16", (4, 6, 5), (30, 5, 1)),)
    assert OpSpec.from_json(spec.to_json()) == spec
    g = FAM.geom(spec)
    assert (g.outer, g.length, g.inner, g.lanes) == (4, 6, 5, 20) and FAM.out_shape(spec) == (4, 1, 5)
    flat = make_spec(ARGMAX, (4, 6, 5), None)
    g = FAM.geom(flat)
    assert (g.lanes, g.length, g.stride_l) == (1, 120, 1) and FAM.out_shape(flat) == ()
    assert FAM.out_shape(make_spec(ARGMAX, (4, 6), None, keepdim=True)) == (1, 1)
    g = FAM.geom(make_spec(shape=(7, 13), dim=0, transposed=True, dtype=I8))  # [7, 13] strides (1, 7)
    assert (g.outer, g.length, g.inner, g.stride_l, g.stride_i, g.kind) == (1, 7, 13, 1, 7, 2)
    assert reduced_shape((4, 6), 0, False) == (6,) and reduced_shape((), 0, True) == ()
    e = torch.empty
    for args, needle in [
        ((ARGMAX, e(3, 4), 2), "out of range"),
        ((ARGMAX, e(3, 4, dtype=torch.bool), 0), "bool"),
        ((ARGMAX, e(3, 0), 1), "empty reduction"),
        ((ARGMAX, e(0, 3), None), "empty reduction"),
        ((ARGMAX, e(7, 13).T, None), "collapse"),
        ((ARGMAX, e(2, 3, 4).permute(1, 0, 2), 2), "collapse"),
    ]:
        with pytest.raises(ValueError, match=needle):
            FAM.spec_for(*args)
    assert FAM.floor_bytes(make_spec(shape=(10, 30), dtype=F16)) == 300 * 2 + 10 * 8
    assert FAM.floor_bytes(make_spec(shape=(8192, 4096))) == 8192 * 4096 * 4 + 8192 * 8


def test_candidates_and_plans() -> None:
    """Defaults: one-shot rows for many long-ish rows, the split plan for the flat / few-lane case,
    small tiles on the interpreter; every step's parameters bound in order; no-lane specs launch nothing."""
    for shape, dim, first in (((8192, 4096), 1, "tile"), ((1 << 24,), None, "split"), ((4, 100_000), 1, "split"),
                              ((65536, 16), 1, "tile")):
        spec = make_spec(ARGMAX, shape, dim, device=CUDA)
        cands = FAM.candidates(spec)
        assert cands[0].template == first and 4 <= len(cands) <= 30
        g = FAM.geom(spec)
        for c in cands:
            cfg = c.cfg
            assert cfg.get("BLOCK_P", 1) * max(cfg["BLOCK_L"], cfg.get("BLOCK_C", 0)) <= 4096
            plan = FAM.call_plan(spec, c)
            assert plan.outputs[0].shape == FAM.out_shape(spec) and plan.outputs[0].dtype == "int64"
            if c.template == "split":
                chunks = -(-g.length // cfg["BLOCK_L"])
                assert plan.kernels == ("arg_split_reduce", "arg_split_finish")
                assert plan.pre[0].grid == (chunks, -(-g.lanes // cfg["BLOCK_P"]))
                assert [w.dtype for w in plan.workspace] == ["float32", "int32"]
            elif c.template == "tile_persist":
                assert plan.grid == (min(-(-g.lanes // cfg["BLOCK_P"]), 132 * cfg["PERSIST"]),)
                assert cfg["BLOCK_L"] >= g.length and cfg["num_stages"] >= 2
            else:
                assert plan.grid == (-(-g.lanes // cfg["BLOCK_P"]),)
        if first == "tile" and g.length <= 4096:
            assert cands[0].cfg["BLOCK_L"] >= g.length  # one-shot row
    assert all(c.cfg.get("BLOCK_P", 1) * c.cfg["BLOCK_L"] <= 256 for c in FAM.candidates(make_spec(shape=(3, 5000))))
    spec = make_spec(ARGMIN, (3, 600), 1, I64)
    for c in template_cands(spec).values():
        plan = FAM.call_plan(spec, c)
        mod = load_module(c.source)
        for st in plan.steps:
            assert [a for a, _ in st.args] == list(getattr(mod, st.kernel).arg_names), st.kernel
            args = dict(st.args)
            assert args["y_ptr"] == Out(0) and args["MODE"] == 1 and args["KIND"] == 3
            assert args.get("x_ptr", In(0)) == In(0) and args.get("wv_ptr", Ws(0)) == Ws(0)
        assert all(0 in st.grid for st in FAM.call_plan(make_spec(shape=(0, 5)), c).steps)
    with pytest.raises(ValueError, match="power of two"):
        FAM.call_plan(spec, with_cfg(template_cands(spec)["tile"], BLOCK_L=24))


def test_cols_first_for_non_last_dims() -> None:
    """argmin over dim 0 (lanes contiguous): ``cols_split`` first where the lane blocks cannot fill the
    device ([4096, 8192]), else ``cols`` ([64, 65536]); both combine structures offered."""
    spec = make_spec(ARGMIN, (4096, 8192), 0, device=CUDA)
    cands = FAM.candidates(spec)
    assert cands[0].template == "cols_split" and {c.cfg["TWO_PASS"] for c in cands if c.template == "cols"} == {True, False}
    cols = next(c for c in cands if c.template == "cols")
    assert FAM.call_plan(spec, cols).grid == (8192 // cols.cfg["BLOCK_P"], 1)
    assert FAM.candidates(make_spec(ARGMIN, (64, 1 << 16), 0, device=CUDA))[0].template == "cols"
    assert not any(c.template == "cols" for c in FAM.candidates(make_spec(shape=(8192, 4096), device=CUDA)))
    with pytest.raises(ValueError, match="grid y"):
        FAM.call_plan(make_spec(ARGMAX, (70_000, 3, 2), 1), template_cands(spec)["cols"])


def test_cols_split_candidates_and_plans() -> None:
    """Non-last dims whose lane blocks cannot fill the device also get ``cols_split``: (lane block,
    chunk, outer) programs -- >= 512 at [4096, 8192] dim 0 -- into a [outer, chunk, inner] workspace,
    then one program per (lane block, outer); row reductions and wide-lane specs do not."""
    spec = make_spec(ARGMIN, (4096, 8192), 0, device=CUDA)
    cs = [c for c in FAM.candidates(spec) if c.template == "cols_split"]
    assert len(cs) >= 4 and {c.cfg["TWO_PASS"] for c in cs} == {True, False, 2}
    for c in cs:
        cfg = c.cfg
        plan = FAM.call_plan(spec, c)
        chunks = 4096 // cfg["CHUNK_L"]
        assert plan.kernels == ("arg_cols_split_reduce", "arg_cols_split_finish")
        assert plan.pre[0].grid == (8192 // cfg["BLOCK_P"], chunks, 1) and chunks * 8192 // cfg["BLOCK_P"] >= 512
        assert plan.grid == (8192 // cfg["BLOCK_P"], 1)
        assert [w.dtype for w in plan.workspace] == ["float32", "int32"] and plan.workspace[0].shape == (8192 * chunks,)
        assert cfg["BLOCK_P"] * max(cfg["BLOCK_L"], cfg["BLOCK_C"]) <= 4096 and cfg["BLOCK_L"] <= cfg["CHUNK_L"]
    for shape, dim in (((8192, 4096), 1), ((1 << 24,), None), ((64, 1 << 16), 0), ((100, 3, 7), 1)):
        assert not any(c.template == "cols_split" for c in FAM.candidates(make_spec(ARGMAX, shape, dim, device=CUDA)))
    with pytest.raises(ValueError, match="CHUNK_L"):
        FAM.call_plan(spec, with_cfg(cs[0], BLOCK_L=64, CHUNK_L=32))


def test_tile_persist_candidates_and_kernels() -> None:
    """Many one-shot rows also get ``tile_persist`` (grid capped at PERSIST programs per SM, each looping
    over lane blocks); it refuses rows longer than BLOCK_L; on the interpreter: more lane blocks than
    programs (odd shapes, ties, NaN first, -0.0, keepdim) vs eager."""
    spec = make_spec(ARGMAX, (8192, 4096), 1, device=CUDA)
    ps_all = [c for c in FAM.candidates(spec) if c.template == "tile_persist"]
    ps = [c for c in ps_all if c.cfg["TWO_PASS"] != 2]
    assert len(ps) == 3 and all(FAM.call_plan(spec, c).grid[0] <= 4 * 132 for c in ps_all)
    for shape, dim in (((8, 90000), 1), ((4096, 8192), 0), ((100, 8192), 1)):
        assert not any(c.template == "tile_persist" for c in FAM.candidates(make_spec(ARGMAX, shape, dim, device=CUDA)))
    with pytest.raises(ValueError, match="one-shot"):
        FAM.call_plan(make_spec(shape=(3, 600)), with_cfg(ps[0], BLOCK_L=512))
    g = torch.Generator().manual_seed(3)
    for k, (shape, dim, dt) in enumerate((((37, 45), 1, F32), ((45, 37), 0, BF16), ((1, 5), 1, F16), ((130, 3), 1, I32),
                                          ((130, 3), 0, F64))):
        x = torch.randint(-3, 3, shape, generator=g).double()
        if dt.is_floating_point:
            x = torch.where(x == 0, torch.where(torch.rand(shape, generator=g) < 0.5, -0.0, 0.0), x)
            x[::3, shape[1] // 2] = NAN
            x[1::4, -1] = NAN
        x = x.to(dt)
        for op in (ARGMAX, ARGMIN):
            spec = FAM.spec_for(op, x, dim, k % 2 == 0)
            for bp, per, two in ((1, 1, True), (4, 2, 2), (2, 8, True)):
                cand = with_cfg(ps[0], BLOCK_P=bp, BLOCK_L=256, PERSIST=per, TWO_PASS=two)  # (CPU: PERSIST programs in all)
                assert FAM.call_plan(spec, cand).grid == (min(-(-FAM.geom(spec).lanes // bp), per),)
                check(spec, cand, [x], f"{op} {list(shape)} {dim} {bp} {per}")


@pytest.mark.parametrize("i,dt", list(enumerate([F32, BF16, I8, I64])), ids=["float32", "bfloat16", "int8", "int64"])
def test_cols_split_kernels(i: int, dt: torch.dtype) -> None:
    """cols_split (chunks, several BLOCK_C blocks, odd shapes, both combines) vs eager over dim 0 and
    dim 1 of [37, 45], [1, 5], [130, 3], keepdim or not: ties (a small grid), NaN (the first wins),
    -0.0 against 0.0. One op per (shape, dim), alternating with the dtype (the interpreter is slow):
    every dtype meets both ops, every (shape, dim) both ops over the dtypes."""
    g = torch.Generator().manual_seed(7)
    base = with_cfg(template_cands(make_spec(ARGMIN, (37, 45), 0))["cols_split"], TWO_PASS=True)
    cfgs = (dict(BLOCK_P=16, BLOCK_L=4, CHUNK_L=8, BLOCK_C=2), dict(BLOCK_P=32, BLOCK_L=8, CHUNK_L=32, BLOCK_C=4),
            dict(BLOCK_P=16, BLOCK_L=2, CHUNK_L=4, BLOCK_C=8, TWO_PASS=False))
    for k, shape in enumerate(((37, 45), (1, 5), (130, 3))):
        x = torch.randint(-3, 3, shape, generator=g).double()
        if dt.is_floating_point:
            x = torch.where(x == 0, torch.where(torch.rand(shape, generator=g) < 0.5, -0.0, 0.0), x)
            if k != 1:
                x[shape[0] // 2, :] = NAN  # every column: a NaN in the middle (dim 0)
                x[5:, 1] = NAN
                x[:, 2] = NAN  # every row (dim 1)
        x = x.to(dt)
        for dim in (0, 1):
            op = (ARGMAX, ARGMIN)[(k + dim + i) % 2]
            keep = (k + dim) % 2 == 1
            spec = FAM.spec_for(op, x, dim, keep)
            over = cfgs[(k + 2 * dim + (op == ARGMIN) + i) % len(cfgs)]
            check(spec, with_cfg(base, **over), [x], f"{op} {list(shape)} dim {dim} {over}")


# ------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------

_LAYOUTS = [  # (shape, dim, transposed, keepdim)
    ((5, 37), 1, False, False),
    ((37, 5), 0, False, True),
    ((3, 9, 5), 1, False, False),
    ((7, 13), 0, True, False),
    ((41,), 0, False, True),
    ((3, 9, 5), None, False, False),
    ((2, 3, 33), -1, False, False),
]


@pytest.mark.parametrize("i,dt", list(enumerate(DTYPES)), ids=[str(d)[6:] for d in DTYPES])
def test_kernels(i: int, dt: torch.dtype) -> None:
    """Every template x dtype x op, layouts (reduced dim last, first, middle, strided, flat, keepdim)
    rotating; seeds 1 mod 3 put NaN in floats."""
    for k in range(2):
        shape, dim, tr, keep = _LAYOUTS[(i + 3 * k) % len(_LAYOUTS)]
        spec = make_spec(ARGMAX if (i + k) % 2 == 0 else ARGMIN, shape, dim, dt, keep, transposed=tr)
        inputs = FAM.make_inputs(spec, seed=3 * i + k + 1)
        for cand in template_cands(spec).values():
            check(spec, cand, inputs, spec.describe())


def test_long_rows_across_blocks_and_chunks() -> None:
    """Winners in later blocks / chunks, ties across chunk boundaries (the earlier one wins), NaN in a
    later chunk, the chunk winners folded over several BLOCK_C blocks; also flat."""
    x = torch.randint(-6, 6, (3, 203)).float()
    x[0, 150] = 9.0
    x[0, 190] = 9.0
    x[1, 17] = -9.0
    x[1, 170] = -9.0
    x[2, 180] = NAN
    x[2, 200] = NAN
    for op in (ARGMAX, ARGMIN):
        for dim in (1, None):
            spec = FAM.spec_for(op, x, dim)
            cands = template_cands(spec)
            for over in (dict(BLOCK_P=1, BLOCK_L=64, TWO_PASS=True), dict(BLOCK_P=4, BLOCK_L=256, TWO_PASS=True),
                         dict(BLOCK_P=2, BLOCK_L=64, TWO_PASS=False)):
                check(spec, with_cfg(cands["tile"], **over), [x], f"tile {over}")
            for over in (dict(BLOCK_P=1, BLOCK_L=32, BLOCK_C=2, TWO_PASS=True),
                         dict(BLOCK_P=2, BLOCK_L=64, BLOCK_C=1, TWO_PASS=True),
                         dict(BLOCK_P=1, BLOCK_L=64, BLOCK_C=2, TWO_PASS=False)):
                check(spec, with_cfg(cands["split"], **over), [x], f"split {over}")


_EDGE_SPECS = {
    "f32-max": lambda: make_spec(),
    "f16-min-keepdim": lambda: make_spec(ARGMIN, (37, 5), 0, F16, keepdim=True),
    "bf16-max-flat": lambda: make_spec(ARGMAX, (3, 9, 5), None, BF16),
    "i64-min": lambda: make_spec(ARGMIN, (4, 20), 1, I64),
    "u8-max-flat": lambda: make_spec(ARGMAX, (20,), None, U8),
    "i8-max": lambda: make_spec(ARGMAX, (4, 20), 1, I8),
}


@pytest.mark.parametrize("key", list(_EDGE_SPECS))
def test_edge_cases(key: str) -> None:
    spec = _EDGE_SPECS[key]()
    dt = spec.args[0].torch_dtype
    cases = FAM.edge_cases(spec)
    names = {n for n, _, _ in cases}
    assert {"all_equal", "ties_and_steps", "one_element", "zero_d", "long_rows", "dim0_strided", "middle_dim"} <= names
    assert ("no_lanes" in names) == (not spec.const("flat"))
    assert ({"nan_middle", "all_nan", "signed_zeros", "infinities"} <= names) == dt.is_floating_point
    assert ("dtype_extremes" in names) == (not dt.is_floating_point)
    long_len = next(i[0].shape[-1] for n, _, i in cases if n == "long_rows")
    assert long_len > 2 * max(c.cfg["BLOCK_L"] for c in FAM.candidates(spec))
    cands = template_cands(spec, pair=key == "i64-min")  # (float NaN pairs: test_eager_semantics_pinned)
    for name, cspec, inputs in cases:
        assert cspec.op == spec.op and cspec.const("flat") == spec.const("flat")
        assert cspec.const("keepdim") == spec.const("keepdim") and cspec.args[0].matches(inputs[0])
        for cand in cands.values():
            check(cspec, cand, inputs, f"{key}/{name}")


# ------------------------------------------------------------------------------------------------
# GPU compilation without a GPU
# ------------------------------------------------------------------------------------------------

_SM90_SCRIPT = r"""
fam = get_family("argreduce")
specs = [  # every KIND, max and min, flat, strided
    fam.spec_for("aten.argmax.default", e(8192, 4096), 1),
    fam.spec_for("aten.argmin.default", e(1 << 24, dtype=torch.bfloat16), None),
    fam.spec_for("aten.argmax.default", e(9000, 8, dtype=torch.float64).T, 1),
    fam.spec_for("aten.argmin.default", e(8, 90000, dtype=torch.int64), 1),
    fam.spec_for("aten.argmax.default", e(8, 90000, dtype=torch.uint8), 1, True),
    fam.spec_for("aten.argmin.default", e(4096, 8192), 0),  # a non-last dim: cols, cols_split
    fam.spec_for("aten.argmax.default", e(2048, 4096, dtype=torch.float16), 0),
]
for spec, cand, plan, compiled in each_plan(fam, specs):
    for k, c in compiled.items():
        print("OK", spec.op, cand.template, k, resources(c.asm["cubin"]))
"""


def test_kernels_compile_for_sm90(tmp_path) -> None:
    """Both templates (and the split's two kernels), every compare dtype, max and min, flat and
    strided, compile to sm_90 cubin without spills (subprocess: the interpreter flag is per process)."""
    import re

    stdout, lines = run_sm90(_SM90_SCRIPT, tmp_path)
    assert {ln.split()[3] for ln in lines} == {"arg_tile", "arg_cols", "arg_split_reduce", "arg_split_finish",
                                               "arg_cols_split_reduce", "arg_cols_split_finish", "arg_tile_persist"}, stdout
    assert len(lines) == 5 * 3 + 2 * 6 + 1, stdout  # tile + split (2) each; dim 0: + cols + cols_split (2); + tile_persist
    local = [int(m.group(1)) for ln in lines if (m := re.search(r"local (\d+)", ln))]
    assert local and all(v == 0 for v in local), stdout


# ------------------------------------------------------------------------------------------------
# match and end to end
# ------------------------------------------------------------------------------------------------


def _fn(x, xi):
    return x.argmax(1), torch.argmin(x, 0, keepdim=True), x.argmax(), xi.argmin(-1)


def test_match_real_graph() -> None:
    """Real post-grad nodes (dim, keepdim, flat; int input) match; Inductor lowers them on every device,
    so detection finds them only where contested (contest="all" on CPU, "auto" on CUDA)."""
    from torch_kevolve.detect import CONTESTED, long_tail_reason

    x, xi = torch.randn(6, 9), torch.randint(-5, 5, (4, 7), dtype=I32)
    graphs, out = compile_and_record(_fn, x, xi)
    for o, r in zip(out, _fn(x, xi)):
        assert torch.equal(o, r)
    nodes = family_nodes(graphs, FAM)
    got = []
    for n in nodes:
        m = FAM.match(n)
        assert isinstance(m, Match), m
        assert m.result_users == {0: [n]} and FAM.inductor_fallback_reason(n) is None
        assert long_tail_reason(n, "auto") is None and long_tail_reason(n, "all") == CONTESTED
        got.append((m.spec.op, FAM.dim(m.spec), m.spec.const("keepdim"), m.spec.args[0].dtype))
    assert sorted(got, key=str) == sorted([(ARGMAX, 1, False, "float32"), (ARGMIN, 0, True, "float32"),
                                           (ARGMAX, None, False, "float32"), (ARGMIN, 1, False, "int32")], key=str)
    assert isinstance(FAM.match(relu_node()), Skip)


def test_match_handbuilt_cuda_and_skips() -> None:
    """On CUDA (fake tensors) argmax/argmin are contested; the calls match (CPU); skips say why."""
    from torch_kevolve.detect import CONTESTED, long_tail_reason

    aten = torch.ops.aten
    x = torch.randn(6, 40)
    for target, args, out in ((aten.argmax.default, (1,), torch.empty(6, dtype=I64)),
                              (aten.argmin.default, (0, True), torch.empty(1, 40, dtype=I64)),
                              (aten.argmax.default, (), torch.empty((), dtype=I64))):
        n = _node(target, x, args, out, device="cuda")
        assert FAM.inductor_fallback_reason(n) is None and long_tail_reason(n, "auto") == CONTESTED
        m = FAM.match(_node(target, x, args, out))  # (a CUDA spec needs a real device: DeviceSig)
        assert isinstance(m, Match) and FAM.out_shape(m.spec) == tuple(out.shape)
    for node, needle in (
        (_node(aten.argmax.default, x, (1,), torch.empty(6, dtype=I64), dynamic=True), "symbolic"),
        (_node(aten.argmax.default, x, (1,), torch.empty(6, 2, dtype=I64)[:, 0]), "contiguous"),
        (_node(aten.argmax.default, x.T, (), torch.empty((), dtype=I64)), "collapse"),
        (_node(aten.argmax.default, x > 0, (1,), torch.empty(6, dtype=I64)), "bool"),
    ):
        sk = FAM.match(node)
        assert isinstance(sk, Skip) and needle in sk.reason, sk


def test_backend_end_to_end(store_dir, tmp_path) -> None:
    """torch.compile(backend="kevolve", contest="all") on CPU: the argmax/argmin nodes searched and
    rewritten (custom-op route), results equal to eager (ties and a NaN in the inputs)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 3, (6, 21), generator=g).float()
    x[2, 5] = NAN
    xi = torch.randint(-5, 5, (4, 7), generator=g, dtype=I32)
    ref = _fn(x, xi)
    out, found, snap = run_kevolve_backend(_fn, (x, xi), tmp_path, "argreduce", contest="all")
    for o, r in zip(out, ref):
        assert o.dtype == I64 and torch.equal(o, r), (o, r)
    assert sorted(fi.status for fi in found) == ["candidate"] * 4, found
    assert snap["kernel_calls"] == 4 and snap["rewritten_custom_op"] == 4, snap
