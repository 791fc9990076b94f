"""The scatter family (index_put accumulate / scatter_add / scatter_reduce): aten semantics pinned
against eager, every template x reduction x dtype (Triton interpreter) vs the float64 reference and
eager, edge cases, out-of-range indices, the candidate space and call plans, GPU compilation (sm_90,
no device needed), matching on real post-grad graphs and one end-to-end compile."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from family_helpers import compile_and_record, firsts, pick, run_sm90, with_cfg  # noqa: E402

from torch_kevolve import families as _families

_families.all_families()  # builtins first: registering below must not pre-empt _load_builtin

from torch_kevolve.families import Match, Skip, family_for_op, get_family  # noqa: E402
from torch_kevolve.families import scatter as SC  # noqa: E402
from torch_kevolve.families.base import Candidate  # noqa: E402
from torch_kevolve.families.scatter import TEMPLATES, ScatterFamily  # noqa: E402
from torch_kevolve.kernels import launch, load_module  # noqa: E402
from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # interpreter's numpy noise
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # inf - inf and friends, on purpose
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

FAM: ScatterFamily = get_family("scatter")  # type: ignore[assignment]
REDUCES = ("sum", "prod", "mean", "amax", "amin")
NAN, INF = math.nan, math.inf
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
CUDA = DeviceSig("cuda", "NVIDIA H100 80GB HBM3", "sm_90")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def placeholders(kind: str, dtype: torch.dtype = F32, n: int = 37, d: int = 13, m: int = 29,
                 idx_dtype: torch.dtype = torch.int64) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(op, self, index, src, dim) with the layout ``kind`` names; values don't matter for a spec.

    kinds: ip (index_put dim 0), ip_dim1, ip_1d, ip_bcast (values [D]), row (scatter, index expanded
    from [M]), row_dim1, elem (scatter, [M, D] index), elem_dim1, 1d."""
    e = torch.empty
    if kind.startswith("ip"):
        idx = e(m, dtype=idx_dtype)
        if kind == "ip":
            return SC.INDEX_PUT, e(n, d, dtype=dtype), idx, e(m, d, dtype=dtype), 0
        if kind == "ip_dim1":
            return SC.INDEX_PUT, e(d, n, dtype=dtype), idx, e(d, m, dtype=dtype), 1
        if kind == "ip_1d":
            return SC.INDEX_PUT, e(n, dtype=dtype), idx, e(m, dtype=dtype), 0
        return SC.INDEX_PUT, e(n, d, dtype=dtype), idx, e(d, dtype=dtype), 0
    op = SC.SCATTER_REDUCE
    if kind == "row":
        return op, e(n, d, dtype=dtype), e(m, dtype=idx_dtype)[:, None].expand(m, d), e(m, d, dtype=dtype), 0
    if kind == "row_dim1":
        return op, e(d, n, dtype=dtype), e(m, dtype=idx_dtype)[None, :].expand(d, m), e(d, m, dtype=dtype), 1
    if kind == "elem":
        return op, e(n, d, dtype=dtype), e(m, d, dtype=idx_dtype), e(m, d + 2, dtype=dtype), 0
    if kind == "elem_dim1":
        return op, e(d, n, dtype=dtype), e(d, m, dtype=idx_dtype), e(d, m, dtype=dtype), 1
    assert kind == "1d"
    return op, e(n, dtype=dtype), e(m, dtype=idx_dtype), e(m, dtype=dtype), 0


def make_spec(kind: str = "row", dtype: torch.dtype = F32, reduce: str = "sum", include_self: bool = True,
              device: DeviceSig | None = None, **kw: Any) -> OpSpec:
    op, x, idx, src, dim = placeholders(kind, dtype, **kw)
    if op == SC.SCATTER_REDUCE and reduce == "sum" and include_self and kind.startswith("row"):
        op = SC.SCATTER_ADD  # the same kernels; exercise scatter_add's spec and eager too
    spec = FAM.spec_for(op, x, idx, src, dim, reduce, include_self)
    return dataclasses.replace(spec, device=device) if device else spec


def run_candidate(spec: OpSpec, cand: Candidate, inputs: list) -> torch.Tensor:
    plan = FAM.call_plan(spec, cand)
    (out,) = launch(load_module(cand.source), plan, inputs, poison=True)
    return out


def check(spec: OpSpec, cand: Candidate, inputs: list, vs_eager: bool = True) -> None:
    """Kernel vs the float64 reference (NaN exactly where it has NaN) and, optionally, vs eager."""
    out = run_candidate(spec, cand, inputs)
    (ref,) = FAM.reference(spec, inputs)
    dt = inputs[0].dtype
    rtol, atol = FAM.tolerance(dt)
    assert out.dtype == dt and out.shape == ref.shape and out.is_contiguous()
    assert torch.equal(out.isnan(), ref.isnan()), "NaN pattern differs (or poisoned output left unwritten)"
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol, equal_nan=True)
    if vs_eager:
        (eager,) = FAM.eager(spec, inputs)
        torch.testing.assert_close(out.double(), eager.double(), rtol=rtol, atol=atol, equal_nan=True)








def small_scan(cand: Candidate) -> Candidate:
    """Generic (prod) reductions are slow in the interpreter per tile element: shrink scan tiles."""
    if cand.template == "scan" and not cand.cfg["USE_DOT"]:
        return with_cfg(cand, BLOCK_N=8, BLOCK_M=8)
    return cand


# ------------------------------------------------------------------------------------------------
# registration, aten semantics and the reference
# ------------------------------------------------------------------------------------------------


def test_registered() -> None:
    for op in ("aten.index_put.default", "aten.index_put_.default", "aten.scatter_add.default",
               "aten.scatter_reduce.two"):
        assert family_for_op(op) is FAM
        assert op in FAM.lowered_ops  # all have Inductor lowerings (scatter_reduce's non-sum ones fall back inside)
    assert family_for_op("aten.index_add.default") is None  # decomposed before the post-grad graph
    assert family_for_op("aten._embedding_bag.default") is get_family("embedding_bag")
    assert family_for_op("aten.segment_reduce.default") is get_family("segment_reduce")
    assert set(TEMPLATES) == {"copy_atomic", "atomic", "ws_fp32", "scan", "csr"}


def _all_templates(spec: OpSpec) -> list[Candidate]:
    return [small_scan(c) for c in firsts(FAM.candidates(spec)).values()]


def test_eager_semantics_pinned() -> None:
    """What aten does on CPU, what the reference reproduces, and every template with it."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    idx = torch.tensor([0, 0, 2, 2])
    src = torch.tensor([5.0, NAN, -1.0, 7.0])
    expect = {  # (reduce, include_self) -> result; row 1 and 3 are hit by nothing: self stays
        ("amax", True): [NAN, 2.0, 7.0, 4.0], ("amax", False): [NAN, 2.0, 7.0, 4.0],
        ("amin", True): [NAN, 2.0, -1.0, 4.0], ("amin", False): [NAN, 2.0, -1.0, 4.0],
        ("sum", True): [NAN, 2.0, 9.0, 4.0], ("sum", False): [NAN, 2.0, 6.0, 4.0],
        ("prod", True): [NAN, 2.0, -21.0, 4.0], ("prod", False): [NAN, 2.0, -7.0, 4.0],
        ("mean", True): [NAN, 2.0, 3.0, 4.0], ("mean", False): [NAN, 2.0, 3.0, 4.0],
    }
    for (reduce, incl), want in expect.items():
        spec = FAM.spec_for(SC.SCATTER_REDUCE, x, idx, src, 0, reduce, incl)
        want_t = torch.tensor(want)
        torch.testing.assert_close(FAM.eager(spec, [x, idx, src])[0], want_t, equal_nan=True)
        torch.testing.assert_close(FAM.reference(spec, [x, idx, src])[0], want_t.double(), equal_nan=True)
        for cand in _all_templates(spec):
            got = run_candidate(spec, cand, [x, idx, src])
            torch.testing.assert_close(got, want_t, equal_nan=True,
                                       msg=lambda m: f"{reduce} {incl} {cand.template}: {m}")
    # mean with self: (self + sum) / (hits + 1); NaN in self matters only with include_self
    m = torch.tensor([1.0, 10.0]).scatter_reduce(0, torch.tensor([0, 0, 0]), torch.tensor([2.0, 3.0, 4.0]), "mean")
    assert m.tolist() == [2.5, 10.0]
    xs = torch.tensor([NAN, 2.0])
    assert math.isnan(xs.scatter_reduce(0, torch.tensor([0]), torch.tensor([1.0]), "amax")[0])
    assert xs.scatter_reduce(0, torch.tensor([0]), torch.tensor([1.0]), "amax", include_self=False)[0] == 1.0
    # index_put wraps negative indices; scatter and index_add reject them; out of range raises
    z = torch.zeros(3)
    assert torch.index_put(z, (torch.tensor([-1]),), torch.tensor([1.0]), accumulate=True).tolist() == [0, 0, 1]
    for bad in (lambda: torch.scatter_add(z, 0, torch.tensor([-1]), torch.tensor([1.0])),
                lambda: torch.index_add(z, 0, torch.tensor([-1]), torch.tensor([1.0])),
                lambda: torch.index_put(z, (torch.tensor([3]),), torch.tensor([1.0]), accumulate=True)):
        with pytest.raises((RuntimeError, IndexError)):
            bad()
    # index_put broadcasts values; eager accumulates fp16 in fp16 (index_put) or fp32 (scatter_add)
    b = torch.index_put(torch.zeros(3, 2), (torch.tensor([0, 0, 2]),), torch.tensor(1.0), accumulate=True)
    assert b.tolist() == [[2, 2], [0, 0], [1, 1]]
    ones = torch.ones(3000, dtype=F16)
    zero_i = torch.zeros(3000, dtype=torch.int64)
    assert float(torch.zeros(1, dtype=F16).index_put((zero_i,), ones, accumulate=True)) == 2048.0
    assert float(torch.zeros(1, dtype=F16).scatter_add(0, zero_i, ones)) == 3000.0
    # scatter_add's output is contiguous even for a transposed self (index_put's keeps the layout)
    t = torch.randn(3, 4).T
    assert torch.scatter_add(t, 0, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3)).is_contiguous()
    assert not torch.index_put(t, (torch.tensor([0]),), torch.ones(3), accumulate=True).is_contiguous()


@pytest.mark.parametrize("dt", [F32, F16, BF16])
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("include_self", [True, False])
def test_reference_matches_eager(dt: torch.dtype, reduce: str, include_self: bool) -> None:
    kinds = ("row", "elem_dim1", "1d", "row_dim1", "elem")
    kind = kinds[(REDUCES.index(reduce) + include_self) % len(kinds)]
    spec = make_spec(kind, dt, reduce, include_self, n=40, d=5, m=30)
    inputs = FAM.make_inputs(spec, seed=4)
    (ref,) = FAM.reference(spec, inputs)
    (eager,) = FAM.eager(spec, inputs)
    assert ref.shape == eager.shape == inputs[0].shape
    rtol, atol = FAM.tolerance(dt)
    torch.testing.assert_close(eager.double(), ref, rtol=rtol, atol=atol, equal_nan=True)


def test_spec_geometry_and_errors() -> None:
    spec = make_spec("ip_dim1", F16, idx_dtype=torch.int32, n=11, d=6, m=4)
    assert spec.op == "aten.index_put.default" and spec.family == "scatter"
    assert spec.consts == (("dim", 1), ("include_self", True), ("reduce", "sum"))
    assert spec.args == (TensorSig("float16", (6, 11), (11, 1)), TensorSig("int32", (4,), (1,)),
                         TensorSig("float16", (6, 4), (4, 1)))
    g = FAM.geom(spec)  # dim 1 is dim 0 of the transpose: strides swapped
    assert (g.n, g.d, g.m, g.k, g.row, g.wrap) == (11, 6, 4, 6, True, True)
    assert g.xs == (1, 11) and g.src_s == (1, 4) and g.out_s == (1, 11)
    for sp in (spec, make_spec("elem", reduce="amax", include_self=False)):  # keys survive a JSON round trip
        back = OpSpec.from_json(sp.to_json())
        assert back == sp and back.key == sp.key
    # row index: expanded along the columns (stride 0) or a single column; else per element
    assert FAM.geom(make_spec("row")).row and FAM.geom(make_spec("row_dim1")).row
    assert not FAM.geom(make_spec("elem")).row and not FAM.geom(make_spec("elem_dim1")).row
    g = FAM.geom(make_spec("ip_bcast"))  # values [D] broadcast over the M rows
    assert g.src_s == (0, 1)
    # index_put on dim 0 of a 3-D tensor: trailing dims flatten (any row stride)
    x3 = torch.empty(10, 3, 8)[:, :, :4]
    with pytest.raises(ValueError, match="flatten"):
        FAM.spec_for(SC.INDEX_PUT, x3, torch.empty(5, dtype=torch.long), torch.empty(5, 3, 4), 0)
    x3 = torch.empty(10, 13)[:, :12].unflatten(1, (3, 4))
    g = FAM.geom(FAM.spec_for(SC.INDEX_PUT, x3, torch.empty(5, dtype=torch.long), torch.empty(5, 3, 4), 0))
    assert (g.n, g.d, g.xs) == (10, 12, (13, 1))
    x, i, s = torch.empty(6, 4), torch.empty(3, 4, dtype=torch.long), torch.empty(3, 4)
    for args, needle in [
        ((SC.SCATTER_REDUCE, x.double(), i, s.double(), 0, "sum"), "float64"),
        ((SC.SCATTER_REDUCE, x, i.short(), s, 0, "sum"), "int32/int64"),
        ((SC.SCATTER_REDUCE, x, i, s.half(), 0, "sum"), "differs"),
        ((SC.SCATTER_REDUCE, x, i, s, 0, "median"), "median"),
        ((SC.SCATTER_ADD, x, i, s, 0, "amax"), "only sums"),
        ((SC.SCATTER_REDUCE, x, i, s, 2, "sum"), "out of range"),
        ((SC.SCATTER_REDUCE, torch.empty(6, 4, 2), i[..., None], s[..., None], 0, "sum"), "3-D"),
        ((SC.SCATTER_REDUCE, x, i[:, :1], s, 0, "sum"), None),  # fine: index narrower than src
        ((SC.SCATTER_REDUCE, x, torch.empty(3, 5, dtype=torch.long), s, 0, "sum"), "exceeds"),
        ((SC.INDEX_PUT, torch.empty(4, 3, 2), torch.empty(2, dtype=torch.long), torch.empty(4, 2, 2), 1, "sum"),
         "dim 1"),
        ((SC.INDEX_PUT, x, torch.empty(3, 2, dtype=torch.long), s, 0, "sum"), "1-D index"),
        ((SC.INDEX_PUT, x, torch.empty(3, dtype=torch.long), torch.empty(3, 5), 0, "sum"), "broadcast"),
        ((SC.SCATTER_REDUCE, torch.empty(0, 4), i, s, 0, "sum"), "no rows"),
        ((SC.SCATTER_REDUCE, torch.empty(70000, 64), torch.empty(70000, dtype=torch.long)[:, None].expand(70000, 64),
          torch.empty(70000, 64), 0, "prod"), "over budget"),
    ]:
        if needle is None:
            FAM.spec_for(*args)
            continue
        with pytest.raises(ValueError, match=needle):
            FAM.spec_for(*args)


@pytest.mark.parametrize(
    "dt,reduce,incl,device,expect",
    [
        (F32, "sum", True, None, {"copy_atomic", "atomic", "ws_fp32", "scan", "csr"}),
        (F32, "sum", False, None, {"copy_atomic", "ws_fp32", "scan", "csr"}),
        (F16, "sum", True, None, {"copy_atomic", "atomic", "ws_fp32", "scan", "csr"}),
        (BF16, "sum", True, None, {"ws_fp32", "scan", "csr"}),  # no bf16 atomics in the interpreter
        (BF16, "sum", True, CUDA, {"copy_atomic", "atomic", "ws_fp32", "scan", "csr"}),
        (F32, "amax", True, None, {"copy_atomic", "atomic", "ws_fp32", "scan"}),
        (F16, "amin", False, CUDA, {"ws_fp32", "scan"}),  # max/min atomics on 32-bit words only
        (F32, "mean", True, None, {"ws_fp32", "scan", "csr"}),
        (F32, "prod", False, None, {"scan"}),
    ],
)
def test_templates_for(dt, reduce, incl, device, expect) -> None:
    assert set(FAM.templates_for(make_spec("row", dt, reduce, incl, device=device))) == expect
    big = make_spec("row", dt, reduce if reduce != "prod" else "sum", incl, device=device, n=100_000, d=64, m=100_000)
    assert "scan" not in FAM.templates_for(big)  # over the scan budget


@pytest.mark.parametrize("kind", ["ip", "ip_dim1", "ip_bcast", "row", "row_dim1", "elem", "elem_dim1", "1d"])
def test_make_inputs_layout(kind: str) -> None:
    """Inputs follow the spec exactly (expanded index included, still varying along M); indices in
    range (index_put: some negative, wrapping); seed kind 1 sorted; deterministic per seed."""
    spec = make_spec(kind, n=50, d=6, m=40)
    g = FAM.geom(spec)
    negs = 0
    for seed in range(3):
        inputs = FAM.make_inputs(spec, seed)
        for sig, t in zip(spec.args, inputs):
            assert sig is not None and t is not None and sig.matches(t)
        idx = inputs[1].long()
        lo = -g.n if g.wrap else 0
        assert int(idx.min()) >= lo and int(idx.max()) < g.n
        negs += int((idx < 0).sum())
        canon = idx if kind in ("ip", "ip_dim1", "ip_bcast", "1d") else (idx if spec.const("dim") == 0 else idx.T)
        if seed % 3 == 1:
            assert bool((torch.diff(canon, dim=0) >= 0).all())
        assert canon.reshape(canon.shape[0], -1)[:, 0].unique().numel() > 5  # not one repeated value
    assert (negs > 0) == g.wrap
    a, b = FAM.make_inputs(spec, 7), FAM.make_inputs(spec, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    if not kind.startswith("ip"):  # prod: magnitudes near 1, so long products stay finite and normal
        p = FAM.make_inputs(make_spec(kind, reduce="prod", n=50, d=6, m=40), 0)[2].abs()
        assert float(p.min()) >= 0.8 and float(p.max()) <= 1.25


def test_floor_bytes() -> None:
    assert FAM.floor_bytes(make_spec("row", F16, n=1000, d=64, m=300)) == 2 * 1000 * 64 * 2 + 300 * 8 + 300 * 64 * 2
    assert FAM.floor_bytes(make_spec("elem", F32, n=100, d=8, m=30)) == 2 * 100 * 8 * 4 + 30 * 8 * 8 + 30 * 8 * 4
    assert FAM.floor_bytes(make_spec("ip_1d", F32, idx_dtype=torch.int32, n=100, m=30)) == 800 + 120 + 120


# ------------------------------------------------------------------------------------------------
# candidates and call plans
# ------------------------------------------------------------------------------------------------


def _step_fns(cand: Candidate, plan) -> list:
    mod = load_module(cand.source)
    return [(st, getattr(mod, st.kernel)) for st in plan.steps]


@pytest.mark.parametrize(
    "kind,dt,reduce,incl,n,d,m,device",
    [("row", F32, "sum", True, 1_000_000, 128, 200_000, CUDA), ("ip", BF16, "sum", True, 500_000, 64, 4096, CUDA),
     ("elem", F32, "amax", False, 20_000, 32, 50_000, None), ("row", F16, "mean", True, 4096, 256, 300_000, CUDA),
     ("1d", F32, "sum", True, 100, 1, 1_000_000, None), ("row", F32, "prod", False, 60, 16, 500, None),
     ("ip_dim1", F16, "sum", True, 37, 13, 29, None)],
)
def test_candidate_space(kind, dt, reduce, incl, n, d, m, device) -> None:
    spec = make_spec(kind, dt, reduce, incl, device=device, n=n, d=d, m=m)
    cands = FAM.candidates(spec)
    assert 4 <= len(cands) <= 40, len(cands)
    assert len({(c.template, c.config) for c in cands}) == len(cands)
    allowed = FAM.templates_for(spec)
    assert {c.template for c in cands} == set(allowed)
    g = FAM.geom(spec)
    small = g.n * g.m * g.k <= 1 << 18
    default = next(t for t in ("copy_atomic", "ws_fp32", "scan") if t in allowed)
    assert cands[0].template == ("scan" if small else default)
    for c in cands:
        assert c.origin == "template" and c.config == tuple(sorted(c.config))
        cfg = c.cfg
        assert cfg["num_warps"] in (1, 2, 4, 8) and cfg["num_stages"] in (1, 2, 3)
        plan = FAM.call_plan(spec, c)
        main = "scatter_csr_flat" if cfg.get("FLAT") else TEMPLATES[c.template][0]
        assert plan.kernel == main and plan.outputs[0].shape == tuple(spec.args[0].shape)
        assert plan.outputs[0].fill == (SC._FILL[reduce] if c.template == "atomic" else None)
        for st, fn in _step_fns(c, plan):
            assert [a for a, _ in st.args] == list(fn.arg_names), st.kernel  # every param bound once
            assert all(isinstance(x, int) and x >= 0 for x in st.grid) and (len(st.grid) < 2 or st.grid[1] <= 65535)
            assert all(math.isfinite(v) for _, v in st.args if isinstance(v, float))
        if c.template == "ws_fp32":
            assert plan.workspace[0].dtype == "float32" and plan.workspace[0].shape == (g.n * g.d,)
            assert (len(plan.workspace) == 2) == (reduce == "mean" or not incl)
        if c.template == "copy_atomic":
            assert [s.kernel for s in plan.pre] == ["scatter_copy"] + ([] if incl else ["scatter_src"])
            assert not plan.workspace
        if c.template == "csr":  # int32 counts [N] (zeroed), row pointers [N + 1], permutation [M]
            assert [(w.shape, w.dtype, w.fill) for w in plan.workspace[:3]] == [
                ((g.n,), "int32", 0), ((g.n + 1,), "int32", None), ((g.m,), "int32", None)]
            scans = (["scatter_csr_scan"] if cfg["SCAN"] == 1 else ["scatter_csr_block_sums", "scatter_csr_block_scan"])
            assert [s.kernel for s in plan.pre] == ["scatter_csr_hist", *scans, "scatter_csr_fill"]
    if "csr" in allowed:  # right after the default: the search meets it early
        assert cands[1].template == "csr"


def test_call_plan_rejects() -> None:
    spec = make_spec("row")
    c = firsts(FAM.candidates(spec))
    with pytest.raises(ValueError, match="power of two"):
        FAM.call_plan(spec, with_cfg(c["copy_atomic"], BLOCK_D=24))
    with pytest.raises(ValueError, match="cannot serve"):
        FAM.call_plan(make_spec("row", reduce="mean"), c["copy_atomic"])
    with pytest.raises(ValueError, match="USE_DOT"):
        FAM.call_plan(make_spec("elem"), with_cfg(c["scan"], USE_DOT=True, BLOCK_N=16, BLOCK_M=16, BLOCK_D=16))
    with pytest.raises(ValueError, match="unknown"):
        FAM.call_plan(spec, dataclasses.replace(c["scan"], template="nope"))


# ------------------------------------------------------------------------------------------------
# kernels vs reference and eager
# ------------------------------------------------------------------------------------------------

_KINDS = ("row", "elem", "ip", "1d", "row_dim1", "elem_dim1", "ip_dim1", "ip_bcast")
MATRIX = [
    pytest.param(reduce, incl, dt, i, id=f"{reduce}-{'self' if incl else 'noself'}-{str(dt)[6:]}")
    for i, (reduce, incl, dt) in enumerate(
        (r, incl, dt) for r in REDUCES for incl in (True, False) for dt in (F32, F16, BF16)
    )
]


@pytest.mark.parametrize("reduce,include_self,dt,i", MATRIX)
def test_kernels(reduce: str, include_self: bool, dt: torch.dtype, i: int) -> None:
    """Every template serving the spec (plus one rotating extra config) x reduce x include_self x
    dtype on small odd shapes; layouts (row/element index, dims, index_put) and index dtypes rotate."""
    kind = _KINDS[i % len(_KINDS)]
    if kind.startswith("ip") and (reduce != "sum" or not include_self):
        kind = ("row", "elem", "1d", "row_dim1", "elem_dim1")[i % 5]
    spec = make_spec(kind, dt, reduce, include_self, idx_dtype=(torch.int64, torch.int32)[(i // 2) % 2],
                     n=23, d=7, m=31)
    inputs = FAM.make_inputs(spec, seed=i)
    # eager accumulates index_put's fp16/bf16 sums in the data dtype: compare where that is accurate
    vs_eager = dt == F32 or not kind.startswith("ip")
    cands = pick(FAM.candidates(spec), rotate=i)
    assert {c.template for c in cands} == set(FAM.templates_for(spec))
    for cand in cands:
        try:
            check(spec, small_scan(cand), inputs, vs_eager=vs_eager)
        except AssertionError as e:
            raise AssertionError(f"{kind} {cand.template} {cand.cfg}: {e}") from None


EDGE_SPECS = {
    "f32-sum-row": dict(kind="row"),
    "f16-index_put": dict(kind="ip", dtype=F16, idx_dtype=torch.int32),
    "f32-amax-elem": dict(kind="elem", reduce="amax"),
    "bf16-amin-noself-row_dim1": dict(kind="row_dim1", dtype=BF16, reduce="amin", include_self=False),
    "f32-mean-1d": dict(kind="1d", reduce="mean"),
    "f16-prod-noself-elem_dim1": dict(kind="elem_dim1", dtype=F16, reduce="prod", include_self=False),
    "f32-sum-ip_bcast": dict(kind="ip_bcast"),
}
_EDGE_NAMES = {"empty_index", "single_element", "all_same_index", "untouched_rows", "sorted_runs", "odd_dims",
               "strided", "inf_values", "huge_values", "nan_values"}


@pytest.mark.parametrize("key", list(EDGE_SPECS))
def test_edge_cases(key: str) -> None:
    spec = make_spec(**EDGE_SPECS[key])
    cases = FAM.edge_cases(spec)
    g = FAM.geom(spec)
    names = {n for n, _, _ in cases}
    want = set(_EDGE_NAMES)
    if g.wrap:
        want.add("negative_index")
    if len(spec.args[0].shape) > 1 and not g.wrap:
        want.add("partial_columns")
    assert names == want
    cands = [small_scan(c) for c in firsts(FAM.candidates(spec)).values()]
    for name, cspec, inputs in cases:
        assert cspec.consts == spec.consts and cspec.op == spec.op
        assert [a.dtype for a in cspec.args] == [a.dtype for a in spec.args]
        assert FAM.geom(cspec).row == g.row or FAM.geom(cspec).k <= 1  # the index kind is kept
        for sig, t in zip(cspec.args, inputs):
            assert sig is not None and t is not None and sig.matches(t)
        if name == "strided":
            assert not inputs[0].is_contiguous() and not inputs[2].is_contiguous()
        (ref,) = FAM.reference(cspec, inputs)
        (eager,) = FAM.eager(cspec, inputs)
        dt = spec.args[0].torch_dtype
        rtol, atol = FAM.tolerance(dt)
        if dt == F32 or not g.wrap:  # eager's index_put sums fp16 in fp16 (64 equal indices: far off)
            torch.testing.assert_close(eager.double(), ref, rtol=rtol, atol=atol, equal_nan=True,
                                       msg=lambda m: f"{name}: {m}")
        for cand in cands:
            try:
                check(cspec, cand, inputs, vs_eager=False)
            except AssertionError as e:
                raise AssertionError(f"{name} / {cand.template} {cand.cfg}: {e}") from None


def test_structural_knobs() -> None:
    """Several index tiles per program, column loops, run pre-combining (row and element index) on
    sorted and duplicate-heavy indices, tiny tiles: each variant exact against the reference. (Each
    kind x template runs one variant, rotating: segmented scans are slow in the interpreter.)"""
    variants = (dict(BLOCK_M=8, TILES=4, SEG_COMBINE=True), dict(BLOCK_D=8, D_LOOP=True, SEG_COMBINE=True),
                dict(BLOCK_M=2, BLOCK_D=4, BLOCK_N=4, TILES=3), dict(BLOCK_M=4, D_LOOP=True, TILES=2))
    for i, (kind, reduce) in enumerate((("row", "sum"), ("elem", "amax"), ("ip", "sum"), ("elem_dim1", "amin"))):
        spec = make_spec(kind, F32, reduce, n=30, d=11, m=60)
        for j, t in enumerate(("copy_atomic", "atomic", "ws_fp32")):
            over = variants[(i + j) % len(variants)]
            seed = 1 if over.get("SEG_COMBINE") else 2  # sorted runs for pre-combining, else hot rows
            c = with_cfg(firsts(FAM.candidates(spec))[t], **over)
            try:
                check(spec, c, FAM.make_inputs(spec, seed), vs_eager=False)
            except AssertionError as e:
                raise AssertionError(f"{kind} {t} {over}: {e}") from None
    # hit counts (mean, include_self=False) pre-combined too; the reset step of copy_atomic
    for kind, reduce, t, over in (("row", "mean", "ws_fp32", variants[0]), ("elem", "amin", "ws_fp32", variants[1]),
                                  ("elem", "sum", "copy_atomic", variants[1]),
                                  ("row", "amax", "copy_atomic", variants[2])):
        spec = make_spec(kind, F32, reduce, False, n=30, d=11, m=60)
        c = with_cfg(firsts(FAM.candidates(spec))[t], **over)
        check(spec, c, FAM.make_inputs(spec, 1), vs_eager=False)


def test_seg_combine_and_fp32_workspace_reduce_rounding() -> None:
    """3000 fp16 ones into one row: per-element fp16 atomics stall at 2048 (as eager index_put);
    SEG_COMBINE commits each tile's run once (exact here) and the fp32 workspace is exact."""
    ones = torch.ones(3000, 1, dtype=F16)
    x = torch.zeros(2, 1, dtype=F16)
    idx = torch.zeros(3000, dtype=torch.int64)
    spec = FAM.spec_for(SC.INDEX_PUT, x, idx, ones, 0)
    c = firsts(FAM.candidates(spec))
    plain = run_candidate(spec, with_cfg(c["copy_atomic"], BLOCK_M=512, SEG_COMBINE=False), [x, idx, ones])
    seg = run_candidate(spec, with_cfg(c["copy_atomic"], BLOCK_M=512, SEG_COMBINE=True), [x, idx, ones])
    ws = run_candidate(spec, with_cfg(c["ws_fp32"], BLOCK_M=512), [x, idx, ones])
    assert float(plain[0, 0]) == 2048.0 and float(seg[0, 0]) == 3000.0 and float(ws[0, 0]) == 3000.0
    assert float(FAM.eager(spec, [x, idx, ones])[0][0, 0]) == 2048.0
    assert float(FAM.reference(spec, [x, idx, ones])[0][0, 0]) == 3000.0


@pytest.mark.parametrize("reduce", ["amax", "amin"])
def test_atomic_max_min_on_bits(reduce: str) -> None:
    """Integer atomics on float bits: signs, +-0, +-inf, NaN first / last / after inf, all orders;
    identical to eager (no tolerance) for both atomic templates and the workspace."""
    x = torch.tensor([0.0, -0.0, -5.0, 3.0, NAN, 1.0, -INF, 2.0])
    src = torch.tensor([-1.0, -3.0, 0.0, -0.0, 7.0, -7.0, NAN, 5.0, INF, -INF, 2.5, NAN, -2.5, 1e-40, -1e-40, 4.0])
    idx = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 5, 5, 6, 6, 7, 7, 7, 4])
    for incl in (True, False):
        spec = FAM.spec_for(SC.SCATTER_REDUCE, x, idx, src, 0, reduce, incl)
        (eager,) = FAM.eager(spec, [x, idx, src])
        for t, cand in firsts(FAM.candidates(spec)).items():
            for c in (cand, with_cfg(cand, BLOCK_M=1), with_cfg(cand, SEG_COMBINE=True) if t != "scan" else cand):
                out = run_candidate(spec, c, [x, idx, src])
                assert torch.equal(out.isnan(), eager.isnan()) and bool((out == eager)[~eager.isnan()].all()), (
                    t, incl, out.tolist(), eager.tolist())


@pytest.mark.parametrize("kind", ["row", "elem", "ip"])
def test_out_of_range_indices_are_masked(kind: str) -> None:
    """Eager raises; the kernels skip such entries and never write out of bounds (an out-of-bounds
    store would abort this process under the interpreter). Result = the op without those entries."""
    reduce = "amax" if kind == "elem" else "sum"
    spec = make_spec(kind, F32, reduce, n=12, d=5, m=20)
    g = FAM.geom(spec)
    x, idx, src = FAM.make_inputs(spec, 0)
    bad_vals = [g.n, g.n + 7, 2**40, -(g.n + 1)] + ([] if g.wrap else [-1])
    if g.row:  # one index per row: a fresh [M] vector, expanded like the spec's index where it is
        vec = (idx if idx.dim() == 1 else idx[:, 0]).clone()
        vec[: len(bad_vals)] = torch.tensor(bad_vals)
        keep = (vec >= (-g.n if g.wrap else 0)) & (vec < g.n)
        bad = vec if idx.dim() == 1 else vec[:, None].expand(idx.shape)
        ok = torch.where(keep, vec, 0)
        ok = ok if idx.dim() == 1 else ok[:, None].expand(idx.shape)
        src_ok = src * keep.to(src.dtype).reshape(-1, *([1] * (src.dim() - 1)))  # zero rows add nothing
    else:
        bad = idx.clone()
        bad[: len(bad_vals), 0] = torch.tensor(bad_vals)
        bad[5, 2] = -3
        keep = (bad >= 0) & (bad < g.n)
        ok = torch.where(keep, bad, 0)
        src_ok = src.clone()
        src_ok[:, : bad.shape[1]] = torch.where(keep, src[:, : bad.shape[1]], -INF)  # -inf: no-op for amax
    assert all(sig.matches(t) for sig, t in zip(spec.args, [x, bad, src]))
    with pytest.raises((RuntimeError, IndexError)):
        FAM.eager(spec, [x, bad, src])
    (ref,) = FAM.reference(spec, [x, ok, src_ok])
    for cand in firsts(FAM.candidates(spec)).values():
        out = run_candidate(spec, cand, [x, bad, src])
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{cand.template}: {m}")


def _csr(spec: OpSpec, **over: Any) -> Candidate:
    c = firsts(FAM.candidates(spec))["csr"]
    return with_cfg(c, **over) if over else c


@pytest.mark.parametrize("dt,flat", [(F32, 1), (F16, 1), (BF16, 1), (F32, 0), (BF16, 0)])
def test_csr_template(dt: torch.dtype, flat: int) -> None:
    """The counting-sort + gather-reduce template on odd shapes vs the float64 reference (and eager
    where eager is accurate): random / sorted / hot / all-equal indices, M = 0, a single row, index_put
    broadcast values and negative indices, both row-pointer scans (several steps / blocks), column
    loops, include_self=False, mean, and a scatter index narrower than the row. Both main kernels:
    the lockstep walk and FLAT (whose BLOCK_E = 16 entries per step makes the all-equal index carry a
    run across four steps)."""
    spec = make_spec("ip", dt, n=37, d=19, m=53)

    def csr_c(spec: OpSpec, **over: Any) -> Candidate:
        return _csr(spec, FLAT=flat, BLOCK_E=16, **over)

    seeds = (0, 1, 2)  # uniform (some negative), sorted, hot rows
    variants = (dict(), dict(SCAN=1, SCAN_BLOCK=16, BLOCK_N=4), dict(SCAN=2, SCAN_BLOCK=16, BLOCK_D=8, D_LOOP=True),
                dict(BLOCK_N=1, BLOCK_D=32, CSR_BLOCK_M=16))
    vs_eager = dt == F32  # eager index_put sums fp16/bf16 in the data dtype
    for seed, over in zip(seeds + (0,), variants):
        check(spec, csr_c(spec, **over), FAM.make_inputs(spec, seed), vs_eager=vs_eager)
    gen = torch.Generator().manual_seed(5)
    x, src = torch.randn(37, 19, generator=gen).to(dt), torch.randn(53, 19, generator=gen).to(dt)
    # all equal (one long CSR row, 53 lockstep steps), the last row via a negative index
    for val in (4, -1):
        idx = torch.full((53,), val, dtype=torch.int64)
        check(spec, csr_c(spec, BLOCK_N=8), [x, idx, src], vs_eager=vs_eager)
    # M = 0: out = self; a single row of self
    sp0 = FAM.spec_for(SC.INDEX_PUT, x, torch.empty(0, dtype=torch.int64), src[:0], 0)
    out = run_candidate(sp0, csr_c(sp0), [x, torch.empty(0, dtype=torch.int64), src[:0]])
    assert torch.equal(out, x)
    x1, i1 = x[:1], torch.tensor([0, -1, 0, 0, -1], dtype=torch.int32)
    sp1 = FAM.spec_for(SC.INDEX_PUT, x1, i1, src[:5], 0)
    check(sp1, csr_c(sp1), [x1, i1, src[:5]], vs_eager=vs_eager)
    # index_put broadcast values [D]
    spb = make_spec("ip_bcast", dt, n=37, d=19, m=53)
    check(spb, csr_c(spb), FAM.make_inputs(spb, 2), vs_eager=vs_eager)
    # scatter (fp32 accumulation in eager): include_self=False, mean, an index narrower than the row
    for reduce, incl in (("sum", False), ("mean", True), ("mean", False)):
        sps = make_spec("row_dim1", dt, reduce, incl, n=37, d=19, m=53)
        check(sps, csr_c(sps, BLOCK_N=8), FAM.make_inputs(sps, 1 + incl))
    xs, ss = torch.randn(9, 6, generator=gen).to(dt), torch.randn(12, 6, generator=gen).to(dt)
    iv = torch.randint(0, 9, (12,), generator=gen)[:, None].expand(12, 3)  # columns 3.. are untouched
    spn = FAM.spec_for(SC.SCATTER_ADD, xs, iv, ss, 0)
    assert FAM.geom(spn).row and FAM.geom(spn).k == 3
    check(spn, csr_c(spn), [xs, iv, ss])


def test_csr_out_of_range_and_offer() -> None:
    """Out-of-range rows are skipped by the histogram and the fill (never written out of bounds);
    -0.0 in self and NaN/inf survive; the template is offered only for row-index sum/mean with a
    small workspace, and its plan rejects bad knobs."""
    x = torch.randn(12, 5)
    x[3, 1] = -0.0  # a row nothing hits keeps self bit for bit
    idx = torch.tensor([0, 12, -13, 2**40, 5, -1, 5, 11, -12, 30])
    src = torch.randn(10, 5)
    src[4, 0], src[6, 0] = INF, NAN
    spec = FAM.spec_for(SC.INDEX_PUT, x, idx, src, 0)
    keep = (idx >= -12) & (idx < 12)
    (ref,) = FAM.reference(spec, [x, torch.where(keep, idx, 0), src * keep[:, None]])
    for over in (dict(), dict(SCAN=2, SCAN_BLOCK=16, BLOCK_N=2)):
        out = run_candidate(spec, _csr(spec, **over), [x, idx, src])
        assert torch.equal(out.isnan(), ref.isnan())
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5, equal_nan=True)
        assert torch.equal(out[3].view(torch.int32), x[3].view(torch.int32))
    # offered: row index, sum/mean, workspace small against the data; not for element indices,
    # amax/prod, or a 1-D scatter whose int32 workspace would rival the data
    assert "csr" in FAM.templates_for(make_spec("row", reduce="mean", include_self=False))
    assert "csr" not in FAM.templates_for(make_spec("elem"))
    assert "csr" not in FAM.templates_for(make_spec("row", reduce="amax"))
    assert "csr" not in FAM.templates_for(make_spec("1d", n=10_000_000, m=10))
    assert "csr" in FAM.templates_for(make_spec("1d", n=1000, m=10))  # small: always (edge cases)
    bench = make_spec("ip", F32, n=262144, d=128, m=262144, device=CUDA)
    cands = FAM.candidates(bench)
    assert cands[0].template == "copy_atomic" and {c.template for c in cands[1:8]} == {"csr"}
    with pytest.raises(ValueError, match="SCAN=3"):
        FAM.call_plan(spec, _csr(spec, SCAN=3))
    with pytest.raises(ValueError, match="CSR_BLOCK_M"):
        FAM.call_plan(spec, _csr(spec, CSR_BLOCK_M=24))
    with pytest.raises(ValueError, match="cannot serve"):
        FAM.call_plan(make_spec("elem"), _csr(spec))


_SM90_SCRIPT = r"""
from torch_kevolve.families import all_families
from torch_kevolve.families import scatter as SC

all_families()
fam = get_family("scatter")
row = e(30, dtype=torch.long)[:, None].expand(30, 40)
f16, bf16 = torch.float16, torch.bfloat16
specs = [
    fam.spec_for(SC.SCATTER_ADD, e(50, 40, dtype=torch.bfloat16), row, e(30, 40, dtype=torch.bfloat16), 0),
    fam.spec_for(SC.INDEX_PUT, e(50, 40, dtype=f16), e(30, dtype=torch.int32), e(30, 40, dtype=f16), 0),
    fam.spec_for(SC.SCATTER_REDUCE, e(50, 40), e(30, 40, dtype=torch.int32), e(30, 40), 0, "amax", False),
    fam.spec_for(SC.SCATTER_REDUCE, e(50, 40, dtype=bf16), row, e(30, 40, dtype=bf16), 0, "mean", True),
    fam.spec_for(SC.SCATTER_REDUCE, e(50, 40, dtype=f16), row, e(30, 40, dtype=f16), 0, "prod", False),
    fam.spec_for(SC.SCATTER_REDUCE, e(50, 40), row, e(30, 40), 0, "sum", False),
]


def key(spec, cand):
    cfg = cand.cfg
    return (spec.args[0].dtype, spec.const("reduce"), spec.const("include_self"), cand.template,
            cfg.get("SEG_COMBINE"), cfg.get("D_LOOP"), cfg.get("USE_DOT"), cfg.get("SCAN"), cfg.get("FLAT"))


done = set()


def pick(i, cands):
    # the first per structural variant, across all specs
    out = []
    for cand in cands:
        if key(specs[i], cand) not in done:
            done.add(key(specs[i], cand))
            out.append(cand)
    return out


for spec, cand, plan, compiled in each_plan(fam, specs, pick):
    for k in compiled:
        print("OK", key(spec, cand), k)
"""


def test_kernels_compile_for_sm90(tmp_path) -> None:
    """The GPU path: every template and structural variant (bf16 atomics on sm_90, integer-bit
    max/min, segmented scans, one-hot dots, generic prod, csr's two main kernels) compiles to sm_90 cubin, no GPU needed; the
    interpreter cannot catch GPU-only errors. A subprocess: with TRITON_INTERPRET=1 at import, triton's
    own stdlib is interpreter-only for the whole process."""
    stdout, lines = run_sm90(_SM90_SCRIPT, tmp_path, timeout=600)
    kernels = {ln.rsplit(" ", 1)[-1] for ln in lines}
    assert kernels == {"scatter_src", "scatter_copy", "scatter_atomic", "scatter_finalize", "scatter_scan",
                       "scatter_csr_hist", "scatter_csr_scan", "scatter_csr_block_sums", "scatter_csr_block_scan",
                       "scatter_csr_fill", "scatter_csr_reduce", "scatter_csr_flat"}, stdout
    assert len(lines) >= 30, stdout


# ------------------------------------------------------------------------------------------------
# match: hand-built graphs (cheap) and a real post-grad graph (torch.compile)
# ------------------------------------------------------------------------------------------------


def _graph_node(target, args: tuple, kwargs: dict | None = None, out: torch.Tensor | None = None,
                dynamic: bool = False):
    """An FX graph with one call whose tensor args (nested in lists too) are FakeTensor placeholders."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    fm = FakeTensorMode(shape_env=ShapeEnv()) if dynamic else FakeTensorMode()
    g = torch.fx.Graph()
    count = [0]

    def conv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            count[0] += 1
            n = g.placeholder(f"t{count[0]}")
            ctx = None
            if dynamic and count[0] == 1:
                ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * v.dim(),
                                               constraint_sizes=[None] * v.dim())
            n.meta["val"] = fm.from_tensor(v, symbolic_context=ctx) if ctx else fm.from_tensor(v)
            return n
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    fx_args = tuple(conv(a) for a in args)
    node = g.call_function(target, fx_args, kwargs or {})
    first = args[0]
    if out is None:
        out = torch.empty_like(first, memory_format=torch.contiguous_format)
    node.meta["val"] = fm.from_tensor(out)
    g.output((node,))
    return node, fx_args


def test_match_handbuilt() -> None:
    x, src, idx = torch.randn(6, 4), torch.randn(3, 4), torch.tensor([0, 5, 5])
    node, (xn, idxs, sn, _) = _graph_node(torch.ops.aten.index_put.default, (x, [idx], src, True))
    m = FAM.match(node)
    assert isinstance(m, Match), m
    assert m.inputs == [xn, idxs[0], sn] and m.result_users == {0: [node]}
    assert m.spec.op == SC.INDEX_PUT and m.spec.consts == (("dim", 0), ("include_self", True), ("reduce", "sum"))
    # [None, idx]: index_add on dim 1
    node, _ = _graph_node(torch.ops.aten.index_put.default, (x.T.contiguous(), [None, idx], src.T.contiguous(), True))
    m = FAM.match(node)
    assert isinstance(m, Match) and m.spec.const("dim") == 1
    node, _ = _graph_node(torch.ops.aten.scatter_reduce.two,
                          (x, 1, idx[None, :].expand(6, 3), src.T.repeat(2, 1), "mean"), {"include_self": False})
    m = FAM.match(node)
    assert isinstance(m, Match) and m.spec.consts == (("dim", 1), ("include_self", False), ("reduce", "mean"))
    assert FAM.geom(m.spec).row


def test_match_index_put_inplace() -> None:
    """zeros(...).index_add_ reaches the graph as index_put_ on a fresh buffer: served (as the
    functional op) only where nothing else sees that buffer."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fm = FakeTensorMode()
    g = torch.fx.Graph()
    idx, src = g.placeholder("idx"), g.placeholder("src")
    idx.meta["val"] = fm.from_tensor(torch.tensor([0, 2]))
    src.meta["val"] = fm.from_tensor(torch.randn(2, 4))
    full = g.call_function(torch.ops.aten.full.default, ([5, 4], 0.0), {"dtype": torch.float32})
    full.meta["val"] = fm.from_tensor(torch.zeros(5, 4))
    node = g.call_function(torch.ops.aten.index_put_.default, (full, [idx], src, True))
    node.meta["val"] = full.meta["val"]
    g.output((node,))
    m = FAM.match(node)
    assert isinstance(m, Match) and m.spec.op == SC.INDEX_PUT and m.inputs[0] is full
    other = g.call_function(torch.ops.aten.relu.default, (full,))  # the buffer is read elsewhere too
    other.meta["val"] = full.meta["val"]
    r = FAM.match(node)
    assert isinstance(r, Skip) and "seen elsewhere" in r.reason


@pytest.mark.parametrize(
    "target,args,kwargs,out,needle",
    [
        (torch.ops.aten.index_put.default, (torch.randn(6, 4), [torch.tensor([0, 1])], torch.randn(2, 4)), {}, None,
         "accumulate=False"),
        (torch.ops.aten.index_put.default, (torch.randn(6, 4), [torch.tensor([0, 1]), torch.tensor([1, 2])],
                                            torch.randn(2), True), {}, None, "several index"),
        (torch.ops.aten.index_put.default, (torch.randn(6, 4), [torch.rand(6) > 0.5], torch.randn(4), True), {}, None,
         "boolean"),
        (torch.ops.aten.scatter_add.default, (torch.randn(6, 4).double(), 0, torch.zeros(2, 4, dtype=torch.long),
                                              torch.randn(2, 4).double()), {}, None, "float64"),
        (torch.ops.aten.scatter_add.default, (torch.randn(6, 4, 2), 0, torch.zeros(2, 4, 2, dtype=torch.long),
                                              torch.randn(2, 4, 2)), {}, None, "3-D"),
        (torch.ops.aten.index_put.default, (torch.randn(4, 6).T, [torch.tensor([0, 1])], torch.randn(2, 4), True), {},
         torch.randn(4, 6).T, "contiguous"),
        (torch.ops.aten.scatter_reduce.two, (torch.randn(6, 4), 0, torch.zeros(2, 4, dtype=torch.long),
                                             torch.randn(2, 4), "amax"), {}, None, "symbolic"),
        (torch.ops.aten.relu.default, (torch.randn(3),), {}, None, "not a scatter op"),
    ],
    ids=["no-accumulate", "advanced-indexing", "bool-mask", "f64", "3d-scatter", "non-contiguous-out", "dynamic",
         "other-op"],
)
def test_match_skips(target, args, kwargs, out, needle) -> None:
    node, _ = _graph_node(target, args, kwargs, out=out, dynamic=needle == "symbolic")
    r = FAM.match(node)
    assert isinstance(r, Skip), r
    assert needle in r.reason, r.reason




def _f(x, src, idx, x1, s1):
    e = idx[:, None].expand(-1, x.shape[1])
    return (
        torch.index_add(x, 0, idx, src, alpha=2.0),  # index_put(x, [idx], src * 2, True)
        torch.index_add(x.T.contiguous(), 1, idx, src.T.contiguous()),  # index_put_ on a fresh clone, dim 1
        x.index_put((idx,), torch.tensor(1.0), accumulate=True),  # broadcast values
        torch.scatter_add(x, 0, e, src),
        x.scatter_reduce(0, e, src, "amax", include_self=False),
        x1.scatter_reduce(0, idx, s1, "mean"),
        x.half().scatter_reduce(0, e, src.half(), "sum"),
        x.double().scatter_add(0, e, src.double()),  # skipped: float64
        x.index_put((idx,), src),  # skipped: accumulate=False
        torch.zeros(10, 4).index_add_(0, idx, src),  # index_put_ on a fresh buffer
    )


@pytest.fixture(scope="module")
def compiled_graph():
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(10, 4, generator=g), torch.randn(7, 4, generator=g), torch.randint(0, 10, (7,), generator=g),
            torch.randn(10, generator=g), torch.randn(7, generator=g))
    graphs, out = compile_and_record(_f, *args)
    return graphs, out, args


def test_match_real_post_grad_graph(compiled_graph) -> None:
    """What reaches the post-grad graph, what matches, and the default candidate reproducing the
    compiled graph's outputs from the matched nodes' real inputs."""
    graphs, out, args = compiled_graph
    assert len(graphs) == 1
    nodes = [n for n in graphs[0].nodes if n.op == "call_function"]
    targets = [str(n.target) for n in nodes]
    assert "aten.index_add.default" not in targets  # decomposed
    assert targets.count("aten.index_put.default") == 3 and targets.count("aten.index_put_.default") == 2
    assert targets.count("aten.scatter_add.default") == 2 and targets.count("aten.scatter_reduce.two") == 3
    # real values: run the post-grad graph node by node (inputs of each match are kept before its node
    # runs: index_put_ mutates its input)
    gm = torch.fx.GraphModule(torch.nn.Module(), graphs[0])
    interp = torch.fx.Interpreter(gm)
    by_shape = {(tuple(a.shape), a.dtype): a for a in args}
    for p in graphs[0].nodes:
        if p.op == "placeholder":
            interp.env[p] = by_shape[(tuple(p.meta["val"].shape), p.meta["val"].dtype)]
    matched, skipped = 0, []
    for n in nodes:
        m = FAM.match(n) if str(n.target) in FAM.ops else None
        # self (input 0) is what index_put_ mutates; the others keep their layout (expanded index)
        inputs = [interp.env[i].clone() if k == 0 else interp.env[i] for k, i in enumerate(m.inputs)] \
            if isinstance(m, Match) else None
        interp.env[n] = interp.run_node(n)
        if m is None:
            continue
        if isinstance(m, Skip):
            skipped.append(m.reason)
            continue
        matched += 1
        assert m.result_users == {0: [n]} and m.spec.device.type == "cpu"
        assert all(sig.matches(t) for sig, t in zip(m.spec.args, inputs)), m.spec.describe()
        got = run_candidate(m.spec, small_scan(FAM.candidates(m.spec)[0]), inputs)
        torch.testing.assert_close(got, interp.env[n], rtol=1e-3, atol=1e-3, equal_nan=True)
    assert matched == 8 and len(skipped) == 2
    assert any("float64" in s for s in skipped) and any("accumulate=False" in s for s in skipped)


def test_inductor_fallback_reason(compiled_graph) -> None:
    """When Inductor's lowering itself calls ATen: scatter_reduce beyond sum everywhere, scatter sums
    on multi-threaded CPU; index_put never (it has an atomic lowering on CPU too)."""
    graphs, _, _ = compiled_graph
    reasons = {}
    for n in graphs[0].nodes:
        if str(n.target) in FAM.ops:
            red = n.args[4] if str(n.target) == SC.SCATTER_REDUCE else "sum"
            reasons.setdefault((str(n.target), red), FAM.inductor_fallback_reason(n))
    assert reasons[(SC.INDEX_PUT, "sum")] is None and reasons[("aten.index_put_.default", "sum")] is None
    assert "ScatterFallback" in reasons[(SC.SCATTER_REDUCE, "amax")]
    assert "ScatterFallback" in reasons[(SC.SCATTER_REDUCE, "mean")]
    from torch._inductor.utils import parallel_num_threads

    multi = parallel_num_threads() != 1
    assert (reasons[(SC.SCATTER_ADD, "sum")] is not None) == multi


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------


def _contest_setting() -> bool:
    from torch_kevolve.config import Settings

    return any(f.name == "contest" for f in dataclasses.fields(Settings))


@pytest.mark.skipif(not _contest_setting(), reason="Settings.contest (contesting lowered ops) not available")
def test_end_to_end_jit_contested_on_cpu(store_dir) -> None:
    """torch.compile(backend="kevolve", mode jit, contest all): index_add / scatter_add / zeros().index_add_
    are contested on CPU, searched, replaced by our kernels (custom-op route) and equal eager."""
    from torch_kevolve import stats
    from torch_kevolve.lowering import REPORTS

    def f(x, src, idx):
        a = torch.index_add(x, 0, idx, src)
        b = torch.scatter_add(x, 0, idx[:, None].expand(-1, x.shape[1]), src)
        c = torch.zeros(x.shape[0], x.shape[1]).index_add_(0, idx, src)
        return a * 2, b + 1, c

    g = torch.Generator().manual_seed(0)
    x, src = torch.randn(50, 8, generator=g), torch.randn(40, 8, generator=g)
    idx = torch.randint(0, 50, (40,), generator=g)
    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    opts = {"mode": "jit", "contest": "all", "max_candidates": 2, "fx_graph_cache": False}
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
        out = torch.compile(f, backend="kevolve", options=opts)(x, src, idx)
    for o, r in zip(out, f(x, src, idx)):
        torch.testing.assert_close(o, r)
    found = [fi for rep in REPORTS for fi in rep if fi.family == "scatter"]
    assert len(found) == 3 and all(fi.status == "candidate" for fi in found), [(f.op, f.detail) for f in found]
    snap = stats.snapshot()
    assert snap["kernel_calls"] == 3 and snap["searches"] == 2  # both index_puts share one spec
    torch._dynamo.reset()
