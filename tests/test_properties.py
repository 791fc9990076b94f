"""Hostile user input, property-based (issue 10, part 3): per family, hypothesis draws small calls with
odd and zero sizes, non-contiguous/offset/overlapping (stride 0) layouts, unsupported dtypes, NaN/inf/
huge values and out-of-range, negative or overflowing indices; ``property_helpers.check_case`` requires
eager-equal results, or (where eager raises) eager's error from the runtime and no fault and no write
outside the outputs from the raw kernel. ``KEVOLVE_PROPERTY_SCALE`` (``make chaos``) multiplies the
example counts; run with ``-s`` to see the PROPERTY figure lines."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from property_helpers import FIGURES, LAYOUTS, Case, expand_dim, figures_line, float_values, layout, run_property, \
    settings_for

from torch_kevolve.families import get_family

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # interpreter's numpy noise
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # NaN/inf on purpose
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
I8, I32, I64, U8, BOOL = torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool
HUGE = {I32: 2**31 - 1, I64: 2**40}  # indices that overflow int32 address math (and any table)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cuts(n: int, parts: int, g: torch.Generator) -> list[int]:
    """``parts + 1`` non-decreasing offsets from 0 to n (empty parts included)."""
    inner = sorted(torch.randint(0, n + 1, (max(parts - 1, 0),), generator=g).tolist())
    return [0, *inner, n]


def _rare(draw: st.DrawFn, p: float) -> bool:
    """True with probability ~p (hypothesis' own draws favour boundary values: the choice goes through a
    seeded generator instead, so declined options stay rare)."""
    return bool(torch.rand(1, generator=_gen(draw(st.integers(0, 2**16)))) < p)


def _pick(draw: st.DrawFn, options: list) -> object:
    """One of ``options``, uniformly (through a seeded generator: see ``_rare``)."""
    return options[int(torch.randint(0, len(options), (1,), generator=_gen(draw(st.integers(0, 2**16)))))]


def _report(name: str) -> None:
    print(figures_line(name))


# ------------------------------------------------------------------------------------------------
# embedding_bag
# ------------------------------------------------------------------------------------------------

EB = get_family("embedding_bag")


@st.composite
def embedding_bag_cases(draw: st.DrawFn) -> Case:
    dtype = F64 if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from([F32, F16, BF16]))  # F64: declined
    v, d, n, b = draw(st.integers(1, 9)), draw(st.integers(1, 6)), draw(st.integers(0, 14)), draw(st.integers(1, 5))
    mode, ilo = draw(st.sampled_from([0, 1, 2])), draw(st.booleans())
    pad = draw(st.sampled_from([-1, -1, 0, v - 1]))
    has_psw = mode == 0 and draw(st.booleans())
    idt = draw(st.sampled_from([I32, I64]))
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.3]))
    wl, il = draw(st.sampled_from(["contig", "offset", "contig", "step"])), draw(st.sampled_from(["contig", "offset", "step", "expand"]))
    hostile = draw(st.sampled_from(["", "", "", "", "idx_oob", "idx_neg", "idx_huge", "off_start", "off_desc",
                                    "off_past"]))
    g = _gen(seed)
    idx = torch.randint(0, v, (n,), generator=g).to(idt)
    off = _cuts(n, b, g)[: b + (1 if ilo else 0)]
    before = (idx.clone(), list(off))
    tags = [f"w_{wl}", f"i_{il}", "nan_inf" if special else "", "empty" if n == 0 else "", str(dtype)[6:]]
    if hostile.startswith("idx") and n:
        idx[draw(st.integers(0, n - 1))] = {"idx_oob": v, "idx_neg": -1, "idx_huge": HUGE[idt]}[hostile]
    elif hostile == "off_start":
        off[0] = 1
    elif hostile == "off_desc" and len(off) > 2:
        off[1], off[2] = off[2] + 1, off[1]
    elif hostile == "off_past":
        off[-1] = n + 2
    if before[1] != off or not torch.equal(before[0], idx):
        tags.insert(0, hostile)
    weight = layout(float_values((v, d), dtype, seed, special), wl)
    indices = expand_dim(idx, 0) if il == "expand" else layout(idx, il)
    offsets = torch.tensor(off, dtype=idt)
    psw = float_values((n,), dtype, seed + 1, 0.0) if has_psw else None
    return Case(lambda: EB.spec_for(weight, indices, offsets, psw, mode, ilo, pad),
                [weight, indices, offsets, psw], draw(st.integers(0, 5)), ",".join(filter(None, tags)))


@settings_for(100)
@given(embedding_bag_cases())
def test_embedding_bag_hostile_inputs(case: Case) -> None:
    run_property(EB, case)


# ------------------------------------------------------------------------------------------------
# segment_reduce
# ------------------------------------------------------------------------------------------------

SR = get_family("segment_reduce")


@st.composite
def segment_reduce_cases(draw: st.DrawFn) -> Case:
    dtype = draw(st.sampled_from([F32, F32, F16, BF16, F64]))
    n, s = draw(st.integers(0, 12)), draw(st.integers(1, 5))
    trailing = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    reduce = draw(st.sampled_from(["sum", "mean", "max", "min", "prod"]))
    use_off = draw(st.booleans())
    initial = draw(st.sampled_from([None, None, 0.0, -1.5]))
    sdt = draw(st.sampled_from([I32, I64]))
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.3]))
    dl = draw(st.sampled_from(LAYOUTS + ("expand",)))
    hostile = draw(st.sampled_from(["", "", "", "", "len_neg", "sum_short", "sum_long", "off_desc", "off_start",
                                    "off_short_end", "huge"]))
    g = _gen(seed)
    cuts = _cuts(n, s, g)
    segs = cuts if use_off else [b - a for a, b in zip(cuts, cuts[1:])]
    before = list(segs)
    tags = [f"d_{dl}", "nan_inf" if special else "", "empty" if n == 0 else "", reduce, str(dtype)[6:]]
    if hostile == "len_neg" and not use_off and len(segs) > 1:
        segs[0], segs[1] = segs[0] + 1, segs[1] - 1  # sums still match: only the sign is wrong
        segs[1] = -1 if segs[1] >= 0 else segs[1]
    elif hostile == "sum_short" and not use_off and segs[-1] > 0:
        segs[-1] -= 1
    elif hostile == "sum_long" and not use_off:
        segs[-1] += 1
    elif hostile == "off_desc" and use_off and len(segs) > 2:
        segs[1] = segs[2] + 1
    elif hostile == "off_start" and use_off and segs[-1] > 0:
        segs[0] = 1  # eager accepts it (the rows before are ignored)
    elif hostile == "off_short_end" and use_off and segs[-1] > 0:
        segs[-1] -= 1  # eager accepts it (trailing rows ignored)
    elif hostile == "huge":
        segs[-1] = HUGE[sdt]
    if segs != before:
        tags.insert(0, hostile)
    x = float_values((n,) + trailing, dtype, seed, special)
    data = expand_dim(x, 0) if dl == "expand" else layout(x, dl)
    seg_t = torch.tensor(segs, dtype=sdt)
    kw = {"offsets": seg_t} if use_off else {"lengths": seg_t}
    return Case(lambda: SR.spec_for(data, reduce, initial=initial, **kw), [data, seg_t], draw(st.integers(0, 5)),
                ",".join(filter(None, tags)))


@settings_for(100)
@given(segment_reduce_cases())
def test_segment_reduce_hostile_inputs(case: Case) -> None:
    run_property(SR, case)


# ------------------------------------------------------------------------------------------------
# scatter
# ------------------------------------------------------------------------------------------------

SC = get_family("scatter")
INDEX_PUT, SCATTER_ADD, SCATTER_REDUCE = "aten.index_put.default", "aten.scatter_add.default", "aten.scatter_reduce.two"


@st.composite
def scatter_cases(draw: st.DrawFn) -> Case:
    op = draw(st.sampled_from([INDEX_PUT, SCATTER_ADD, SCATTER_REDUCE, SCATTER_REDUCE]))
    dtype = draw(st.sampled_from([F32, F32, F16, BF16, F64]))
    n, dd, m = draw(st.integers(1, 7)), draw(st.integers(1, 5)), draw(st.integers(0, 9))
    reduce = draw(st.sampled_from(["sum", "prod", "mean", "amax", "amin"])) if op == SCATTER_REDUCE else "sum"
    include_self = draw(st.booleans()) if op == SCATTER_REDUCE else True
    # index_put: dim 0 of a 1-D/2-D/3-D self or dim 1 of a 2-D one; scatter: 1-D, or 2-D on either dim
    rank = draw(st.sampled_from([2, 2, 1, 3] if op == INDEX_PUT else [2, 2, 1]))
    dim = draw(st.integers(0, 1)) if rank == 2 else 0
    idt = draw(st.sampled_from([I32, I64])) if op == INDEX_PUT else I64
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.3]))
    xl, sl = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS + ("expand",)))
    hostile = draw(st.sampled_from(["", "", "", "", "idx_oob", "idx_neg", "idx_neg_oob", "idx_huge"]))
    g = _gen(seed)
    xshape = {1: (n,), 2: (n, dd), 3: (n, dd, 2)}[rank]
    x = layout(float_values(xshape, dtype, seed, special), xl)
    size = xshape[dim]
    tags = [op.split(".")[1], reduce, f"{rank}d", f"dim{dim}", f"x_{xl}", f"src_{sl}",
            "nan_inf" if special else "", "empty" if m == 0 else "", str(dtype)[6:]]
    if op == INDEX_PUT:
        idx = torch.randint(-size, size, (m,), generator=g).to(idt)  # negative indices wrap for index_put
        vshape = (m, *xshape[1:]) if dim == 0 else (n, m)
        src = float_values(vshape, dtype, seed + 1, special)
    else:
        shape = (m,) if rank == 1 else (m, dd) if dim == 0 else (n, m)
        idx = torch.randint(0, size, shape, generator=g)
        src = float_values(tuple(s + 1 for s in shape), dtype, seed + 1, special)  # src may be larger
    flat = idx.view(-1)
    if hostile and flat.numel():
        j = draw(st.integers(0, flat.numel() - 1))
        flat[j] = {"idx_oob": size, "idx_neg": -1, "idx_neg_oob": -size - 1, "idx_huge": HUGE[idx.dtype]}[hostile]
        tags.insert(0, hostile)
    src = expand_dim(src, 0) if sl == "expand" else layout(src, sl)
    return Case(lambda: SC.spec_for(op, x, idx, src, dim, reduce, include_self), [x, idx, src],
                draw(st.integers(0, 5)), ",".join(filter(None, tags)))


@settings_for(100)
@given(scatter_cases())
def test_scatter_hostile_inputs(case: Case) -> None:
    run_property(SC, case)


# ------------------------------------------------------------------------------------------------
# jagged
# ------------------------------------------------------------------------------------------------

JG = get_family("jagged")
J2P, P2J = "aten._jagged_to_padded_dense_forward.default", "aten._padded_dense_to_jagged_forward.default"


@st.composite
def jagged_cases(draw: st.DrawFn) -> Case:
    to_padded = draw(st.booleans())
    dtype = draw(st.sampled_from([F32, F32, F16, BF16, I32, F64, BOOL]))
    b, dd = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    max_len = draw(st.integers(0, 6))
    odt = draw(st.sampled_from([I32, I64]))
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.3]))
    vl = draw(st.sampled_from(LAYOUTS + ("expand",)))
    hostile = draw(st.sampled_from(["", "", "", "", "off_desc", "off_neg", "total_mismatch", "huge",
                                    "too_long"]))
    g = _gen(seed)
    if to_padded:
        total = draw(st.integers(0, 12))
        off = _cuts(total, b, g)
    else:  # sequences no longer than the padded length (eager rejects longer ones: a hostile case)
        lens = torch.randint(0, max_len + 1 + (hostile == "too_long"), (b,), generator=g)
        off = [0, *torch.cumsum(lens, 0).tolist()]
        total = off[-1]
    before = list(off)
    tags = ["j2p" if to_padded else "p2j", f"v_{vl}", "nan_inf" if special else "",
            "empty" if total == 0 else "", str(dtype)[6:]]
    if hostile == "off_desc" and len(off) > 2 and off[2] > 0:
        off[1] = off[2] + 1
    elif hostile == "off_neg":
        off[0] = -1
    elif hostile == "huge":
        off[-1] = HUGE[odt]
    if off != before or (hostile in ("total_mismatch", "too_long") and not to_padded):
        tags.insert(0, hostile)
    offsets = torch.tensor(off, dtype=odt)

    def values(shape: tuple[int, ...]) -> torch.Tensor:
        if dtype.is_floating_point:
            t = float_values(shape, dtype, seed, special)
        else:
            t = torch.randint(-5, 5, shape, generator=_gen(seed)).to(dtype)
        return expand_dim(t, 0) if vl == "expand" else layout(t, vl)

    if to_padded:
        v = values((total, dd))
        pad = draw(st.sampled_from([0.0, -1.0, math.nan, -math.inf]))
        return Case(lambda: JG.j2p_spec(v, [offsets], [max_len], pad), [v, offsets], draw(st.integers(0, 5)),
                    ",".join(filter(None, tags)))
    dense = values((b, max_len, dd))
    total_l = total + (1 if hostile == "total_mismatch" else 0)
    return Case(lambda: JG.p2j_spec(dense, [offsets], total_l), [dense, offsets], draw(st.integers(0, 5)),
                ",".join(filter(None, tags)))


@settings_for(100)
@given(jagged_cases())
def test_jagged_hostile_inputs(case: Case) -> None:
    run_property(JG, case)


# ------------------------------------------------------------------------------------------------
# bucketize / searchsorted
# ------------------------------------------------------------------------------------------------

BK = get_family("bucketize")
BUCKETIZE, SEARCHSORTED = "aten.bucketize.Tensor", "aten.searchsorted.Tensor"


@st.composite
def bucketize_cases(draw: st.DrawFn) -> Case:
    op = draw(st.sampled_from([BUCKETIZE, SEARCHSORTED]))
    dtype = draw(st.sampled_from([F32, F32, F16, BF16, F64, I32, I64, BOOL]))
    bdtype = draw(st.sampled_from([dtype, dtype, F32, I64]))
    rows = draw(st.integers(1, 3)) if op == SEARCHSORTED and draw(st.booleans()) else 0
    m, k = draw(st.integers(0, 9)), draw(st.integers(0, 8))
    right, out_int32 = draw(st.booleans()), draw(st.booleans())
    use_sorter = op == SEARCHSORTED and draw(st.booleans())
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.3]))
    xl = draw(st.sampled_from(LAYOUTS + ("expand",)))
    hostile = draw(st.sampled_from(["", "", "", "sorter_oob", "sorter_neg", "sorter_huge", "unsorted"]))
    g = _gen(seed)
    bshape = (rows, m) if rows else (m,)
    xshape = (rows, k) if rows else ((k,) if draw(st.booleans()) else (2, k))

    def vals(shape: tuple[int, ...], dt: torch.dtype, sd: int) -> torch.Tensor:
        if dt == BOOL:
            return torch.randint(0, 2, shape, generator=_gen(sd)).bool()
        if dt.is_floating_point:
            return float_values(shape, dt, sd, special)
        return torch.randint(-6, 6, shape, generator=_gen(sd)).to(dt)

    seq = vals(bshape, bdtype, seed + 1)
    if bdtype != BOOL and hostile != "unsorted":
        seq = seq.sort(dim=-1).values  # NaN sorts last, as ATen expects
    sorter = None
    if use_sorter:
        perm = torch.argsort(torch.rand(bshape, generator=g), dim=-1)
        seq = torch.gather(seq, -1, perm) if bdtype != BOOL else seq
        sorter = torch.argsort(perm, dim=-1) if bdtype != BOOL else torch.arange(m).expand(bshape).contiguous()
        if hostile.startswith("sorter") and m:
            sorter.view(-1)[0] = {"sorter_oob": m, "sorter_neg": -1, "sorter_huge": 2**40}[hostile]
    x = vals(xshape, dtype, seed)
    x = expand_dim(x, 0) if xl == "expand" else layout(x, xl)
    tags = [hostile if use_sorter or hostile == "unsorted" else "", op.split(".")[1], f"x_{xl}",
            "nan_inf" if special else "", "empty" if m * k == 0 else "", f"{str(dtype)[6:]}/{str(bdtype)[6:]}"]
    return Case(lambda: BK.spec_for(op, x, seq, sorter, right, out_int32), [x, seq, sorter],
                draw(st.integers(0, 5)), ",".join(filter(None, tags)))


@settings_for(100)
@given(bucketize_cases())
def test_bucketize_hostile_inputs(case: Case) -> None:
    run_property(BK, case)


# ------------------------------------------------------------------------------------------------
# cumextrema
# ------------------------------------------------------------------------------------------------

CE = get_family("cumextrema")


@st.composite
def cumextrema_cases(draw: st.DrawFn) -> Case:
    op = draw(st.sampled_from(["aten.cummax.default", "aten.cummin.default"]))
    dtype = draw(st.sampled_from([F32, F32, F16, BF16, F64, I8, I32, I64, U8, BOOL, torch.complex64]))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0 if draw(st.integers(0, 9)) == 0 else 1, max_size=3)))
    dim = draw(st.integers(-max(len(shape), 1), max(len(shape), 1) - 1))
    values, indices = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.3]))
    xl = draw(st.sampled_from(LAYOUTS + ("expand",)))
    if dtype.is_floating_point or dtype.is_complex:
        x = float_values(shape, F64, seed, special).to(dtype)
    elif dtype == BOOL:
        x = torch.randint(0, 2, shape, generator=_gen(seed)).bool()
    else:
        info = torch.iinfo(dtype)
        x = torch.randint(max(info.min, -2**40), min(info.max, 2**40), shape, generator=_gen(seed)).to(dtype)
        x = torch.where(torch.rand(shape, generator=_gen(seed + 1)) < 0.2, torch.tensor(info.max, dtype=dtype), x)
    x = expand_dim(x, 0) if xl == "expand" and x.dim() else layout(x, xl)
    tags = [op.split(".")[1][3:], f"x_{xl}", "nan_inf" if special else "", "empty" if x.numel() == 0 else "",
            f"{x.dim()}d", str(dtype)[6:]]
    return Case(lambda: CE.spec_for(op, x, dim, values, indices), [x], draw(st.integers(0, 5)),
                ",".join(filter(None, tags)))


@settings_for(100)
@given(cumextrema_cases())
def test_cumextrema_hostile_inputs(case: Case) -> None:
    run_property(CE, case)


# ------------------------------------------------------------------------------------------------
# scan and argreduce (session 3 families; unary like cumextrema)
# ------------------------------------------------------------------------------------------------

SCAN = get_family("scan")
AR = get_family("argreduce")


def _unary_input(draw: st.DrawFn, dtypes: list) -> tuple[torch.Tensor, list[str]]:
    dtype = draw(st.sampled_from(dtypes))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0 if draw(st.integers(0, 9)) == 0 else 1, max_size=3)))
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.3]))
    xl = draw(st.sampled_from(LAYOUTS + ("expand",)))
    if dtype.is_floating_point or dtype.is_complex:
        x = float_values(shape, F64, seed, special).to(dtype)
    elif dtype == BOOL:
        x = torch.randint(0, 2, shape, generator=_gen(seed)).bool()
    else:
        info = torch.iinfo(dtype)
        x = torch.randint(max(info.min, -100), min(info.max, 100), shape, generator=_gen(seed)).to(dtype)
        x = torch.where(torch.rand(shape, generator=_gen(seed + 1)) < 0.2, torch.tensor(info.max, dtype=dtype), x)
    x = expand_dim(x, 0) if xl == "expand" and x.dim() else layout(x, xl)
    tags = [f"x_{xl}", "nan_inf" if special else "", "empty" if x.numel() == 0 else "", f"{x.dim()}d",
            str(dtype)[6:]]
    return x, tags


@st.composite
def scan_cases(draw: st.DrawFn) -> Case:
    # cumprod is left out: past the float range a parallel scan's order (ours, and Inductor's own
    # lowering) decides where 0 * inf = NaN appears, ATen's sequential one does not (RELIABILITY.md)
    op = draw(st.sampled_from(["aten.cumsum.default", "aten.logcumsumexp.default"]))
    x, tags = _unary_input(draw, [F32, F32, F16, BF16, F64, I8, I32, I64, U8, BOOL, torch.complex64])
    dim = draw(st.integers(-max(x.dim(), 1), max(x.dim(), 1) - 1))
    return Case(lambda: SCAN.spec_for(op, x, dim), [x], draw(st.integers(0, 5)),
                ",".join(filter(None, [op.split(".")[1], *tags])))


@settings_for(100)
@given(scan_cases())
def test_scan_hostile_inputs(case: Case) -> None:
    run_property(SCAN, case)


@st.composite
def argreduce_cases(draw: st.DrawFn) -> Case:
    op = draw(st.sampled_from(["aten.argmax.default", "aten.argmin.default"]))
    x, tags = _unary_input(draw, [F32, F32, F16, BF16, F64, I8, I32, I64, U8, BOOL])
    dim = None if draw(st.integers(0, 3)) == 0 else draw(st.integers(-max(x.dim(), 1), max(x.dim(), 1) - 1))
    keepdim = draw(st.booleans())
    return Case(lambda: AR.spec_for(op, x, dim, keepdim), [x], draw(st.integers(0, 5)),
                ",".join(filter(None, [op.split(".")[1], *tags])))


@settings_for(100)
@given(argreduce_cases())
def test_argreduce_hostile_inputs(case: Case) -> None:
    run_property(AR, case)


SO = get_family("sort")


@st.composite
def sort_cases(draw: st.DrawFn) -> Case:
    op = draw(st.sampled_from(["aten.sort.default", "aten.sort.stable", "aten.topk.default", "aten.kthvalue.default",
                               "aten.median.dim", "aten.median.default"]))
    x, tags = _unary_input(draw, [F32, F32, F16, BF16, F64, I8, I32, I64, U8, BOOL])
    dim = draw(st.integers(-max(x.dim(), 1), max(x.dim(), 1) - 1))
    n = x.shape[dim] if x.dim() else 1
    k = draw(st.integers(0, n + 1))  # topk: n + 1 and kthvalue: 0 or n + 1 make eager raise
    desc, keepdim = draw(st.booleans()), draw(st.booleans())
    values, indices = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    return Case(lambda: SO.spec_for(op, x, dim, k=k, descending=desc, stable=op.endswith("stable"), keepdim=keepdim,
                                    values=values, indices=indices), [x], draw(st.integers(0, 5)),
                ",".join(filter(None, [op.split(".")[1] + "." + op.split(".")[2], f"k{k}", *tags])))


@settings_for(60)
@given(sort_cases())
def test_sort_hostile_inputs(case: Case) -> None:
    run_property(SO, case)


def test_zz_property_figures() -> None:
    """Print the figures (``-s``) and require each family to have served and rejected real cases: a
    strategy that only produces declined (skipped) specs would test nothing."""
    names = ("embedding_bag", "segment_reduce", "scatter", "jagged", "bucketize", "cumextrema", "scan", "argreduce", "sort")
    for name in names:
        if name in FIGURES:
            _report(name)
    if not all(name in FIGURES for name in names):
        pytest.skip("run with all the property tests above")
    for name in names:
        assert FIGURES[name]["served"] >= 10, figures_line(name)
    for name in ("embedding_bag", "segment_reduce", "scatter", "bucketize"):
        assert FIGURES[name]["rejected"] + FIGURES[name]["asserted"] >= 1, figures_line(name)
    for name in ("embedding_bag", "scatter", "bucketize"):  # index-range device asserts (GPU launches)
        assert FIGURES[name]["asserted"] >= 1, figures_line(name)


# ------------------------------------------------------------------------------------------------
# histogram (histc, bincount)
# ------------------------------------------------------------------------------------------------

HI = get_family("histogram")
HIST_RANGES = [(0.0, 0.0), (0.0, 0.0), (-1.0, 1.0), (-3.0, 5.0), (0.0, 1e-30), (-1e30, 1e30), (-0.5, 65504.0)]
HIST_BAD_RANGES = [(2.0, 1.0), (1.0, 1.0 + 1e-9), (0.0, math.inf)]  # declined (not increasing in fp32, not finite)


@st.composite
def histogram_cases(draw: st.DrawFn) -> Case:
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.3]))
    g = _gen(seed)
    if draw(st.booleans()):  # histc
        dtype = draw(st.sampled_from([F16, I32] if _rare(draw, 0.1) else [F32, F64]))  # F16/I32: declined
        two_d = draw(st.integers(0, 3)) == 0
        shape = (draw(st.integers(0, 5)), draw(st.integers(1, 7))) if two_d else (draw(st.integers(0, 40)),)
        bins = 0 if _rare(draw, 0.1) else draw(st.sampled_from([1, 2, 3, 7, 16, 64, 65, 100]))  # 0: declined
        lo, hi = draw(st.sampled_from(HIST_BAD_RANGES if _rare(draw, 0.1) else HIST_RANGES))
        # non-contiguous: declined
        xl = draw(st.sampled_from(("contig", "contig", "offset", "offset") + LAYOUTS[2:] + ("expand",)))
        if dtype.is_floating_point:
            span = 4.0 if lo == hi or not math.isfinite(hi - lo) else hi - lo
            base = -3.0 if lo == hi or not math.isfinite(hi - lo) else lo
            x0 = float_values(shape, F64, seed, special)
            x = base + (torch.sigmoid(x0) * 1.5 - 0.25) * span  # mostly in range, a quarter outside
            x = torch.where(x0.isfinite(), x, x0)  # NaN/inf stay
            edges = torch.linspace(base, base + span, 5, dtype=F64)  # some exactly on bin edges / bounds
            x = torch.where(torch.rand(shape, generator=g) < 0.15, edges[torch.randint(0, 5, shape, generator=g)], x)
            x = x.to(dtype)
        else:
            x = torch.randint(-5, 5, shape, generator=g).to(dtype)
        x = expand_dim(x, 0) if xl == "expand" else layout(x, xl)
        tags = ["histc", "data_range" if lo == hi else "", f"x_{xl}", "nan_inf" if special else "",
                "empty" if x.numel() == 0 else "", f"bins{bins}", str(dtype)[6:]]
        return Case(lambda: HI.histc_spec(x, bins, lo, hi), [x], draw(st.integers(0, 5)), ",".join(filter(None, tags)))
    ydt = F32 if _rare(draw, 0.1) else draw(st.sampled_from([I64, I32, I8, U8, torch.int16]))  # F32: declined
    n, m = draw(st.integers(0, 30)), draw(st.sampled_from([1, 2, 5, 17, 64, 300]))
    wrap = draw(st.sampled_from(["none", "none", "mod", "mod", "clamp", "clamp"]))
    bad = _rare(draw, 0.15)  # wrap bounds that do not bound the input below minlength: declined
    if wrap == "clamp":
        a = draw(st.sampled_from([0, min(1, m - 1), m - 1]))
        b = m if bad else draw(st.sampled_from([a, m - 1]))
    else:
        a, b = (m + 1 if bad else draw(st.sampled_from([1, min(2, m), m]))), 0
    wdt = I32 if _rare(draw, 0.05) else draw(st.sampled_from([None, None, F32, F64, F16, BF16]))  # I32: declined
    wl = draw(st.sampled_from(["contig", "contig", "offset", "step"]))  # step: declined
    yl = draw(st.sampled_from(["contig", "contig", "offset", "offset", "step", "expand"]))  # step/expand: declined
    hostile = _pick(draw, ["", "", "", "neg", "past", "huge", "extremes"])
    if ydt.is_floating_point:
        y = torch.randint(0, max(m, 1), (n,), generator=g).to(ydt)
    else:
        info = torch.iinfo(ydt)
        lo_v = 0 if wrap == "none" else max(info.min, -2 * m)
        y = torch.randint(lo_v, max(min(info.max, 2 * m if wrap != "none" else m), lo_v + 1), (n,), generator=g).to(ydt)
        if hostile and n:
            j = draw(st.integers(0, n - 1))
            # unwrapped: eager's output has max + 1 bins, so "huge" stays at 2**20 (no 16 GiB allocation)
            top = info.max if wrap != "none" else min(info.max, 2**20)
            y[j] = {"neg": max(info.min, -1), "past": min(info.max, m), "huge": top, "extremes": info.min}[hostile]
    y = expand_dim(y, 0) if yl == "expand" else layout(y, yl)
    w = None
    if wdt is not None:
        w = float_values((n,), wdt, seed + 1, special) if wdt.is_floating_point else torch.ones(n, dtype=wdt)
        w = layout(w, wl)
    tags = ["bincount", wrap, hostile, f"y_{yl}", "" if w is None else f"w_{wl}",
            "nan_inf" if special and w is not None else "",
            "empty" if n == 0 else "", str(ydt)[6:], "" if wdt is None else "w" + str(wdt)[6:]]
    return Case(lambda: HI.bincount_spec(y, w, m, wrap, a, b), [y, w], draw(st.integers(0, 5)),
                ",".join(filter(None, tags)))


@settings_for(200)
@given(histogram_cases())
def test_histogram_hostile_inputs(case: Case) -> None:
    run_property(HI, case)


# ------------------------------------------------------------------------------------------------
# embedding_bag_backward (dense weight gradient)
# ------------------------------------------------------------------------------------------------

EBB = get_family("embedding_bag_backward")


def _row_layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``layout`` plus ``rowpad`` (rows of a wider buffer: row stride > width) and ``expand`` (row 0 repeated)."""
    if kind == "rowpad" and t.dim() >= 2:
        buf = torch.empty(t.shape[0], t.shape[1] + 3, *t.shape[2:], dtype=t.dtype)
        return buf[:, :t.shape[1]].copy_(t)
    if kind == "expand":
        return expand_dim(t, 0)
    return layout(t, "contig" if kind == "rowpad" else kind)


@st.composite
def embedding_bag_backward_cases(draw: st.DrawFn) -> Case:
    dtype = F64 if _rare(draw, 0.08) else draw(st.sampled_from([F32, F32, F16, BF16]))  # F64: declined
    v, d, n, b = draw(st.integers(1, 9)), draw(st.integers(1, 6)), draw(st.integers(0, 14)), draw(st.integers(1, 5))
    mode, ilo = draw(st.sampled_from([0, 0, 1, 2])), draw(st.booleans())
    pad = draw(st.sampled_from([-1, -1, 0, v - 1]))
    has_psw = mode == 0 and draw(st.booleans())
    idt, odt = draw(st.sampled_from([I32, I64])), draw(st.sampled_from([I32, I64]))
    o2b_empty = mode == 0 and draw(st.booleans())  # ATen's CPU forward leaves offset2bag empty for sum
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.3]))
    # grad step/transposed: declined unless D is 1; indices step/expand: ATen's CPU backward raises
    gl = draw(st.sampled_from(["contig", "contig", "offset", "rowpad", "expand", "step", "transposed"]))
    il = draw(st.sampled_from(["step", "expand"] if _rare(draw, 0.15) else ["contig", "offset"]))
    hostile = _pick(draw, ["", "", "", "", "idx_oob", "idx_neg", "idx_huge", "off_start", "off_desc", "off_past",
                           "off_neg", "mi_oob", "mi_neg"])
    g = _gen(seed)
    idx = torch.randint(0, v, (n,), generator=g)
    if il == "expand" and n:
        idx[:] = idx[0]  # the view repeats element 0: bookkeeping must see the same values
    cuts = _cuts(n, b, g)
    off = cuts[: b + (1 if ilo else 0)]
    # the forward's bookkeeping for the valid call: bag per position, non-padding entries, argmax rows
    bag_of = torch.repeat_interleave(torch.arange(b), torch.tensor([y - x for x, y in zip(cuts, cuts[1:])]))
    keep = (idx != pad) if pad >= 0 else torch.ones(n, dtype=torch.bool)
    counts = torch.zeros(b, dtype=torch.int64).index_add_(0, bag_of, keep.long())
    mi = torch.zeros(b, d, dtype=torch.int64)
    for j in range(b):
        rows = idx[cuts[j]:cuts[j + 1]][keep[cuts[j]:cuts[j + 1]]]
        if rows.numel():
            mi[j] = rows[torch.randint(0, rows.numel(), (d,), generator=g)]
    tags = [f"mode{mode}", f"g_{gl}", f"i_{il}", "nan_inf" if special else "", "empty" if n == 0 else "",
            "o2b_empty" if o2b_empty else "", "pad" if pad >= 0 else "", str(dtype)[6:]]
    changed = True
    if hostile.startswith("idx") and n:
        j = 0 if il == "expand" else draw(st.integers(0, n - 1))
        idx[j] = {"idx_oob": v, "idx_neg": -1, "idx_huge": HUGE[idt]}[hostile]
    elif hostile == "off_start" and len(off) > 1:
        off[0] = 1
    elif hostile == "off_desc" and len(off) > 2:
        off[1], off[2] = off[2] + 1, off[1]
    elif hostile == "off_past":
        off[-1] = n + 2
    elif hostile == "off_neg" and len(off) > 1:
        off[1] = -2
    elif hostile.startswith("mi") and mode == 2:
        mi[draw(st.integers(0, b - 1)), draw(st.integers(0, d - 1))] = v if hostile == "mi_oob" else -1
    else:
        changed = False
    if changed:
        tags.insert(0, hostile)
    grad = _row_layout(float_values((b, d), dtype, seed, special), gl)
    indices = expand_dim(idx.to(idt), 0) if il == "expand" else layout(idx.to(idt), il)
    offsets = torch.tensor(off, dtype=odt)
    psw = float_values((n,), dtype, seed + 1, special) if has_psw else None
    o2b = (bag_of[:0] if o2b_empty else bag_of).to(odt)
    bsz = (torch.zeros(b, dtype=torch.int64) if o2b_empty else counts).to(odt)
    mis = mi.to(odt) if mode == 2 else None
    return Case(lambda: EBB.spec_for(grad, indices, offsets, psw, v, mode, pad, o2b, bsz, mis),
                [grad, indices, offsets, psw, o2b, bsz, mis], draw(st.integers(0, 5)), ",".join(filter(None, tags)),
                reference_nans=dtype in (F16, BF16))  # ATen's CPU backward adds fp16/bf16 rows in that dtype


@settings_for(200)
@given(embedding_bag_backward_cases())
def test_embedding_bag_backward_hostile_inputs(case: Case) -> None:
    run_property(EBB, case)


# ------------------------------------------------------------------------------------------------
# segment_reduce_backward (sum / mean gradient)
# ------------------------------------------------------------------------------------------------

SRB = get_family("segment_reduce_backward")


@st.composite
def segment_reduce_backward_cases(draw: st.DrawFn) -> Case:
    dtype = F64 if _rare(draw, 0.08) else draw(st.sampled_from([F32, F32, F16, BF16]))  # F64: declined
    ddt = F32 if _rare(draw, 0.08) else dtype  # data of another dtype: declined (unless equal)
    n, s = draw(st.integers(0, 12)), draw(st.integers(0, 5))
    trailing = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    reduce = "max" if _rare(draw, 0.05) else draw(st.sampled_from(["sum", "mean"]))  # max: declined
    use_off = draw(st.booleans())
    sdt = draw(st.sampled_from([I32, I64]))
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.3]))
    # step/transposed: mostly declined
    gl = draw(st.sampled_from(["contig", "contig", "offset", "rowpad", "expand", "step", "transposed"]))
    dl = draw(st.sampled_from(["contig", "contig", "contig", "offset", "step"]))  # step: declined
    sl = draw(st.sampled_from(["contig", "contig", "offset", "step"]))
    hostile = _pick(draw, ["", "", "", "off_desc", "off_start", "off_short_end", "off_neg", "off_past", "huge"]
                    if use_off else ["", "", "", "len_neg", "sum_short", "sum_long", "huge"])
    g = _gen(seed)
    cuts = _cuts(n, s, g) if s else [0]
    segs = cuts if use_off else [y - x for x, y in zip(cuts, cuts[1:])]
    before = list(segs)
    tags = [f"g_{gl}", f"d_{dl}", f"s_{sl}", "nan_inf" if special else "", "empty" if n == 0 else "", reduce,
            "offsets" if use_off else "lengths", str(dtype)[6:]]
    if hostile == "len_neg" and not use_off and len(segs) > 1:
        segs[0], segs[1] = segs[0] + 1, segs[1] - 1
        segs[1] = -1 if segs[1] >= 0 else segs[1]
    elif hostile == "sum_short" and not use_off and segs and segs[-1] > 0:
        segs[-1] -= 1
    elif hostile == "sum_long" and not use_off and segs:
        segs[-1] += 1
    elif hostile == "off_desc" and use_off and len(segs) > 2:
        segs[1] = segs[2] + 1
    elif hostile == "off_start" and use_off and segs[-1] > 0:
        segs[0] = 1
    elif hostile == "off_short_end" and use_off and segs[-1] > 0:
        segs[-1] -= 1
    elif hostile == "off_neg" and use_off:
        segs[0] = -2
    elif hostile == "off_past" and use_off:
        segs[-1] = n + 3
    elif hostile == "huge" and segs:
        segs[-1] = HUGE[sdt]
    if segs != before:
        tags.insert(0, hostile)
    grad = _row_layout(float_values((s,) + trailing, dtype, seed, special), gl)
    data = layout(float_values((n,) + trailing, ddt, seed + 1, 0.0), dl)
    seg_t = layout(torch.tensor(segs, dtype=sdt), sl)
    return Case(lambda: SRB.spec_for(grad, seg_t, data, reduce, use_off), [grad, seg_t, data],
                draw(st.integers(0, 5)), ",".join(filter(None, tags)))


@settings_for(200)
@given(segment_reduce_backward_cases())
def test_segment_reduce_backward_hostile_inputs(case: Case) -> None:
    run_property(SRB, case)


# ------------------------------------------------------------------------------------------------
# hstu_attention (region: silu(q kᵀ [+ bias]) masked, @ v)
# ------------------------------------------------------------------------------------------------

HS = get_family("hstu_attention")


def _hstu_operand(t4: torch.Tensor, kind: str, three_d: bool) -> torch.Tensor:
    """A [B, H, r, c] operand in one layout: ``contig``, ``offset``, ``bmhd`` (the [B, r, H, c] storage
    read through ``transpose(1, 2)``: HSTU's ``view(..).transpose``), ``expand`` (batch dim stride 0),
    ``step`` (every other column); ``three_d``: as [B*H, r, c] (contiguous kinds only)."""
    if kind == "bmhd":
        return t4.transpose(1, 2).contiguous().transpose(1, 2)
    if kind == "expand":
        return t4[:1].expand(t4.shape)
    out = layout(t4, kind)
    return out.reshape(-1, *t4.shape[2:]) if three_d and kind in ("contig", "offset") else out


@st.composite
def hstu_cases(draw: st.DrawFn) -> Case:
    # F64/I32: declined; fp16/bf16 are not drawn (the interpreter's half arithmetic is not the GPU's)
    dtype = draw(st.sampled_from([F64, I32])) if _rare(draw, 0.08) else F32
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    M, N = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    D, DV = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    causal = draw(st.booleans())
    seed, special = draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.0, 0.1, 0.3]))
    ql, kl, vl = (draw(st.sampled_from(["contig", "contig", "offset", "bmhd", "expand", "step"])) for _ in range(3))
    three_d = draw(st.integers(0, 3)) == 0
    bias_kind = draw(st.sampled_from(["nm_bad", "int"] if _rare(draw, 0.06) else ["none", "hmn", "mn", "bhmn", "n"]))
    mask_kind = "keep_float" if _rare(draw, 0.05) else draw(st.sampled_from(["none", "none", "keep", "drop", "mul"]))
    mask_shape = draw(st.sampled_from(["mn", "b1mn"]))
    len_kind = draw(st.sampled_from(["none", "none", "q", "k", "qk", "qk"]))
    qk_scale, scale = draw(st.sampled_from([1.0, 1.0, 0.125, -2.0])), draw(st.sampled_from([1.0, 1.0 / N, -0.5]))
    g = _gen(seed)

    def vals(shape: tuple[int, ...], sd: int, sp: float, big: bool = False) -> torch.Tensor:
        # No inf in any operand, and +-1e30 only in the bias (q kᵀ would overflow to inf): under the
        # interpreter tl.dot is numpy's sgemm, which returns +-inf where IEEE gives NaN for a sum of
        # inf and -inf products (np.matmul of a [32, 16] x [16, 16] fp32 tile, row (inf, 1e30, ..) by
        # column (1e30, -1e30, ..) -> inf, np.dot -> nan); a GPU's dot is IEEE. NaN, huge finite, tiny
        # and -0.0 values stay.
        t = float_values(shape, F64, sd, sp)
        t = torch.where(t.isinf(), math.nan, t)
        if not big:
            t = torch.where(t.abs() > 1e29, t.sign() * 65504.0, t)
        return t.to(dtype) if dtype.is_floating_point else t.nan_to_num(0.0, 0.0, 0.0).clamp(-9, 9).to(dtype)

    # NaN/huge in q, k and the bias; v stays finite: the kernel skips blocks above the diagonal that
    # eager multiplies 0 * inf in (tril(a) @ v), a documented difference (see the family's docstring)
    q = _hstu_operand(vals((B, H, M, D), seed, special), ql, three_d)
    k = vals((B, H, N, D), seed + 1, special)
    kt = _hstu_operand(k, kl, three_d).transpose(-1, -2)
    v = _hstu_operand(vals((B, H, N, DV), seed + 2, 0.0), vl, three_d)
    bias = {"none": None, "hmn": (H, M, N), "mn": (M, N), "bhmn": (B, H, M, N), "n": (1, N), "nm_bad": (N + 1, M),
            "int": (M, N)}[bias_kind]
    if bias is not None:
        bias = vals(bias, seed + 3, special, big=True) if bias_kind != "int" else \
            torch.randint(-2, 2, bias, generator=g)
    mshape = (M, N) if mask_shape == "mn" else (B, 1, M, N)
    mask, kind = None, mask_kind
    if mask_kind in ("keep", "drop"):
        mask = torch.rand(mshape, generator=g) < 0.6
    elif mask_kind in ("mul", "keep_float"):
        mask = vals(mshape, seed + 4, special / 3).abs()
        kind = "mul" if mask_kind == "mul" else "keep"  # a float keep mask: declined
    lengths = None
    if len_kind != "none":
        # lengths >= 2**31: test_hstu_attention_huge_lengths (the kernel clamps them in int64 first)
        choices = [0, 1, N, N + 3, -2, min(M, N)]
        lengths = torch.tensor([choices[draw(st.integers(0, len(choices) - 1))] if draw(st.booleans())
                                else int(torch.randint(0, N + 1, (1,), generator=g)) for _ in range(B)],
                               dtype=draw(st.sampled_from([I32, I64])))
    tags = ["causal" if causal else "full", f"bias_{bias_kind}", f"mask_{mask_kind}", f"len_{len_kind}",
            f"q_{ql}", f"k_{kl}", f"v_{vl}", "3d" if three_d else "", "nan_inf" if special else "",
            str(dtype)[6:]]
    if lengths is not None:
        lv = lengths.tolist()
        tags += ["len0" if 0 in lv else "", "len_neg" if min(lv) < 0 else "", "len_past_n" if max(lv) > N else ""]
    heads = H if three_d else None
    return Case(lambda: HS.spec_for(q, kt, v, bias, mask, lengths, heads=heads, causal=causal, mask_kind=kind,
                                    len_q="q" in len_kind, len_k="k" in len_kind, qk_scale=qk_scale, scale=scale),
                [q, kt, v, bias, mask, lengths], draw(st.integers(0, 5)), ",".join(filter(None, tags)))


@settings_for(200)
@given(hstu_cases())
def test_hstu_attention_hostile_inputs(case: Case) -> None:
    run_property(HS, case)


@pytest.mark.parametrize("huge", [2**40, 2**31 + 1])
def test_hstu_attention_huge_lengths(huge: int) -> None:
    q, k, v = (float_values((2, 1, 8, 4), F32, s, 0.0) for s in (1, 2, 3))
    kt, ln = k.transpose(-1, -2), torch.tensor([huge, 3], dtype=I64)
    case = Case(lambda: HS.spec_for(q, kt, v, None, None, ln, len_q=True, len_k=True), [q, kt, v, None, None, ln],
                0, "len_huge")
    run_property(HS, case)


def test_zz_property_figures_more() -> None:
    """Figures of the families added after the first nine (``-s``); each must serve real cases."""
    names = ("histogram", "embedding_bag_backward", "segment_reduce_backward", "hstu_attention")
    for name in names:
        if name in FIGURES:
            _report(name)
    if not all(name in FIGURES for name in names):
        pytest.skip("run with all the property tests above")
    for name in names:
        assert FIGURES[name]["served"] >= 10, figures_line(name)
    for name in ("histogram", "embedding_bag_backward", "segment_reduce_backward"):
        assert FIGURES[name]["rejected"] + FIGURES[name]["asserted"] >= 1, figures_line(name)
    assert FIGURES["embedding_bag_backward"]["asserted"] >= 1, figures_line("embedding_bag_backward")
    # the backward families' eager raises (as the forward would) for every value their input_error flags
    assert FIGURES["histogram"]["guarded"] >= 1, figures_line("histogram")
