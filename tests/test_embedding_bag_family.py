"""The embedding_bag family: semantics vs eager, kernels (Triton interpreter) vs the float64
reference, edge cases, the candidate space, and matching on real post-grad graphs."""
from __future__ import annotations

import dataclasses
import operator
from typing import Any

import pytest
import torch
from family_helpers import compile_and_record, run_sm90  # noqa: E402
import torch.nn.functional as F

from torch_kevolve.families import Match, Skip, family_for_op, get_family
from torch_kevolve.families.base import Candidate, In, Out
from torch_kevolve.families.embedding_bag import MAX_TEMPLATES, TEMPLATES, EmbeddingBagFamily
from torch_kevolve.kernels import launch, load_module
from torch_kevolve.spec import OpSpec, TensorSig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # interpreter's numpy noise

FAM: EmbeddingBagFamily = get_family("embedding_bag")  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def make_spec(
    dtype: torch.dtype = torch.float32,
    mode: int = 0,
    has_psw: bool = False,
    ilo: bool = False,
    pad: int = -1,
    idx_dtype: torch.dtype = torch.int64,
    off_dtype: torch.dtype | None = None,
    v: int = 40,
    d: int = 48,
    n: int = 150,
    b: int = 12,
    op: str = "aten._embedding_bag.default",
) -> OpSpec:
    """A spec from placeholder tensors (values don't matter for a spec)."""
    w = torch.empty(v, d, dtype=dtype)
    idx = torch.zeros(n, dtype=idx_dtype)
    off = torch.zeros(b + (1 if ilo else 0), dtype=off_dtype or idx_dtype)
    psw = torch.empty(n, dtype=dtype) if has_psw else None
    return FAM.spec_for(w, idx, off, psw, mode, ilo, pad, op=op)


def run_candidate(spec: OpSpec, cand: Candidate, inputs: list) -> torch.Tensor:
    plan = FAM.call_plan(spec, cand)
    (out,) = launch(load_module(cand.source), plan, inputs, poison=True)
    return out


def check(spec: OpSpec, cand: Candidate, inputs: list, vs_eager: bool = True) -> None:
    out = run_candidate(spec, cand, inputs)
    (ref,) = FAM.reference(spec, inputs)
    w = spec.args[0]
    assert w is not None
    rtol, atol = FAM.tolerance(w.torch_dtype)
    assert out.dtype == w.torch_dtype and out.shape == ref.shape
    # NaN exactly where the reference has it (max keeps a leading NaN); elsewhere NaN is poison left
    # unwritten.
    assert torch.equal(out.isnan(), ref.isnan()), "NaN pattern differs (or poisoned output left unwritten)"
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol, equal_nan=True)
    if vs_eager:
        (eager,) = FAM.eager(spec, inputs)
        torch.testing.assert_close(out.float(), eager.float(), rtol=rtol, atol=atol, equal_nan=True)


def pick(cands: list[Candidate], rotate: int | None = None) -> list[Candidate]:
    """Per template its first proposal, plus either each template's last one (``rotate`` None)
    or one more chosen by ``rotate`` so a parametrized sweep covers many configs cheaply."""
    out: list[Candidate] = []
    for t in TEMPLATES:
        mine = [c for c in cands if c.template == t]
        for c in mine[:1] + (mine[-1:] if rotate is None else []):
            if c not in out:
                out.append(c)
    rest = [c for c in cands if c not in out]
    if rotate is not None and rest:
        out.append(rest[rotate % len(rest)])
    return out


# (mode, has_psw): aten accepts per_sample_weights only with sum.
SEMANTICS = [(0, False), (0, True), (1, False), (2, False)]
MODE_NAMES = {0: "sum", 1: "mean", 2: "max"}
MATRIX = [
    pytest.param(dt, mode, psw, ilo, pad, i, id=f"{str(dt)[6:]}-{MODE_NAMES[mode]}"
                 f"{'-psw' if psw else ''}{'-ilo' if ilo else ''}{f'-pad{pad}' if pad >= 0 else ''}")
    for i, (dt, (mode, psw), ilo, pad) in enumerate(
        (dt, sem, ilo, pad)
        for dt in (torch.float32, torch.float16)
        for sem in SEMANTICS
        for ilo in (False, True)
        for pad in (-1, 3)
    )
]


# ------------------------------------------------------------------------------------------------
# semantics: reference vs eager, aten's padding/mean rules
# ------------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert family_for_op("aten._embedding_bag.default") is FAM
    assert family_for_op("aten._embedding_bag_forward_only.default") is FAM


@pytest.mark.parametrize("dt", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode,psw", SEMANTICS)
@pytest.mark.parametrize("ilo", [False, True])
@pytest.mark.parametrize("pad", [-1, 0, 7])
@pytest.mark.parametrize("idx_dt,off_dt", [(torch.int64, torch.int64), (torch.int32, torch.int32), (torch.int32, torch.int64)])
def test_reference_matches_eager(
    dt: torch.dtype, mode: int, psw: bool, ilo: bool, pad: int, idx_dt: torch.dtype, off_dt: torch.dtype
) -> None:
    spec = make_spec(dt, mode, psw, ilo, pad, idx_dt, off_dt, v=30, d=20, n=300, b=25)
    inputs = FAM.make_inputs(spec, seed=pad + 2 * ilo)
    (ref,) = FAM.reference(spec, inputs)
    (eager,) = FAM.eager(spec, inputs)
    rtol, atol = FAM.tolerance(dt)
    torch.testing.assert_close(eager.double(), ref, rtol=rtol, atol=atol)


def test_padding_idx_semantics_pinned() -> None:
    """aten: padding rows are skipped and not counted in the mean; all-padding bag -> 0;
    F.embedding_bag wraps a negative padding_idx; a negative padding_idx at the op means none."""
    w = torch.randn(5, 3, dtype=torch.float64)
    idx = torch.tensor([2, 2, 1, 2, 0])
    off = torch.tensor([0, 2, 2])
    out = torch.ops.aten._embedding_bag(w, idx, off, False, 1, False, None, False, 2)[0]
    torch.testing.assert_close(out[0], torch.zeros(3, dtype=torch.float64))  # only padding
    torch.testing.assert_close(out[1], torch.zeros(3, dtype=torch.float64))  # empty
    torch.testing.assert_close(out[2], (w[1] + w[0]) / 2)  # divisor 2, not 3
    wrapped = F.embedding_bag(idx, w, off, mode="mean", padding_idx=-3)  # -3 -> 5 - 3 = 2
    torch.testing.assert_close(wrapped, out)
    none = torch.ops.aten._embedding_bag(w, idx, off, False, 1, False, None, False, -3)[0]
    torch.testing.assert_close(none[2], (w[1] + w[2] + w[0]) / 3)
    # Our normalization: any negative padding_idx -> -1 ("none"); reference agrees with eager.
    spec = FAM.spec_for(w.float(), idx, off, None, 1, False, -3)
    assert spec.const("padding_idx") == -1
    spec = FAM.spec_for(w.float(), idx, off, None, 1, False, 2)
    (ref,) = FAM.reference(spec, [w.float(), idx, off, None])
    torch.testing.assert_close(ref, out)


def test_spec_consts_and_versions() -> None:
    spec = make_spec(torch.float16, 1, False, True, 3, torch.int32, v=10, d=8, n=20, b=4)
    assert spec.consts == (("has_psw", False), ("include_last_offset", True), ("mode", 1), ("padding_idx", 3))
    assert spec.family == "embedding_bag" and spec.op == "aten._embedding_bag.default"
    assert dict(spec.versions)["template"] == FAM.template_version
    assert spec.args[3] is None and spec.args[2] == TensorSig("int32", (5,), (1,))
    assert make_spec(mode=2).const("mode") == 2
    for mode in (1, 2):
        with pytest.raises(ValueError, match="sum"):
            make_spec(mode=mode, has_psw=True)
    with pytest.raises(ValueError, match="mode"):
        make_spec(mode=3)


@pytest.mark.parametrize("ilo", [False, True])
def test_make_inputs_layout(ilo: bool) -> None:
    """Inputs follow the spec exactly, strided layouts included; offsets are well formed."""
    w = torch.empty(50, 24)[:, :20]  # row stride 24
    idx = torch.zeros(400, dtype=torch.int32)[::2]  # stride 2
    off = torch.zeros(30 + ilo, dtype=torch.int64)
    psw = torch.empty(200)
    spec = FAM.spec_for(w, idx, off, psw, 0, ilo, 5)
    for seed in range(3):
        inputs = FAM.make_inputs(spec, seed)
        for sig, t in zip(spec.args, inputs):
            assert sig is not None and t is not None and sig.matches(t)
        o = inputs[2]
        assert o[0] == 0 and bool((o[1:] >= o[:-1]).all())
        if ilo:
            assert int(o[-1]) == 200
        sizes = torch.diff(torch.cat([o, o.new_tensor([200])]) if not ilo else o)
        assert (sizes == 0).any(), "expected some empty bags"
        assert (inputs[1] == 5).any(), "padding_idx should occur"
        assert int(inputs[1].min()) >= 0 and int(inputs[1].max()) < 50
    a, b_ = FAM.make_inputs(spec, 7), FAM.make_inputs(spec, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b_))


def test_floor_bytes() -> None:
    spec = make_spec(torch.float16, 0, True, True, -1, torch.int32, torch.int64, v=100, d=64, n=1000, b=10)
    assert FAM.floor_bytes(spec) == 1000 * (64 * 2 + 4 + 2) + 11 * 8 + 10 * 64 * 2


# ------------------------------------------------------------------------------------------------
# candidates and call plans
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dt,d,n,b",
    [(torch.float32, 128, 80_000, 2048), (torch.float16, 64, 4096, 4096), (torch.bfloat16, 1024, 500_000, 1000),
     (torch.float32, 16, 100, 10), (torch.float32, 33, 64, 2), (torch.float32, 64, 4 * 8192, 8192)],
)
def test_candidate_space(dt: torch.dtype, d: int, n: int, b: int) -> None:
    spec = make_spec(dt, 0, False, False, -1, v=1000, d=d, n=n, b=b)
    cands = FAM.candidates(spec)
    assert 10 <= len(cands) <= 40
    assert len({(c.template, c.config) for c in cands}) == len(cands)
    assert {c.template for c in cands} == set(TEMPLATES)
    # Default by pooling factor: ~1 per bag -> bag_tile, a few -> bags_per_block, else bag_per_program.
    expect = "bag_tile" if n / b < 2 else "bags_per_block" if n / b < 6 and b >= 64 else "bag_per_program"
    assert cands[0].template == expect
    for c in cands:
        assert c.origin == "template" and c.config == tuple(sorted(c.config))
        assert c.source.startswith("import triton\nimport triton.language as tl\n")
        plan = FAM.call_plan(spec, c)
        assert plan.kernel == TEMPLATES[c.template][0]
        assert all(isinstance(g, int) and g > 0 for g in plan.grid)
        assert plan.outputs[0].shape == (b, d) and plan.outputs[0].dtype == str(dt)[6:]
        cfg = c.cfg
        assert cfg["BLOCK_D"] <= max(16, 1 << (d - 1).bit_length())
        assert cfg["num_warps"] in (1, 2, 4, 8)


def test_call_plan_binds_kernel_params() -> None:
    """Every kernel parameter is bound exactly once; psw falls back to the weight pointer."""
    for has_psw in (False, True):
        spec = make_spec(has_psw=has_psw)
        for c in pick(FAM.candidates(spec)):
            plan = FAM.call_plan(spec, c)
            fn = getattr(load_module(c.source), plan.kernel)
            assert [a for a, _ in plan.args] == list(fn.arg_names)
            args = dict(plan.args)
            assert args["psw_ptr"] == (In(3) if has_psw else In(0)) and args["HAS_PSW"] is has_psw
            assert args["out_ptr"] == Out(0) and plan.outputs[0].fill is None


# ------------------------------------------------------------------------------------------------
# kernels vs reference and eager
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dt,mode,psw,ilo,pad,i", MATRIX)
def test_kernels(dt: torch.dtype, mode: int, psw: bool, ilo: bool, pad: int, i: int) -> None:
    spec = make_spec(dt, mode, psw, ilo, pad, v=40, d=48, n=150, b=12)
    inputs = FAM.make_inputs(spec, seed=i)
    for cand in pick(FAM.candidates(spec), rotate=i):
        check(spec, cand, inputs)


@pytest.mark.parametrize("mode,psw", SEMANTICS)
def test_kernels_bf16_and_int32(mode: int, psw: bool) -> None:
    """bf16 tables (loads/casts only in the kernel), int32 indices with int64 offsets, strided."""
    w = torch.empty(64, 40, dtype=torch.bfloat16)[:, :33]
    idx = torch.zeros(240, dtype=torch.int32)[::2]
    off = torch.zeros(9, dtype=torch.int64)
    p = torch.empty(120, dtype=torch.bfloat16) if psw else None
    spec = FAM.spec_for(w, idx, off, p, mode, True, 4)
    inputs = FAM.make_inputs(spec, 3)
    for cand in pick(FAM.candidates(spec)):
        check(spec, cand, inputs)


EDGE_SPECS = {
    "f32-sum-psw-ilo-pad": dict(dtype=torch.float32, mode=0, has_psw=True, ilo=True, pad=2),
    "f16-mean-pad0-i32": dict(dtype=torch.float16, mode=1, pad=0, idx_dtype=torch.int32),
    "bf16-sum": dict(dtype=torch.bfloat16, mode=0),
    "f32-mean-ilo": dict(dtype=torch.float32, mode=1, ilo=True, d=96),
    "f16-max-pad1-ilo": dict(dtype=torch.float16, mode=2, pad=1, ilo=True),
    "bf16-max-i32": dict(dtype=torch.bfloat16, mode=2, idx_dtype=torch.int32, d=33),
}


@pytest.mark.parametrize("key", list(EDGE_SPECS))
def test_edge_cases(key: str) -> None:
    spec = make_spec(**EDGE_SPECS[key])
    cases = FAM.edge_cases(spec)
    names = [name for name, _, _ in cases]
    expected = {"all_bags_empty", "first_and_last_bag_empty", "one_bag", "one_huge_bag", "repeated_index",
                "single_element", "odd_dim_33", "strided_table", "extreme_values"}
    assert expected <= set(names)
    assert ("bags_hitting_padding_idx" in names) == (spec.const("padding_idx") >= 0)
    assert ("max_nan_inf_padding" in names) == (spec.const("mode") == 2)
    firsts = {}
    for c in FAM.candidates(spec):
        firsts.setdefault(c.template, c)
    for name, cspec, inputs in cases:
        assert cspec.consts == spec.consts and cspec.op == spec.op
        assert [a is None or a.dtype for a in cspec.args] == [a is None or a.dtype for a in spec.args]
        for sig, t in zip(cspec.args, inputs):
            assert (sig is None) == (t is None) and (sig is None or sig.matches(t))
        (ref,) = FAM.reference(cspec, inputs)
        (eager,) = FAM.eager(cspec, inputs)
        rtol, atol = FAM.tolerance(cspec.args[0].torch_dtype)
        torch.testing.assert_close(eager.double(), ref, rtol=rtol, atol=atol, equal_nan=True,
                                   msg=lambda m: f"{name}: {m}")
        for t, cand in firsts.items():
            # bag_tile walks positions one at a time: 5000 steps take ~6 s in the interpreter.
            if t == "bag_tile" and name == "one_huge_bag":
                continue
            try:
                check(cspec, cand, inputs)
            except AssertionError as e:
                raise AssertionError(f"{name} / {t} {cand.cfg}: {e}") from None


def test_all_padding_mean_is_zero_and_empty_bags_zero() -> None:
    w = torch.randn(6, 20)
    idx = torch.tensor([1, 1, 1, 2, 1, 3])
    off = torch.tensor([0, 3, 3, 6])  # ilo: bags [1,1,1], [], [2,1,3]
    spec = FAM.spec_for(w, idx, off, None, 1, True, 1)
    for cand in pick(FAM.candidates(spec)):
        out = run_candidate(spec, cand, [w, idx, off, None])
        torch.testing.assert_close(out[0], torch.zeros(20))
        torch.testing.assert_close(out[1], torch.zeros(20))
        torch.testing.assert_close(out[2], (w[2] + w[3]) / 2)


def test_max_semantics_pinned() -> None:
    """aten's max, CPU (the CUDA kernel has the same rule): the first non-padding entry seeds each
    column, later ones replace it only when greater -> NaN survives only when first, also right
    after padding; empty and all-padding bags are 0; -inf stays -inf. Reference and every template
    agree, fp32 and fp16 tables."""
    nan, inf = float("nan"), float("inf")
    w = torch.tensor([[1.0, -2.0], [3.0, -4.0], [nan, 5.0], [-1.0, nan], [-inf, -8.0], [9.0, 9.0]])
    idx = torch.tensor([2, 0, 0, 2, 1, 3, 0, 5, 5, 4, 4, 5, 2, 1])
    off = torch.tensor([0, 2, 5, 7, 7, 9, 11, 14])  # ilo: 7 bags
    eager = torch.ops.aten._embedding_bag(w, idx, off, False, 2, False, None, True, 5)[0]
    expect = torch.tensor([[nan, 5.0],  # [2, 0]: NaN first in column 0
                           [3.0, 5.0],  # [0, 2, 1]: NaN later -> dropped
                           [1.0, nan],  # [3, 0]: column 0 -1 then 1; column 1 NaN first
                           [0.0, 0.0],  # empty
                           [0.0, 0.0],  # [5, 5]: only padding
                           [-inf, -8.0],  # [4, 4]
                           [nan, 5.0]])  # [5, 2, 1]: padding, then NaN first
    torch.testing.assert_close(eager, expect, equal_nan=True)
    for dt in (torch.float32, torch.float16):
        spec = FAM.spec_for(w.to(dt), idx, off, None, 2, True, 5)
        inputs = [w.to(dt), idx, off, None]
        torch.testing.assert_close(FAM.reference(spec, inputs)[0], expect.double(), equal_nan=True)
        for cand in pick(FAM.candidates(spec)):
            check(spec, cand, inputs)
            assert cand.source == MAX_TEMPLATES[cand.template][1]


def test_max_call_plans_use_the_max_kernels() -> None:
    spec = make_spec(mode=2, pad=3)
    cands = FAM.candidates(spec)
    assert {c.template for c in cands} == set(TEMPLATES)
    sum_cands = {(c.template, c.config) for c in FAM.candidates(make_spec(mode=0, pad=3))}
    assert {(c.template, c.config) for c in cands} == sum_cands  # the same space, other sources
    for c in pick(cands):
        plan = FAM.call_plan(spec, c)
        fn = getattr(load_module(c.source), plan.kernel)
        assert plan.kernel == MAX_TEMPLATES[c.template][0] and [a for a, _ in plan.args] == list(fn.arg_names)
        assert dict(plan.args)["MODE"] == 2 and dict(plan.args)["HAS_PSW"] is False
        # A sum/mean source cannot serve a max spec (nor the reverse): it would pool the wrong way.
        with pytest.raises(ValueError, match="no kernel"):
            FAM.call_plan(spec, dataclasses.replace(c, source=TEMPLATES[c.template][1]))
        with pytest.raises(ValueError, match="no kernel"):
            FAM.call_plan(make_spec(mode=0, pad=3), c)


_SM90_SCRIPT = r"""
fam = get_family("embedding_bag")
specs = [fam.spec_for(torch.empty(40, 48, dtype=torch.bfloat16), torch.zeros(150, dtype=torch.int32),
                      torch.zeros(13, dtype=torch.int64), None, 2, True, 3)]

for spec, cand, plan, compiled in each_plan(fam, specs, first_per(lambda c: (c.template, c.cfg.get("ACC_TILE")))):
    for k in compiled:
        print("OK", cand.template, k)
"""


def test_max_kernels_compile_for_sm90(tmp_path) -> None:
    """mode='max' kernels (int8 NaN tracking, carried counts; ACC_TILE too) compile to sm_90 cubin
    under Triton's CUDA backend, no GPU needed. A subprocess: the interpreter owns this one."""
    stdout, lines = run_sm90(_SM90_SCRIPT, tmp_path)
    assert len(lines) == 4, stdout  # 3 templates, bag_per_program with and without ACC_TILE


# ------------------------------------------------------------------------------------------------
# match: hand-built graphs (cheap) and real post-grad graphs (torch.compile, shared)
# ------------------------------------------------------------------------------------------------


def _graph_node(
    tensors: dict[str, Any],
    mode: int = 0,
    ilo: bool = False,
    pad: int = -1,
    use: tuple[int, ...] = (0,),
    dead: tuple[int, ...] = (),
    extra_user: bool = False,
    dynamic: bool = False,
    kwargs_form: bool = False,
):
    """An FX graph with one _embedding_bag node whose inputs carry FakeTensor metadata."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    fm = FakeTensorMode(shape_env=ShapeEnv()) if dynamic else FakeTensorMode()
    g = torch.fx.Graph()
    nodes = {}
    for name in ("weight", "indices", "offsets", "psw"):
        t = tensors.get(name)
        if t is None:
            nodes[name] = None
            continue
        n = g.placeholder(name)
        ctx = None
        if dynamic and name == "weight":
            ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * t.dim(), constraint_sizes=[None] * t.dim())
        n.meta["val"] = fm.from_tensor(t, symbolic_context=ctx) if ctx else fm.from_tensor(t)
        nodes[name] = n
    target = torch.ops.aten._embedding_bag.default
    if kwargs_form:
        node = g.call_function(target, (nodes["weight"], nodes["indices"], nodes["offsets"]),
                               {"mode": mode, "per_sample_weights": nodes["psw"], "include_last_offset": ilo,
                                "padding_idx": pad})
    else:
        node = g.call_function(target, (nodes["weight"], nodes["indices"], nodes["offsets"], False, mode, False,
                                        nodes["psw"], ilo, pad))
    outs = [g.call_function(operator.getitem, (node, i)) for i in use]
    for i in dead:  # getitems nobody reads (Inductor leaves these behind)
        g.call_function(operator.getitem, (node, i))
    if extra_user:
        outs.append(g.call_function(torch.ops.aten.clone.default, (node,)))
    g.output(tuple(outs))
    return node, nodes, outs


def _base_tensors(**over: Any) -> dict[str, Any]:
    t = {"weight": torch.randn(10, 8), "indices": torch.randint(0, 10, (20,)), "offsets": torch.tensor([0, 5, 9]),
         "psw": None}
    t.update(over)
    return t


def test_match_handbuilt() -> None:
    node, nodes, outs = _graph_node(_base_tensors(psw=torch.rand(20)), ilo=True, pad=-4, dead=(1, 2, 3))
    m = FAM.match(node)
    assert isinstance(m, Match), m
    assert m.inputs == [nodes["weight"], nodes["indices"], nodes["offsets"], nodes["psw"]]
    assert m.result_users == {0: [outs[0]]}
    assert m.spec.const("padding_idx") == -1 and m.spec.const("has_psw") is True
    assert m.spec.args[2] == TensorSig("int64", (3,), (1,))

    node, nodes, _ = _graph_node(_base_tensors(), mode=1, pad=3, kwargs_form=True)
    m = FAM.match(node)
    assert isinstance(m, Match) and m.spec.const("mode") == 1 and m.spec.const("padding_idx") == 3
    assert m.inputs[3] is None


@pytest.mark.parametrize(
    "tensors,kw,needle",
    [
        (_base_tensors(psw=torch.rand(20)), dict(mode=2), "mode != sum"),
        (_base_tensors(weight=torch.randn(10, 8, dtype=torch.float64)), {}, "float64"),
        (_base_tensors(indices=torch.randint(0, 10, (20,), dtype=torch.int16)), {}, "int32/int64"),
        (_base_tensors(weight=torch.randn(8, 10).t()), {}, "stride"),
        (_base_tensors(weight=torch.randn(10, 8, 2)), {}, "2-D"),
        (_base_tensors(psw=torch.rand(20, dtype=torch.float16)), {}, "per_sample_weights dtype"),
        (_base_tensors(psw=torch.rand(20)), dict(mode=1), "mode != sum"),
        (_base_tensors(), dict(use=(0, 1)), "offset2bag/bag_size/max_indices are used"),
        (_base_tensors(), dict(use=(0, 3)), "training graph"),
        (_base_tensors(), dict(extra_user=True), "not a getitem"),
        (_base_tensors(), dict(dynamic=True), "symbolic"),
    ],
    ids=["psw-max", "f64", "int16", "col-major", "3d", "psw-dtype", "psw-mean", "offset2bag", "max_indices",
         "non-getitem", "dynamic"],
)
def test_match_skips(tensors: dict, kw: dict, needle: str) -> None:
    node, _, _ = _graph_node(tensors, **kw)
    r = FAM.match(node)
    assert isinstance(r, Skip), r
    assert needle in r.reason, r.reason


def test_match_rejects_other_ops() -> None:
    g = torch.fx.Graph()
    x = g.placeholder("x")
    n = g.call_function(torch.ops.aten.relu.default, (x,))
    assert isinstance(FAM.match(n), Skip)




_V = 20


@pytest.fixture(scope="module")
def inference_graph():
    """One inference compile holding three embedding_bags: sum+psw+ilo+padding, mean int32, max."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(_V, 16, generator=g)
    idx = torch.randint(0, _V, (30,), generator=g)
    off = torch.tensor([0, 4, 4, 17, 30])
    psw = torch.rand(30, generator=g)
    idx32, off32 = idx.int(), torch.tensor([0, 10, 11], dtype=torch.int32)

    def f(w, idx, off, psw, idx32, off32):
        a = F.embedding_bag(idx, w, off, mode="sum", per_sample_weights=psw, include_last_offset=True, padding_idx=-2)
        b = F.embedding_bag(idx32, w, off32, mode="mean", padding_idx=None)
        c = F.embedding_bag(idx, w, off[:-1], mode="max")
        return a * 2, b + 1, c

    args = (w, idx, off, psw, idx32, off32)
    with torch.no_grad():
        graphs, out = compile_and_record(f, *args, no_grad=False)
    return graphs, out, args


@pytest.fixture(scope="module")
def training_graph():
    w = torch.randn(_V, 16, requires_grad=True)
    idx = torch.randint(0, _V, (30,))
    off = torch.tensor([0, 4, 4, 17])

    def f(w, idx, off):
        return F.embedding_bag(idx, w, off, mode="mean")

    graphs, _ = compile_and_record(f, w, idx, off, no_grad=False)
    return graphs


def _bag_nodes(graphs: list[torch.fx.Graph]) -> list:
    return [n for gr in graphs for n in gr.nodes if str(n.target) in EmbeddingBagFamily.ops]


def test_match_real_inference_graph(inference_graph) -> None:
    graphs, out, (w, idx, off, psw, idx32, off32) = inference_graph
    nodes = _bag_nodes(graphs)
    assert len(nodes) == 3
    results = [FAM.match(n) for n in nodes]
    matches = [r for r in results if isinstance(r, Match)]
    skips = [r for r in results if isinstance(r, Skip)]
    assert len(matches) == 3 and not skips
    by_mode = {m.spec.const("mode"): m for m in matches}
    s = by_mode[0].spec
    assert s.op in EmbeddingBagFamily.ops
    # F.embedding_bag's padding_idx=-2 reaches the op wrapped to V - 2.
    assert s.consts == (("has_psw", True), ("include_last_offset", True), ("mode", 0), ("padding_idx", _V - 2))
    assert s.args == (TensorSig.of(w), TensorSig.of(idx), TensorSig.of(off), TensorSig.of(psw))
    assert s.device.type == "cpu"
    assert len(by_mode[0].result_users[0]) == 1
    assert all(x is not None for x in by_mode[0].inputs)
    s1 = by_mode[1].spec
    assert s1.consts == (("has_psw", False), ("include_last_offset", False), ("mode", 1), ("padding_idx", -1))
    assert s1.args[1] == TensorSig.of(idx32) and by_mode[1].inputs[3] is None
    # The default candidate on the real inputs reproduces the compiled graph's outputs.
    with torch.no_grad():
        for m, inputs, expect in ((by_mode[0], [w, idx, off, psw], out[0] / 2), (by_mode[1], [w, idx32, off32, None], out[1] - 1),
                                  (by_mode[2], [w, idx, off[:-1], None], out[2])):
            cand = FAM.candidates(m.spec)[0]
            got = run_candidate(m.spec, cand, inputs)
            torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_match_real_training_graph_skips(training_graph) -> None:
    nodes = _bag_nodes(training_graph)
    assert nodes, "expected an _embedding_bag node in the forward graph"
    fwd = [n for n in nodes if str(n.target) == "aten._embedding_bag.default"]
    assert fwd
    for n in fwd:
        r = FAM.match(n)
        assert isinstance(r, Skip) and "training graph" in r.reason, r
