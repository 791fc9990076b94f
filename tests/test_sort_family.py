"""The sort family (sort / argsort, topk, kthvalue, median): aten semantics pinned against eager (NaN
above everything, -0.0 tying 0.0, stable order ascending and descending, median's NaN rule), the
reference and the semantic ``compare`` (valid indices with ties, exact for stable sort), both templates
x op variants x dtypes (Triton interpreter) on odd shapes and every edge case, Inductor's sort lowering
rules mirrored, plans and candidates, sm_90 compilation (no GPU), real post-grad graphs and the backend
end to end."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from family_helpers import run_kevolve_backend, run_sm90, with_cfg  # noqa: E402

from torch_kevolve.families.base import Candidate, In, Out, Ws  # noqa: E402
from torch_kevolve.families.sort import (KTHVALUE, MEDIAN, MEDIAN_DIM, SORT, SORT_STABLE, TEMPLATES, TOPK,  # noqa: E402
                                         SortFamily)
from torch_kevolve.kernels import launch, load_module  # noqa: E402
from torch_kevolve.spec import DeviceSig, OpSpec  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

FAM = SortFamily()
NAN, INF = math.nan, math.inf
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
I32, I16, I8, U8, BOOL = torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool
DTYPES = (F32, F16, BF16, I32, I16, I8, U8, BOOL)
CUDA = DeviceSig("cuda", "NVIDIA H100 80GB HBM3", "sm_90")

# (name, op, spec_for kwargs): every op and flag the family serves
VARIANTS: list[tuple[str, str, dict]] = [
    ("sort", SORT, {}),
    ("sort_desc", SORT, dict(descending=True)),
    ("sort_stable", SORT_STABLE, dict(stable=True)),
    ("sort_stable_desc", SORT_STABLE, dict(stable=True, descending=True)),
    ("argsort", SORT, dict(values=False)),
    ("sort_values", SORT, dict(indices=False)),
    ("sort_values_desc_stable", SORT_STABLE, dict(stable=True, descending=True, indices=False)),
    ("topk", TOPK, dict(k=3, descending=True)),
    ("topk_smallest", TOPK, dict(k=4)),
    ("topk_unsorted", TOPK, dict(k=5, descending=True, ordered=False)),
    ("topk_indices", TOPK, dict(k=2, descending=True, values=False)),
    ("kthvalue", KTHVALUE, dict(k=3)),
    ("kthvalue_keepdim", KTHVALUE, dict(k=1, keepdim=True)),
    ("median", MEDIAN_DIM, {}),
    ("median_keepdim_values", MEDIAN_DIM, dict(keepdim=True, indices=False)),
    ("median_all", MEDIAN, {}),
]
_V = {n: (op, kw) for n, op, kw in VARIANTS}


def make_spec(name: str, x: torch.Tensor, dim: int | None = 1) -> OpSpec:
    op, kw = _V[name]
    return FAM.spec_for(op, x, None if op == MEDIAN else dim, **kw)


def cands(spec: OpSpec) -> dict[str, Candidate]:
    """One candidate per template with interpreter-sized blocks (radix offered for every non-sort op)."""
    cfg = tuple(sorted(dict(BLOCK_R=2, num_warps=1, num_stages=1).items()))
    out = {"sort": Candidate(TEMPLATES["sort"][1], cfg, template="sort")}
    if spec.op not in (SORT, SORT_STABLE):
        out["radix"] = Candidate(TEMPLATES["radix"][1], cfg, template="radix")
        early = tuple(sorted(dict(cfg, EARLY=True, RADIX_BITS=1).items()))
        out["radix_early"] = Candidate(TEMPLATES["radix"][1], early, template="radix")
    return out


def run(spec: OpSpec, cand: Candidate, inputs: list) -> list[torch.Tensor]:
    return launch(load_module(cand.source), FAM.call_plan(spec, cand), inputs, poison=True)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        a, b = a.double(), b.double()
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return bool((a == b).all())


def check(spec: OpSpec, inputs: list, what: str = "", templates: dict[str, Candidate] | None = None) -> None:
    """Eager passes the semantic compare (the reference agrees with torch), and so does every template;
    a stable sort / values are also checked for identity with eager."""
    eager = FAM.eager(spec, inputs)
    refs = FAM.reference(spec, inputs)
    assert FAM.compare(spec, inputs, eager, refs) == "", f"{what}: eager vs reference: " \
                                                        f"{FAM.compare(spec, inputs, eager, refs)}"
    for t, cand in (templates or cands(spec)).items():
        outs = run(spec, cand, inputs)
        why = FAM.compare(spec, inputs, outs, refs)
        assert why == "", f"{what} {t} {cand.cfg}: {why}\n{outs}\n{eager}"
        for o, e in zip(outs, eager):
            assert o.shape == e.shape and o.dtype == e.dtype and o.is_contiguous()
        if spec.op == SORT_STABLE or (0 in FAM.wanted(spec) and not (spec.op == TOPK and not spec.const("sorted"))):
            assert same(outs[0], eager[0]), f"{what} {t}: output 0 differs from eager"


# ------------------------------------------------------------------------------------------------
# semantics, reference, compare
# ------------------------------------------------------------------------------------------------


def test_registered_ops() -> None:
    assert set(FAM.ops) == set(FAM.lowered_ops) == {SORT, SORT_STABLE, TOPK, KTHVALUE, MEDIAN_DIM, MEDIAN}
    assert set(TEMPLATES) == {"sort", "radix", "bitonic"}


def test_eager_semantics_pinned() -> None:
    """What torch does and the family reproduces: NaN above everything, -0.0 ties 0.0 (stable order
    kept), ties kept in input order for stable descending, median = lower median or the first NaN."""
    x = torch.tensor([[3.0, NAN, 1.0, 2.0, NAN, 0.0, -0.0, 0.0, 2.0]])
    table = {
        "sort_stable": ([0.0, -0.0, 0.0, 1, 2, 2, 3, NAN, NAN], [5, 6, 7, 2, 3, 8, 0, 1, 4]),
        "sort_stable_desc": ([NAN, NAN, 3, 2, 2, 1, 0.0, -0.0, 0.0], [1, 4, 0, 3, 8, 2, 5, 6, 7]),
        "topk": ([NAN, NAN, 3], [1, 4, 0]),
        "topk_smallest": ([0.0, -0.0, 0.0, 1], None),
        "kthvalue": ([0.0], None),
        "median": ([NAN], [1]),
        "median_all": (NAN, None),
    }
    for name, (vals, idx) in table.items():
        spec = make_spec(name, x)
        eager = FAM.eager(spec, [x])
        want_v = torch.tensor(vals).reshape(eager[0].shape)
        assert same(eager[0], want_v), (name, eager[0])
        if idx is not None and spec.const("indices"):
            assert eager[1].reshape(-1).tolist() == idx, (name, eager[1])
        for t, c in cands(spec).items():
            outs = run(spec, c, [x])
            assert same(outs[0], want_v), (name, t, outs[0])
            if idx is not None and spec.const("indices"):
                assert outs[1].reshape(-1).tolist() == idx, (name, t, outs[1])
    y = torch.tensor([[2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 0.0]])
    assert torch.median(y, 1).values.item() == 1.0 and torch.kthvalue(y, 3, 1).values.item() == 1.0
    assert torch.median(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 1).values.item() == 2.0  # lower median
    assert torch.topk(torch.randn(3, 5), 0, 1).values.shape == (3, 0)


@pytest.mark.parametrize("dt", DTYPES, ids=[str(d)[6:] for d in DTYPES])
def test_reference_and_compare_agree_with_eager(dt: torch.dtype) -> None:
    for i, (name, op, _) in enumerate(VARIANTS):
        if dt == BOOL and op not in (SORT, SORT_STABLE):
            continue  # ATen has no bool kernel (spec_for refuses: see test_spec_shapes_and_errors)
        shape, dim = [((6, 11), 1), ((9, 4), 0), ((3, 7, 5), 1)][i % 3]
        spec = make_spec(name, torch.empty(shape, dtype=dt), dim)
        inputs = FAM.make_inputs(spec, seed=i)
        assert spec.args[0].matches(inputs[0])
        eager, refs = FAM.eager(spec, inputs), FAM.reference(spec, inputs)
        assert FAM.compare(spec, inputs, eager, refs) == "", (name, FAM.compare(spec, inputs, eager, refs))
        if name.startswith("sort_stable") or name == "median_all":
            assert all(same(r, e) for r, e in zip(refs, eager)), name


def test_compare_rejects_wrong_answers() -> None:
    """The semantic check must fail: a repeated index, an index at a different value, a permuted stable
    sort, wrong values, unordered topk values that are not the top k, a poisoned (NaN) output."""
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 0.0, 3.0]])
    spec = make_spec("topk", x)  # k=3 largest: three 3.0s at 0, 2, 5
    ref = FAM.reference(spec, [x])
    assert FAM.compare(spec, [x], [ref[0], torch.tensor([[5, 0, 2]])], ref) == ""  # ties: any order of equals
    assert "repeats" in FAM.compare(spec, [x], [ref[0], torch.tensor([[0, 0, 2]])], ref)
    assert "other than" in FAM.compare(spec, [x], [ref[0], torch.tensor([[0, 2, 3]])], ref)
    assert "values differ" in FAM.compare(spec, [x], [torch.tensor([[3.0, 3.0, 2.0]]), ref[1]], ref)
    assert "values differ" in FAM.compare(spec, [x], [torch.full((1, 3), NAN), ref[1]], ref)
    assert "range" in FAM.compare(spec, [x], [ref[0], torch.tensor([[0, 2, 6]])], ref)
    st = make_spec("sort_stable", x)
    sref = FAM.reference(st, [x])
    perm = sref[1].clone()
    perm[0, -3:] = perm[0, -3:].flip(-1)  # equal keys, but not in input order
    assert "stable" in FAM.compare(st, [x], [sref[0], perm], sref)
    un = make_spec("topk_unsorted", x)  # k=5
    uref = FAM.reference(un, [x])
    assert FAM.compare(un, [x], [uref[0].flip(-1), uref[1].flip(-1)], uref) == ""
    assert "values differ" in FAM.compare(un, [x], [torch.tensor([[3.0, 3.0, 3.0, 2.0, 2.0]]), uref[1]], uref)
    md = make_spec("median", x)
    mref = FAM.reference(md, [x])
    assert "other than" in FAM.compare(md, [x], [mref[0], torch.tensor([1])], mref)


def test_spec_shapes_and_errors() -> None:
    x = torch.empty(4, 9, 5)
    assert FAM.out_shape(make_spec("topk", x)) == (4, 3, 5)
    assert FAM.out_shape(make_spec("kthvalue", x)) == (4, 5)
    assert FAM.out_shape(make_spec("kthvalue_keepdim", x)) == (4, 1, 5)
    assert FAM.out_shape(make_spec("median_all", x)) == ()
    assert FAM.out_shape(make_spec("sort", x, 0)) == (4, 9, 5)
    spec = make_spec("argsort", torch.empty(3, 7, dtype=BF16), -1)
    assert spec.family == "sort" and spec.const("dim") == 1 and FAM.wanted(spec) == [1]
    assert OpSpec.from_json(spec.to_json()) == spec
    assert FAM.floor_bytes(make_spec("topk", torch.empty(10, 40))) == 400 * 4 + 30 * (4 + 8)
    assert FAM.floor_bytes(make_spec("median_keepdim_values", torch.empty(10, 40, dtype=F16))) == 400 * 2 + 10 * 2
    e = torch.empty
    for args, kw, needle in [
        ((SORT, e(3, 4, dtype=torch.float64), 1), {}, "64-bit"),
        ((SORT, e(3, 4), 2), {}, "out of range"),
        ((TOPK, e(3, 4), 1), dict(k=5), "k=5"),
        ((KTHVALUE, e(3, 4), 1), dict(k=0), "k=0"),
        ((MEDIAN_DIM, e(3, 0), 1), {}, "empty"),
        ((SORT, e(2, 20000), 1), {}, "multi-block"),
        ((SORT, e(2, 3, 4).permute(1, 0, 2), 2), {}, "collapse"),
        ((SORT, e(3, 4), 1), dict(values=False, indices=False), "neither"),
        ((TOPK, e(3, 4, dtype=BOOL), 1), dict(k=2), "bool"),
    ]:
        with pytest.raises(ValueError, match=needle):
            FAM.spec_for(*args, **kw)


# ------------------------------------------------------------------------------------------------
# kernels vs torch (interpreter)
# ------------------------------------------------------------------------------------------------

_LAYOUTS = [((5, 13), 1, False), ((13, 5), 0, False), ((3, 9, 4), 1, False), ((7, 11), 0, True),
            ((2, 3, 17), -1, False)]


@pytest.mark.parametrize("i,dt", list(enumerate(DTYPES)), ids=[str(d)[6:] for d in DTYPES])
def test_kernels(i: int, dt: torch.dtype) -> None:
    """Half the variants (rotating: each variant meets four dtypes) x every template for this dtype,
    layouts (last, first, middle, strided dims) rotating, seeds rotating NaN in for floats."""
    for j, (name, op, _) in enumerate(VARIANTS):
        if (dt == BOOL and op not in (SORT, SORT_STABLE)) or (i + j) % 2:
            continue  # each variant on half the dtypes (rotating), to keep the interpreter time down
        shape, dim, tr = _LAYOUTS[(i + j) % len(_LAYOUTS)]
        x = torch.empty(tuple(reversed(shape)), dtype=dt).T if tr else torch.empty(shape, dtype=dt)
        spec = make_spec(name, x, dim)
        inputs = FAM.make_inputs(spec, seed=3 * i + j + 1)
        check(spec, inputs, f"{name} {spec.describe()}")


def test_blocks_and_rows_per_program() -> None:
    """Rows split across programs (BLOCK_R 1 and 8 over 7 rows: a partial program), rows padded to
    the block (29 of 32), radix topk's k=3 winners padded to BLOCK_K=4."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randint(-6, 6, (7, 29), generator=g).float() / 2)
    x[2, 3] = NAN
    x[5, 28] = NAN
    for name in ("sort_desc", "topk", "kthvalue", "median"):
        spec = make_spec(name, x)
        base = cands(spec)
        for br in (1, 8):
            check(spec, [x], f"{name} BLOCK_R={br}", {t: with_cfg(c, BLOCK_R=br) for t, c in base.items()})


_EDGE_VARIANTS = [("sort_stable_desc", F32), ("sort", BF16), ("argsort", I8), ("sort_values", F32),
                  ("sort_values_desc_stable", F16), ("topk", F32), ("topk_smallest", F16),
                  ("topk_unsorted", I32), ("kthvalue", F32), ("median", F32), ("median_all", U8), ("sort_stable", BOOL)]


@pytest.mark.parametrize("name,dt", _EDGE_VARIANTS, ids=[f"{n}-{str(d)[6:]}" for n, d in _EDGE_VARIANTS])
def test_edge_cases(name: str, dt: torch.dtype) -> None:
    spec = make_spec(name, torch.empty(4, 10, dtype=dt))
    cases = FAM.edge_cases(spec)
    names = {n for n, _, _ in cases}
    assert {"all_equal", "ties_and_steps", "one_element", "dim0_strided", "middle_dim", "long_rows"} <= names
    assert ("no_rows" in names) == (spec.op != MEDIAN)  # median of nothing: eager's NaN is not served
    if dt.is_floating_point:
        assert {"nan_middle", "nan_first_last", "all_nan", "negative_nan", "infinities", "signed_zeros"} <= names
    if spec.op == TOPK:
        assert {"k_zero", "k_one", "k_eq_n", "empty_rows"} <= names
    if spec.op == SORT:
        assert "empty_rows" in names
    for cname, cspec, inputs in cases:
        assert cspec.op == spec.op and cspec.args[0].dtype == spec.args[0].dtype and cspec.args[0].matches(inputs[0])
        check(cspec, inputs, f"{name}/{cname}")


@pytest.mark.parametrize("name", ["topk", "topk_smallest", "topk_unsorted", "kthvalue", "median"])
def test_radix_early_stop_mixed_rows(name: str) -> None:
    """EARLY radix select with rows that stop early (distinct values) and rows that cannot (a tie
    across the threshold, all equal, NaN) in one program (BLOCK_R=4, 6 rows: a partial program), and
    every row stopping early (the path that skips the tie ranking)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 37, generator=g)
    x[1] = 0.5  # all equal
    x[2, :20] = 1.25  # a run of ties around every rank
    x[4, 7] = NAN
    spec = make_spec(name, x)
    early = {"radix_early": with_cfg(cands(spec)["radix_early"], BLOCK_R=4)}
    check(spec, [x], f"{name} mixed", templates=early)
    distinct = torch.randperm(6 * 37, generator=g).reshape(6, 37).float() - 100.0
    check(spec, [distinct], f"{name} distinct", templates=early)


def test_timing_inputs_first_case() -> None:
    """The search times on the family's timing inputs where it has them (sort: distinct values, verified
    too), first in the Evaluator's cases; a family without them times on its first seed."""
    from torch_kevolve.families import get_family
    from torch_kevolve.search.evaluate import Evaluator

    spec = make_spec("topk", torch.empty(8, 300))
    ev = Evaluator(FAM, spec, "cpu", seeds=2, edge_cases=False, fresh_seeds=0)
    names = [c[0] for c in ev.cases()]
    assert names == ["timing", "seed17", "seed1017"]
    t = ev.cases()[0][2][0]
    assert t.shape == (8, 300) and len(t.unique()) > 2000  # no grid of ties
    for dt in (I8, U8, BOOL, BF16):
        inp = FAM.timing_inputs(make_spec("sort", torch.empty(3, 50, dtype=dt)), 0)[0]
        assert inp.dtype == dt and inp.shape == (3, 50)
    assert get_family("argreduce").timing_inputs(spec, 0) is None


def test_default_candidates_pass_edge_cases() -> None:
    """The first proposals for CPU specs (what a search tries first) on every edge case."""
    for name in ("topk", "median"):
        spec = make_spec(name, torch.empty(3, 40))
        first = FAM.candidates(spec)[0]
        for cname, cspec, inputs in FAM.edge_cases(spec):
            c = next(c for c in FAM.candidates(cspec) if c.template == first.template)
            check(cspec, inputs, f"{name}/{cname}", {first.template: c})


# ------------------------------------------------------------------------------------------------
# candidates, plans, Inductor's rules
# ------------------------------------------------------------------------------------------------


def test_candidates_and_plans() -> None:
    """H100 specs: radix first for topk with k << n and kthvalue/median, sort for sort and large k; every
    plan binds every kernel parameter once; workspace only for radix; bad configs refused."""
    e = torch.empty
    for spec, first in [(FAM.spec_for(TOPK, e(8192, 4096), 1, k=64, descending=True), "radix"),
                        (FAM.spec_for(TOPK, e(100, 64), 1, k=40, descending=True), "sort"),
                        (FAM.spec_for(SORT, e(1024, 4096), 1), "sort"),
                        (FAM.spec_for(MEDIAN_DIM, e(300, 1000, dtype=F16), 1), "radix"),
                        (FAM.spec_for(MEDIAN, e(50, 33).T, None), "radix")]:
        spec = dataclasses.replace(spec, device=CUDA)
        cs = FAM.candidates(spec)
        assert cs[0].template == first and 3 <= len(cs) <= 26, (spec.describe(), [c.template for c in cs])
        assert len({(c.template, c.config) for c in cs}) == len(cs)
        for c in cs:
            plan = FAM.call_plan(spec, c)
            mod = load_module(c.source)
            names = list(getattr(mod, plan.kernel).arg_names)
            # radix's last parameter, EARLY, has a default: bound only when on
            unbound = 1 if c.template == "radix" and not c.cfg.get("EARLY") else 0
            assert [a for a, _ in plan.args] == names[:len(names) - unbound]
            if c.cfg.get("EARLY"):
                assert plan.args[-1] == ("EARLY", True)
            a = dict(plan.args)
            assert a["x_ptr"] == In(0) and (a.get("ws_ptr") == Ws(0)) == (c.template == "radix")
            bound = [v for v in a.values() if isinstance(v, Out)]
            assert len(set(bound)) == len(plan.outputs) == len(FAM.wanted(spec))
            assert a["BLOCK_N"] >= FAM.geom(spec).length and c.cfg["num_warps"] <= 16
    spec = make_spec("topk", e(3, 10))
    c = cands(spec)
    with pytest.raises(ValueError, match="power of two"):
        FAM.call_plan(spec, with_cfg(c["sort"], BLOCK_R=3))
    with pytest.raises(ValueError, match="RADIX_BITS=1"):
        FAM.call_plan(spec, with_cfg(c["radix"], EARLY=True, RADIX_BITS=2))
    plan = FAM.call_plan(spec, c["radix"])
    assert (dict(plan.args)["BLOCK_N"], dict(plan.args)["BLOCK_K"]) == (16, 4)  # k=3 of 10
    assert plan.workspace[0].shape == (3 * 3,) and plan.workspace[0].dtype == "int64"
    assert FAM.call_plan(make_spec("topk", e(0, 10)), c["sort"]).grid == (0,)


def _node(op: str, shape: tuple, device: str = "cuda", users: tuple[int, ...] = (0, 1), dtype: torch.dtype = F32,
          **kw: Any):
    import operator

    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    fm = FakeTensorMode()

    def fake(t: torch.Tensor) -> Any:
        if device == "cpu":
            return fm.from_tensor(t)
        meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
        return FakeTensor(fm, meta, torch.device(device))

    x = torch.zeros(shape, dtype=dtype)
    g = torch.fx.Graph()
    ph = g.placeholder("x")
    ph.meta["val"] = fake(x)
    target = {SORT: torch.ops.aten.sort.default, TOPK: torch.ops.aten.topk.default,
              MEDIAN: torch.ops.aten.median.default}[op]
    args = (ph,) + tuple(kw.pop("args", ()))
    node = g.call_function(target, args, kw)
    ref = target(x, *args[1:], **kw)
    if isinstance(ref, torch.Tensor):
        node.meta["val"] = fake(ref)
        g.output(node)
    else:
        node.meta["val"] = tuple(fake(r) for r in ref)
        gets = []
        for j in users:
            gi = g.call_function(operator.getitem, (node, j))
            gi.meta["val"] = node.meta["val"][j]
            gets.append(gi)
        g.output(tuple(gets))
    return node


def test_inductor_fallback_reason() -> None:
    from torch._inductor import config as icfg

    assert "cpu" in FAM.inductor_fallback_reason(_node(SORT, (4, 100), "cpu", args=(1,)))
    assert FAM.inductor_fallback_reason(_node(SORT, (4, 512), args=(1,))) is None  # ir.Sort lowers it
    assert "512" in FAM.inductor_fallback_reason(_node(SORT, (4, 513), args=(1,)))
    assert "512" in FAM.inductor_fallback_reason(_node(SORT, (1024, 4096), args=(-1,)))
    assert FAM.inductor_fallback_reason(_node(SORT, (4096, 1), args=(1,))) is None  # a copy
    assert "decompose_sort_ops" in FAM.inductor_fallback_reason(_node(TOPK, (8192, 4096), args=(64, 1)))
    assert "decompose_sort_ops" in FAM.inductor_fallback_reason(_node(MEDIAN, (30, 7)))
    with icfg.patch({"triton.decompose_sort_ops": True}):
        assert FAM.inductor_fallback_reason(_node(SORT, (1024, 4096), args=(1,))) is None
        assert FAM.inductor_fallback_reason(_node(TOPK, (8192, 4096), args=(64, 1))) is None
        assert "cpu" in FAM.inductor_fallback_reason(_node(TOPK, (8, 40), "cpu", args=(6, 1)))
    with icfg.patch({"triton.persistent_reductions": False}):
        assert "persistent" in FAM.inductor_fallback_reason(_node(SORT, (4, 100), args=(1,)))


def test_match_handbuilt() -> None:
    m = FAM.match(_node(TOPK, (6, 40), "cpu", args=(5, 0, False)))
    assert m.spec.op == TOPK and dict(m.spec.consts) == dict(dim=0, indices=True, values=True, k=5, largest=False,
                                                             sorted=True)
    node = _node(MEDIAN, (6, 40), "cpu")
    m = FAM.match(node)
    assert m.spec.op == MEDIAN and FAM.wanted(m.spec) == [0] and FAM.out_shape(m.spec) == ()
    assert m.result_users == {0: [node]} and m.inputs == [node.args[0]]
    m = FAM.match(_node(SORT, (6, 4), "cpu", users=(1,), args=(0, True)))  # argsort(x, 0, descending=True)
    assert m.spec.op == SORT and FAM.wanted(m.spec) == [1] and m.spec.const("descending")
    assert len(m.result_users[0]) == 1  # plan output 0 (the indices) feeds the getitem(_, 1)
    assert "neither" in FAM.match(_node(TOPK, (6, 4), "cpu", users=(), args=(3, 1))).reason
    assert "64-bit" in FAM.match(_node(SORT, (6, 4), "cpu", dtype=torch.float64, args=(1,))).reason
    assert "multi-block" in FAM.match(_node(SORT, (2, 20000), "cpu", args=(1,))).reason
    g = torch.fx.Graph()
    assert "not served" in FAM.match(g.call_function(torch.ops.aten.relu.default, (g.placeholder("x"),))).reason


# ------------------------------------------------------------------------------------------------
# GPU compilation without a GPU
# ------------------------------------------------------------------------------------------------

_SM90_SCRIPT = r"""
from torch_kevolve.families.sort import SortFamily, SORT, SORT_STABLE, TOPK, KTHVALUE, MEDIAN_DIM, MEDIAN

fam = SortFamily()
specs = [  # the bench shapes (topk k=64 of 4096, sort 4096 with and without indices), a strided bf16 stable
           # argsort, int8 kthvalue (integer keys), fp16 median
    fam.spec_for(TOPK, e(8192, 4096), 1, k=64, descending=True),
    fam.spec_for(SORT, e(1024, 4096), 1),
    fam.spec_for(SORT, e(1024, 4096), 1, indices=False),  # values only: the 32-bit key sort
    fam.spec_for(SORT_STABLE, e(4096, 300, dtype=torch.bfloat16).T, 0, stable=True, descending=True, values=False),
    fam.spec_for(KTHVALUE, e(2048, 1000, dtype=torch.int8), 1, k=17),
    fam.spec_for(MEDIAN_DIM, e(64, 1000, dtype=torch.float16), 1),
]


def pick(n, cands):
    # the first per template; for topk (spec 0) per (template, RADIX_BITS)
    chosen = {}
    for cand in cands:
        chosen.setdefault((cand.template, cand.cfg.get("RADIX_BITS")) if n == 0 else cand.template, cand)
    return list(chosen.values())


for spec, cand, plan, compiled in each_plan(fam, specs, pick):
    for k, c in compiled.items():
        print("OK", spec.op, cand.cfg, resources(c.asm["cubin"]), k)
"""


def test_kernels_compile_for_sm90(tmp_path) -> None:
    """Every template's default H100 configs (4096-wide rows at 16 warps, the 64-wide topk sort, several
    rows per program) compile to sm_90 cubin. A subprocess: TRITON_INTERPRET=1 is process-wide."""
    stdout, lines = run_sm90(_SM90_SCRIPT, tmp_path)
    # topk k=64: sort + bitonic + radix at RADIX_BITS 1 and 2 (4 is offered for shorter rows only); the
    # three sorts: one template; kthvalue and median: two
    assert len(lines) == 4 + 3 + 2 * 2, stdout
    assert {ln.rsplit(" ", 1)[-1] for ln in lines} == {"sel_sort", "sel_radix", "sel_bitonic"}
    # the bench shapes' defaults keep the row in registers: no local-memory spills
    for ln in lines[:7]:
        assert " local 0 " in ln or "local ?" in ln, ln


# ------------------------------------------------------------------------------------------------
# a real post-grad graph, and the backend end to end
# ------------------------------------------------------------------------------------------------


def test_evaluator_uses_family_compare(monkeypatch) -> None:
    """The search's verification goes through ``OpFamily.compare`` when a family defines it: a valid
    tie order that differs from the reference passes, and the family's verdict is what fails a case."""
    from torch_kevolve.search.evaluate import Evaluator

    spec = make_spec("topk", torch.empty(3, 12))
    ev = Evaluator(FAM, spec, "cpu", seeds=1, edge_cases=False, fresh_seeds=0)
    cand = cands(spec)["radix"]
    mod = load_module(cand.source)
    assert ev.verify(cand, mod).stage == "ok"
    monkeypatch.setattr(SortFamily, "compare", lambda self, *a: "index 7 is wrong")
    d = ev.verify(cand, mod)
    assert d.stage == "verify" and d.error == "index 7 is wrong"


def test_match_real_post_grad_graph() -> None:
    """Every op as it reaches Inductor's post-grad graph on CPU (one compile): argsort is sort with only
    the indices getitem, argsort(stable=True) is sort.stable, msort is sort(dim=0), median() has no
    getitem; every node is matched with the call's arguments, and Inductor calls ATen for each."""
    from family_helpers import compile_and_record, family_nodes

    def f(x):
        a = torch.sort(x, 1)
        t = torch.topk(x, 3, 1, largest=False, sorted=False)
        return (a.values, a.indices, torch.argsort(x, 1, descending=True), torch.argsort(x, dim=0, stable=True),
                t.values, torch.kthvalue(x, 2, 1, keepdim=True).indices, torch.median(x, 1).values,
                torch.median(x), torch.msort(x))

    x = torch.randn(4, 7)
    graphs, _ = compile_and_record(f, x)
    got = []
    for n in family_nodes(graphs, FAM):
        m = FAM.match(n)
        assert hasattr(m, "spec"), m
        why = FAM.inductor_fallback_reason(n)
        assert why and ("cpu" in why or "decompose_sort_ops" in why), why
        c = dict(m.spec.consts)
        got.append((m.spec.op, tuple(FAM.wanted(m.spec)), c.get("dim"), c.get("descending"), c.get("stable"),
                    c.get("k"), c.get("sorted"), c.get("keepdim")))
    assert sorted(got, key=str) == sorted([
        (SORT, (0, 1), 1, False, False, None, None, None),
        (SORT, (1,), 1, True, False, None, None, None),
        (SORT_STABLE, (1,), 0, False, True, None, None, None),
        (SORT, (0,), 0, False, False, None, None, None),  # msort
        (TOPK, (0,), 1, None, None, 3, False, None),
        (KTHVALUE, (1,), 1, None, None, 2, None, True),
        (MEDIAN_DIM, (0,), 1, None, None, None, None, False),
        (MEDIAN, (0,), -1, None, None, None, None, None),
    ], key=str), got


def test_backend_end_to_end(store_dir, tmp_path) -> None:
    """torch.compile(backend="kevolve") on CPU: topk (both outputs), median.dim (values) and median()
    (a single-output op, its own result user) are searched,
    verified (through the family's compare) and called through the custom-op route, matching eager."""
    def f(x):
        t = torch.topk(x, 3, dim=1)
        return t.values * 2, t.indices, torch.median(x, 1).values, torch.median(x) + 1

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 21, generator=g)
    x[1, 5] = NAN
    ref = f(x)
    out, found, snap = run_kevolve_backend(f, (x,), tmp_path, "sort", seeds=1)
    for o, r in zip(out, ref):  # no ties in randn: indices are unique answers too
        assert same(o, r)
    why = [(fi.op, fi.status, fi.decision) for fi in found]
    assert snap.get("kernel_calls") == 3 and snap.get("rewritten_custom_op") == 3, (snap, why)
    assert sorted(fi.op for fi in found if fi.status == "candidate") == [MEDIAN, MEDIAN_DIM, TOPK]
