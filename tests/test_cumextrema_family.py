"""The cumextrema family (cummax / cummin, values and indices): aten semantics pinned against eager,
every template x dtype x op x wanted outputs (Triton interpreter) vs the reference and eager, bit for bit,
edge cases, the candidate space and multi-step call plans, Inductor's split/fallback rule mirrored,
GPU compilation (sm_90, no device needed), matching on hand-built and real post-grad graphs, and the
backend end to end."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from family_helpers import fake_node, firsts, run_sm90, with_cfg  # noqa: E402

from torch_kevolve import families as _families

_families.all_families()  # builtins first: registering below must not pre-empt _load_builtin

from torch_kevolve.families import Match, Skip, family_for_op, get_family  # noqa: E402
from torch_kevolve.families import cumextrema as CE  # noqa: E402
from torch_kevolve.families.base import Candidate, In, Out, Ws  # noqa: E402
from torch_kevolve.families.cumextrema import CUMMAX, CUMMIN, TEMPLATES, CumExtremaFamily  # noqa: E402
from torch_kevolve.kernels import launch, load_module  # noqa: E402
from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # interpreter's numpy noise
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

FAM: CumExtremaFamily = get_family("cumextrema")  # type: ignore[assignment]
NAN, INF = math.nan, math.inf
F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
I8, I16, I32, I64, U8, BOOL = torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool
DTYPES = (F32, F16, BF16, F64, I8, I16, I32, I64, U8, BOOL)
CUDA = DeviceSig("cuda", "NVIDIA H100 80GB HBM3", "sm_90")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def make_spec(op: str = CUMMAX, shape: tuple = (5, 37), dim: int = 1, dtype: torch.dtype = F32, values: bool = True,
              indices: bool = True, device: DeviceSig | None = None, transposed: bool = False) -> OpSpec:
    x = torch.empty(tuple(reversed(shape)), dtype=dtype).T if transposed else torch.empty(shape, dtype=dtype)
    spec = FAM.spec_for(op, x, dim, values, indices)
    return dataclasses.replace(spec, device=device) if device else spec


def run_candidate(spec: OpSpec, cand: Candidate, inputs: list) -> list[torch.Tensor]:
    plan = FAM.call_plan(spec, cand)
    return launch(load_module(cand.source), plan, inputs, poison=True)


def assert_exact(out: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """Bit-exact: same dtype/shape, equal values with NaN where the reference has NaN and the sign of
    zero kept (an unwritten poisoned output fails here)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape, f"{what}: {out.dtype}{list(out.shape)} vs " \
                                                              f"{ref.dtype}{list(ref.shape)}"
    if out.is_floating_point():
        o, r = out.double(), ref.double()
        bad = ~((o == r) & (torch.signbit(o) == torch.signbit(r)) | (o.isnan() & r.isnan()))
    else:
        bad = out != ref
    if bool(bad.any()):
        i = tuple(int(v) for v in torch.nonzero(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} elements differ, first at {i}: {out[i]} vs {ref[i]}")


def check(spec: OpSpec, cand: Candidate, inputs: list, what: str = "") -> None:
    outs = run_candidate(spec, cand, inputs)
    refs = FAM.reference(spec, inputs)
    eager = FAM.eager(spec, inputs)
    assert len(outs) == len(refs) == len(eager) == len(FAM.wanted(spec))
    for j, (o, r, e) in enumerate(zip(outs, refs, eager)):
        assert o.is_contiguous()
        assert_exact(r, e, f"{what} output {j}: reference vs eager")
        assert_exact(o, e, f"{what} output {j}: {cand.template} {cand.cfg}")






def template_cands(spec: OpSpec) -> dict[str, Candidate]:
    """One candidate per template, from the CUDA candidate space (every template offered) but with
    interpreter-sized blocks: the interpreter scans tile elements one by one."""
    cands = firsts(FAM.candidates(dataclasses.replace(spec, device=CUDA)))
    small = {"tile": dict(BLOCK_P=4, BLOCK_L=16), "rows": dict(BLOCK_L=16), "chunked": dict(BLOCK_P=2, BLOCK_L=16,
                                                                                           BLOCK_C=4)}
    out = {t: with_cfg(c, **small[t]) for t, c in cands.items()}
    if "chunked" not in out:  # offered for long scans only; it serves any
        out["chunked"] = Candidate(TEMPLATES["chunked"][1], tuple(sorted(dict(small["chunked"], num_warps=4,
                                                                                num_stages=1).items())), template="chunked")
    for t in ("tile", "rows"):  # both scan structures: the pair scan and TWO_SCAN
        if t in out:
            out[t + "+two_scan"] = with_cfg(out[t], TWO_SCAN=1)
            out[t] = with_cfg(out[t], TWO_SCAN=0)
    return out


# ------------------------------------------------------------------------------------------------
# registration, aten semantics, the reference
# ------------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert family_for_op(CUMMAX) is FAM and family_for_op(CUMMIN) is FAM
    assert set(FAM.ops) == set(FAM.lowered_ops) == {CUMMAX, CUMMIN}
    assert family_for_op("aten.bucketize.Tensor") is get_family("bucketize")
    assert set(TEMPLATES) == {"tile", "rows", "chunked"}


def test_eager_semantics_pinned() -> None:
    """Ties to the later index, NaN sticks (a later NaN takes the index), -0.0 ties 0.0 and the later
    one's sign is the value, cummin keeps NaN on top too; reference and every template agree."""
    x = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, NAN, 5.0, NAN, 1.0])
    table = {
        CUMMAX: ([1, 3, 3, 3, 3, NAN, NAN, NAN, NAN], [0, 1, 2, 2, 4, 5, 5, 7, 7]),
        CUMMIN: ([1, 1, 1, 1, 1, NAN, NAN, NAN, NAN], [0, 0, 0, 0, 0, 5, 5, 7, 7]),
    }
    z = torch.tensor([-INF, -INF, 0.0, -0.0, 0.0, -0.0])
    ztable = {
        CUMMAX: ([-INF, -INF, 0.0, -0.0, 0.0, -0.0], [0, 1, 2, 3, 4, 5]),
        CUMMIN: ([-INF] * 6, [0, 1, 1, 1, 1, 1]),
    }
    ints = torch.tensor([2, 2, 1, 2, -5, 7], dtype=I32)
    itable = {CUMMAX: ([2, 2, 2, 2, 2, 7], [0, 1, 1, 3, 3, 5]), CUMMIN: ([2, 2, 1, 1, -5, -5], [0, 1, 2, 2, 4, 4])}
    bools = torch.tensor([True, False, True, False])
    btable = {CUMMAX: ([True] * 4, [0, 0, 2, 2]), CUMMIN: ([True, False, False, False], [0, 1, 1, 3])}
    for op in (CUMMAX, CUMMIN):
        fn = torch.cummax if op == CUMMAX else torch.cummin
        for xv, tab in ((x, table), (z, ztable), (ints, itable), (bools, btable)):
            want_v = torch.tensor(tab[op][0], dtype=xv.dtype)
            want_i = torch.tensor(tab[op][1])
            v, i = fn(xv, 0)
            assert_exact(v, want_v, f"{op} eager values")
            assert_exact(i, want_i, f"{op} eager indices")
            spec = FAM.spec_for(op, xv, 0)
            got = FAM.reference(spec, [xv])
            assert_exact(got[0], want_v, "reference values")
            assert_exact(got[1], want_i, "reference indices")
            for t, cand in template_cands(spec).items():
                outs = run_candidate(spec, cand, [xv])
                assert_exact(outs[0], want_v, f"{op} {t} values")
                assert_exact(outs[1], want_i, f"{op} {t} indices")
    # 0-D: the element and index 0; empty scans: empty outputs
    v, i = torch.cummax(torch.tensor(3.0), 0)
    assert v.item() == 3.0 and i.item() == 0 and i.dim() == 0
    assert torch.cummax(torch.empty(4, 0), 1).indices.shape == (4, 0)
    # outputs contiguous whatever the input layout (the family's OutBufs are)
    assert torch.cummax(torch.randn(3, 4).T, 0).values.is_contiguous()


@pytest.mark.parametrize("dt", DTYPES, ids=[str(d)[6:] for d in DTYPES])
def test_reference_matches_eager(dt: torch.dtype) -> None:
    for k, (op, shape, dim) in enumerate([(CUMMAX, (6, 50), 1), (CUMMIN, (31, 4), 0), (CUMMAX, (3, 9, 5), 1)]):
        spec = make_spec(op, shape, dim, dt, indices=k != 1)
        inputs = FAM.make_inputs(spec, seed=k)
        assert spec.args[0].matches(inputs[0])
        for r, e in zip(FAM.reference(spec, inputs), FAM.eager(spec, inputs)):
            assert_exact(r, e, spec.describe())


def test_make_inputs_have_ties_and_nans() -> None:
    x = FAM.make_inputs(make_spec(shape=(50, 40)), 1)[0]
    assert x.unique().numel() < 20 and bool(x.isnan().any())  # seeds 1 mod 3 add NaN
    assert not bool(FAM.make_inputs(make_spec(shape=(50, 40)), 0)[0].isnan().any())


def test_spec_geometry_and_errors() -> None:
    spec = make_spec(CUMMIN, (4, 6, 5), -2, BF16, values=False)
    assert spec.family == "cumextrema" and spec.consts == (("dim", 1), ("indices", True), ("values", False))
    assert spec.args == (TensorSig("bfloat16", (4, 6, 5), (30, 5, 1)),)
    back = OpSpec.from_json(spec.to_json())
    assert back == spec and back.key == spec.key
    g = FAM.geom(spec)
    assert (g.outer, g.length, g.inner, g.stride_o, g.stride_l, g.stride_i, g.kind, g.lanes) == (4, 6, 5, 30, 5, 1, 0, 20)
    assert FAM.wanted(spec) == [1]
    g = FAM.geom(make_spec(shape=(7, 13), dim=0, transposed=True))  # [7, 13] with strides (1, 7)
    assert (g.outer, g.length, g.inner, g.stride_l, g.stride_i) == (1, 7, 13, 1, 7)
    g = FAM.geom(FAM.spec_for(CUMMAX, torch.empty(()), 0))
    assert (g.outer, g.length, g.inner) == (1, 1, 1)
    assert [FAM.geom(make_spec(dtype=d)).kind for d in (F64, I64, I8, BOOL, U8)] == [1, 3, 2, 2, 2]
    e = torch.empty
    for args, needle in [
        ((CUMMAX, e(3, 4), 2), "out of range"),
        ((CUMMAX, e(3, 4, dtype=torch.complex64), 0), "complex"),
        ((CUMMAX, e(3, 4), 0, False, False), "neither"),
        ((CUMMAX, e(2, 3, 4).permute(1, 0, 2), 2), "collapse"),  # outer dims (3, 2) with strides (4, 12)
        ((CUMMAX, e(2, 3, 4).permute(1, 0, 2), 0), "collapse"),  # inner dims (2, 4) with strides (12, 1)
    ]:
        with pytest.raises(ValueError, match=needle):
            FAM.spec_for(*args)
    FAM.spec_for(CUMMAX, e(2, 3, 4).permute(2, 0, 1), 0)  # outer none, inner (2, 3) strides (12, 4): collapses


def test_floor_bytes() -> None:
    assert FAM.floor_bytes(make_spec(shape=(10, 30), dtype=F16)) == 300 * (2 + 2 + 8)
    assert FAM.floor_bytes(make_spec(shape=(10, 30), dtype=F16, values=False)) == 300 * (2 + 8)
    assert FAM.floor_bytes(make_spec(shape=(10, 30), dtype=F64, indices=False)) == 300 * 16


# ------------------------------------------------------------------------------------------------
# Inductor's rule: lowered on Triton devices unless it wants a split scan
# ------------------------------------------------------------------------------------------------


def test_split_mirror_matches_inductor() -> None:
    """``inductor_scan_splits`` against Inductor's own ``reduction_split_factor`` with H100 properties
    patched in (no GPU here), over shapes around every threshold."""
    from collections import namedtuple
    from unittest import mock

    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime import hints

    Props = namedtuple("Props", "multi_processor_count warp_size_or_default max_threads_per_multi_processor major")
    props = Props(132, 32, 2048, 9)
    cuda = torch.device("cuda")
    with mock.patch.object(hints.DeviceProperties, "create", lambda device: props):
        for lanes in (1, 2, 7, 64, 263, 264, 1000, 8447, 8448, 20000):
            for n in (2, 33, 4000, 8192, 8193, 100_000, 1_000_003, 2**22, 10**8):
                for inner in (True, False):
                    if lanes == 1:
                        want = InductorChoices.reduction_split_factor(cuda, n, 1, True)
                    elif n <= 32 or lanes >= 132 * 64:
                        want = 1
                    else:
                        want = InductorChoices.reduction_split_factor(cuda, n, lanes, inner)
                    assert CE.inductor_scan_splits(lanes, n, inner) == want, (lanes, n, inner)
    assert CE.inductor_scan_splits(1, 10**6, True) > 1 and CE.inductor_scan_splits(4096, 1000, True) == 1


def _graph_node(op: str, x: torch.Tensor, dim: int, users: tuple[int, ...] = (0, 1), dynamic: bool = False,
                device: str | None = None, outs: tuple | None = None):
    """A cummax/cummin call on a FakeTensor placeholder, with getitem users for ``users``."""
    import operator

    target = torch.ops.aten.cummax.default if op == CUMMAX else torch.ops.aten.cummin.default
    v, i = outs if outs is not None else (torch.empty(x.shape, dtype=x.dtype), torch.empty(x.shape, dtype=I64))
    node = fake_node(target, x, (dim,), (v, i), device=device, dynamic=dynamic)
    g = node.graph
    gets = {}
    for j in users:
        gi = g.call_function(operator.getitem, (node, j))
        gi.meta["val"] = node.meta["val"][j]
        gets[j] = gi
    g.output(tuple(gets.values()))
    return node, node.args[0], gets


def test_inductor_fallback_reason() -> None:
    node, _, _ = _graph_node(CUMMAX, torch.randn(4, 100), 1)
    assert "cpu" in FAM.inductor_fallback_reason(node)
    for shape, dim, falls in [((4096, 100), 1, False), ((4, 100_000), 1, True), ((1, 1_000_000), 1, True),
                              ((100, 20), 0, False), ((1, 1), 1, False), ((), 0, False), ((2, 5000), 1, False)]:
        node, _, _ = _graph_node(CUMMIN, torch.randn(shape), dim, device="cuda")
        why = FAM.inductor_fallback_reason(node)
        assert (why is not None) == falls, (shape, why)
        if falls:
            assert "split" in why


# ------------------------------------------------------------------------------------------------
# candidates and call plans
# ------------------------------------------------------------------------------------------------

_SPACE = [
    dict(shape=(4096, 100), dim=1),
    dict(shape=(4, 1_000_000), dim=1),
    dict(shape=(1000, 100_000), dim=1, dtype=F64),
    dict(shape=(100_000, 64), dim=0, dtype=BF16, values=False),
    dict(shape=(8, 3, 5000), dim=1, dtype=I64),
    dict(shape=(37,), dim=0, dtype=BOOL),
    dict(shape=(0, 5), dim=1),
]


@pytest.mark.parametrize("kw", _SPACE, ids=[str(i) for i in range(len(_SPACE))])
def test_candidate_space(kw: dict) -> None:
    spec = make_spec(device=CUDA, **kw)
    g = FAM.geom(spec)
    cands = FAM.candidates(spec)
    assert 5 <= len(cands) <= 30, len(cands)
    assert len({(c.template, c.config) for c in cands}) == len(cands)
    long_row, few = g.length > 2048, g.lanes < 256
    assert cands[0].template == ("chunked" if long_row and few else "rows" if long_row else "tile")
    assert {c.template for c in cands} >= {"tile", "rows"} and ("chunked" in {c.template for c in cands}) == (g.length > 256)
    cap = CE._MAX_TILE if g.kind in (0, 2) else CE._MAX_TILE // 2
    for c in cands:
        cfg = c.cfg
        assert c.config == tuple(sorted(c.config)) and cfg["num_warps"] in (1, 2, 4, 8)
        tile = cfg.get("BLOCK_P", 1) * max(cfg["BLOCK_L"], cfg.get("BLOCK_C", 0))
        assert tile <= cap
        plan = FAM.call_plan(spec, c)
        assert [o.dtype for o in plan.outputs] == [spec.args[0].dtype if j == 0 else "int64" for j in FAM.wanted(spec)]
        assert all(o.shape == spec.args[0].shape and o.fill is None for o in plan.outputs)
        if g.lanes * g.length == 0:
            assert all(0 in st.grid for st in plan.steps)
        elif c.template == "tile":
            assert plan.grid == (-(-g.lanes // cfg["BLOCK_P"]),)
        elif c.template == "rows":
            assert plan.grid == (g.lanes,)
        else:
            chunks = -(-g.length // cfg["BLOCK_L"])
            assert plan.kernels == ("cum_chunk_reduce", "cum_chunk_carry", "cum_chunk_scan")
            assert plan.grid == plan.pre[0].grid == (chunks, -(-g.lanes // cfg["BLOCK_P"]))
            assert plan.workspace[0].shape == plan.workspace[1].shape == (g.lanes * chunks,)
            assert plan.workspace[1].dtype == "int32" and plan.workspace[0].dtype == CE._KIND_DTYPE[g.kind]


def test_interpreter_candidates_are_small() -> None:
    """CPU specs (the interpreter) get small tiles, and still every template for a long scan."""
    cands = FAM.candidates(make_spec(shape=(3, 5000)))
    assert {c.template for c in cands} == {"tile", "rows", "chunked"} and cands[0].template == "chunked"
    assert all(c.cfg.get("BLOCK_P", 1) * c.cfg["BLOCK_L"] <= 256 for c in cands)


def test_call_plan_binds_kernel_params() -> None:
    """Every parameter of every step bound once, in order; an output the spec does not want is bound
    to the input (never written), so no output buffer is bound twice; bad configs refused."""
    for values, indices in ((True, True), (True, False), (False, True)):
        spec = make_spec(shape=(3, 600), dtype=I16, values=values, indices=indices)
        for t, c in template_cands(spec).items():
            plan = FAM.call_plan(spec, c)
            mod = load_module(c.source)
            for st in plan.steps:
                assert [a for a, _ in st.args] == list(getattr(mod, st.kernel).arg_names), st.kernel
                args = dict(st.args)
                if "v_ptr" in args:
                    assert args["x_ptr"] == In(0)
                    assert args["v_ptr"] == (Out(0) if values else In(0))
                    assert args["i_ptr"] == (Out(1 if values else 0) if indices else In(0))
                    assert (args["WRITE_V"], args["WRITE_I"]) == (values, indices)
                if "wv_ptr" in args:
                    assert (args["wv_ptr"], args["wi_ptr"]) == (Ws(0), Ws(1))
            bound = [v for st in plan.steps for v in dict(st.args).values() if isinstance(v, Out)]
            assert len(set(bound)) == len(plan.outputs)
    spec = make_spec()
    c = template_cands(spec)["tile"]
    with pytest.raises(ValueError, match="power of two"):
        FAM.call_plan(spec, with_cfg(c, BLOCK_L=24))
    with pytest.raises(ValueError, match="unknown"):
        FAM.call_plan(spec, dataclasses.replace(c, template="nope", source="x"))
    with pytest.raises(ValueError, match="lane blocks"):
        FAM.call_plan(make_spec(shape=(70_000, 3)), with_cfg(template_cands(spec)["chunked"], BLOCK_P=1))


# ------------------------------------------------------------------------------------------------
# kernels vs reference and eager
# ------------------------------------------------------------------------------------------------

_LAYOUTS = [  # (shape, dim, transposed)
    ((5, 37), 1, False),
    ((37, 5), 0, False),
    ((3, 9, 5), 1, False),
    ((7, 13), 0, True),
    ((41,), 0, False),
    ((2, 3, 33), -1, False),
]
_WANT = [(True, True), (True, False), (False, True)]


@pytest.mark.parametrize("i,dt", list(enumerate(DTYPES)), ids=[str(d)[6:] for d in DTYPES])
def test_kernels(i: int, dt: torch.dtype) -> None:
    """Every template x dtype, ops, layouts (scan dim last, first, middle, strided) and wanted outputs
    rotating; seeds rotate NaN in for floats."""
    for k in range(2):
        shape, dim, tr = _LAYOUTS[(i + 3 * k) % len(_LAYOUTS)]
        values, indices = _WANT[(i + k) % 3]
        spec = make_spec(CUMMAX if (i + k) % 2 == 0 else CUMMIN, shape, dim, dt, values, indices, transposed=tr)
        inputs = FAM.make_inputs(spec, seed=3 * i + k + 1)
        for t, cand in template_cands(spec).items():
            check(spec, cand, inputs, f"{spec.describe()}")


def test_carries_across_blocks_and_chunks() -> None:
    """A carry through many tiles, partial last tiles, lanes split across programs, chunk totals
    scanned over several BLOCK_C blocks, and NaN arriving in a later chunk."""
    x = torch.randint(-6, 6, (3, 203)).float()
    x[1, 150] = NAN
    x[2, 17] = NAN
    x[2, 190] = NAN
    for op in (CUMMAX, CUMMIN):
        spec = FAM.spec_for(op, x, 1)
        cands = template_cands(spec)
        for over in (dict(BLOCK_P=1, BLOCK_L=16), dict(BLOCK_P=2, BLOCK_L=32), dict(BLOCK_P=4, BLOCK_L=256)):
            check(spec, with_cfg(cands["tile"], **over), [x], f"tile {over}")
        check(spec, with_cfg(cands["rows"], BLOCK_L=32), [x], "rows")
        for over in (dict(BLOCK_P=1, BLOCK_L=16, BLOCK_C=2), dict(BLOCK_P=2, BLOCK_L=64, BLOCK_C=4),
                     dict(BLOCK_P=4, BLOCK_L=256, BLOCK_C=1)):
            check(spec, with_cfg(cands["chunked"], **over), [x], f"chunked {over}")


_EDGE_SPECS = {
    "f32-max": lambda: make_spec(),
    "f16-min-values": lambda: make_spec(CUMMIN, (37, 5), 0, F16, indices=False),
    "bf16-max-indices": lambda: make_spec(CUMMAX, (3, 9, 5), 1, BF16, values=False),
    "i64-min": lambda: make_spec(CUMMIN, (4, 20), 1, I64),
    "u8-max": lambda: make_spec(CUMMAX, (20,), 0, U8),
    "bool-min": lambda: make_spec(CUMMIN, (4, 20), 1, BOOL),
}
_COMMON_EDGES = {"all_equal", "ties_and_steps", "descending", "one_element", "zero_d", "empty_scan", "no_lanes",
                 "long_rows", "dim0_strided", "middle_dim", "padded_rows"}
_FLOAT_EDGES = {"nan_middle", "nan_first_last", "all_nan", "infinities", "signed_zeros"}


def test_signed_zeros_bit_exact() -> None:
    """-0.0 and 0.0 tie and the later one's sign is kept, bit for bit (``torch.equal`` calls them
    equal, so compare the bits), by every template and both scan structures, over block carries."""
    x = torch.tensor([-0.0, 0.0, -0.0, -1, 0.0, -0.0, 0.0, 0.0, -0.0] * 5)
    for op in (CUMMAX, CUMMIN):
        spec = FAM.spec_for(op, x, 0)
        ev, ei = FAM.eager(spec, [x])
        for t, c in template_cands(spec).items():
            v, i = launch(load_module(c.source), FAM.call_plan(spec, c), [x])
            assert torch.equal(v.view(torch.int32), ev.view(torch.int32)) and torch.equal(i, ei), (op, t)


@pytest.mark.parametrize("key", list(_EDGE_SPECS))
def test_edge_cases(key: str) -> None:
    spec = _EDGE_SPECS[key]()
    dt = spec.args[0].torch_dtype
    cases = FAM.edge_cases(spec)
    expect = _COMMON_EDGES | (_FLOAT_EDGES if dt.is_floating_point else set()) | \
        ({"dtype_extremes"} if not dt.is_floating_point and dt != BOOL else set())
    assert {n for n, _, _ in cases} == expect
    cands = template_cands(spec)
    long_len = next(i[0].shape[-1] for n, _, i in cases if n == "long_rows")
    assert long_len > 2 * max(c.cfg["BLOCK_L"] for c in FAM.candidates(spec))  # crosses every block
    for name, cspec, inputs in cases:
        assert cspec.op == spec.op and cspec.args[0].dtype == spec.args[0].dtype
        assert (cspec.const("values"), cspec.const("indices")) == (spec.const("values"), spec.const("indices"))
        assert cspec.args[0].matches(inputs[0])
        for t, cand in cands.items():
            check(cspec, cand, inputs, f"{key}/{name}")


def test_default_interpreter_candidates_pass_edge_cases() -> None:
    """The first proposals for a CPU spec (what a search tries first) on every edge case."""
    spec = make_spec(CUMMAX, (3, 100), 1, F32)
    firsts_ = firsts(FAM.candidates(spec))
    assert set(firsts_) == {"tile", "rows", "chunked"}
    for name, cspec, inputs in FAM.edge_cases(spec):
        for cand in firsts_.values():
            check(cspec, cand, inputs, name)


# ------------------------------------------------------------------------------------------------
# GPU compilation without a GPU
# ------------------------------------------------------------------------------------------------

_SM90_SCRIPT = r"""
fam = get_family("cumextrema")
specs = [  # every KIND (fp32-carried halves, fp64, int32-carried small ints / bool, int64), max and min,
           # values only / indices only, a strided scan dim
    fam.spec_for("aten.cummax.default", e(64, 5000), 1),
    fam.spec_for("aten.cummin.default", e(3000, 37, dtype=torch.bfloat16), 0, True, False),
    fam.spec_for("aten.cummax.default", e(8, 9000, dtype=torch.bool), 1, False, True),
    fam.spec_for("aten.cummin.default", e(8, 9000, dtype=torch.int64), 1),
    fam.spec_for("aten.cummax.default", e(9000, 8, dtype=torch.float64).T, 1),
]
for spec, cand, plan, compiled in each_plan(fam, specs):
    for k in compiled:
        print("OK", spec.args[0].dtype, cand.template, k)
"""


def test_kernels_compile_for_sm90(tmp_path) -> None:
    """Every template and step kernel, for every carried dtype, max and min, values/indices only,
    compiles to sm_90 cubin (tuple scans, gathers, int64 extremes), no GPU needed. A subprocess: with
    TRITON_INTERPRET=1 at import, triton is interpreter-only for the process."""
    stdout, lines = run_sm90(_SM90_SCRIPT, tmp_path)
    kernels = {ln.rsplit(" ", 1)[-1] for ln in lines}
    assert kernels == {"cum_tile", "cum_rows", "cum_chunk_reduce", "cum_chunk_carry", "cum_chunk_scan"}, stdout
    assert len(lines) == 5 * 5, stdout  # every spec: tile, rows, chunked (3 kernels)


# ------------------------------------------------------------------------------------------------
# match: hand-built graphs, and a real post-grad graph through the backend
# ------------------------------------------------------------------------------------------------


def test_match_handbuilt() -> None:
    for users, want in (((0, 1), (True, True)), ((0,), (True, False)), ((1,), (False, True))):
        node, ph, gets = _graph_node(CUMMIN, torch.randn(6, 4), -1, users)
        m = FAM.match(node)
        assert isinstance(m, Match), m
        assert m.inputs == [ph] and m.spec.op == CUMMIN and m.spec.const("dim") == 1
        assert (m.spec.const("values"), m.spec.const("indices")) == want
        # plan output k feeds the users of the op output it stands for
        assert m.result_users == {k: [gets[j]] for k, j in enumerate(FAM.wanted(m.spec))}


def test_match_skips() -> None:
    node, _, _ = _graph_node(CUMMAX, torch.randn(6, 4), 0, dynamic=True)
    assert "symbolic" in FAM.match(node).reason
    node, _, _ = _graph_node(CUMMAX, torch.randn(6, 4).to(torch.complex64), 0)
    assert "complex" in FAM.match(node).reason
    node, _, _ = _graph_node(CUMMAX, torch.randn(2, 3, 4).permute(1, 0, 2), 2)
    assert "collapse" in FAM.match(node).reason
    node, _, _ = _graph_node(CUMMAX, torch.randn(6, 4), 0, outs=(torch.empty(4, 6).T, torch.empty(6, 4, dtype=I64)))
    assert "contiguous" in FAM.match(node).reason
    node, _, _ = _graph_node(CUMMAX, torch.randn(6, 4), 0, users=())
    assert "neither" in FAM.match(node).reason
    g = torch.fx.Graph()
    x = g.placeholder("x")
    assert isinstance(FAM.match(g.call_function(torch.ops.aten.relu.default, (x,))), Skip)


def test_backend_end_to_end(store_dir, tmp_path) -> None:
    """torch.compile(backend="kevolve") on CPU: the post-grad graph as a user pass (before ours) sees
    it (getitems for the used outputs only), the served calls replaced by searched kernels (custom-op
    route) with eager-equal results, the unserved one (a layout that does not collapse) left to ATen."""
    from torch_kevolve import stats
    from torch_kevolve.lowering import REPORTS

    seen: list[tuple[torch.fx.Node, Any, str | None]] = []

    def record(graph: torch.fx.Graph) -> None:
        for n in graph.nodes:
            if str(n.target) in FAM.ops:
                seen.append((n, FAM.match(n), FAM.inductor_fallback_reason(n)))

    def f(x, y, z):
        a = torch.cummax(x, 1)
        return (a.values * 2, a.indices, torch.cummin(y, 0).values, torch.cummax(x.half(), 0).indices,
                torch.cummin(z, 2).values.abs())

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 3, (4, 21), generator=g).float()
    x[1, 5] = NAN
    y = torch.randint(-9, 9, (13, 3), generator=g)
    z = torch.randn(2, 3, 4, generator=g).permute(1, 0, 2)  # dims before the scan dim do not collapse
    ref = f(x, y, z)
    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    opts = {"cache_dir": str(tmp_path / "store"), "executor": "inprocess", "max_candidates": 1,
            "fx_graph_cache": False, "post_grad_custom_pre_pass": record}
    try:
        with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
            out = torch.compile(f, backend="kevolve", options=opts)(x, y, z)
    finally:
        torch._dynamo.reset()
    for o, r in zip(out, ref):
        assert_exact(o, r, "compiled vs eager")
    assert len(seen) == 4 and all("cpu" in why for _, _, why in seen)
    skips = [m for _, m, _ in seen if isinstance(m, Skip)]
    assert len(skips) == 1 and "collapse" in skips[0].reason
    wants = sorted((m.spec.op, m.spec.const("values"), m.spec.const("indices")) for _, m, _ in seen
                   if isinstance(m, Match))
    assert wants == [(CUMMAX, False, True), (CUMMAX, True, True), (CUMMIN, True, False)], wants
    snap = stats.snapshot()
    assert snap["kernel_calls"] == 3 and snap["rewritten_custom_op"] == 3, snap
    found = [fi for rep in REPORTS for fi in rep if fi.family == "cumextrema"]
    assert sorted(fi.status for fi in found) == ["candidate"] * 3 + ["skipped"]
