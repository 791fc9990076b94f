"""The sort family: order statistics along one dim -- ``aten.sort.default`` / ``aten.sort.stable``
(argsort and msort decompose to these), ``aten.topk.default``, ``aten.kthvalue.default``,
``aten.median.dim`` and ``aten.median.default``. One family because every op is "order the row by a
total order on keys, then keep some positions": they share the key transform and both templates.

What reaches the post-grad graph (torch 2.13, checked by compiling): each op as itself followed by
``getitem`` nodes for the outputs used (``argsort`` is ``sort`` with only ``getitem(_, 1)``;
``argsort(stable=True)`` is ``sort.stable``); ``median.default`` returns one 0-D tensor (no getitem).

How Inductor treats them (``torch/_inductor/lowering.py``): ``sort.stable``/``sort.default`` lower to
``ir.Sort`` (a persistent ``tl.sort`` kernel) only on Triton devices, for sort dims ``<= 512`` (unless
``config.triton.decompose_sort_ops``, then any dim below int32 max), with persistent reductions on, and
call ATen otherwise; ``topk``/``kthvalue``/``median`` call ATen unless ``decompose_sort_ops`` (then they
are a full stable sort plus a slice/select). Every op is in ``lowered_ops`` and
:meth:`SortFamily.inductor_fallback_reason` mirrors those rules (torch 2.11 lists topk/kthvalue/median
as plain fallbacks, which ``detect`` sees before asking the family).

Semantics served (pinned against eager in the tests): NaN is above everything (ascending sort puts NaN
last, descending and ``topk(largest=True)`` first); ``-0.0`` ties ``0.0``; a stable sort keeps the
input order of equal keys, ascending *and* descending. Every template produces exactly that stable
order, so it also serves the unstable ops; with ties their indices may legitimately differ from eager,
hence :meth:`SortFamily.compare` (index validity, not identity, except for stable sort).
``median`` returns the lower median, or NaN (at the first NaN's index) when the row has a NaN.

Keys: the value as an order-preserving signed int32 (float bits with the magnitude flipped for
negatives, NaN canonicalised above +inf, -0.0 to 0.0; ints as themselves; ``~key`` for descending /
largest) packed over the position into one int64 -- ``key << 32 | index`` -- so a single ``tl.sort``
orders values and carries indices, ties broken by index (stability for free). Values are then loaded
back from the input at the winning index (exact bits: signs of zeros, NaN payloads). Served dtypes:
float32/16, bfloat16, int32/16/8, uint8, bool (64-bit keys would not leave room for the index).

Templates (canonical problem ``[O, L, I]`` like cumextrema: ``O * I`` lanes, each a row of ``L``):

* ``sort``: ``BLOCK_R`` rows per program, the whole padded row in registers, one bitonic ``tl.sort`` of
  the packed keys; stores positions ``< K`` (sort: ``K = L``; topk: ``k``) or the one selected position
  (kthvalue / median). A sort whose indices are unused sorts the 32-bit keys alone (half the network,
  values decoded from the keys: -0.0 then sorts just below 0.0, which is one of the valid orders).
* ``radix``: radix select -- the rank-``p`` key found by a search over the 32 key bits, ``RADIX_BITS``
  (1, 2: three counts packed in one int64 sum, 4: a [rows, row, 16] count) per step, each step one
  block reduction over the row held in registers (no sort of the row). topk then keeps the ``k`` keys
  below the threshold (ties by index through a cumsum), compacts them to a workspace, and sorts only
  those ``k`` (``BLOCK_K``). For topk k=64 of 4096 this replaces a 4096-wide bitonic network with
  16 counting steps and a 64-wide sort. ``EARLY`` (1 bit per step): a data-dependent loop that stops a
  row as soon as a probe has exactly ``rank + 1`` keys below it -- that set is topk's selection (no
  tie ranking) and the rank-th key is its largest; ~20 of 32 steps on distinct data, all 32 (plus a
  loop's overhead) when ties straddle the threshold.
* ``bitonic`` (topk only): ``tl.topk`` over the packed keys -- bitonic sorts of runs of ``BLOCK_K``,
  then log2(row / k) halvings that keep the better run of each pair; no workspace, no full-row sort.

Block sizes follow the spec (``BLOCK_N`` = the padded row, ``BLOCK_K`` = padded k), so one config serves
every edge case; the search varies rows per program, warps and radix width.

The search times candidates on :meth:`SortFamily.timing_inputs` (distinct values), not on the
tie-heavy verification inputs: on a 16-value grid EARLY never stops and was timed 15% slower than the
fixed loop; on distinct data it is 30% faster (H100, topk k=64 of 4096).

Rows longer than ``MAX_ROW`` (16384) are not served (no multi-block template yet).
"""
from __future__ import annotations

import logging
import math
import operator
from typing import Any, Sequence

import torch

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip, Ws
from .util import all_int as _all_int, cdiv as _cdiv, elem_size as _elem_size, next_pow2 as _next_pow2, template_of, check_pow2
from .util import meta_val, node_kwargs, unique_candidates
from .util import norm_dim, strided as _strided
from .util import RowGeom as Geom, one_dim, split_at

log = logging.getLogger("torch_kevolve")

SORT = "aten.sort.default"
SORT_STABLE = "aten.sort.stable"
TOPK = "aten.topk.default"
KTHVALUE = "aten.kthvalue.default"
MEDIAN_DIM = "aten.median.dim"
MEDIAN = "aten.median.default"
_OPS = (SORT, SORT_STABLE, TOPK, KTHVALUE, MEDIAN_DIM, MEDIAN)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
MAX_ROW = 16384
_INDUCTOR_MAX_SORT = 512  # ir.Sort's persistent-kernel limit without decompose_sort_ops
_MAX_GRID_X = 2**31 - 1
# MODE constexpr: what positions of the ordered row are stored
_STORE_FIRST, _STORE_POS, _STORE_MEDIAN = 0, 1, 2

# ------------------------------------------------------------------------------------------------
# Kernel sources (complete modules; helpers pasted into each)
# ------------------------------------------------------------------------------------------------

_HEADER = '''import triton
import triton.language as tl
'''

_COMMON = '''

@triton.jit
def _okey(x, KIND: tl.constexpr, DESC: tl.constexpr, TIE_ZEROS: tl.constexpr = True):
    \"\"\"Order-preserving int32 key: NaN (any sign) above +inf, -0.0 equal to 0.0 (else just below it);
    inverted for DESC.\"\"\"
    if KIND == 0:
        f = x.to(tl.float32)
        b = f.to(tl.int32, bitcast=True)
        b = tl.where(f != f, 2143289344, b)
        if TIE_ZEROS:
            b = tl.where(f == 0.0, 0, b)
        s = tl.where(b < 0, b ^ 2147483647, b)
    else:
        s = x.to(tl.int32)
    if DESC:
        s = -1 - s
    return s


@triton.jit
def _value(s, KIND: tl.constexpr, DESC: tl.constexpr):
    \"\"\"The value of an _okey key made with TIE_ZEROS=False (exact; NaN comes back as the canonical NaN).\"\"\"
    if DESC:
        s = -1 - s
    if KIND == 0:
        v = tl.where(s < 0, s ^ 2147483647, s).to(tl.float32, bitcast=True)
    else:
        v = s
    return v


@triton.jit
def _lanes(p, inner, n_out, stride_o, stride_i):
    \"\"\"Lane p -> (input offset of its row, output offset of its first position).\"\"\"
    o = p // inner
    i = p - o * inner
    return o * stride_o + i * stride_i, o * n_out * inner + i


@triton.jit
def _load_keys(x_ptr, x_row, l, m, stride_l, KIND: tl.constexpr, DESC: tl.constexpr):
    x = tl.load(x_ptr + x_row + l.to(tl.int64) * stride_l, mask=m, other=0)
    return x, _okey(x, KIND, DESC)


@triton.jit
def _store_pairs(x_ptr, v_ptr, i_ptr, x_row, out_off, idx, m, stride_l, WRITE_V: tl.constexpr,
                 WRITE_I: tl.constexpr):
    \"\"\"Store index (int64) and the input's value at it (exact bits) where m.\"\"\"
    if WRITE_V:
        v = tl.load(x_ptr + x_row + idx.to(tl.int64) * stride_l, mask=m, other=0)
        tl.store(v_ptr + out_off, v, mask=m)
    if WRITE_I:
        tl.store(i_ptr + out_off, idx.to(tl.int64), mask=m)


@triton.jit
def _target(s, m, n_len, pos_sel, MODE: tl.constexpr, KIND: tl.constexpr):
    \"\"\"The ordered position to select per row: POS, or for median the first NaN's when a NaN is there.\"\"\"
    pos = tl.zeros([s.shape[0]], tl.int32) + pos_sel
    if MODE == 2:
        if KIND == 0:
            n_nan = tl.sum((m & (s == 2143289344)).to(tl.int32), axis=1)
            pos = tl.where(n_nan > 0, n_len - n_nan, pos)
    return pos
'''

_SIGNATURE = '''
    x_ptr, v_ptr, i_ptr,
    n_lanes, n_len, inner, stride_o, stride_l, stride_i, n_keep, pos_sel,
    KIND: tl.constexpr, DESC: tl.constexpr, MODE: tl.constexpr, WRITE_V: tl.constexpr, WRITE_I: tl.constexpr,'''

SORT_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def sel_sort(''' + _SIGNATURE + '''
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    \"\"\"BLOCK_R rows per program: one bitonic sort of (key << 32 | index) over the padded row.\"\"\"
    p = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    pm = p < n_lanes
    if MODE == 0:
        x_row, out_row = _lanes(p, inner, n_keep, stride_o, stride_i)
    else:
        x_row, out_row = _lanes(p, inner, 1, stride_o, stride_i)
    l = tl.arange(0, BLOCK_N)
    m = pm[:, None] & (l < n_len)[None, :]
    if MODE == 0 and not WRITE_I:
        # values only: sort the 32-bit keys themselves (half the network, no gather); equal values are
        # interchangeable, so -0.0 may sort just below 0.0 and every value comes back bit-exact
        x = tl.load(x_ptr + x_row[:, None] + l.to(tl.int64)[None, :] * stride_l, mask=m, other=0)
        key = tl.where(m, _okey(x, KIND, DESC, False), 2147483647)
        v = _value(tl.sort(key, 1), KIND, DESC)
        om = pm[:, None] & (l < n_keep)[None, :]
        tl.store(v_ptr + out_row[:, None] + l.to(tl.int64)[None, :] * inner, v.to(v_ptr.dtype.element_ty), mask=om)
        return
    _, s = _load_keys(x_ptr, x_row[:, None], l[None, :], m, stride_l, KIND, DESC)
    packed = (s.to(tl.int64) << 32) | l.to(tl.int64)[None, :]
    packed = tl.where(m, packed, 9223372036854775807)
    srt = tl.sort(packed, 1)
    idx = (srt & 4294967295).to(tl.int32)
    if MODE == 0:
        om = pm[:, None] & (l < n_keep)[None, :]
        out_off = out_row[:, None] + l.to(tl.int64)[None, :] * inner
        _store_pairs(x_ptr, v_ptr, i_ptr, x_row[:, None], out_off, idx, om, stride_l, WRITE_V, WRITE_I)
    else:
        pos = _target(s, m, n_len, pos_sel, MODE, KIND)
        si = tl.sum(tl.where(l[None, :] == pos[:, None], idx, 0), axis=1)
        _store_pairs(x_ptr, v_ptr, i_ptr, x_row, out_row, si, pm, stride_l, WRITE_V, WRITE_I)
'''

RADIX_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def _tie_select(u, t, eq, m, n_keep):
    \"\"\"topk's selection at the rank-th key t: every key below it, then equal keys by position.\"\"\"
    lt = (u < t[:, None]) & m
    n_lt = tl.sum(lt.to(tl.int32), axis=1)
    eq_rank = tl.cumsum(eq.to(tl.int32), 1) - 1
    return lt | (eq & (eq_rank < (n_keep - n_lt)[:, None]))


@triton.jit
def sel_radix(''' + _SIGNATURE + '''
    ws_ptr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, RADIX_BITS: tl.constexpr,
    EARLY: tl.constexpr = False,
):
    \"\"\"BLOCK_R rows per program: the rank-p key by binary search over the 32 key bits (one count over
    the row in registers per bit); topk compacts the k winners to the workspace and sorts only those.\"\"\"
    p = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    pm = p < n_lanes
    if MODE == 0:
        x_row, out_row = _lanes(p, inner, n_keep, stride_o, stride_i)
    else:
        x_row, out_row = _lanes(p, inner, 1, stride_o, stride_i)
    l = tl.arange(0, BLOCK_N)
    m = pm[:, None] & (l < n_len)[None, :]
    _, s = _load_keys(x_ptr, x_row[:, None], l[None, :], m, stride_l, KIND, DESC)
    u = s.to(tl.uint32, bitcast=True) ^ 2147483648  # the key's order as unsigned 32-bit (padding: masked)
    if MODE == 0:
        rank = tl.zeros([BLOCK_R], tl.int32) + (n_keep - 1)
    else:
        rank = _target(s, m, n_len, pos_sel, MODE, KIND)
    # invariant: count(u < t) <= rank; ends at the largest such t = the rank-th smallest key. Each
    # step fixes RADIX_BITS more bits: one count per digit value, all in one reduction (one barrier):
    # 1 bit: a plain count; 2 bits: three counts packed into one int64 sum; more: a [R, N, digits] count.
    t = tl.zeros([BLOCK_R], tl.uint32)
    digit = tl.arange(0, 1 << RADIX_BITS).to(tl.uint32)
    # EARLY (1 bit per step): stop a row once a probe t' has exactly rank + 1 keys below it -- then
    # {u < t'} is the selection itself (topk) and the rank-th key is its largest: on untied data after
    # about 32 - log2(gap at the threshold) steps instead of 32; a tie across the threshold runs all 32.
    thr = tl.zeros([BLOCK_R], tl.uint32)
    done = pm == 0
    n_steps = 32 // RADIX_BITS
    if EARLY:
        going = tl.sum(pm.to(tl.int32), axis=0) > 0
        step = tl.full([], 0, tl.int32)
        while going:
            cand1 = t + (tl.full([BLOCK_R], 1, tl.uint32) << (31 - step).to(tl.uint32))
            cnt1 = tl.sum(((u < cand1[:, None]) & m).to(tl.int32), axis=1)
            hit = (cnt1 == rank + 1) & (done == 0)
            thr = tl.where(hit, cand1, thr)
            done = done | hit
            t = tl.where(cnt1 <= rank, cand1, t)
            step += 1
            going = (step < 32) & (tl.sum((done == 0).to(tl.int32), axis=0) > 0)
        n_steps = 0
    for step in range(n_steps):
        shift = tl.zeros([1], tl.uint32) + (32 - (step + 1) * RADIX_BITS)
        if RADIX_BITS == 1:  # digit 0 always fits: one count, 2-D
            cand1 = t + (1 << shift)
            cnt1 = tl.sum(((u < cand1[:, None]) & m).to(tl.int32), axis=1)
            t = tl.where(cnt1 <= rank, cand1, t)
        elif RADIX_BITS == 2:  # digits 1..3 counted at once: 16-bit fields of one int64 sum (rows < 2**16)
            c1 = (u < (t + (1 << shift))[:, None]).to(tl.int64)
            c2 = (u < (t + (2 << shift))[:, None]).to(tl.int64)
            c3 = (u < (t + (3 << shift))[:, None]).to(tl.int64)
            tot = tl.sum(tl.where(m, c1 + (c2 << 16) + (c3 << 32), 0), axis=1)
            r64 = rank.to(tl.int64)
            best = tl.where(((tot >> 32) & 65535) <= r64, 3,
                            tl.where(((tot >> 16) & 65535) <= r64, 2, tl.where((tot & 65535) <= r64, 1, 0)))
            t = t + (best.to(tl.uint32) << shift)
        else:
            cand = t[:, None] + (digit << shift)[None, :]
            below = (u[:, :, None] < cand[:, None, :]) & m[:, :, None]
            cnt = tl.sum(below.to(tl.int32), axis=1)
            best = tl.max(tl.where(cnt <= rank[:, None], digit[None, :], 0), axis=1)
            t = t + (best << shift)
    under = (u < thr[:, None]) & m
    if EARLY:  # rows stopped early: the rank-th key is the largest below their probe
        t = tl.where(done & pm, tl.max(tl.where(under, u, 0), axis=1), t)
    eq = (u == t[:, None]) & m
    if MODE == 0:
        if EARLY:
            if tl.sum((done == 0).to(tl.int32), axis=0) == 0:
                sel = under  # every row stopped early: exactly n_keep keys below each probe
            else:
                sel = _tie_select(u, t, eq, m, n_keep)
        else:
            sel = _tie_select(u, t, eq, m, n_keep)
        slot = tl.cumsum(sel.to(tl.int32), 1) - 1
        packed = (s.to(tl.int64) << 32) | l.to(tl.int64)[None, :]
        tl.store(ws_ptr + p[:, None] * n_keep + slot.to(tl.int64), packed, mask=sel & m)
        tl.debug_barrier()
        kk = tl.arange(0, BLOCK_K)
        km = pm[:, None] & (kk < n_keep)[None, :]
        w = tl.load(ws_ptr + p[:, None] * n_keep + kk.to(tl.int64)[None, :], mask=km, other=9223372036854775807)
        srt = tl.sort(w, 1)
        idx = (srt & 4294967295).to(tl.int32)
        out_off = out_row[:, None] + kk.to(tl.int64)[None, :] * inner
        _store_pairs(x_ptr, v_ptr, i_ptr, x_row[:, None], out_off, idx, km, stride_l, WRITE_V, WRITE_I)
    else:
        si = tl.min(tl.where(eq, l[None, :], BLOCK_N), axis=1)
        _store_pairs(x_ptr, v_ptr, i_ptr, x_row, out_row, si, pm, stride_l, WRITE_V, WRITE_I)
'''

BITONIC_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def sel_bitonic(''' + _SIGNATURE + '''
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    \"\"\"topk: BLOCK_R rows per program, the k smallest packed keys by a bitonic top-k (``tl.topk``:
    sorts runs of BLOCK_K, then halves the row log2(BLOCK_N / BLOCK_K) times keeping the better run)
    instead of a full-row sort; ``~`` turns its largest-first into our smallest-first.\"\"\"
    p = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    pm = p < n_lanes
    x_row, out_row = _lanes(p, inner, n_keep, stride_o, stride_i)
    l = tl.arange(0, BLOCK_N)
    m = pm[:, None] & (l < n_len)[None, :]
    _, s = _load_keys(x_ptr, x_row[:, None], l[None, :], m, stride_l, KIND, DESC)
    packed = (s.to(tl.int64) << 32) | l.to(tl.int64)[None, :]
    packed = tl.where(m, packed, 9223372036854775807)
    top = ~tl.topk(~packed, BLOCK_K, dim=1)
    idx = (top & 4294967295).to(tl.int32)
    kk = tl.arange(0, BLOCK_K)
    om = pm[:, None] & (kk < n_keep)[None, :]
    out_off = out_row[:, None] + kk.to(tl.int64)[None, :] * inner
    _store_pairs(x_ptr, v_ptr, i_ptr, x_row[:, None], out_off, idx, om, stride_l, WRITE_V, WRITE_I)
'''

TEMPLATES: dict[str, tuple[str, str]] = {
    "sort": ("sel_sort", SORT_SOURCE),
    "radix": ("sel_radix", RADIX_SOURCE),
    "bitonic": ("sel_bitonic", BITONIC_SOURCE),
}


# ------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------


def geometry(x: TensorSig, dim: int | None) -> Geom:
    """``dim=None``: the whole tensor as one row (median.default). ValueError when not served."""
    if not x.shape:
        return Geom(1, 1, 1, 0, 0, 0)
    if dim is None:
        r = one_dim(x.shape, x.stride)
        if r is None:  # median's value does not depend on element order: a dense permuted layout is one row
            dims = sorted((int(st), int(sz)) for sz, st in zip(x.shape, x.stride) if sz != 1)
            want = 1
            for st, sz in dims:
                if st != want:
                    raise ValueError(f"input strides {x.stride} (shape {x.shape}) are not one dense row")
                want *= sz
            r = (want, 1)
        return Geom(1, r[0], 1, 0, r[1], 0)
    return Geom(*split_at(x, dim))


def _mode_of(op: str) -> str:
    return {SORT: "sort", SORT_STABLE: "sort", TOPK: "topk", KTHVALUE: "kth", MEDIAN_DIM: "median",
            MEDIAN: "median"}[op]


def _device(spec: OpSpec) -> torch.device:
    return torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)


def _random(shape: Sequence[int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Many ties: floats on a 0.5 grid in [-4, 4) with some -0.0, ints in [-20, 20) (uint8 [0, 40))."""
    shape = tuple(shape)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.3
    if dtype.is_floating_point:
        v = torch.randint(-8, 8, shape, generator=gen).double() / 2
        return torch.where(torch.rand(shape, generator=gen) < 0.05, torch.full_like(v, -0.0), v).to(dtype)
    lo = 0 if dtype == torch.uint8 else -20
    return torch.randint(lo, lo + 40, shape, generator=gen).to(dtype)


# ------------------------------------------------------------------------------------------------
# The family
# ------------------------------------------------------------------------------------------------


class SortFamily(OpFamily):
    """sort / argsort, topk, kthvalue, median along one dim (median.default: the flattened tensor)."""

    name = "sort"
    ops = _OPS
    # sort: lowered on Triton devices for short rows; the rest: lowered only with decompose_sort_ops.
    lowered_ops = _OPS
    template_version = "1"

    # -- specs -----------------------------------------------------------------------------------
    @classmethod
    def spec_for(cls, op: str, x: torch.Tensor, dim: int | None = -1, k: int = 0, descending: bool = False,
                 stable: bool = False, ordered: bool = True, keepdim: bool = False, values: bool = True,
                 indices: bool = True) -> OpSpec:
        """The spec of a call on a concrete (or fake) tensor; ValueError if not served. ``descending``
        is topk's ``largest``; ``k`` is topk's count or kthvalue's (1-based) rank."""
        if op not in _OPS:
            raise ValueError(f"{op} is not served by the sort family")
        if op == MEDIAN:
            values, indices, dim = True, False, None
        if not (values or indices):
            raise ValueError("neither output is used")
        if x.dtype not in _DTYPES:
            raise ValueError(f"dtype {x.dtype} not served (64-bit keys leave no room for the index)")
        if x.dtype == torch.bool and op not in (SORT, SORT_STABLE):
            raise ValueError(f"bool {op} (ATen has no bool kernel)")
        if not _all_int(x):
            raise ValueError("symbolic sizes/strides (dynamic shapes not served yet)")
        if dim is not None:
            dim = norm_dim(dim, x.dim())
        sig = TensorSig.of(x)
        g = geometry(sig, dim)
        if g.length > MAX_ROW:
            raise ValueError(f"rows of {g.length} > {MAX_ROW} (no multi-block template yet)")
        mode = _mode_of(op)
        if mode == "topk" and not 0 <= int(k) <= g.length:
            raise ValueError(f"k={k} out of range for rows of {g.length}")
        if mode in ("kth", "median") and g.length == 0:
            raise ValueError("empty rows (eager raises)")
        if mode == "kth" and not 1 <= int(k) <= g.length:
            raise ValueError(f"k={k} out of range for rows of {g.length}")
        if x.dim() == 0 and mode != "median":
            raise ValueError("0-D input (a copy)")
        consts: list[tuple[str, Any]] = [("dim", -1 if dim is None else dim), ("indices", bool(indices)),
                                         ("values", bool(values))]
        if mode == "sort":
            consts += [("descending", bool(descending)), ("stable", bool(stable) and op == SORT_STABLE)]
        elif mode == "topk":
            consts += [("k", int(k)), ("largest", bool(descending)), ("sorted", bool(ordered))]
        elif mode == "kth":
            consts += [("k", int(k)), ("keepdim", bool(keepdim))]
        elif op == MEDIAN_DIM:
            consts += [("keepdim", bool(keepdim))]
        return OpSpec(
            family=cls.name,
            op=op,
            args=(sig,),
            consts=tuple(sorted(consts)),
            device=DeviceSig.of(x.device),
            versions=software_versions(cls.template_version),
        )

    @staticmethod
    def dim(spec: OpSpec) -> int | None:
        return None if spec.op == MEDIAN else int(spec.const("dim"))

    def geom(self, spec: OpSpec) -> Geom:
        x = spec.args[0]
        assert x is not None
        return geometry(x, self.dim(spec))

    @staticmethod
    def wanted(spec: OpSpec) -> list[int]:
        """The op's outputs the plan produces, in plan order (0 values, 1 indices)."""
        return [j for j, k in ((0, "values"), (1, "indices")) if spec.const(k)]

    def selection(self, spec: OpSpec) -> tuple[int, int, int, bool]:
        """(MODE, K stored positions, POS, DESC) of the kernels."""
        g = self.geom(spec)
        mode = _mode_of(spec.op)
        if mode == "sort":
            return _STORE_FIRST, g.length, 0, bool(spec.const("descending"))
        if mode == "topk":
            return _STORE_FIRST, int(spec.const("k")), 0, bool(spec.const("largest"))
        if mode == "kth":
            return _STORE_POS, 1, int(spec.const("k")) - 1, False
        return _STORE_MEDIAN, 1, (g.length - 1) // 2, False

    def out_shape(self, spec: OpSpec) -> tuple[int, ...]:
        x = spec.args[0]
        assert x is not None
        shape = list(x.shape)
        mode = _mode_of(spec.op)
        if spec.op == MEDIAN:
            return ()
        if not shape:
            return ()
        d = int(spec.const("dim"))
        if mode == "sort":
            return tuple(shape)
        if mode == "topk":
            shape[d] = int(spec.const("k"))
            return tuple(shape)
        if spec.const("keepdim"):
            shape[d] = 1
            return tuple(shape)
        return tuple(shape[:d] + shape[d + 1:])

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op not in _OPS:
            return Skip(f"{op or node!s} is not served by the sort family")
        kw = node_kwargs(node)
        if kw is None:
            return Skip(f"could not normalize {op} arguments")
        x_n = kw["self"] if "self" in kw else kw.get("input")
        x, outs = meta_val(x_n), meta_val(node)
        if not isinstance(x, torch.Tensor):
            return Skip("input has no FakeTensor metadata")
        if op == MEDIAN:
            if not isinstance(outs, torch.Tensor):
                return Skip("result has no FakeTensor metadata")
            outs = (outs,)
            if not node.users:
                return Skip("neither output is used")
            users: dict[int, list] = {0: [node], 1: []}  # a single-output op is its own result user
        else:
            if not isinstance(outs, (tuple, list)) or len(outs) != 2:
                return Skip("results have no FakeTensor metadata")
            users = {0: [], 1: []}
            for u in node.users:
                if u.op != "call_function" or u.target is not operator.getitem or u.args[1] not in (0, 1):
                    return Skip(f"{op} result used by {u} (not a getitem)")
                users[u.args[1]].append(u)
        if kw.get("stable") is None and op == SORT_STABLE:
            kw["stable"] = False
        try:
            spec = self.spec_for(
                op, x, kw.get("dim", -1), k=int(kw.get("k", 0) or 0),
                descending=bool(kw.get("descending", kw.get("largest", False))), stable=bool(kw.get("stable", False)),
                ordered=bool(kw.get("sorted", True)), keepdim=bool(kw.get("keepdim", False)),
                values=bool(users[0]), indices=bool(users[1]))
        except (ValueError, TypeError) as e:
            return Skip(str(e))
        shape = self.out_shape(spec)
        for j, dt in ((0, x.dtype), (1, torch.int64))[:len(outs)]:
            o = outs[j]
            if not _all_int(o) or tuple(o.shape) != shape or o.dtype != dt or not o.is_contiguous():
                return Skip(f"output {j} ({o.dtype}{list(o.shape)}, strides {tuple(o.stride())}) is not a contiguous "
                            f"{dt}{list(shape)} tensor")
        return Match(spec=spec, inputs=[x_n], result_users={k: users[j] for k, j in enumerate(self.wanted(spec))})

    def inductor_fallback_reason(self, node: Any) -> str | None:
        """Mirrors lowering.py: ATen off Triton devices; sort only for rows <= 512 with persistent
        reductions (any row below int32 max with ``decompose_sort_ops``); topk/kthvalue/median only
        with ``decompose_sort_ops`` (a stable sort plus a slice)."""
        from torch._inductor import config as icfg

        kw = node_kwargs(node) or {}
        x = meta_val(kw.get("self", kw.get("input")))
        if not isinstance(x, torch.Tensor):
            return None
        op = str(node.target)
        decompose = bool(getattr(icfg.triton, "decompose_sort_ops", False))
        if op in (TOPK, KTHVALUE, MEDIAN_DIM, MEDIAN) and not decompose:
            return f"Inductor calls ATen for {op.split('.')[1]} (config.triton.decompose_sort_ops is off)"
        if x.device.type not in ("cuda", "xpu"):
            return f"Inductor's sort lowering needs a Triton device: calls ATen on {x.device.type}"
        if x.dim() == 0 or not _all_int(x):
            return None
        if op == MEDIAN:
            n = x.numel()
        else:
            n = int(x.shape[int(kw.get("dim", -1)) % x.dim()])
        if n <= 1:
            return None  # a copy
        if decompose:
            if n >= 2**31 - 1:
                return f"sort dim {n} needs int64 indices: Inductor calls ATen"
        else:
            if n >= 2**15 - 1:
                return f"sort dim {n} does not fit int16 indices: Inductor calls ATen"
            if n > _INDUCTOR_MAX_SORT:
                return f"sort dim {n} > {_INDUCTOR_MAX_SORT} (ir.Sort persistent-kernel limit): Inductor calls ATen"
        if not icfg.triton.persistent_reductions:
            return "persistent reductions are off: Inductor's sort calls ATen"
        return None

    # -- semantics -------------------------------------------------------------------------------
    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        (x,) = inputs
        assert x is not None
        if any(st == 0 and n > 1 for n, st in zip(x.shape, x.stride())):
            # ATen's CPU median.dim reads an expanded (stride 0) input wrongly (torch 2.13:
            # median(tensor([1.541]).expand(2), 0) -> 4.6e-41, index 1), found by the property tests
            x = x.contiguous()
        a = torch.ops.aten
        op, c = spec.op, dict(spec.consts)
        if op == MEDIAN:
            return [a.median.default(x)]
        if op == SORT:
            res = a.sort.default(x, c["dim"], c["descending"])
        elif op == SORT_STABLE:
            res = a.sort.stable(x, stable=c["stable"], dim=c["dim"], descending=c["descending"])
        elif op == TOPK:
            res = a.topk.default(x, c["k"], c["dim"], c["largest"], c["sorted"])
        elif op == KTHVALUE:
            res = a.kthvalue.default(x, c["k"], c["dim"], c["keepdim"])
        else:
            res = a.median.dim(x, c["dim"], c["keepdim"])
        return [res[j] for j in self.wanted(spec)]

    def full_reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices) in the family's (stable) order: a stable float64/int64 sort on CPU (NaN
        above everything, -0.0 tying 0.0), then the positions each op keeps; values gathered from x."""
        (x,) = inputs
        assert x is not None
        xc = x  # on its device: GPU verification cases are large
        shape = self.out_shape(spec)
        mode = _mode_of(spec.op)
        if spec.op == MEDIAN:
            xm = xc.reshape(1, -1)
        elif xc.dim() == 0:
            xm = xc.reshape(1, 1)
        else:
            xm = xc.movedim(int(spec.const("dim")), -1)
        key = xm.double() if xm.is_floating_point() else xm.long()
        if key.is_floating_point():
            key = torch.where(key.isnan(), torch.full_like(key, math.nan), key + 0.0)  # -0.0 -> 0.0
        desc = bool(spec.const("descending")) if mode == "sort" else bool(spec.const("largest")) if mode == "topk" \
            else False
        _, order = torch.sort(key, dim=-1, stable=True, descending=desc)
        n = xm.shape[-1]
        if mode == "sort":
            idx = order
        elif mode == "topk":
            idx = order[..., :int(spec.const("k"))]
        else:
            p0 = int(spec.const("k")) - 1 if mode == "kth" else (n - 1) // 2
            pos = torch.full(xm.shape[:-1], p0, device=xm.device)
            if mode == "median" and key.is_floating_point():
                n_nan = key.isnan().sum(-1)
                pos = torch.where(n_nan > 0, n - n_nan, pos)
            idx = torch.gather(order, -1, pos.unsqueeze(-1))
        vals = torch.gather(xm, -1, idx)
        if mode in ("sort", "topk"):
            if spec.op != MEDIAN and xc.dim() > 0:
                vals, idx = vals.movedim(-1, int(spec.const("dim"))), idx.movedim(-1, int(spec.const("dim")))
        vals, idx = vals.reshape(shape), idx.reshape(shape)
        return vals.contiguous().to(x.device), idx.contiguous().to(x.device)

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        full = self.full_reference(spec, inputs)
        return [full[j] for j in self.wanted(spec)]

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        return 0.0, 0.0  # values are copies of input elements, indices are positions

    def compare(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None], outs: Sequence[torch.Tensor],
                refs: Sequence[torch.Tensor]) -> str | None:
        """Semantic check ("" = correct, else why not), on the outputs' device from ``refs`` (no second
        reference: GPU verification cases are large). Values equal the reference's (NaN equal NaN, -0.0
        equal 0.0; topk ``sorted=False``: as a multiset per row); every index points at an input element
        equal to its value (the reference's values when only indices are wanted), indices within a row
        are distinct (sort/topk), and for a stable sort they are exactly the reference's."""
        (x,) = inputs
        assert x is not None
        wanted = self.wanted(spec)
        if len(outs) != len(wanted) or len(refs) != len(wanted):
            return f"{len(outs)} outputs, expected {len(wanted)}"
        got = {j: outs[k] for k, j in enumerate(wanted)}
        ref = {j: refs[k] for k, j in enumerate(wanted)}
        for j, o in got.items():
            if o.shape != ref[j].shape or o.dtype != ref[j].dtype:
                return f"output {j} is {o.dtype}{list(o.shape)}, expected {ref[j].dtype}{list(ref[j].shape)}"
        if any(o.numel() == 0 for o in got.values()):
            return ""
        mode = _mode_of(spec.op)
        unordered = mode == "topk" and not spec.const("sorted")
        many = mode in ("sort", "topk") and spec.op != MEDIAN

        def same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            if a.is_floating_point():
                a, b = a.double(), b.double()
                return (a == b) | (a.isnan() & b.isnan())
            return a == b

        def rows(t: torch.Tensor) -> torch.Tensor:
            """An output as [rows, positions]."""
            if many:
                t = t.movedim(int(spec.const("dim")), -1)
                return t.reshape(-1, t.shape[-1])
            return t.reshape(-1, 1)

        def desc(t: torch.Tensor) -> torch.Tensor:
            return torch.sort(t.double() + 0.0, dim=-1, descending=True).values

        if 0 in got:
            v, rv = rows(got[0]), rows(ref[0].to(got[0].device))
            bad = ~same(desc(v), desc(rv)) if unordered else ~same(v, rv)
            if bool(bad.any()):
                first = torch.nonzero(bad)[0].tolist()
                return f"values differ from the reference at {int(bad.sum())} places (first {first})"
        if 1 in got:
            i = got[1]
            ri = ref[1].to(i.device)
            if spec.op == SORT_STABLE and spec.const("stable"):
                return "" if torch.equal(i, ri) else "stable sort indices differ from the reference"
            g = self.geom(spec)
            if bool(((i < 0) | (i >= max(g.length, 1))).any()):
                return "index out of range"
            xd = x.to(i.device)
            xm = xd.reshape(1, -1) if spec.op == MEDIAN or xd.dim() == 0 else \
                xd.movedim(int(spec.const("dim")), -1).reshape(-1, g.length)
            ir = rows(i)
            at = torch.gather(xm, -1, ir)
            vals = rows(got[0]) if 0 in got else torch.gather(xm, -1, rows(ri))
            bad = ~same(desc(at), desc(vals)) if unordered and 0 not in got else ~same(at, vals)
            if bool(bad.any()):
                return f"indices point at elements other than the values at {int(bad.sum())} places"
            if many:
                srt = torch.sort(ir, dim=-1).values
                if bool((srt[:, 1:] == srt[:, :-1]).any()):
                    return "an index repeats within a row"
        return ""

    # -- inputs ----------------------------------------------------------------------------------
    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """Tie-heavy values; seeds 1 mod 3 add a few NaNs (floats)."""
        gen = torch.Generator().manual_seed(int(seed))
        (x_sig,) = spec.args
        assert x_sig is not None
        v = _random(x_sig.shape, x_sig.torch_dtype, gen)
        if x_sig.torch_dtype.is_floating_point and int(seed) % 3 == 1 and v.numel():
            v = torch.where(torch.rand(v.shape, generator=gen) < 0.02, torch.full_like(v, math.nan), v)
        return [_strided(x_sig, v, _device(spec))]

    def timing_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """Distinct-valued data (normal floats; ints over the dtype's range): radix select's early stop
        and every sort's work depend on the values, and real scores are rarely on a 16-value grid."""
        gen = torch.Generator().manual_seed(int(seed) + 7)
        (x_sig,) = spec.args
        assert x_sig is not None
        dt, shape = x_sig.torch_dtype, tuple(x_sig.shape)
        if dt == torch.bool:
            v = torch.rand(shape, generator=gen) < 0.5
        elif dt.is_floating_point:
            v = torch.randn(shape, generator=gen).to(dt)
        else:
            info = torch.iinfo(dt)
            v = torch.randint(max(info.min, -2**31), min(info.max, 2**31 - 1), shape, generator=gen).to(dt)
        return [_strided(x_sig, v, _device(spec))]

    def _case(self, spec: OpSpec, name: str, x: torch.Tensor, dim: int | None,
              k: int | None = None) -> tuple[str, OpSpec, list[torch.Tensor | None]] | None:
        (x_sig,) = spec.args
        assert x_sig is not None
        dt = x_sig.torch_dtype
        if dt == torch.bool:
            x = x != 0
        elif not dt.is_floating_point:
            info = torch.iinfo(dt)
            x = x.nan_to_num(0.0, 1e9, -1e9).clamp(info.min, info.max)
        x = x.to(dt).to(_device(spec))
        c = dict(spec.consts)
        mode = _mode_of(spec.op)
        n = x.numel() if dim is None else (x.shape[dim] if x.dim() else 1)
        kk = int(c.get("k", 0)) if k is None else k
        if mode == "topk":
            kk = min(kk, n)
        elif mode == "kth":
            kk = max(1, min(kk, n))
        try:
            cs = self.spec_for(spec.op, x, dim if spec.op != MEDIAN else None, k=kk,
                               descending=bool(c.get("descending", c.get("largest", False))),
                               stable=bool(c.get("stable", False)), ordered=bool(c.get("sorted", True)),
                               keepdim=bool(c.get("keepdim", False)), values=bool(c["values"]),
                               indices=bool(c["indices"]))
        except ValueError:
            return None  # e.g. an empty row for kthvalue/median
        return name, cs, [x]

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        """Ties everywhere, one element, empty rows / no rows, rows crossing the blocks, strided and
        middle dims, ordered inputs; topk k = 0 / 1 / n; floats: NaN (first, middle, last, all),
        +-inf, -0.0 against 0.0; ints: dtype extremes."""
        (x_sig,) = spec.args
        assert x_sig is not None
        dt = x_sig.torch_dtype
        mode = _mode_of(spec.op)
        gen = torch.Generator().manual_seed(4321)
        nan, inf = math.nan, math.inf
        f = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        d1 = None if spec.op == MEDIAN else 1
        d0 = None if spec.op == MEDIAN else 0
        raw: list[Any] = [
            self._case(spec, "all_equal", torch.full((3, 9), 2.0), d1),
            self._case(spec, "ties_and_steps", f(1, 3, 3, 2, 3, 5, 5, 0, 5, 1).expand(2, -1).contiguous(), d1),
            self._case(spec, "descending_input", torch.arange(12, 0, -1).double().reshape(2, 6), d1),
            self._case(spec, "ascending_input", torch.arange(12).double().reshape(2, 6), d1),
            self._case(spec, "one_element", f(7).reshape(1, 1), d1),
            self._case(spec, "no_rows", torch.empty(0, 5, dtype=torch.float64), d1),
            self._case(spec, "long_rows", _random((2, 77), torch.float64, gen), d1),
            self._case(spec, "dim0_strided", _random((7, 13), torch.float64, gen).T, d0),
            self._case(spec, "middle_dim", _random((3, 11, 5), torch.float64, gen), None if d1 is None else 1),
            self._case(spec, "padded_rows", _random((5, 20), torch.float64, gen)[:, 3:14], d1),
        ]
        if mode == "sort":
            raw.append(self._case(spec, "empty_rows", torch.empty(4, 0, dtype=torch.float64), 1))
        if mode == "topk":
            raw += [self._case(spec, "k_zero", _random((3, 10), torch.float64, gen), 1, 0),
                    self._case(spec, "k_one", _random((3, 10), torch.float64, gen), 1, 1),
                    self._case(spec, "k_eq_n", _random((3, 10), torch.float64, gen), 1, 10),
                    self._case(spec, "empty_rows", torch.empty(4, 0, dtype=torch.float64), 1, 0)]
        if mode == "kth":
            raw += [self._case(spec, "k_one", _random((3, 10), torch.float64, gen), 1, 1),
                    self._case(spec, "k_eq_n", _random((3, 10), torch.float64, gen), 1, 10)]
        if not dt.is_floating_point and dt != torch.bool:
            info = torch.iinfo(dt)
            ext = torch.tensor([0, info.max, info.min, info.max, info.min, 1, info.min], dtype=torch.float64)
            raw.append(self._case(spec, "dtype_extremes", ext.expand(2, -1).contiguous(), d1))
        if dt.is_floating_point:
            raw += [
                self._case(spec, "nan_middle", f(1, 3, nan, 5, nan, 1, -inf).expand(2, -1).contiguous(), d1),
                self._case(spec, "nan_first_last", torch.stack([f(nan, 1, 2, 0), f(0, 1, 2, nan)]), d1),
                self._case(spec, "all_nan", torch.full((2, 5), nan), d1),
                self._case(spec, "negative_nan", torch.stack([f(1, -nan, 2, 0), f(-nan, nan, -1, 5)]), d1),
                self._case(spec, "infinities", f(-inf, -inf, 0, inf, 3, inf, -inf).expand(2, -1).contiguous(), d1),
                self._case(spec, "signed_zeros", f(-0.0, 0.0, -0.0, -1, 0.0, -0.0).reshape(1, -1), d1),
            ]
        return [c for c in raw if c is not None]

    # -- numerics / cost -------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        """The input read once, each wanted output written once (values: input dtype, indices int64)."""
        (x,) = spec.args
        assert x is not None
        e = _elem_size(x.dtype)
        n_out = math.prod(self.out_shape(spec))
        return x.numel() * e + (n_out * e if spec.const("values") else 0) + (n_out * 8 if spec.const("indices") else 0)

    # -- kernels ---------------------------------------------------------------------------------
    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """Default first: radix select for topk with k well below the row and for kthvalue/median
        (no full sort), the full-row sort otherwise; then block and warp variants. Interpreter specs:
        rows per program kept small (tl.sort is slow there)."""
        g = self.geom(spec)
        n = max(g.length, 1)
        npow = max(_next_pow2(n), 2)
        mode, k, _, _ = self.selection(spec)
        gpu = spec.device.type == "cuda"
        lanes = max(g.lanes, 1)
        out: list[tuple[str, dict[str, Any]]] = []

        def warps(tile: int) -> int:
            return max(1, min(16 if gpu else 4, _next_pow2(max(tile // (256 if gpu else 1024), 1))))

        def br_for(per_row: int) -> int:
            cap = 4096 if gpu else 1024
            return max(1, min(_next_pow2(lanes), cap // per_row, 64))

        def sort(br: int, nw: int | None = None) -> None:
            out.append(("sort", dict(BLOCK_R=br, num_warps=nw or warps(br * npow), num_stages=1)))

        def radix(br: int, nw: int | None = None, rb: int = 1, early: bool = False) -> None:
            wide = 1 << rb if rb > 2 else 1  # RADIX_BITS > 2 counts on a [rows, row, digits] tensor
            half = 2 if gpu and npow <= 4096 else 1  # fewer warps than a sort: rows up to 4096
            if 1 <= br <= _next_pow2(lanes) and br * npow * wide <= (32768 if gpu else 8192):
                cfg = dict(BLOCK_R=br, RADIX_BITS=rb, num_stages=1, num_warps=nw or max(1, warps(br * npow) // half))
                out.append(("radix", dict(cfg, EARLY=True) if early else cfg))

        is_sort = _mode_of(spec.op) == "sort"
        br0 = br_for(npow)
        if not is_sort and (mode != _STORE_FIRST or k * 4 <= n):
            radix(br0, rb=2)  # 16 counting steps, three counts per step packed in one reduction
            # 1 bit per step, stopping once a probe has exactly rank + 1 keys below it (~32 - log2(gap))
            for br, nw in ((1, None), (br0, None), (2, 2), (1, 4)):
                radix(br, nw, 1, early=True)
        sort(br0)
        for br in (br0 * 2, br0 // 2, 1):
            if 1 <= br <= _next_pow2(lanes):
                sort(br)
        nw0 = warps(br0 * npow)
        for nw in (nw0 * 2, nw0 // 2, nw0 // 4):
            if 1 <= nw <= 16:
                sort(br0, nw)
        if _mode_of(spec.op) == "topk" and npow >= 2:  # bitonic top-k: runs of k, not the whole row
            for br, nw in ((br0, None), (br0 * 2, None), (br0 // 2, None), (1, None), (br0, nw0 * 2), (br0, nw0 // 2)):
                if 1 <= br <= _next_pow2(lanes) and (nw is None or 1 <= nw <= 16):
                    out.append(("bitonic", dict(BLOCK_R=br, num_warps=nw or warps(br * npow), num_stages=1)))
        if not is_sort:  # rows per program share each step's barrier; wider digits: fewer steps
            # (BLOCK_R = num_warps: a warp per row where Triton lays warps along rows: warp-local counts)
            for br, nw, rb in ((br0, None, 1), (br0, None, 4), (br0 * 2, None, 2), (br0, nw0, 2), (br0, 4, 2),
                               (br0 * 4, None, 2), (br0 * 2, None, 1), (br0 // 2, None, 2), (1, None, 2),
                               (4, 4, 2), (8, 8, 2), (2, 2, 1)):
                radix(br, nw, rb)
        return unique_candidates(out, lambda t: TEMPLATES[t][1])

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        (x_sig,) = spec.args
        assert x_sig is not None
        g = self.geom(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "sort")
        check_pow2(cfg)
        mode, k, pos, desc = self.selection(spec)
        # the whole row (and topk's k winners) in registers: block sizes follow the spec, so one config
        # serves every edge case; BLOCK_R (rows per program) and warps are the searched knobs
        br, bn, bk = int(cfg["BLOCK_R"]), max(_next_pow2(g.length), 2), max(_next_pow2(k), 2)
        wanted = self.wanted(spec)
        shape = self.out_shape(spec)
        outputs = tuple(OutBuf(shape, x_sig.dtype if j == 0 else "int64", fill=None) for j in wanted)
        v_arg = Out(wanted.index(0)) if 0 in wanted else In(0)
        i_arg = Out(wanted.index(1)) if 1 in wanted else In(0)
        empty = g.lanes * g.length * k == 0
        grid = (0 if empty else _cdiv(g.lanes, br),)
        if grid[0] > _MAX_GRID_X:
            raise ValueError(f"grid {grid} exceeds the launch limit")
        kind = 0 if x_sig.torch_dtype.is_floating_point else 1
        args: list[tuple[str, Any]] = [
            ("x_ptr", In(0)), ("v_ptr", v_arg), ("i_ptr", i_arg),
            ("n_lanes", g.lanes), ("n_len", g.length), ("inner", max(g.inner, 1)),
            ("stride_o", g.stride_o), ("stride_l", g.stride_l), ("stride_i", g.stride_i),
            ("n_keep", k), ("pos_sel", pos),
            ("KIND", kind), ("DESC", desc), ("MODE", mode), ("WRITE_V", 0 in wanted), ("WRITE_I", 1 in wanted),
        ]
        workspace: tuple[OutBuf, ...] = ()
        if template == "sort":
            args += [("BLOCK_R", br), ("BLOCK_N", bn)]
        elif template == "bitonic":
            if _mode_of(spec.op) != "topk":
                raise ValueError("the bitonic template serves topk only")
            args += [("BLOCK_R", br), ("BLOCK_N", bn), ("BLOCK_K", bk)]
        else:
            workspace = (OutBuf((max(g.lanes * k, 1),), "int64"),)
            rb = int(cfg.get("RADIX_BITS", 1))
            if rb not in (1, 2, 4, 8):
                raise ValueError(f"RADIX_BITS={rb} does not divide 32 into powers of two")
            args += [("ws_ptr", Ws(0)), ("BLOCK_R", br), ("BLOCK_N", bn), ("BLOCK_K", bk), ("RADIX_BITS", rb)]
            if cfg.get("EARLY"):  # passed only when on: sources stored before the knob still launch
                if rb != 1:
                    raise ValueError("EARLY stops a 1-bit radix search only (RADIX_BITS=1)")
                args.append(("EARLY", True))
        main = TEMPLATES[template][0]
        return CallPlan(kernel=main, grid=grid, args=tuple(args), outputs=outputs,
                        num_warps=int(cfg.get("num_warps", 4)), num_stages=int(cfg.get("num_stages", 1)),
                        workspace=workspace)


register(SortFamily())
