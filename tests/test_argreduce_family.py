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
    small = {"tile": dict(BLOCK_P=4, BLOCK_L=32), "split": dict(BLOCK_P=2, BLOCK_L=32, BLOCK_C=4),
             "cols": dict(BLOCK_P=16, BLOCK_L=4)}
    out = {t: with_cfg(c, **small[t]) for t, c in cands.items()}
    for t in TEMPLATES:
        if t not in out:
            out[t] = Candidate(TEMPLATES[t][1], tuple(sorted(dict(small[t], num_warps=4, num_stages=1,
                                                                 TWO_PASS=True).items())), template=t)
    if pair:
        out.update({f"{t}-pair": with_cfg(c, TWO_PASS=False) for t, c in list(out.items())})
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
    assert set(TEMPLATES) == {"tile", "cols", "split"}


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
    """argmin over dim 0 (lanes contiguous) starts with ``cols`` (both combine structures offered)."""
    spec = make_spec(ARGMIN, (4096, 8192), 0, device=CUDA)
    cands = FAM.candidates(spec)
    assert cands[0].template == "cols" and {c.cfg["TWO_PASS"] for c in cands if c.template == "cols"} == {True, False}
    assert FAM.call_plan(spec, cands[0]).grid == (8192 // cands[0].cfg["BLOCK_P"], 1)
    assert not any(c.template == "cols" for c in FAM.candidates(make_spec(shape=(8192, 4096), device=CUDA)))
    with pytest.raises(ValueError, match="grid y"):
        FAM.call_plan(make_spec(ARGMAX, (70_000, 3, 2), 1), template_cands(spec)["cols"])


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
    fam.spec_for("aten.argmin.default", e(4096, 8192), 0),  # a non-last dim: cols
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
    assert {ln.split()[3] for ln in lines} == {"arg_tile", "arg_cols", "arg_split_reduce", "arg_split_finish"}, stdout
    assert len(lines) == 5 * 3 + 4, stdout  # tile + split (2 kernels) each; dim 0: + cols
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
