"""The segment_reduce family: aten semantics pinned against eager, kernels (Triton interpreter) vs the
float64 reference and eager, edge cases, the candidate space, call plans, GPU compilation (sm_90, no
device needed) and matching on real post-grad graphs."""
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
from torch_kevolve.families import segment_reduce as SR  # noqa: E402  (registers the family)
from torch_kevolve.families.base import Candidate, In, Out, OutBuf, Ws  # noqa: E402
from torch_kevolve.families.segment_reduce import TEMPLATES, SegmentReduceFamily  # noqa: E402
from torch_kevolve.kernels import launch, load_module  # noqa: E402
from torch_kevolve.spec import OpSpec, TensorSig  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # interpreter's numpy noise
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # 0/0 and all-NaN slices, on purpose
]

FAM: SegmentReduceFamily = get_family("segment_reduce")  # type: ignore[assignment]
REDUCES = ("sum", "mean", "max", "min", "prod")
NAN, INF = math.nan, math.inf
SR_OP = torch.ops.aten.segment_reduce.default


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def make_spec(
    dtype: torch.dtype = torch.float32,
    reduce: str = "sum",
    use_offsets: bool = False,
    initial: Any = None,
    seg_dtype: torch.dtype = torch.int64,
    n: int = 60,
    trailing: tuple[int, ...] = (24,),
    s: int = 10,
) -> OpSpec:
    """A spec from placeholder tensors (values don't matter for a spec)."""
    data = torch.empty((n,) + trailing, dtype=dtype)
    segs = torch.zeros(s + (1 if use_offsets else 0), dtype=seg_dtype)
    return FAM.spec_for(data, reduce, lengths=None if use_offsets else segs, offsets=segs if use_offsets else None,
                        initial=initial)


def run_candidate(spec: OpSpec, cand: Candidate, inputs: list) -> torch.Tensor:
    plan = FAM.call_plan(spec, cand)
    (out,) = launch(load_module(cand.source), plan, inputs, poison=True)
    return out


def _longest(spec: OpSpec, inputs: list) -> int:
    segs = inputs[1].reshape(-1).long()
    lens = segs[1:] - segs[:-1] if spec.const("use_offsets") else segs
    return int(lens.max()) if lens.numel() else 0


def check(spec: OpSpec, cand: Candidate, inputs: list, vs_eager: bool | None = None) -> None:
    """Kernel vs float64 reference (NaN exactly where the reference has it) and, where eager's own
    data-dtype accumulation is accurate enough, vs eager."""
    out = run_candidate(spec, cand, inputs)
    (ref,) = FAM.reference(spec, inputs)
    dt = inputs[0].dtype
    rtol, atol = FAM.tolerance(dt)
    assert out.dtype == dt and out.shape == ref.shape
    assert torch.equal(out.isnan(), ref.isnan()), "NaN pattern differs (or poisoned output left unwritten)"
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol, equal_nan=True)
    if vs_eager is None:  # eager accumulates fp16/bf16 in fp16/bf16: only short segments compare
        vs_eager = dt == torch.float32 or spec.const("reduce") in ("max", "min") or _longest(spec, inputs) <= 8
    if vs_eager:
        (eager,) = FAM.eager(spec, inputs)
        torch.testing.assert_close(out.double(), eager.double(), rtol=rtol, atol=atol, equal_nan=True)








def scan_variants(spec: OpSpec, block: int | None = None) -> dict[tuple[str, int], Candidate]:
    """Per template and scan kind (1: one-program scan, 2: two-level) a candidate on scanned starts:
    the template's first scan candidate with that kind (and SCAN_BLOCK ``block`` when given)."""
    out: dict[tuple[str, int], Candidate] = {}
    cands = FAM.candidates(spec)
    for c in cands:
        if c.cfg.get("SCAN"):
            for kind in (1, 2):
                out.setdefault((c.template, kind), with_cfg(c, SCAN=kind, SCAN_BLOCK=block or c.cfg["SCAN_BLOCK"]))
    return out


# ------------------------------------------------------------------------------------------------
# aten semantics (eager on CPU) and the reference
# ------------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert family_for_op("aten.segment_reduce.default") is FAM
    assert family_for_op("aten._embedding_bag.default") is get_family("embedding_bag")


def test_eager_semantics_pinned() -> None:
    """What aten does, and what the family reproduces."""
    data = torch.tensor([1.0, 2.0, NAN, 4.0, 5.0, -INF, 7.0])
    lengths = torch.tensor([0, 2, 2, 0, 3])

    def sr(reduce: str, **kw: Any) -> torch.Tensor:
        return torch.segment_reduce(data, reduce, lengths=lengths, **kw)

    # Empty segments: sum 0, prod 1, max -inf, min +inf, mean NaN.
    torch.testing.assert_close(sr("sum"), torch.tensor([0.0, 3.0, NAN, 0.0, -INF]), equal_nan=True)
    torch.testing.assert_close(sr("prod"), torch.tensor([1.0, 2.0, NAN, 1.0, -INF]), equal_nan=True)
    torch.testing.assert_close(sr("max"), torch.tensor([-INF, 2.0, NAN, -INF, 7.0]), equal_nan=True)  # NaN wins
    torch.testing.assert_close(sr("min"), torch.tensor([INF, 1.0, NAN, INF, -INF]), equal_nan=True)
    torch.testing.assert_close(sr("mean"), torch.tensor([NAN, 1.5, NAN, NAN, -INF]), equal_nan=True)
    # initial seeds the reduction; empty segments are the initial; mean = (initial + sum) / len.
    torch.testing.assert_close(sr("sum", initial=3.0), torch.tensor([3.0, 6.0, NAN, 3.0, -INF]), equal_nan=True)
    torch.testing.assert_close(sr("prod", initial=3.0), torch.tensor([3.0, 6.0, NAN, 3.0, -INF]), equal_nan=True)
    torch.testing.assert_close(sr("max", initial=3.0), torch.tensor([3.0, 3.0, NAN, 3.0, 7.0]), equal_nan=True)
    torch.testing.assert_close(sr("min", initial=3.0), torch.tensor([3.0, 1.0, NAN, 3.0, -INF]), equal_nan=True)
    torch.testing.assert_close(sr("mean", initial=3.0), torch.tensor([3.0, 3.0, NAN, 3.0, -INF]), equal_nan=True)
    # offsets need not start at 0; lengths win when both are given.
    x = torch.arange(6.0)
    shifted = torch.segment_reduce(x, "sum", offsets=torch.tensor([1, 2, 6]))
    torch.testing.assert_close(shifted, torch.tensor([1.0, 14.0]))
    both = torch.segment_reduce(x, "sum", lengths=torch.tensor([2, 4]), offsets=torch.tensor([1, 2, 6]))
    torch.testing.assert_close(both, torch.tensor([1.0, 14.0]))
    # Eager accumulates in the data dtype: 3000 fp16 ones sum to 2048 (bf16: 256). We don't.
    ones = torch.ones(3000, dtype=torch.float16)
    assert float(torch.segment_reduce(ones, "sum", lengths=torch.tensor([3000]))) == 2048.0
    assert float(torch.segment_reduce(ones.bfloat16(), "sum", lengths=torch.tensor([3000]))) == 256.0
    spec = FAM.spec_for(ones, "sum", lengths=torch.tensor([3000]))
    cand = firsts(FAM.candidates(spec))["seg_per_program"]
    assert float(run_candidate(spec, cand, [ones, torch.tensor([3000])])) == 3000.0
    # initial is converted to the data dtype (and eager raises if it overflows it).
    h = torch.tensor([1.0, -2.0], dtype=torch.float16)
    assert float(torch.segment_reduce(h, "max", lengths=torch.tensor([2, 0]), initial=1.0001)[1]) == 1.0
    assert FAM.spec_for(h, "max", lengths=torch.tensor([2, 0]), initial=1.0001).const("initial") == 1.0
    with pytest.raises(RuntimeError, match="overflow"):
        torch.segment_reduce(h, "sum", lengths=torch.tensor([2]), initial=70000.0)
    with pytest.raises(ValueError, match="overflows"):
        FAM.spec_for(h, "sum", lengths=torch.tensor([2]), initial=70000.0)


@pytest.mark.parametrize("dt", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("use_offsets", [False, True])
@pytest.mark.parametrize("initial", [None, 1.5])
def test_reference_matches_eager(dt: torch.dtype, reduce: str, use_offsets: bool, initial: float | None) -> None:
    # avg 3 rows per segment: eager's fp16/bf16 accumulation stays within tolerance
    spec = make_spec(dt, reduce, use_offsets, initial, torch.int32 if use_offsets else torch.int64,
                     n=90, trailing=(3, 2), s=30)
    inputs = FAM.make_inputs(spec, seed=7)
    (ref,) = FAM.reference(spec, inputs)
    (eager,) = FAM.eager(spec, inputs)
    assert ref.shape == eager.shape == (30, 3, 2)
    rtol, atol = FAM.tolerance(dt)
    torch.testing.assert_close(eager.double(), ref, rtol=rtol, atol=atol, equal_nan=True)


def test_spec_consts_and_errors() -> None:
    spec = make_spec(torch.float16, "mean", True, 2, torch.int32, n=10, trailing=(2, 3), s=4)
    assert spec.consts == (("initial", 2.0), ("reduce", "mean"), ("use_offsets", True))
    assert spec.family == "segment_reduce" and spec.op == "aten.segment_reduce.default"
    assert spec.args == (TensorSig("float16", (10, 2, 3), (6, 3, 1)), TensorSig("int32", (5,), (1,)))
    assert dict(spec.versions)["template"] == FAM.template_version
    assert make_spec(initial=True).const("initial") == 1.0 and make_spec(initial=-INF).const("initial") == -INF
    for sp in (spec, make_spec(initial=-INF), make_spec(reduce="prod")):  # keys survive a JSON round trip
        back = OpSpec.from_json(sp.to_json())
        assert back == sp and back.key == sp.key
    assert FAM._dims(spec) == (10, 6, 4)
    x, ln = torch.empty(6, 4), torch.tensor([2, 4])
    for kw, needle in [
        (dict(indices=ln), "indices"),
        (dict(), "neither"),
        (dict(lengths=ln, axis=1), "axis"),
        (dict(lengths=ln, reduce="median"), "median"),
        (dict(lengths=ln, initial=NAN), "nan"),
        (dict(lengths=ln.short()), "int32/int64"),
        (dict(lengths=ln[None]), "1-D"),
        (dict(lengths=torch.zeros(0, dtype=torch.int64)), "no segments"),
        (dict(data=torch.empty(6, 4, dtype=torch.float64), lengths=ln), "float64"),
        (dict(data=torch.empty(6, 4, 3).transpose(1, 2), lengths=ln), "flatten"),
    ]:
        kw = dict(kw)
        args = dict(data=kw.pop("data", x), reduce=kw.pop("reduce", "sum"))
        with pytest.raises(ValueError, match=needle):
            FAM.spec_for(args["data"], args["reduce"], **kw)
    # axis=-ndim is axis 0; size-1 trailing dims may have any stride; a row stride is fine.
    assert FAM.spec_for(x, "sum", lengths=ln, axis=-2).args[0] == TensorSig.of(x)
    FAM.spec_for(torch.empty(60).as_strided((6, 1, 4), (9, 100, 1)), "sum", lengths=ln)


@pytest.mark.parametrize("use_offsets", [False, True])
def test_make_inputs_layout(use_offsets: bool) -> None:
    """Inputs follow the spec exactly, strided layouts included; segments cover all rows."""
    data = torch.empty(200, 24)[:, :20]  # row stride 24
    segs = torch.zeros(2 * (30 + use_offsets), dtype=torch.int32)[::2]  # stride 2
    spec = FAM.spec_for(data, "max", lengths=None if use_offsets else segs, offsets=segs if use_offsets else None)
    for seed in range(3):
        inputs = FAM.make_inputs(spec, seed)
        for sig, t in zip(spec.args, inputs):
            assert sig is not None and t is not None and sig.matches(t)
        sg = inputs[1].long()
        lens = torch.diff(sg) if use_offsets else sg
        if use_offsets:
            assert int(sg[0]) == 0 and int(sg[-1]) == 200
        assert int(lens.sum()) == 200 and bool((lens >= 0).all())
        assert (lens == 0).any(), "expected some empty segments"
    a, b = FAM.make_inputs(spec, 7), FAM.make_inputs(spec, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # prod: magnitudes near 1 (long products stay finite and normal)
    pspec = make_spec(reduce="prod", n=500)
    v = FAM.make_inputs(pspec, 0)[0].abs()
    assert float(v.min()) >= 0.8 and float(v.max()) <= 1.25


def test_floor_bytes() -> None:
    spec = make_spec(torch.float16, "sum", True, None, torch.int32, n=1000, trailing=(4, 16), s=10)
    assert FAM.floor_bytes(spec) == 1000 * 64 * 2 + 11 * 4 + 10 * 64 * 2


# ------------------------------------------------------------------------------------------------
# candidates and call plans
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dt,n,d,s",
    [(torch.float32, 1_000_000, 64, 125_000), (torch.float16, 4_000_000, 1, 100_000),
     (torch.bfloat16, 200_000, 256, 1000), (torch.float32, 65536, 32, 4096), (torch.float32, 100_000, 1, 100),
     (torch.float32, 60, 24, 10)],
)
@pytest.mark.parametrize("use_offsets", [True, False])
def test_candidate_space(dt: torch.dtype, n: int, d: int, s: int, use_offsets: bool) -> None:
    spec = make_spec(dt, "sum", use_offsets, n=n, trailing=(d,), s=s)
    cands = FAM.candidates(spec)
    assert 10 <= len(cands) <= 35
    assert len({(c.template, c.config) for c in cands}) == len(cands)
    templates = {c.template for c in cands}
    avg = n / s
    assert templates == set(TEMPLATES)
    # Lengths: every template on scanned starts (both scan kinds offered); in-kernel prefixes only
    # for small S and within the budget (one segment per program is O(S^2)).
    scans = {c.cfg.get("SCAN", 0) for c in cands}
    assert scans == ({0} if use_offsets else {1, 2} | ({0} if s <= SR._PREFIX_MAX_S else set()))
    if not use_offsets:
        assert {c.template for c in cands if c.cfg.get("SCAN")} == set(TEMPLATES)
        assert bool(cands[0].cfg.get("SCAN")) == (s > SR._PREFIX_FIRST_S)
    expect = "seg_per_program" if avg >= 32 or s < 64 else "seg_tile"
    assert cands[0].template == expect
    for c in cands:
        assert c.origin == "template" and c.config == tuple(sorted(c.config))
        assert c.source.startswith("import triton\nimport triton.language as tl\n")
        cfg = c.cfg
        assert cfg["num_warps"] in (1, 2, 4, 8) and cfg["num_stages"] in (1, 2, 3)
        assert cfg["BLOCK_D"] <= max(1, 1 << (d - 1).bit_length())
        plan = FAM.call_plan(spec, c)
        assert plan.kernel == TEMPLATES[c.template][0]
        assert all(isinstance(g, int) and g > 0 for g in plan.grid) and plan.grid[1] <= 65535
        assert plan.outputs[0].shape == (s, d) and plan.outputs[0].dtype == str(dt)[6:]
        if c.template == "seg_chunk":
            assert plan.grid[0] <= cfg["PROGRAMS"]
            per = dict(plan.args)["segs_per_prog"]
            assert per % cfg["BLOCK_S"] == 0 and per * plan.grid[0] >= s
        if c.cfg.get("SCAN"):
            assert plan.args[1] == ("seg_ptr", Ws(0)) and dict(plan.args)["USE_OFFSETS"] is True
            assert plan.workspace[0] == OutBuf((s + 1,), "int64") and len(plan.pre) == c.cfg["SCAN"]
        else:
            assert not plan.pre and not plan.workspace
            if not use_offsets:
                assert plan.grid[0] * plan.grid[1] * s / 2 <= SR._PREFIX_BUDGET


def test_call_plan_binds_kernel_params() -> None:
    """Every kernel parameter bound exactly once; non-finite initials travel as INIT_INF."""
    for use_offsets, initial, init_inf in ((False, None, 0), (True, -INF, -1), (False, INF, 1), (True, 2.5, 0)):
        spec = make_spec(reduce="max", use_offsets=use_offsets, initial=initial)
        for c in firsts(FAM.candidates(spec)).values():
            plan = FAM.call_plan(spec, c)
            fn = getattr(load_module(c.source), plan.kernel)
            assert [a for a, _ in plan.args] == list(fn.arg_names)
            args = dict(plan.args)
            assert args["data_ptr"] == In(0) and args["seg_ptr"] == In(1) and args["out_ptr"] == Out(0)
            assert args["USE_OFFSETS"] is use_offsets and args["HAS_INITIAL"] is (initial is not None)
            assert args["INIT_INF"] == init_inf and args["REDUCE"] == 2 and args["PREFIX_I64"] is False
            assert all(math.isfinite(v) for v in args.values() if isinstance(v, float))
            assert plan.outputs[0].fill is None
    spec = make_spec()
    c = FAM.candidates(spec)[0]
    with pytest.raises(ValueError, match="power of two"):
        FAM.call_plan(spec, with_cfg(c, BLOCK_D=24))


# ------------------------------------------------------------------------------------------------
# kernels vs reference and eager
# ------------------------------------------------------------------------------------------------

_INITIALS = {"sum": 2.5, "mean": 0.75, "max": 0.5, "min": -0.5, "prod": 1.5}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SHAPES = ((24,), (), (3, 5))  # trailing dims: 2-D data, 1-D data (D = 1), 3-D data flattened
MATRIX = [
    pytest.param(reduce, off, init, i, id=f"{reduce}-{'offsets' if off else 'lengths'}{'-init' if init else ''}")
    for i, (reduce, off, init) in enumerate(
        (r, off, init) for r in REDUCES for off in (False, True) for init in (False, True)
    )
]


@pytest.mark.parametrize("reduce,use_offsets,with_initial,i", MATRIX)
def test_kernels(reduce: str, use_offsets: bool, with_initial: bool, i: int) -> None:
    """Every template (plus one rotating extra config) x reduce x lengths/offsets x initial; dtypes,
    index dtypes and data ranks rotate across the matrix."""
    dt = _DTYPES[i % 3]
    seg_dt = (torch.int64, torch.int32)[(i // 3) % 2]
    trailing = _SHAPES[(i // 2) % 3]
    spec = make_spec(dt, reduce, use_offsets, _INITIALS[reduce] if with_initial else None, seg_dt,
                     n=70, trailing=trailing, s=12)
    inputs = FAM.make_inputs(spec, seed=i)
    for cand in pick(FAM.candidates(spec), rotate=i):
        try:
            check(spec, cand, inputs)
        except AssertionError as e:
            raise AssertionError(f"{cand.template} {cand.cfg}: {e}") from None


@pytest.mark.parametrize("reduce", ["sum", "max", "min"])
def test_infinite_initial(reduce: str) -> None:
    init = {"sum": -INF, "max": INF, "min": -INF}[reduce]
    spec = make_spec(torch.bfloat16, reduce, True, init, n=30, trailing=(5,), s=6)
    inputs = FAM.make_inputs(spec, 3)
    for cand in firsts(FAM.candidates(spec)).values():
        check(spec, cand, inputs)
    out = run_candidate(spec, FAM.candidates(spec)[0], inputs)
    assert bool((out == init).all())  # -inf absorbs sums; inf bounds max; -inf bounds min


def test_lengths_prefix_multi_step_and_odd_chunks() -> None:
    """Lengths prefixes spanning many BLOCK_R steps, chunks not a multiple of anything, the int64
    prefix accumulator (used when N >= 2^31), and strided lengths."""
    segs = torch.zeros(2 * 120, dtype=torch.int32)[::2]
    data = torch.empty(300, 3)
    spec = FAM.spec_for(data, "sum", lengths=segs)
    inputs = FAM.make_inputs(spec, 5)
    variants = []
    for t, c in firsts(FAM.candidates(spec)).items():
        variants.append(with_cfg(c, BLOCK_R=8))
        if t == "seg_chunk":
            variants.append(with_cfg(c, BLOCK_R=32, PROGRAMS=7, BLOCK_S=4))
        if t == "seg_tile":
            variants.append(with_cfg(c, BLOCK_R=8, BLOCK_S=16, BLOCK_N=2))
    for c in variants:
        check(spec, c, inputs)
    c = variants[-1]
    plan = FAM.call_plan(spec, c)
    plan = dataclasses.replace(plan, args=tuple((k, True if k == "PREFIX_I64" else v) for k, v in plan.args))
    (out,) = launch(load_module(c.source), plan, inputs, poison=True)
    torch.testing.assert_close(out.double(), FAM.reference(spec, inputs)[0], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# lengths on scanned starts: the plan's pre-steps write starts[0..S] into a workspace
# ------------------------------------------------------------------------------------------------


def _scan_starts(spec: OpSpec, cand: Candidate, inputs: list) -> torch.Tensor:
    """Run only the plan's pre-steps, on poisoned workspace (every element must be written)."""
    from torch_kevolve.kernels import bind_args

    plan = FAM.call_plan(spec, cand)
    assert plan.pre and plan.workspace[0] == OutBuf((FAM._dims(spec)[2] + 1,), "int64")
    ws = [torch.full(b.shape, -(2**40) + 7, dtype=torch.int64) for b in plan.workspace]
    mod = load_module(cand.source)
    for st in plan.pre:
        getattr(mod, st.kernel)[st.grid](**bind_args(st, inputs, [], ws), num_warps=st.num_warps)
    return ws[0]


@pytest.mark.parametrize("s", [1, 37, 200], ids=["S1", "S37-odd", "S200-many-blocks"])
def test_scan_writes_exclusive_prefix_with_total(s: int) -> None:
    """starts = [0, cumsum(lengths)] for both scan kinds, with one scan block and with many
    (SCAN_BLOCK=16 < S); strided int32 lengths with zero-length segments."""
    g = torch.Generator().manual_seed(s)
    lens = torch.randint(0, 4, (s,), generator=g)
    lens[::5] = 0
    segs = torch.zeros(2 * s, dtype=torch.int32)[::2]
    segs.copy_(lens)
    n = int(lens.sum())
    spec = FAM.spec_for(torch.empty(n, 3), "sum", lengths=segs)
    want = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)])
    for block in (None, 16):
        for (t, kind), cand in scan_variants(spec, block).items():
            if t != "seg_tile":
                continue  # the pre-steps do not depend on the template
            got = _scan_starts(spec, cand, [torch.empty(n, 3), segs])
            assert torch.equal(got, want), (kind, block, got[:8], want[:8])


def test_scan_of_no_segments_writes_starts0() -> None:
    """S = 0 (the family skips such specs, but the kernels must not depend on it): both scan kinds
    still write starts[0] = 0 and nothing else."""
    spec = FAM.spec_for(torch.empty(4, 2), "sum", lengths=torch.tensor([4]))
    lengths = torch.zeros(0, dtype=torch.int64)
    for cand in [c for (t, _), c in scan_variants(spec).items() if t == "seg_tile"]:
        mod = load_module(cand.source)
        starts = torch.full((1,), 99, dtype=torch.int64)
        sums = torch.full((1,), 99, dtype=torch.int64)
        if cand.cfg["SCAN"] == 1:
            mod.segment_reduce_lengths_scan[(1,)](lengths, starts, 0, 1, BLOCK=64)
        else:
            mod.segment_reduce_lengths_block_sums[(1,)](lengths, sums, 0, 1, BLOCK=64)
            mod.segment_reduce_lengths_block_scan[(1,)](lengths, sums, starts, 0, 1, BLOCK=64, BLOCK_B=16)
            assert int(sums[0]) == 0
        assert starts.tolist() == [0]


@pytest.mark.parametrize("k", range(len(REDUCES)), ids=list(REDUCES))
def test_kernels_on_scanned_starts(k: int) -> None:
    """Every template x scan kind x reduction on S=37 segments (zero-length ones included) and
    several scan blocks; dtypes, lengths dtype, initial and data rank rotate."""
    reduce = REDUCES[k]
    dt, seg_dt = _DTYPES[k % 3], (torch.int64, torch.int32)[k % 2]
    spec = make_spec(dt, reduce, False, _INITIALS[reduce] if k % 2 else None, seg_dt, n=111,
                     trailing=_SHAPES[k % 3], s=37)
    inputs = FAM.make_inputs(spec, seed=k)
    assert (inputs[1] == 0).any()
    variants = scan_variants(spec, block=16)
    assert {t for t, _ in variants} == set(TEMPLATES) and {kind for _, kind in variants} == {1, 2}
    for (t, kind), cand in variants.items():
        plan = FAM.call_plan(spec, cand)
        assert len(plan.pre) == kind and dict(plan.args)["seg_ptr"] == Ws(0)
        try:
            check(spec, cand, inputs)
        except AssertionError as e:
            raise AssertionError(f"{t} SCAN={kind}: {e}") from None


@pytest.mark.parametrize("key", ["f32-sum-lengths", "bf16-max-lengths-i32-init"])
def test_edge_cases_on_scanned_starts(key: str) -> None:
    spec = make_spec(**EDGE_SPECS[key])
    variants = scan_variants(spec, block=16)
    for name, cspec, inputs in FAM.edge_cases(spec, include_nan=True):
        for (t, kind), cand in variants.items():
            if name in _SLOW_EDGES and t == "seg_per_program":
                continue
            try:
                check(cspec, cand, inputs, vs_eager=False)
            except AssertionError as e:
                raise AssertionError(f"{name} / {t} SCAN={kind}: {e}") from None


def test_scan_config_errors() -> None:
    spec = make_spec(s=20)
    c = scan_variants(spec)["seg_tile", 1]
    plain = dataclasses.replace(c, source=TEMPLATES["seg_tile"][1])
    for bad, needle in [(with_cfg(c, SCAN_BLOCK=24), "SCAN_BLOCK"), (with_cfg(c, SCAN=3), "scan kind"),
                        (plain, "needs kernel")]:
        with pytest.raises(ValueError, match=needle):
            FAM.call_plan(spec, bad)
    with pytest.raises(ValueError, match="lengths specs only"):
        FAM.call_plan(make_spec(use_offsets=True, s=20), c)
    # The template is found from a scan source too (entries written without a template name).
    assert FAM.call_plan(spec, dataclasses.replace(c, template="")) == FAM.call_plan(spec, c)


def test_bad_lengths_never_read_out_of_bounds() -> None:
    """unsafe=True with lengths overshooting N: rows past the data are masked (no fault); segments
    inside the data are still right."""
    data = torch.randn(10, 4)
    lengths = torch.tensor([3, 4, 9, 5])  # sums to 21 > 10
    spec = FAM.spec_for(data, "sum", lengths=lengths)
    for cand in [*firsts(FAM.candidates(spec)).values(), *scan_variants(spec, block=16).values()]:
        out = run_candidate(spec, cand, [data, lengths])
        torch.testing.assert_close(out[:2], torch.stack([data[:3].sum(0), data[3:7].sum(0)]))
        torch.testing.assert_close(out[2], data[7:].sum(0))
        torch.testing.assert_close(out[3], torch.zeros(4))


EDGE_SPECS = {
    "f32-sum-lengths": dict(dtype=torch.float32, reduce="sum"),
    "f16-mean-offsets-i32-init": dict(dtype=torch.float16, reduce="mean", use_offsets=True, initial=0.5,
                                      seg_dtype=torch.int32),
    "bf16-max-lengths-i32-init": dict(dtype=torch.bfloat16, reduce="max", initial=-1.5, seg_dtype=torch.int32),
    "f32-min-offsets-3d": dict(dtype=torch.float32, reduce="min", use_offsets=True, trailing=(4, 24)),
    "f32-mean-lengths": dict(dtype=torch.float32, reduce="mean", trailing=(96,)),
    "f32-prod-offsets-init": dict(dtype=torch.float32, reduce="prod", use_offsets=True, initial=2.0),
}
_EDGE_NAMES = {"all_segments_empty", "first_and_last_empty", "one_segment", "one_huge_segment", "single_row",
               "dim_1_data_1d", "odd_dim_33", "strided_rows", "many_tiny_segments", "inf_values",
               "extreme_values"}


_SLOW_EDGES = {"one_huge_segment", "many_tiny_segments"}


@pytest.mark.parametrize("k,key", list(enumerate(EDGE_SPECS)), ids=list(EDGE_SPECS))
def test_edge_cases(k: int, key: str) -> None:
    spec = make_spec(**EDGE_SPECS[key])
    assert {n for n, _, _ in FAM.edge_cases(spec)} == _EDGE_NAMES | {"nan_values"}  # what the Evaluator sees
    cases = FAM.edge_cases(spec, include_nan=True)
    assert {n for n, _, _ in cases} == _EDGE_NAMES | {"nan_values"}
    cands = firsts(FAM.candidates(spec))
    for name, cspec, inputs in cases:
        assert cspec.consts == spec.consts and cspec.op == spec.op
        assert [a.dtype for a in cspec.args] == [a.dtype for a in spec.args]
        for sig, t in zip(cspec.args, inputs):
            assert sig is not None and sig.matches(t)
        (ref,) = FAM.reference(cspec, inputs)
        (eager,) = FAM.eager(cspec, inputs)
        dt = spec.args[0].torch_dtype
        rtol, atol = FAM.tolerance(dt)
        if dt == torch.float32 or name != "one_huge_segment":  # eager sums 2000 rows in fp16/bf16
            torch.testing.assert_close(eager.double(), ref, rtol=rtol, atol=atol, equal_nan=True,
                                       msg=lambda m: f"{name}: {m}")
        for t, cand in cands.items():
            # The two long cases take ~1 s per template in the interpreter: each spec runs them on one
            # template (rotating), the first spec on all.
            if name in _SLOW_EDGES and k > 0 and t != list(TEMPLATES)[k % len(TEMPLATES)]:
                continue
            try:
                check(cspec, cand, inputs, vs_eager=False)
            except AssertionError as e:
                raise AssertionError(f"{name} / {t} {cand.cfg}: {e}") from None


@pytest.mark.parametrize("reduce", ["max", "min"])
def test_nan_propagates_like_eager(reduce: str) -> None:
    """max/min reductions drop NaN on GPU (max.f32) and in the interpreter (nanmax); the kernels track
    NaN apart, so any NaN in a segment column makes that output NaN, with or without initial."""
    x = torch.randn(9, 3)
    x[1, 0] = NAN  # first chunk of segment 0
    x[7, 1] = NAN  # late in segment 1, after larger values
    x[4, 2] = INF if reduce == "max" else -INF
    x[5, 2] = NAN  # NaN after the extreme value
    lengths = torch.tensor([3, 6, 0])
    for initial in (None, 0.25):
        spec = FAM.spec_for(x, reduce, lengths=lengths, initial=initial)
        (eager,) = FAM.eager(spec, [x, lengths])
        assert eager.isnan().sum() == 3
        for cand in [*firsts(FAM.candidates(spec)).values(), *scan_variants(spec).values()]:
            for c in (cand, with_cfg(cand, BLOCK_N=1)):  # NaN seen in different steps
                out = run_candidate(spec, c, [x, lengths])
                torch.testing.assert_close(out, eager, equal_nan=True)


_SM90_SCRIPT = r"""
import math
from torch_kevolve.families import all_families
from torch_kevolve.families import segment_reduce  # noqa: F401
from torch_kevolve.families.segment_reduce import SCAN_SOURCES

all_families()
fam = get_family("segment_reduce")
cases = (("max", False, torch.bfloat16, -math.inf), ("prod", True, torch.float16, 2.0),
         ("mean", True, torch.float32, None))
segs = torch.zeros(11, dtype=torch.int32)
specs = [fam.spec_for(torch.empty(60, 24, dtype=dt), reduce, lengths=None if off else segs[:10],
                      offsets=segs if off else None, initial=init) for reduce, off, dt, init in cases]


def pick(i, cands):
    # the first per template (no scan); lengths on scanned starts: the two-level scan with one template,
    # the one-program with another
    todo = list(first_per_template(i, [c for c in cands if not c.cfg.get("SCAN")]))
    if not cases[i][1]:
        first = next(c for c in cands if c.cfg.get("SCAN"))
        todo += [dataclasses.replace(first, template="seg_per_program", source=SCAN_SOURCES["seg_per_program"], config=tuple(sorted({**first.cfg, "SCAN": 2, "SCAN_BLOCK": 1024, "BLOCK_N": 4, "ACC_TILE": False}.items()))),
                 dataclasses.replace(first, template="seg_tile", source=SCAN_SOURCES["seg_tile"], config=tuple(sorted({**first.cfg, "SCAN": 1, "SCAN_BLOCK": 4096, "BLOCK_S": 8, "BLOCK_N": 4}.items())))]
    return todo


for spec, cand, plan, compiled in each_plan(fam, specs, pick):
    for k in compiled:
        print("OK", spec.const("reduce"), cand.template, k)
"""


def test_kernels_compile_for_sm90(tmp_path) -> None:
    """The GPU path: every template (max: NaN tracking and inf initial; prod: generic reduce; mean),
    and every step of the lengths-scan plans (int64 tl.cumsum), compiles to sm_90 cubin under
    Triton's CUDA backend, no GPU needed; the interpreter cannot catch
    GPU-only errors. A subprocess: with TRITON_INTERPRET=1 at import, triton's own stdlib is
    interpreter-only for the whole process."""
    stdout, lines = run_sm90(_SM90_SCRIPT, tmp_path)
    assert len(lines) == 9 + 5, stdout  # 3 specs x 3 templates; scans: 3 + 2 steps


# ------------------------------------------------------------------------------------------------
# match: hand-built graphs (cheap) and a real post-grad graph (torch.compile)
# ------------------------------------------------------------------------------------------------


def _graph_node(data: torch.Tensor, reduce: str = "sum", dynamic: bool = False, **kw: Any):
    """An FX graph with one segment_reduce node whose tensor inputs carry FakeTensor metadata."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    fm = FakeTensorMode(shape_env=ShapeEnv()) if dynamic else FakeTensorMode()
    g = torch.fx.Graph()

    def ph(name: str, t: torch.Tensor) -> torch.fx.Node:
        n = g.placeholder(name)
        ctx = None
        if dynamic and name == "data":
            ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * t.dim(), constraint_sizes=[None] * t.dim())
        n.meta["val"] = fm.from_tensor(t, symbolic_context=ctx) if ctx else fm.from_tensor(t)
        return n

    d = ph("data", data)
    kwargs = {k: ph(k, v) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    node = g.call_function(SR_OP, (d, reduce), kwargs)
    node.meta["val"] = fm.from_tensor(torch.empty(2, *data.shape[1:], dtype=data.dtype))
    g.output((node,))
    return node, d, kwargs


def test_match_handbuilt() -> None:
    node, d, kw = _graph_node(torch.randn(6, 4, 2), "max", lengths=torch.tensor([2, 4], dtype=torch.int32),
                              initial=-1, unsafe=True)
    m = FAM.match(node)
    assert isinstance(m, Match), m
    assert m.inputs == [d, kw["lengths"]] and m.result_users == {0: [node]}
    assert m.spec.consts == (("initial", -1.0), ("reduce", "max"), ("use_offsets", False))
    assert m.spec.args[1] == TensorSig("int32", (2,), (1,))
    # lengths win over offsets, as in aten
    node, d, kw = _graph_node(torch.randn(6, 4), lengths=torch.tensor([2, 4]), offsets=torch.tensor([0, 1, 6]))
    m = FAM.match(node)
    assert isinstance(m, Match) and m.inputs[1] is kw["lengths"] and m.spec.const("use_offsets") is False


@pytest.mark.parametrize(
    "data,reduce,kw,needle",
    [
        (torch.randn(6, 4), "sum", dict(indices=torch.tensor([0, 0, 1, 1, 1, 1])), "indices"),
        (torch.randn(6, 4), "sum", dict(), "neither"),
        (torch.randn(6, 4), "sum", dict(lengths=torch.tensor([2, 4]), axis=1), "axis"),
        (torch.randn(6, 4), "median", dict(lengths=torch.tensor([2, 4])), "median"),
        (torch.randn(6, 4).double(), "sum", dict(lengths=torch.tensor([2, 4])), "float64"),
        (torch.randn(6, 4), "sum", dict(lengths=torch.tensor([2, 4], dtype=torch.int16)), "int32/int64"),
        (torch.randn(6, 4), "sum", dict(lengths=torch.tensor([[2, 4]])), "1-D"),
        (torch.randn(6, 3, 4).transpose(1, 2), "sum", dict(lengths=torch.tensor([2, 4])), "flatten"),
        (torch.randn(6, 4), "sum", dict(lengths=torch.tensor([2, 4]), initial=math.nan), "nan"),
        (torch.randn(6, 4).half(), "sum", dict(lengths=torch.tensor([2, 4]), initial=1e6), "overflows"),
        (torch.randn(6, 4), "sum", dict(lengths=torch.tensor([2, 4]), dynamic=True), "symbolic"),
    ],
    ids=["indices", "no-segments-arg", "axis1", "median", "f64", "int16", "2d-lengths", "non-flat", "nan-init",
         "init-overflow", "dynamic"],
)
def test_match_skips(data: torch.Tensor, reduce: str, kw: dict, needle: str) -> None:
    node, _, _ = _graph_node(data, reduce, **kw)
    r = FAM.match(node)
    assert isinstance(r, Skip), r
    assert needle in r.reason, r.reason


def test_match_rejects_other_ops() -> None:
    g = torch.fx.Graph()
    x = g.placeholder("x")
    assert isinstance(FAM.match(g.call_function(torch.ops.aten.relu.default, (x,))), Skip)




@pytest.fixture(scope="module")
def compiled_graph():
    """One inference compile with five segment_reduce calls (one of them float64: skipped)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=g)
    lengths = torch.tensor([3, 0, 5, 4])
    offsets = torch.tensor([0, 3, 3, 8, 12])

    def f(x, lengths, offsets):
        a = torch.segment_reduce(x, "max", lengths=lengths)
        b = torch.segment_reduce(x * 2, "mean", offsets=offsets, initial=1.5, unsafe=True)
        c = torch.segment_reduce(x.reshape(12, 2, 2), "sum", lengths=lengths.int())
        d = torch.segment_reduce(x.double(), "min", lengths=lengths)
        e = torch.segment_reduce(x, "prod", offsets=offsets.int(), initial=2)
        return a + 1, b, c, d, e

    args = (x, lengths, offsets)
    graphs, out = compile_and_record(f, *args)
    return graphs, out, args


def test_match_real_post_grad_graph(compiled_graph) -> None:
    graphs, out, (x, lengths, offsets) = compiled_graph
    nodes = [n for gr in graphs for n in gr.nodes if str(n.target) == "aten.segment_reduce.default"]
    assert len(nodes) == 5  # an ATen fallback: the op reaches the post-grad graph as is
    results = {str(n.args[1]) + ("-f64" if n.args[0].meta["val"].dtype == torch.float64 else ""): (n, FAM.match(n))
               for n in nodes}
    n, skip = results["min-f64"]
    assert isinstance(skip, Skip) and "float64" in skip.reason
    by = {k: m for k, (_, m) in results.items() if isinstance(m, Match)}
    assert set(by) == {"max", "mean", "sum", "prod"}
    for k, m in by.items():
        node = results[k][0]
        assert m.result_users == {0: [node]} and m.spec.device.type == "cpu" and all(i is not None for i in m.inputs)
    assert by["max"].spec.consts == (("initial", None), ("reduce", "max"), ("use_offsets", False))
    assert by["max"].spec.args == (TensorSig.of(x), TensorSig.of(lengths))
    assert by["mean"].spec.consts == (("initial", 1.5), ("reduce", "mean"), ("use_offsets", True))
    assert by["sum"].spec.args == (TensorSig("float32", (12, 2, 2), (4, 2, 1)), TensorSig("int32", (4,), (1,)))
    assert by["prod"].spec.consts == (("initial", 2.0), ("reduce", "prod"), ("use_offsets", True))
    # The default candidate on the real inputs reproduces the compiled graph's outputs.
    real = {"max": [x, lengths], "mean": [x * 2, offsets], "sum": [x.reshape(12, 2, 2), lengths.int()],
            "prod": [x, offsets.int()]}
    expect = {"max": out[0] - 1, "mean": out[1], "sum": out[2], "prod": out[4]}
    for k, m in by.items():
        got = run_candidate(m.spec, FAM.candidates(m.spec)[0], real[k])
        torch.testing.assert_close(got, expect[k], rtol=1e-5, atol=1e-5, equal_nan=True)
