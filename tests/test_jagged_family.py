"""The jagged family: aten semantics pinned against eager, kernels (Triton interpreter) vs the float64
reference and eager for every template x dtype x op, edge cases, bad offsets, the candidate space, call
plans, GPU compilation (sm_90, no device needed), matching on real post-grad graphs and the backend end
to end."""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from family_helpers import compile_and_record, firsts, pick, run_sm90, with_cfg  # noqa: E402

from torch_kevolve import families as _families

_families.all_families()  # builtins first: registering below must not pre-empt _load_builtin

from torch_kevolve.families import Match, Skip, family_for_op, get_family  # noqa: E402
from torch_kevolve.families import jagged as JG  # noqa: E402
from torch_kevolve.families.base import Candidate, In, Out  # noqa: E402
from torch_kevolve.families.jagged import J2P, P2J, TEMPLATES, JaggedFamily  # noqa: E402
from torch_kevolve.kernels import launch, load_module  # noqa: E402
from torch_kevolve.spec import OpSpec, TensorSig  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # interpreter's numpy noise
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

FAM: JaggedFamily = get_family("jagged")  # type: ignore[assignment]
NAN, INF = math.nan, math.inf
J2P_OP = torch.ops.aten._jagged_to_padded_dense_forward.default
P2J_OP = torch.ops.aten._padded_dense_to_jagged_forward.default
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16, torch.int32,
          torch.int64, torch.uint8, torch.bool)
J2P_TEMPLATES = [t for t, (op, _, _) in TEMPLATES.items() if op == J2P]
P2J_TEMPLATES = [t for t, (op, _, _) in TEMPLATES.items() if op == P2J]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def j2p_spec(dtype: torch.dtype = torch.float32, n: int = 37, inner: tuple[int, ...] = (5,), b: int = 7,
             m: int = 6, pad: Any = 0.0, off_dtype: torch.dtype = torch.int64) -> OpSpec:
    return FAM.j2p_spec(torch.empty((n,) + inner, dtype=dtype), [torch.zeros(b + 1, dtype=off_dtype)], [m], pad)


def p2j_spec(dtype: torch.dtype = torch.float32, b: int = 7, L: int = 9, inner: tuple[int, ...] = (5,), t: int = 30,
             off_dtype: torch.dtype = torch.int64) -> OpSpec:
    return FAM.p2j_spec(torch.empty((b, L) + inner, dtype=dtype), [torch.zeros(b + 1, dtype=off_dtype)], t)


def run_candidate(spec: OpSpec, cand: Candidate, inputs: list) -> torch.Tensor:
    plan = FAM.call_plan(spec, cand)
    (out,) = launch(load_module(cand.source), plan, inputs, poison=True)
    return out


def assert_same(out: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """Bit-exact, NaN where the reference has NaN (poisoned outputs left unwritten fail here)."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    if ref.dtype.is_floating_point or out.dtype.is_floating_point:
        o, r = out.double(), ref.double()
        bad = ~((o == r) | (o.isnan() & r.isnan()))
    else:
        bad = out.to(torch.int64) != ref.to(torch.int64)
    if bool(bad.any()):
        i = tuple(int(x) for x in torch.nonzero(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} elements differ, first at {i}: {out[i]} vs {ref[i]}")


def check(spec: OpSpec, cand: Candidate, inputs: list, vs_eager: bool = True) -> None:
    out = run_candidate(spec, cand, inputs)
    assert out.dtype == inputs[0].dtype
    (ref,) = FAM.reference(spec, inputs)
    assert_same(out, ref, f"{cand.template} {cand.cfg} vs reference")
    if vs_eager:
        (eager,) = FAM.eager(spec, inputs)
        assert_same(out, eager, f"{cand.template} {cand.cfg} vs eager")








# ------------------------------------------------------------------------------------------------
# aten semantics (eager on CPU) and the reference
# ------------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert family_for_op(J2P) is FAM and family_for_op(P2J) is FAM
    assert set(FAM.lowered_ops) == {J2P, P2J} and set(FAM.ops) == {J2P, P2J}
    assert family_for_op("aten.segment_reduce.default") is get_family("segment_reduce")
    assert set(J2P_TEMPLATES) == {"j2p_tile", "j2p_loop", "j2p_flat"}
    assert set(P2J_TEMPLATES) == {"p2j_search", "p2j_batch", "p2j_flat"}


def test_eager_semantics_pinned() -> None:
    """What aten does on CPU, and what the family reproduces."""
    v = torch.arange(10.0).reshape(5, 2)
    off = torch.tensor([0, 2, 2, 5])
    # Truncation at max_length, padding elsewhere; output [B, max_length, D].
    out = J2P_OP(v, [off], [2], -1.0)
    assert out.tolist() == [[[0, 1], [2, 3]], [[-1, -1], [-1, -1]], [[4, 5], [6, 7]]]
    # Offsets need not start at 0; 1-D values give [B, max_length].
    assert J2P_OP(v, [torch.tensor([1, 3, 4])], [3], 7.0)[:, :, 0].tolist() == [[2, 4, 7], [6, 7, 7]]
    assert J2P_OP(torch.arange(5.0), [off], [3]).tolist() == [[0, 1, 0], [0, 0, 0], [2, 3, 4]]
    # padding_value converts like fill_: 1e30 -> inf in fp16, -2.7 -> -2 in int32, 0.5 -> True.
    assert float(J2P_OP(v.half(), [off], [3], 1e30)[1, 0, 0]) == INF
    assert int(J2P_OP(v.int(), [off], [3], -2.7)[1, 0, 0]) == -2
    assert bool(J2P_OP(torch.zeros(5, dtype=torch.bool), [off], [3], 0.5)[1, 0]) is True
    for dt, p in ((torch.float16, 1e30), (torch.bfloat16, -1e30), (torch.int32, -2.7), (torch.bool, 0.5),
                  (torch.float64, 0.1), (torch.uint8, 255.9)):
        x = torch.zeros(5, dtype=dt)
        assert JG.normalize_padding(p, dt) == J2P_OP(x, [off], [3], p)[1, 0].item()
    # padded->jagged: output [total_L, ...]; total_L must equal offsets[-1]; longer sequences raise on CPU.
    p = torch.arange(24.0).reshape(3, 4, 2)
    assert P2J_OP(p, [off], 5)[:, 0].tolist() == [0, 2, 16, 18, 20]
    assert P2J_OP(p[..., 0], [off], 5).tolist() == [0, 2, 16, 18, 20]  # 2-D dense -> 1-D output
    with pytest.raises(RuntimeError, match="total_L"):
        P2J_OP(p, [off], 7)
    with pytest.raises(RuntimeError, match="max length"):
        P2J_OP(p, [torch.tensor([0, 6, 6, 7])], 7)
    # One jagged dim only: eager CPU and the meta kernel both assert (so such calls never trace).
    two = [off, torch.arange(6)]
    with pytest.raises(RuntimeError, match="single jagged dim"):
        J2P_OP(v, two, [3, 2])
    with pytest.raises(RuntimeError, match="single jagged dim"):
        P2J_OP(p, two, 5)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), pytest.raises(AssertionError, match="one jagged dim"):
        J2P_OP(torch.empty(5, 2), [torch.empty(4, dtype=torch.int64), torch.empty(6, dtype=torch.int64)], [3, 2])
    # Our kernel on the first case.
    spec = FAM.j2p_spec(v, [off], [2], -1.0)
    for cand in firsts(FAM.candidates(spec)).values():
        assert run_candidate(spec, cand, [v, off]).tolist() == out.tolist()


@pytest.mark.parametrize("dt", DTYPES, ids=[str(d)[6:] for d in DTYPES])
def test_reference_matches_eager(dt: torch.dtype) -> None:
    for spec in (j2p_spec(dt, n=40, inner=(3, 2), b=9, m=5, pad=1.0), p2j_spec(dt, b=8, L=6, inner=(3,), t=29)):
        for seed in (0, 1):
            inputs = FAM.make_inputs(spec, seed)
            (ref,) = FAM.reference(spec, inputs)
            (eager,) = FAM.eager(spec, inputs)
            assert ref.dtype == (torch.float64 if dt.is_floating_point else dt)
            assert_same(ref, eager, f"{spec.op} {dt}")


def test_spec_consts_and_errors() -> None:
    spec = j2p_spec(torch.float16, n=10, inner=(2, 3), b=4, m=7, pad=-1e30, off_dtype=torch.int32)
    assert spec.consts == (("max_length", 7), ("padding_value", "-inf"))  # as fp16 stores it
    assert spec.args == (TensorSig("float16", (10, 2, 3), (6, 3, 1)), TensorSig("int32", (5,), (1,)))
    assert spec.family == "jagged" and spec.op == J2P and dict(spec.versions)["template"] == FAM.template_version
    assert j2p_spec(pad=NAN).const("padding_value") == "nan"
    assert j2p_spec(torch.int32, pad=-2.7).const("padding_value") == "-2"
    assert j2p_spec(torch.bool, pad=3).const("padding_value") == "True"
    assert j2p_spec(torch.bfloat16, pad=0.1).const("padding_value") == repr(float(torch.tensor(0.1).bfloat16()))
    pspec = p2j_spec(torch.bfloat16, b=3, L=4, inner=(2, 2), t=9)
    assert pspec.consts == (("total_L", 9),) and pspec.op == P2J
    for sp in (spec, j2p_spec(pad=NAN), j2p_spec(torch.bool, pad=1), pspec):  # keys survive a JSON round trip
        back = OpSpec.from_json(sp.to_json())
        assert back == sp and back.key == sp.key
    assert JG.pad_bits(NAN, torch.float32) == (0x7FC00000, 32)
    assert JG.pad_bits(-1.0, torch.float32) == (-1082130432, 32)
    assert JG.pad_bits(True, torch.bool) == (1, 1) and JG.pad_bits(-3, torch.int64) == (-3, 64)
    assert JG.pad_bits(255, torch.uint8) == (-1, 8)

    v, off = torch.empty(6, 4), torch.tensor([0, 2, 6])
    for kw, needle in [
        (dict(offsets=[off, off]), "2 jagged dims"),
        (dict(offsets=[off.short()]), "int32/int64"),
        (dict(offsets=[off.float()]), "int32/int64"),
        (dict(offsets=[off[None]]), "1-D"),
        (dict(offsets=[off[:0]]), "empty"),
        (dict(values=torch.empty(6, 4, dtype=torch.complex64)), "not served"),
        (dict(values=torch.empty(6, 4, 3).transpose(1, 2)), "collapse"),
        (dict(values=torch.tensor(1.0)), "0-D"),
        (dict(max_lengths=[3, 2]), "max_lengths"),
        (dict(max_lengths=[-1]), "< 0"),
        (dict(values=v.int(), pad=NAN), "does not fit"),
        (dict(values=v.to(torch.uint8), pad=-1), "does not fit"),
        (dict(values=v.to(torch.int8), pad=300), "does not fit"),
        (dict(pad="x"), "constant"),
    ]:
        a = dict(values=v, offsets=[off], max_lengths=[3], pad=0.0)
        a.update(kw)
        with pytest.raises(ValueError, match=needle):
            FAM.j2p_spec(a["values"], a["offsets"], a["max_lengths"], a["pad"])
    p = torch.empty(2, 5, 4)
    for kw, needle in [
        (dict(total=None), "data-dependent"),
        (dict(total=-1), "< 0"),
        (dict(dense=torch.empty(1, 5, 4)), "rows for 2 sequences"),
        (dict(dense=torch.empty(2)), "1-D"),
        (dict(dense=torch.empty(2, 5, 4, 3).transpose(2, 3)), "collapse"),
        (dict(offsets=[off, off]), "2 jagged dims"),
    ]:
        a = dict(dense=p, offsets=[off], total=6)
        a.update(kw)
        with pytest.raises(ValueError, match=needle):
            FAM.p2j_spec(a["dense"], a["offsets"], a["total"])
    # Served layouts: transposed 2-D values, strided rows, size-1 dims with any stride, a strided offsets.
    FAM.j2p_spec(torch.empty(4, 6).t(), [off], [3])
    FAM.j2p_spec(torch.empty(60).as_strided((6, 1, 4), (9, 100, 1)), [off], [3])
    FAM.p2j_spec(torch.empty(2, 4, 5).transpose(1, 2), [torch.zeros(6, dtype=torch.int64)[::2]], 6)
    assert FAM._dims(FAM.j2p_spec(torch.empty(4, 6).t(), [off], [3]))["stride_d"] == 6


def test_lengths_generator() -> None:
    gen = torch.Generator().manual_seed(0)
    for total, b, cap in ((100, 10, None), (100, 10, 12), (100, 10, 10), (100, 10, 7), (0, 5, 3), (5, 1, None),
                          (10_000, 3000, 8)):
        lens = JG._lengths(total, b, gen, cap=cap)
        assert lens.shape == (b,) and int(lens.sum()) == total and bool((lens >= 0).all())
        if cap is not None and b * cap >= total:
            assert int(lens.max()) <= cap
    lens = JG._lengths(5000, 500, gen)
    assert (lens == 0).sum() >= 20  # ~15% forced empty


@pytest.mark.parametrize("op", ["j2p", "p2j"])
def test_make_inputs_layout(op: str) -> None:
    """Inputs follow the spec exactly (strided layouts included); offsets from 0 to N (or total_L)."""
    off = torch.zeros(2 * 31, dtype=torch.int32)[::2]  # stride 2, B = 30
    if op == "j2p":
        spec = FAM.j2p_spec(torch.empty(200, 24)[:, 3:23], [off], [9], 2.0)  # row stride 24
        total, cap = 200, None
    else:
        spec = FAM.p2j_spec(torch.empty(30, 12, 7).transpose(1, 2), [off], 150)
        total, cap = 150, 7
    for seed in range(3):
        inputs = FAM.make_inputs(spec, seed)
        for sig, t in zip(spec.args, inputs):
            assert sig is not None and t is not None and sig.matches(t)
        o = inputs[1].long()
        lens = torch.diff(o)
        assert int(o[0]) == 0 and int(o[-1]) == total and bool((lens >= 0).all())
        assert (lens == 0).any(), "expected some empty sequences"
        if cap is not None:
            assert int(lens.max()) <= cap
    a, b = FAM.make_inputs(spec, 7), FAM.make_inputs(spec, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_floor_bytes() -> None:
    # j2p: min(N, B*M) value rows + offsets + the whole padded output
    assert FAM.floor_bytes(j2p_spec(torch.float16, n=1000, inner=(4, 16), b=10, m=30, off_dtype=torch.int32)) == (
        300 * 64 * 2 + 11 * 4 + 10 * 30 * 64 * 2)
    assert FAM.floor_bytes(j2p_spec(torch.float32, n=100, inner=(8,), b=10, m=30)) == 100 * 32 + 11 * 8 + 300 * 32
    # p2j: min(T, B*L) dense rows + offsets + the jagged output
    assert FAM.floor_bytes(p2j_spec(torch.bfloat16, b=10, L=20, inner=(64,), t=150)) == 150 * 128 + 11 * 8 + 150 * 128


# ------------------------------------------------------------------------------------------------
# candidates and call plans
# ------------------------------------------------------------------------------------------------

_SPACE = [
    ("j2p", dict(dtype=torch.float32, n=1_000_000, inner=(64,), b=20_000, m=100)),
    ("j2p", dict(dtype=torch.bfloat16, n=500_000, inner=(256,), b=4096, m=512)),
    ("j2p", dict(dtype=torch.float16, n=2_000_000, inner=(), b=100_000, m=50)),
    ("j2p", dict(dtype=torch.int64, n=60, inner=(3,), b=7, m=1)),
    ("j2p", dict(dtype=torch.float32, n=37, inner=(5,), b=7, m=0)),
    ("p2j", dict(dtype=torch.float32, b=20_000, L=100, inner=(64,), t=1_000_000)),
    ("p2j", dict(dtype=torch.bfloat16, b=512, L=1024, inner=(128,), t=300_000)),
    ("p2j", dict(dtype=torch.float16, b=100_000, L=50, inner=(), t=2_000_000)),
    ("p2j", dict(dtype=torch.bool, b=1, L=3, inner=(1,), t=2)),
    ("p2j", dict(dtype=torch.float32, b=7, L=9, inner=(5,), t=0)),
]


@pytest.mark.parametrize("op,kw", _SPACE, ids=[f"{o}-{i}" for i, (o, _) in enumerate(_SPACE)])
def test_candidate_space(op: str, kw: dict) -> None:
    spec = j2p_spec(**kw) if op == "j2p" else p2j_spec(**kw)
    cands = FAM.candidates(spec)
    assert 8 <= len(cands) <= 30
    assert len({(c.template, c.config) for c in cands}) == len(cands)
    templates = {c.template for c in cands}
    assert templates == set(J2P_TEMPLATES if op == "j2p" else P2J_TEMPLATES)
    d = math.prod(kw["inner"])
    if d < 16:
        assert cands[0].template.endswith("_flat")
    elif op == "j2p":
        assert cands[0].template == "j2p_tile"
    if op == "p2j":
        assert {c.cfg["NARROW"] for c in cands if c.template == "p2j_search"} == {True, False}
    dims = FAM._dims(spec)
    for c in cands:
        assert c.origin == "template" and c.config == tuple(sorted(c.config))
        assert c.source.startswith("import triton\nimport triton.language as tl\n")
        cfg = c.cfg
        assert cfg["num_warps"] in (1, 2, 4, 8) and cfg["num_stages"] == 2
        tile = math.prod(v for k, v in cfg.items() if k.startswith("BLOCK"))
        assert tile <= JG._MAX_TILE
        plan = FAM.call_plan(spec, c)
        assert plan.kernel == TEMPLATES[c.template][1]
        assert all(isinstance(g, int) and g >= 0 for g in plan.grid)
        assert len(plan.grid) == 1 or plan.grid[1] <= 65535
        expect = (dims["B"], dims["M"]) + dims["inner"] if op == "j2p" else (dims["T"],) + dims["inner"]
        assert plan.outputs[0].shape == expect and plan.outputs[0].fill is None
        assert plan.outputs[0].dtype == str(kw["dtype"])[6:]
        numel = math.prod(expect)
        if numel:  # the grid covers the output
            assert math.prod(plan.grid) * tile >= numel or c.template in ("j2p_loop", "p2j_batch")


def test_call_plan_binds_kernel_params() -> None:
    """Every kernel parameter bound exactly once; padding bits for the spec's dtype; bad configs refused."""
    specs = [j2p_spec(pad=NAN), j2p_spec(torch.bool, pad=1.0), j2p_spec(torch.float64, pad=-1e300),
             p2j_spec(), p2j_spec(torch.int8, b=300, t=1000)]
    for spec in specs:
        for c in FAM.candidates(spec):
            plan = FAM.call_plan(spec, c)
            fn = getattr(load_module(c.source), plan.kernel)
            assert [a for a, _ in plan.args] == list(fn.arg_names)
            args = dict(plan.args)
            assert args["offsets_ptr"] == In(1) and args["out_ptr"] == Out(0)
            assert args["values_ptr" if spec.op == J2P else "dense_ptr"] == In(0)
            assert all(not isinstance(v, float) for v in args.values()), "no float constants (inf/NaN) in plans"
            if spec.op == J2P:
                pv = JG._pad_value(spec.const("padding_value"))
                assert (args["PAD_BITS"], args["PAD_WIDTH"]) == JG.pad_bits(pv, spec.args[0].torch_dtype)
            if "search_steps" in args:
                assert 2 ** args["search_steps"] > args["batch"] + 1  # upper bound over B + 1 offsets
    spec = j2p_spec()
    c = firsts(FAM.candidates(spec))["j2p_tile"]
    with pytest.raises(ValueError, match="power of two"):
        FAM.call_plan(spec, with_cfg(c, BLOCK_D=24))
    with pytest.raises(ValueError, match="serves"):
        FAM.call_plan(p2j_spec(), c)


# ------------------------------------------------------------------------------------------------
# kernels vs reference and eager
# ------------------------------------------------------------------------------------------------

_INNERS = ((5,), (), (3, 2), (1,), (17,))
_PADS = {torch.float32: -1.5, torch.float16: INF, torch.bfloat16: NAN, torch.float64: 0.1, torch.int8: -7,
         torch.int16: 300, torch.int32: -2.7, torch.int64: 2**40, torch.uint8: 200, torch.bool: 1.0}


@pytest.mark.parametrize("i,dt", list(enumerate(DTYPES)), ids=[str(d)[6:] for d in DTYPES])
@pytest.mark.parametrize("op", ["j2p", "p2j"])
def test_kernels(op: str, i: int, dt: torch.dtype) -> None:
    """Every template (plus one rotating extra config) x dtype x op on small odd shapes; inner shapes,
    offsets dtypes and layouts rotate across the matrix."""
    inner = _INNERS[i % len(_INNERS)]
    off_dt = (torch.int64, torch.int32)[i % 2]
    off = torch.zeros(10, dtype=off_dt)  # B = 9
    if op == "j2p":
        values = torch.empty((41,) + inner, dtype=dt)
        if i % 3 == 2 and len(inner) == 1 and inner[0] > 1:
            values = torch.empty((inner[0], 41), dtype=dt).t()  # transposed values
        spec = FAM.j2p_spec(values, [off], [5 + i % 3], _PADS[dt])
    else:
        dense = torch.empty((9, 7) + inner, dtype=dt)
        if i % 3 == 2 and len(inner) == 1 and inner[0] > 1:
            dense = torch.empty((9, inner[0], 7), dtype=dt).transpose(1, 2)
        spec = FAM.p2j_spec(dense, [off], 33)
    inputs = FAM.make_inputs(spec, seed=i)
    for cand in pick(FAM.candidates(spec), rotate=i):
        check(spec, cand, inputs)


@pytest.mark.parametrize("narrow", [False, True])
def test_search_many_batches(narrow: bool) -> None:
    """Binary searches of many steps, windows of one or many batches, blocks spanning empty sequences,
    and offsets with a stride."""
    off = torch.zeros(2 * 131, dtype=torch.int32)[::2]
    spec = FAM.p2j_spec(torch.empty(130, 6, 3), [off], 300)
    inputs = FAM.make_inputs(spec, 11)
    search = next(c for c in FAM.candidates(spec) if c.template == "p2j_search")
    for bj in (2, 16, 512):
        check(spec, with_cfg(search, NARROW=narrow, BLOCK_J=bj, BLOCK_D=4), inputs)
    flat = next(c for c in FAM.candidates(spec) if c.template == "p2j_flat")
    check(spec, with_cfg(flat, BLOCK=256), inputs)


def test_loop_template_phases() -> None:
    """j2p_loop: copy chunks that end mid-block, padding-only chunks, sequences longer than max_length."""
    values = torch.randn(60, 3)
    off = torch.tensor([0, 7, 7, 8, 40, 60])
    spec = FAM.j2p_spec(values, [off], [13], -9.0)
    loop = next(c for c in FAM.candidates(spec) if c.template == "j2p_loop")
    for bm in (1, 2, 4, 16, 64):
        check(spec, with_cfg(loop, BLOCK_M=bm), [values, off])


def test_bad_offsets_never_fault() -> None:
    """Offsets past the values, decreasing, or negative (eager raises or reads garbage): kernels mask
    every access, j2p writes padding where no value row exists, p2j writes every output row (which
    values land there is undefined, as in eager)."""
    values = torch.randn(10, 4)
    off = torch.tensor([0, 5, 3, 20, -4, 2])
    spec = FAM.j2p_spec(values, [off], [6], -1.0)
    for cand in FAM.candidates(spec):
        out = run_candidate(spec, cand, [values, off])
        assert_same(out, FAM.reference(spec, [values, off])[0], cand.template)
    dense = torch.randn(5, 4, 3)
    off = torch.tensor([0, 4, 2, 9, -3, 1])
    spec = FAM.p2j_spec(dense, [off], 6)
    for cand in FAM.candidates(spec):
        out = run_candidate(spec, cand, [dense, off])
        assert not bool(out.isnan().any()), f"{cand.template}: rows left unwritten"


# ------------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------------

EDGE_SPECS = {
    "j2p-f32": lambda: j2p_spec(torch.float32, pad=-1.5, m=6),
    "j2p-bf16-nanpad-i32": lambda: j2p_spec(torch.bfloat16, pad=NAN, m=4, off_dtype=torch.int32),
    "j2p-i32-m1": lambda: j2p_spec(torch.int32, pad=-3, m=1),
    "j2p-bool-m0": lambda: j2p_spec(torch.bool, pad=1, m=0, inner=(3,)),
    "j2p-f16-wide": lambda: j2p_spec(torch.float16, pad=INF, m=9, inner=(40,)),
    "p2j-f32": lambda: p2j_spec(torch.float32),
    "p2j-f16-i32": lambda: p2j_spec(torch.float16, L=3, off_dtype=torch.int32),
    "p2j-u8-L1": lambda: p2j_spec(torch.uint8, L=1, t=5),
    "p2j-f64-wide": lambda: p2j_spec(torch.float64, inner=(40,)),
}
_J2P_EDGES = {"empty_sequences", "all_empty", "longer_than_max_length", "exactly_max_length", "batch_1", "values_1d",
              "inner_3d", "offsets_not_from_0", "transposed_values", "strided_rows", "long_max_length"}
_P2J_EDGES = {"empty_sequences", "all_empty", "exactly_max_length", "batch_1", "dense_2d", "inner_3d",
              "extra_dense_rows", "transposed_dense", "longer_than_dense", "offsets_not_from_0"}
_FLOAT_EDGES = {"j2p": {"nan_inf_values", "padding_nan", "padding_inf", "padding_-1e30"}, "p2j": {"nan_inf_values"}}


@pytest.mark.parametrize("key", list(EDGE_SPECS))
def test_edge_cases(key: str) -> None:
    spec = EDGE_SPECS[key]()
    op = key[:3]
    dt = spec.args[0].torch_dtype
    cases = FAM.edge_cases(spec)
    expect = (_J2P_EDGES if op == "j2p" else _P2J_EDGES) | (_FLOAT_EDGES[op] if dt.is_floating_point else set())
    assert {n for n, _, _ in cases} == expect
    cands = firsts(FAM.candidates(spec))
    for name, cspec, inputs in cases:
        assert cspec.op == spec.op and [a.dtype for a in cspec.args] == [a.dtype for a in spec.args]
        if op == "j2p" and not name.startswith("padding_") and name != "long_max_length":
            assert cspec.consts == spec.consts
        for sig, t in zip(cspec.args, inputs):
            assert sig is not None and t is not None and sig.matches(t)
        (ref,) = FAM.reference(cspec, inputs)
        # Eager where it is defined: CPU raises past the dense input; rows before offsets[0] are
        # uninitialized in eager's output.
        eager = None
        if name != "longer_than_dense":
            (eager,) = FAM.eager(cspec, inputs)
            lead = int(inputs[1][0]) if op == "p2j" else 0
            assert_same(eager[lead:], ref[lead:], f"{name}: eager vs reference")
        for t, cand in cands.items():
            out = run_candidate(cspec, cand, inputs)
            assert_same(out, ref, f"{name} / {t} {cand.cfg}")
    by = {n: (s, i) for n, s, i in cases}
    if op == "p2j":  # zeros where fbgemm/CUDA writes zeros
        s, i = by["longer_than_dense"]
        ref = FAM.reference(s, i)[0]
        lmax = i[0].shape[1]
        assert bool((ref[lmax:6] == 0).all()) and ref.shape[0] == 11
    elif dt.is_floating_point:
        s, i = by["padding_nan"]
        assert bool(FAM.reference(s, i)[0][1].isnan().all())  # sequence 1 is empty: all padding


# ------------------------------------------------------------------------------------------------
# GPU compilation without a GPU
# ------------------------------------------------------------------------------------------------

_SM90_SCRIPT = r"""
fam = get_family("jagged")
off = torch.zeros(8, dtype=torch.int32)
specs = [
    fam.j2p_spec(torch.empty(40, 24, dtype=torch.bfloat16), [off], [6], float("nan")),
    fam.j2p_spec(torch.empty(40, dtype=torch.bool), [off.long()], [6], 1.0),
    fam.j2p_spec(torch.empty(40, 3, dtype=torch.float64), [off], [6], -1e300),
    fam.j2p_spec(torch.empty(5, dtype=torch.float32), [off[:2]], [1], 0.0),  # ints equal to 1
    fam.p2j_spec(torch.empty(7, 9, 24, dtype=torch.float16), [off], 30),
    fam.p2j_spec(torch.empty(7, 9, dtype=torch.int64), [off.long()], 30),
    fam.p2j_spec(torch.empty(1, 1, dtype=torch.uint8), [off[:2]], 1),
]

for spec, cand, plan, compiled in each_plan(fam, specs, first_per(lambda c: (c.template, c.cfg.get("NARROW")))):
    for k in compiled:
        print("OK", spec.args[0].dtype, cand.template, cand.cfg.get("NARROW"))
"""


def test_kernels_compile_for_sm90(tmp_path) -> None:
    """The GPU path: every template (both search modes; bool, fp64 and bf16 NaN padding; int arguments
    Triton specializes to constexpr 1) compiles to sm_90 cubin under Triton's CUDA backend, no GPU
    needed. A subprocess: with TRITON_INTERPRET=1 at import, triton is interpreter-only for the process."""
    stdout, lines = run_sm90(_SM90_SCRIPT, tmp_path)
    # 4 j2p specs x 3 templates + 3 p2j specs x 4 (search narrow/wide, batch, flat)
    assert len(lines) == 24, stdout


# ------------------------------------------------------------------------------------------------
# match: hand-built graphs (cheap) and a real post-grad graph (torch.compile)
# ------------------------------------------------------------------------------------------------


def _graph_node(op: str, data: torch.Tensor, offsets: list[torch.Tensor], *rest: Any, dynamic: bool = False,
                device: str | None = None):
    """An FX graph with one jagged op node whose tensor inputs carry FakeTensor metadata."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    fm = FakeTensorMode(shape_env=ShapeEnv()) if dynamic else FakeTensorMode()
    g = torch.fx.Graph()

    def fake(t: torch.Tensor, dyn: bool = False) -> Any:
        if device is not None:  # a fake tensor on a device this machine need not have
            return FakeTensor(fm, torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta"),
                              torch.device(device))
        if dyn:
            ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * t.dim(),
                                           constraint_sizes=[None] * t.dim())
            return fm.from_tensor(t, symbolic_context=ctx)
        return fm.from_tensor(t)

    def ph(name: str, t: torch.Tensor, dyn: bool = False) -> torch.fx.Node:
        n = g.placeholder(name)
        n.meta["val"] = fake(t, dyn)
        return n

    d = ph("data", data, dynamic)
    offs = [ph(f"off{i}", o) for i, o in enumerate(offsets)]
    node = g.call_function(J2P_OP if op == "j2p" else P2J_OP, (d, offs, *rest))
    node.meta["val"] = fake(torch.empty(2, 3, dtype=data.dtype))
    g.output((node,))
    return node, d, offs


def test_match_handbuilt() -> None:
    node, d, offs = _graph_node("j2p", torch.randn(6, 4, 2), [torch.tensor([0, 2, 6], dtype=torch.int32)], [3], NAN)
    m = FAM.match(node)
    assert isinstance(m, Match), m
    assert m.inputs == [d, offs[0]] and m.result_users == {0: [node]}
    assert m.spec.consts == (("max_length", 3), ("padding_value", "nan")) and m.spec.op == J2P
    assert m.spec.args == (TensorSig("float32", (6, 4, 2), (8, 2, 1)), TensorSig("int32", (3,), (1,)))
    node, d, offs = _graph_node("p2j", torch.randn(2, 5, 4), [torch.tensor([0, 2, 6])], 6)
    m = FAM.match(node)
    assert isinstance(m, Match) and m.spec.consts == (("total_L", 6),) and m.inputs == [d, offs[0]]
    assert not FAM.lowering_applies(node)  # CPU: always the ATen kernel


@pytest.mark.parametrize(
    "op,data,offsets,rest,kw,needle",
    [
        ("j2p", torch.randn(6, 4), [torch.tensor([0, 2, 6])] * 2, ([3, 2],), {}, "2 jagged dims"),
        ("j2p", torch.randn(6, 4), [torch.tensor([0, 2, 6], dtype=torch.int16)], ([3],), {}, "int32/int64"),
        ("j2p", torch.randn(6, 3, 4).transpose(1, 2), [torch.tensor([0, 2, 6])], ([3],), {}, "collapse"),
        ("j2p", torch.randn(6, 4).int(), [torch.tensor([0, 2, 6])], ([3], NAN), {}, "does not fit"),
        ("j2p", torch.randn(6, 4), [torch.tensor([0, 2, 6])], ([3],), dict(dynamic=True), "symbolic"),
        ("j2p", torch.randn(6, 4).to(torch.complex64), [torch.tensor([0, 2, 6])], ([3],), {}, "not served"),
        ("p2j", torch.randn(2, 5, 4), [torch.tensor([0, 2, 6])], (), {}, "data-dependent"),
        ("p2j", torch.randn(1, 5, 4), [torch.tensor([0, 2, 6])], (6,), {}, "rows for 2 sequences"),
        ("p2j", torch.randn(2, 5, 4), [torch.tensor([[0, 2, 6]])], (6,), {}, "1-D"),
    ],
    ids=["two-jagged-dims", "int16-offsets", "non-collapsible", "int-nan-padding", "dynamic", "complex",
         "no-total-L", "few-dense-rows", "2d-offsets"],
)
def test_match_skips(op: str, data: torch.Tensor, offsets: list, rest: tuple, kw: dict, needle: str) -> None:
    node, _, _ = _graph_node(op, data, offsets, *rest, **kw)
    r = FAM.match(node)
    assert isinstance(r, Skip), r
    assert needle in r.reason, r.reason


def test_match_rejects_other_ops() -> None:
    g = torch.fx.Graph()
    x = g.placeholder("x")
    assert isinstance(FAM.match(g.call_function(torch.ops.aten.relu.default, (x,))), Skip)


def test_lowering_applies_mirrors_inductor() -> None:
    """Inductor's own kernel only on CUDA, 2-D values / 3-D dense with total_L; else ATen's."""
    off = [torch.tensor([0, 2, 6])]
    assert FAM.lowering_applies(_graph_node("j2p", torch.randn(6, 4), off, [3], device="cuda")[0])
    assert FAM.lowering_applies(_graph_node("p2j", torch.randn(2, 5, 4), off, 6, device="cuda")[0])
    assert not FAM.lowering_applies(_graph_node("j2p", torch.randn(6, 4, 2), off, [3], device="cuda")[0])
    assert not FAM.lowering_applies(_graph_node("j2p", torch.randn(6), off, [3], device="cuda")[0])
    assert not FAM.lowering_applies(_graph_node("p2j", torch.randn(2, 5), off, 6, device="cuda")[0])
    assert not FAM.lowering_applies(_graph_node("p2j", torch.randn(2, 5, 4), off, device="cuda")[0])
    assert not FAM.lowering_applies(_graph_node("j2p", torch.randn(6, 4), off, [3])[0])




@pytest.fixture(scope="module")
def compiled_graph():
    """One inference compile: five jagged calls that are served, one that is skipped (int16 offsets),
    and a padded->jagged with total_L=None (unbacked output size) that is skipped."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(9, 6, generator=g)
    off = torch.tensor([0, 2, 2, 9])
    p = torch.randn(3, 9, 6, generator=g)

    def f(v, off, p):
        a = J2P_OP(v, [off], [4], -1.0)
        b = J2P_OP(v.reshape(9, 2, 3), [off.int()], [3])
        c = P2J_OP(p, [off], 9)
        e = J2P_OP(v.t().contiguous().t(), [off], [5], NAN)  # transposed values reach the graph as is
        h = J2P_OP(v, [off.short()], [2])
        k = P2J_OP(p * 2, [off])
        return a * 2, b, c, e, h, k

    args = (v, off, p)
    graphs, out = compile_and_record(f, *args, dynamic_outputs=True)
    return graphs, out, args


def test_match_real_post_grad_graph(compiled_graph) -> None:
    graphs, out, (v, off, p) = compiled_graph
    nodes = [n for gr in graphs for n in gr.nodes if str(n.target) in (J2P, P2J)]
    assert len(nodes) == 6  # ATen fallbacks on CPU: the ops reach the post-grad graph as is
    results = [(n, FAM.match(n)) for n in nodes]
    skips = [m for _, m in results if isinstance(m, Skip)]
    assert sorted(s.reason.split(" ")[0] for s in skips) == ["offsets", "total_L"], [s.reason for s in skips]
    assert any("int32/int64" in s.reason for s in skips) and any("data-dependent" in s.reason for s in skips)
    matches = [(n, m) for n, m in results if isinstance(m, Match)]
    assert len(matches) == 4
    for n, m in matches:
        assert m.result_users == {0: [n]} and m.spec.device.type == "cpu" and all(i is not None for i in m.inputs)
        assert not FAM.lowering_applies(n)
    by = {(m.spec.op, m.spec.consts): m for _, m in matches}
    a = by[(J2P, (("max_length", 4), ("padding_value", "-1.0")))]
    assert a.spec.args == (TensorSig.of(v), TensorSig.of(off))
    b = by[(J2P, (("max_length", 3), ("padding_value", "0.0")))]
    assert b.spec.args == (TensorSig("float32", (9, 2, 3), (6, 3, 1)), TensorSig("int32", (4,), (1,)))
    c = by[(P2J, (("total_L", 9),))]
    e = by[(J2P, (("max_length", 5), ("padding_value", "nan")))]
    assert e.spec.args[0] == TensorSig("float32", (9, 6), (1, 9))
    # The default candidate on the real inputs reproduces the compiled graph's outputs.
    real = [(a, [v, off], out[0] / 2), (b, [v.reshape(9, 2, 3), off.int()], out[1]), (c, [p, off], out[2]),
            (e, [v.t().contiguous().t(), off], out[3])]
    for m, inputs, expect in real:
        got = run_candidate(m.spec, FAM.candidates(m.spec)[0], inputs)
        assert_same(got, expect, m.spec.describe())


# ------------------------------------------------------------------------------------------------
# the backend end to end
# ------------------------------------------------------------------------------------------------


def _has_contest_setting() -> bool:
    from dataclasses import fields

    from torch_kevolve.config import Settings

    return "contest" in {f.name for f in fields(Settings)}


@pytest.mark.skipif(not _has_contest_setting(), reason="Settings.contest (KEVOLVE_CONTEST) not in config.py yet")
def test_backend_end_to_end(store_dir) -> None:
    """torch.compile(backend="kevolve") searches, stores and then serves both ops from the store on CPU.

    Inductor registers lowerings for both ops, so detection treats them as lowered (contested) and CPU
    needs contest="all" here, although the lowerings fall back to ATen off CUDA."""
    from torch_kevolve import stats
    from torch_kevolve.lowering import REPORTS

    g = torch.Generator().manual_seed(5)
    v, off, p = torch.randn(7, 6, generator=g), torch.tensor([0, 2, 2, 7]), torch.randn(3, 5, 6, generator=g)

    def f(v, off, p):
        return J2P_OP(v * 2, [off], [4], -1.0) + 1, P2J_OP(p, [off], 7) * 3

    ref = f(v, off, p)

    def run(options: dict) -> tuple:
        torch._dynamo.reset()
        REPORTS.clear()
        stats.reset()
        with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
            return torch.compile(f, backend="kevolve", options={"fx_graph_cache": False, **options})(v, off, p)

    out = run({"mode": "jit", "contest": "all", "max_candidates": 1})
    for o, r in zip(out, ref):
        assert_same(o, r, "jit")
    snap = stats.snapshot()
    assert snap["searches"] == 2 and snap["kernel_calls"] >= 2, snap
    fams = [f.family for rep in REPORTS for f in rep]
    assert fams.count("jagged") == 2

    out = run({"mode": "cache", "contest": "all"})  # now served from the store
    for o, r in zip(out, ref):
        assert_same(o, r, "cache")
    snap = stats.snapshot()
    assert snap.get("searches", 0) == 0 and snap["store_hits"] == 2 and snap["kernel_calls"] >= 2, snap
    decisions = [f.decision for rep in REPORTS for f in rep if f.family == "jagged"]
    assert len(decisions) == 2 and all("stored kernel" in d for d in decisions), decisions
