"""The segment_reduce family: ``aten.segment_reduce.default`` along axis 0.

Why a family of its own: Inductor falls back to ATen for segment_reduce on CPU and GPU, and ATen's CUDA
path launches a cumsum (for lengths), CUB segmented reductions for 1-D data and a generic one-thread-
per-(segment, column) kernel otherwise, all accumulating in the data dtype.

Served: reduce sum / mean / max / min / prod; ``lengths`` or ``offsets`` (``indices`` is skipped);
axis 0 only; data ``[N, *trailing]`` in float32/float16/bfloat16 whose trailing dims flatten to one
contiguous dim ``D`` (any row stride); 1-D int32/int64 lengths/offsets (any stride); ``initial`` a
constant or None. ``unsafe`` is ignored (kernels mask every row read against ``[0, N)``, so bad lengths
cannot fault; the eager fallback validates as with ``unsafe=False``).

ATen semantics pinned here (tests compare against eager on CPU):

* segment ``j`` is rows ``[offsets[j], offsets[j+1])`` (offsets need not start at 0), or with lengths
  ``[sum(lengths[:j]), sum(lengths[:j+1]))``. If both lengths and offsets are given, lengths win.
* ``initial`` is converted to the data dtype first (eager raises if it overflows it: we Skip); it seeds
  the reduction: sum -> ``initial + sum``, prod -> ``initial * prod``, max/min -> ``max(initial, ...)``,
  mean -> ``(initial + sum) / len``.
* empty segments: sum 0, prod 1, max -inf, min +inf, mean NaN (0/0); with ``initial``: ``initial``
  (mean included: no division when the segment is empty).
* NaN in data propagates through max/min (and, naturally, sum/mean/prod); ``+inf + -inf`` is NaN.
* eager accumulates in the data dtype (CPU: sequentially, so 3000 fp16 ones sum to 2048). The kernels
  accumulate in fp32 and the reference is float64 rounded to the data dtype: on long fp16/bf16
  segments our results are *more* accurate than eager's; tests compare with eager only where eager's
  own rounding is within tolerance.

Lengths vs offsets. The reduction kernels read segment bounds either from offsets or, for lengths,
from starts they compute themselves. Two ways, both in the candidate space (config ``SCAN``):

* ``SCAN`` 1 / 2 (lengths specs; O(S)): the plan's pre-step(s) write the exclusive prefix sum of the
  lengths into an int64 workspace ``starts[0..S]`` (``starts[S]`` = total), and the main kernel runs its
  offsets path on it (``USE_OFFSETS``, stride 1). ``SCAN`` 1 is one program walking the lengths
  ``SCAN_BLOCK`` at a time with a carried total (one extra launch; latency ~ S / SCAN_BLOCK steps);
  ``SCAN`` 2 is two parallel launches: per-block sums, then per block the sum of the earlier block sums
  plus its own ``tl.cumsum`` (``SCAN_BLOCK`` grows with S so the block-sum prefixes stay cheap).
* no ``SCAN`` key (the original single-launch candidates, and what stored entries have): each program
  computes ``sum(lengths[:first])`` in-kernel by a vectorized blocked loop (``BLOCK_R`` lengths per
  step), then its tile's starts by ``tl.cumsum``. That costs each program O(first) L2-resident loads,
  O(S^2) in total for one program per segment (on the H100 such candidates reached only 0.18-0.59x of
  Inductor at large S), so ``candidates()`` offers them only for small S and within ``_PREFIX_BUDGET``,
  where one prefix step per program is cheaper than an extra launch.

Three templates share the reduction helpers: fp32 accumulation, int64 row addressing, masked loads
reading the reduction's identity, rows clamped to ``[0, N)``. max/min combine and reduce with
NaN-propagating ``tl.maximum``/``tl.minimum`` (``propagate_nan=ALL``: ``max.NaN`` on the GPU) through
``tl.reduce``, since ``tl.max``/``tl.min`` drop NaN on the GPU. (They used to OR ``x != x`` into an
int8 tile and reduce it too; that second reduction cost the max bf16 kernel 240 against 199 µs at 1
warp and 667 against 370 µs at 4 warps for 4M x 64 rows on the H100, and so did a NaN count beside
``tl.max``. The interpreter runs these reductions through ``kernels``' fast path.) prod reduces with a generic ``tl.reduce`` (elementwise accumulation, one
reduction at the end; slow only in the interpreter).

* ``seg_per_program``: grid (S, cdiv(D, BLOCK_D)); a program walks one segment in BLOCK_N-row chunks,
  reducing each chunk at once or accumulating a [BLOCK_N, BLOCK_D] tile reduced at the end (ACC_TILE).
  Long or skewed segments.
* ``seg_tile``: grid (cdiv(S, BLOCK_S), cdiv(D, BLOCK_D)); BLOCK_S consecutive segments form a
  [BLOCK_S, BLOCK_N, BLOCK_D] tile and the program steps through segment positions BLOCK_N at a time
  up to the tile's longest segment. Many short segments, D = 1 (1-D data) included.
* ``seg_chunk``: persistent-style grid (P, cdiv(D, BLOCK_D)); a program owns a contiguous chunk of
  ceil(S / P) segments and walks it tile by tile (as ``seg_tile``), carrying the running row base, so a
  lengths prefix is computed once per program.

The op returns one tensor (no getitems), so ``Match.result_users`` is ``{0: [node]}``: the node itself.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip, Step, Ws
from .util import all_int as _all_int, cdiv as _cdiv, elem_size as _elem_size, next_pow2 as _next_pow2
from .util import NAN_PROPAGATE_SOURCE, check_pow2, meta_val, node_kwargs, template_of
from .util import strided as _strided

_OP = "aten.segment_reduce.default"
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int32, torch.int64)
REDUCE_CODES = {"sum": 0, "mean": 1, "max": 2, "min": 3, "prod": 4}
_MAX_TILE = 8192  # fp32 elements of a loaded tile: keeps register pressure sane on sm_90
# Total lengths loads (elements, summed over programs) an in-kernel-prefix candidate may spend: 2^20
# int32/int64 loads is ~4-8 MB of L2 traffic, ~1-2 us on an H100, about one extra launch (the scan).
_PREFIX_BUDGET = 1 << 20
_PREFIX_MAX_S = 4096  # in-kernel prefixes beyond this are a serial chain of BLOCK_R steps per program
_PREFIX_FIRST_S = 1024  # up to one BLOCK_R step per program: the in-kernel prefix is the default
_SCAN_MAX_BLOCK = 4096  # widest single-program scan step
_SCAN2_MAX_BLOCKS = 2048  # two-level scan: block-sum prefixes stay <= 2 vector steps per program
_CHUNK_PROGRAMS = (132, 264, 528, 1056)  # persistent grid sizes (H100 SXM has 132 SMs)
_MAX_GRID_Y = 65535

# ------------------------------------------------------------------------------------------------
# Kernel sources. Each template's source is a complete module; shared helpers are pasted into each
# so a template's text (and so its hash) depends only on what it runs.
# ------------------------------------------------------------------------------------------------

_HEADER = '''import triton
import triton.language as tl
'''

_COMMON = '''

@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _identity(REDUCE: tl.constexpr):
    \"\"\"The reduction's identity: what masked loads read and accumulators start from.\"\"\"
    if REDUCE == 2:
        v = float("-inf")
    elif REDUCE == 3:
        v = float("inf")
    elif REDUCE == 4:
        v = 1.0
    else:
        v = 0.0
    return v

''' + NAN_PROPAGATE_SOURCE + '''

@triton.jit
def _combine(a, b, REDUCE: tl.constexpr):
    \"\"\"Elementwise step; max/min propagate NaN (max.NaN.f32 on the GPU), as eager does.\"\"\"
    if REDUCE == 2:
        r = _max_nan(a, b)
    elif REDUCE == 3:
        r = _min_nan(a, b)
    elif REDUCE == 4:
        r = a * b
    else:
        r = a + b
    return r


@triton.jit
def _reduce(x, AXIS: tl.constexpr, REDUCE: tl.constexpr):
    \"\"\"Reduction along AXIS; max/min propagate NaN as in _combine (tl.max/tl.min drop it).\"\"\"
    if REDUCE == 2:
        r = tl.reduce(x, AXIS, _max_nan)
    elif REDUCE == 3:
        r = tl.reduce(x, AXIS, _min_nan)
    elif REDUCE == 4:
        r = tl.reduce(x, AXIS, _mul)
    else:
        r = tl.sum(x, AXIS)
    return r


@triton.jit
def _finalize(acc, count, initial,
              REDUCE: tl.constexpr, HAS_INITIAL: tl.constexpr, INIT_INF: tl.constexpr):
    \"\"\"Apply ``initial`` and the mean's division. ``count``: raw segment lengths (int64).\"\"\"
    if HAS_INITIAL:
        if INIT_INF > 0:
            init = float("inf")
        elif INIT_INF < 0:
            init = float("-inf")
        else:
            init = initial
        acc = _combine(acc, init, REDUCE)
    if REDUCE == 1:
        # Empty: 0 / 0 = NaN without initial, the initial itself with one (no division).
        q = acc / count.to(tl.float32)
        if HAS_INITIAL:
            acc = tl.where(count > 0, q, acc)
        else:
            acc = q
    return acc


@triton.jit
def _prefix(seg_ptr, first, stride_seg, BLOCK_R: tl.constexpr, PREFIX_I64: tl.constexpr):
    \"\"\"sum(lengths[0:first]) (int64 scalar), BLOCK_R lengths per step.\"\"\"
    if PREFIX_I64:
        acc = tl.zeros([BLOCK_R], dtype=tl.int64)
    else:
        acc = tl.zeros([BLOCK_R], dtype=tl.int32)
    r = tl.arange(0, BLOCK_R).to(tl.int64)
    for r0 in range(0, first, BLOCK_R):
        rr = r0 + r
        acc += tl.load(seg_ptr + rr * stride_seg, mask=rr < first, other=0).to(acc.dtype)
    return tl.sum(acc, axis=0).to(tl.int64)
'''

_TILE = '''

@triton.jit
def _seg_tile(
    data_ptr, seg_ptr, out_ptr, s0, seg_end, base, d, d_mask,
    num_rows, stride_row, stride_seg, stride_out, initial,
    REDUCE: tl.constexpr, USE_OFFSETS: tl.constexpr, HAS_INITIAL: tl.constexpr, INIT_INF: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    \"\"\"Reduce segments [s0, s0 + BLOCK_S) (those < seg_end) for columns d; store them.

    ``base``: first row of segment s0 (lengths only). Returns the first row of segment s0 + BLOCK_S.
    \"\"\"
    segs = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
    live = segs < seg_end
    if USE_OFFSETS:
        starts = tl.load(seg_ptr + segs * stride_seg, mask=live, other=0).to(tl.int64)
        ends = tl.load(seg_ptr + (segs + 1) * stride_seg, mask=live, other=0).to(tl.int64)
        lens = ends - starts
    else:
        lens = tl.load(seg_ptr + segs * stride_seg, mask=live, other=0).to(tl.int64)
        starts = base + tl.cumsum(lens, axis=0) - lens
    # Rows actually read: clamped to [0, num_rows) so bad (unsafe) lengths/offsets cannot fault.
    lo = tl.minimum(tl.maximum(starts, 0), num_rows)
    span = tl.maximum(tl.minimum(starts + lens, num_rows) - lo, 0)
    max_span = tl.max(span, axis=0)
    if REDUCE == 4:  # products accumulate elementwise, one reduction at the end
        acc3 = tl.zeros([BLOCK_S, BLOCK_N, BLOCK_D], dtype=tl.float32) + 1.0
    else:
        acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32) + _identity(REDUCE)
    n = tl.arange(0, BLOCK_N)
    for j0 in range(0, max_span, BLOCK_N):
        j = j0 + n
        rm = j[None, :] < span[:, None]
        rows = lo[:, None] + j[None, :]
        x = tl.load(
            data_ptr + rows[:, :, None] * stride_row + d[None, None, :],
            mask=rm[:, :, None] & d_mask[None, None, :],
            other=_identity(REDUCE),
        ).to(tl.float32)
        if REDUCE == 4:
            acc3 = acc3 * x
        else:
            acc = _combine(acc, _reduce(x, 1, REDUCE), REDUCE)
    if REDUCE == 4:
        acc = tl.reduce(acc3, 1, _mul)
    res = _finalize(acc, lens[:, None], initial, REDUCE, HAS_INITIAL, INIT_INF)
    tl.store(
        out_ptr + segs[:, None] * stride_out + d[None, :],
        res.to(out_ptr.dtype.element_ty),
        mask=live[:, None] & d_mask[None, :],
    )
    return base + tl.sum(lens, axis=0)
'''

_SIGNATURE = '''
    data_ptr, seg_ptr, out_ptr,
    num_rows, num_segs, dim, stride_row, stride_seg, stride_out, initial,
    REDUCE: tl.constexpr, USE_OFFSETS: tl.constexpr, HAS_INITIAL: tl.constexpr, INIT_INF: tl.constexpr,
    PREFIX_I64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,'''

SEG_PER_PROGRAM_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def segment_reduce_seg_per_program(''' + _SIGNATURE + '''
    BLOCK_N: tl.constexpr, ACC_TILE: tl.constexpr,
):
    \"\"\"One program = one segment x one BLOCK_D slice, walking the segment BLOCK_N rows at a time.\"\"\"
    seg = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    if USE_OFFSETS:
        start = tl.load(seg_ptr + seg * stride_seg).to(tl.int64)
        end = tl.load(seg_ptr + (seg + 1) * stride_seg).to(tl.int64)
    else:
        start = _prefix(seg_ptr, seg, stride_seg, BLOCK_R, PREFIX_I64)
        end = start + tl.load(seg_ptr + seg * stride_seg).to(tl.int64)
    # Rows actually read: clamped to [0, num_rows) so bad (unsafe) lengths/offsets cannot fault.
    lo = tl.minimum(tl.maximum(start, 0), num_rows)
    hi = tl.maximum(tl.minimum(end, num_rows), lo)
    n = tl.arange(0, BLOCK_N)
    if ACC_TILE:  # elementwise accumulation, one cross-row reduction at the end
        acc_t = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32) + _identity(REDUCE)
    else:
        acc = tl.zeros([BLOCK_D], dtype=tl.float32) + _identity(REDUCE)
    for r0 in range(lo, hi, BLOCK_N):
        r = r0 + n
        x = tl.load(
            data_ptr + r[:, None] * stride_row + d[None, :],
            mask=(r < hi)[:, None] & d_mask[None, :],
            other=_identity(REDUCE),
        ).to(tl.float32)
        if ACC_TILE:
            acc_t = _combine(acc_t, x, REDUCE)
        else:
            acc = _combine(acc, _reduce(x, 0, REDUCE), REDUCE)
    if ACC_TILE:
        acc = _reduce(acc_t, 0, REDUCE)
    res = _finalize(acc, end - start, initial, REDUCE, HAS_INITIAL, INIT_INF)
    tl.store(out_ptr + seg * stride_out + d, res.to(out_ptr.dtype.element_ty), mask=d_mask)
'''

SEG_TILE_SOURCE = _HEADER + _COMMON + _TILE + '''

@triton.jit
def segment_reduce_seg_tile(''' + _SIGNATURE + '''
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
):
    \"\"\"One program = BLOCK_S consecutive segments as tile rows x one BLOCK_D slice.\"\"\"
    first = tl.program_id(0).to(tl.int64) * BLOCK_S
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    if USE_OFFSETS:
        base = first * 0
    else:
        base = _prefix(seg_ptr, first, stride_seg, BLOCK_R, PREFIX_I64)
    _seg_tile(
        data_ptr, seg_ptr, out_ptr, first, num_segs, base, d, d_mask,
        num_rows, stride_row, stride_seg, stride_out, initial,
        REDUCE, USE_OFFSETS, HAS_INITIAL, INIT_INF, BLOCK_S, BLOCK_N, BLOCK_D,
    )
'''

SEG_CHUNK_SOURCE = _HEADER + _COMMON + _TILE + '''

@triton.jit
def segment_reduce_seg_chunk(''' + _SIGNATURE + '''
    segs_per_prog, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
):
    \"\"\"One program = a contiguous chunk of segs_per_prog segments, BLOCK_S at a time, x one BLOCK_D slice.

    The lengths prefix is computed once per program and carried from tile to tile.
    \"\"\"
    first = tl.program_id(0).to(tl.int64) * segs_per_prog
    last = tl.minimum(first + segs_per_prog, num_segs)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    if USE_OFFSETS:
        base = first * 0
    else:
        base = _prefix(seg_ptr, first, stride_seg, BLOCK_R, PREFIX_I64)
    for s0 in range(first, last, BLOCK_S):
        base = _seg_tile(
            data_ptr, seg_ptr, out_ptr, s0, last, base, d, d_mask,
            num_rows, stride_row, stride_seg, stride_out, initial,
            REDUCE, USE_OFFSETS, HAS_INITIAL, INIT_INF, BLOCK_S, BLOCK_N, BLOCK_D,
        )
'''

_SCAN = '''

@triton.jit
def segment_reduce_lengths_scan(len_ptr, starts_ptr, num_segs, stride_seg, BLOCK: tl.constexpr):
    \"\"\"starts[0..S] = exclusive prefix sums of lengths (starts[S] = their total), int64.

    One program, BLOCK lengths per step, the running total carried from step to step.
    \"\"\"
    r = tl.arange(0, BLOCK)
    carry = tl.program_id(0).to(tl.int64) * 0
    for s0 in range(0, num_segs, BLOCK):
        ss = (s0 + r).to(tl.int64)
        m = ss < num_segs
        x = tl.load(len_ptr + ss * stride_seg, mask=m, other=0).to(tl.int64)
        tl.store(starts_ptr + ss + 1, carry + tl.cumsum(x, axis=0), mask=m)
        carry += tl.sum(x, axis=0)
    tl.store(starts_ptr, carry * 0)


@triton.jit
def segment_reduce_lengths_block_sums(len_ptr, sums_ptr, num_segs, stride_seg, BLOCK: tl.constexpr):
    \"\"\"Two-level scan, step 1: sums[b] = total of the lengths in block b (BLOCK per program).\"\"\"
    b = tl.program_id(0)
    ss = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(len_ptr + ss * stride_seg, mask=ss < num_segs, other=0).to(tl.int64)
    tl.store(sums_ptr + b, tl.sum(x, axis=0))


@triton.jit
def segment_reduce_lengths_block_scan(len_ptr, sums_ptr, starts_ptr, num_segs, stride_seg,
                                      BLOCK: tl.constexpr, BLOCK_B: tl.constexpr):
    \"\"\"Two-level scan, step 2: block b's starts = sum(sums[:b]) (BLOCK_B per step) + its own
    inclusive cumsum, written one slot ahead; starts[0] = 0 by the lane holding segment 0.\"\"\"
    b = tl.program_id(0)
    rb = tl.arange(0, BLOCK_B)
    acc = tl.zeros([BLOCK_B], dtype=tl.int64)
    for b0 in range(0, b, BLOCK_B):
        bb = b0 + rb
        acc += tl.load(sums_ptr + bb, mask=bb < b, other=0)
    carry = tl.sum(acc, axis=0)
    ss = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = ss < num_segs
    x = tl.load(len_ptr + ss * stride_seg, mask=m, other=0).to(tl.int64)
    tl.store(starts_ptr + ss + 1, carry + tl.cumsum(x, axis=0), mask=m)
    tl.store(starts_ptr + ss * 0, x * 0, mask=ss == 0)
'''
SCAN_KERNELS = {
    1: ("segment_reduce_lengths_scan",),
    2: ("segment_reduce_lengths_block_sums", "segment_reduce_lengths_block_scan"),
}

TEMPLATES: dict[str, tuple[str, str]] = {
    # template name -> (kernel name, source)
    "seg_per_program": ("segment_reduce_seg_per_program", SEG_PER_PROGRAM_SOURCE),
    "seg_tile": ("segment_reduce_seg_tile", SEG_TILE_SOURCE),
    "seg_chunk": ("segment_reduce_seg_chunk", SEG_CHUNK_SOURCE),
}
# The same templates with the lengths-scan kernels appended: the sources of ``SCAN`` candidates (one
# module holds every kernel of a plan). The plain sources stay byte-identical for stored entries.
SCAN_SOURCES: dict[str, str] = {t: src + _SCAN for t, (_, src) in TEMPLATES.items()}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _trailing_flat(shape: Sequence[int], stride: Sequence[int]) -> bool:
    """Whether dims 1.. of a tensor flatten to one contiguous run (size-1 dims may have any stride)."""
    acc = 1
    for s, st in zip(reversed(tuple(shape)[1:]), reversed(tuple(stride)[1:])):
        if s != 1 and st != acc:
            return False
        acc *= s
    return True


def _normalize_initial(initial: Any, dtype: torch.dtype) -> float | None:
    """``initial`` as the data dtype holds it (eager converts it first). Raises ValueError if unusable."""
    if initial is None:
        return None
    if isinstance(initial, bool):
        initial = int(initial)
    if not isinstance(initial, (int, float)):
        raise ValueError(f"initial={initial!r} is not a constant number")
    v = float(initial)
    if math.isnan(v):
        raise ValueError("initial=nan is not served (NaN constants do not compare equal in spec keys)")
    if math.isfinite(v) and abs(v) > torch.finfo(dtype).max:
        raise ValueError(f"initial={initial!r} overflows {dtype} (eager raises)")
    return float(torch.tensor(v, dtype=torch.float64).to(dtype).item())


def _segment_sizes(n: int, s: int, gen: torch.Generator, empty_frac: float = 0.1) -> torch.Tensor:
    """``s`` random segment lengths summing to ``n``, about ``empty_frac`` of them forced empty."""
    if s <= 1:
        return torch.full((max(s, 0),), n, dtype=torch.int64)
    cuts = torch.sort(torch.randint(0, n + 1, (s - 1,), generator=gen)).values
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), cuts])
    forced = torch.rand(s, generator=gen) < empty_frac
    forced[0] = False
    starts = torch.where(forced, torch.zeros_like(starts), starts)
    starts = torch.cummax(starts, 0).values  # a forced segment takes its predecessor's start: empty
    return torch.diff(torch.cat([starts, starts.new_tensor([n])]))


class SegmentReduceFamily(OpFamily):
    """``aten.segment_reduce`` along axis 0 with lengths or offsets: sum/mean/max/min/prod."""

    name = "segment_reduce"
    ops = (_OP,)
    template_version = "1"

    # -- specs -----------------------------------------------------------------------------------
    @staticmethod
    def _unsupported(data: Any, segs: Any, reduce: str, use_offsets: bool) -> str | None:
        """Why these (real or fake) tensors and constants can't be served, or None."""
        if reduce not in REDUCE_CODES:
            return f"unknown segment_reduce reduction {reduce!r}"
        if data.dtype not in _FLOAT_DTYPES:
            return f"data dtype {data.dtype} not in float32/float16/bfloat16"
        what = "offsets" if use_offsets else "lengths"
        if segs.dtype not in _INDEX_DTYPES:
            return f"{what} dtype {segs.dtype} not int32/int64"
        for name, t in (("data", data), (what, segs)):
            if not _all_int(t):
                return f"{name} has symbolic sizes/strides (dynamic shapes not served yet)"
        if data.dim() < 1:
            return "data is 0-D"
        if segs.dim() != 1:
            return f"{what} is {segs.dim()}-D, expected 1-D (batched segments are not served)"
        if not _trailing_flat(data.shape, data.stride()):
            return f"data's trailing dims (strides {tuple(data.stride())[1:]}) do not flatten to one contiguous dim"
        num_segs = segs.shape[0] - (1 if use_offsets else 0)
        if num_segs <= 0:
            return "no segments (empty lengths/offsets)"
        d = math.prod(data.shape[1:])
        if _cdiv(d, 256) > _MAX_GRID_Y:
            return f"trailing size {d} too large for the grid"
        if data.device != segs.device:
            return "inputs on different devices"
        return None

    @classmethod
    def spec_for(
        cls,
        data: torch.Tensor,
        reduce: str,
        lengths: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
        initial: Any = None,
        indices: torch.Tensor | None = None,
        axis: int = 0,
        op: str = _OP,
    ) -> OpSpec:
        """The spec of a call on concrete (or fake) tensors. Raises ValueError if unsupported."""
        if indices is not None:
            raise ValueError("indices= is not served (only lengths or offsets)")
        if lengths is None and offsets is None:
            raise ValueError("neither lengths nor offsets given")
        nd = data.dim()
        if not isinstance(axis, int) or nd == 0 or not -nd <= axis < nd or axis % nd != 0:
            raise ValueError(f"axis={axis} is not served (axis 0 only)")
        use_offsets = lengths is None  # aten: lengths win when both are given
        segs = lengths if lengths is not None else offsets
        assert segs is not None
        why = cls._unsupported(data, segs, reduce, use_offsets)
        if why is not None:
            raise ValueError(why)
        init = _normalize_initial(initial, data.dtype)
        if reduce == "prod" and init is not None and (init == 0 or math.isinf(init)):
            # ATen multiplies ``initial`` in first and then each row in turn; the kernels multiply it
            # into the reduced product last. With a zero or infinite initial the order decides whether
            # the answer is NaN (0 * 1e30 * 1e30 stays 0; 0 * (1e30 * 1e30) = 0 * inf = NaN): found by
            # tests/test_properties.py under `make chaos`. Not served: Inductor calls ATen. (Finite
            # initials can still differ from ATen past the float range, like any reordered product.)
            raise ValueError(f"prod with initial={init} is not served (0 * inf: ATen's order decides NaN)")
        consts = tuple(sorted({"reduce": reduce, "use_offsets": use_offsets, "initial": init}.items()))
        return OpSpec(
            family=cls.name,
            op=op,
            args=(TensorSig.of(data), TensorSig.of(segs)),
            consts=consts,
            device=DeviceSig.of(data.device),
            versions=software_versions(cls.template_version),
        )

    @staticmethod
    def _dims(spec: OpSpec) -> tuple[int, int, int]:
        """(N, D, S): data rows, flattened trailing size, number of segments."""
        data, segs = spec.args
        assert data is not None and segs is not None
        s = segs.shape[0] - (1 if spec.const("use_offsets") else 0)
        return data.shape[0], math.prod(data.shape[1:]), s

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op != _OP:
            return Skip(f"{op or node!s} is not aten.segment_reduce")
        kw = node_kwargs(node)
        if kw is None:
            return Skip("could not normalize segment_reduce arguments")
        val = meta_val

        d_node, l_node, o_node, i_node = kw["data"], kw.get("lengths"), kw.get("offsets"), kw.get("indices")
        data, lengths, offsets = val(d_node), val(l_node), val(o_node)
        if i_node is not None:
            return Skip("indices= is not served (only lengths or offsets)")
        if l_node is None and o_node is None:
            return Skip("neither lengths nor offsets given")
        seg_node = l_node if l_node is not None else o_node
        if not isinstance(data, torch.Tensor) or not isinstance(val(seg_node), torch.Tensor):
            return Skip("input tensors have no FakeTensor metadata")
        reduce, axis, initial = kw.get("reduce"), kw.get("axis", 0), kw.get("initial")
        if not isinstance(reduce, str):
            return Skip(f"reduce is not a constant ({reduce!r})")
        if not isinstance(axis, int):
            return Skip(f"axis is not a constant ({axis!r})")
        if initial is not None and (hasattr(initial, "meta") or not isinstance(initial, (int, float, bool))):
            return Skip(f"initial is not a constant number ({initial!r})")
        if not isinstance(val(node), torch.Tensor):
            return Skip("segment_reduce result has no FakeTensor metadata")
        try:
            spec = self.spec_for(data, reduce, lengths=lengths, offsets=offsets if l_node is None else None,
                                 initial=initial, axis=axis, op=op)
        except ValueError as e:
            return Skip(str(e))
        # The op returns one tensor (no getitems): the node itself stands for output 0.
        return Match(spec=spec, inputs=[d_node, seg_node], result_users={0: [node]})

    # -- semantics -------------------------------------------------------------------------------
    def input_error(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> str | None:
        """Values eager rejects (the runtime then runs eager, which raises): negative lengths, lengths
        not summing to the rows, decreasing or out-of-range offsets. The kernels clamp the rows they
        read (never out of bounds), but their result is not eager's error."""
        data, segs = inputs
        assert data is not None and segs is not None
        s = segs.reshape(-1)
        if spec.const("use_offsets"):
            if s.numel() > 1 and bool((s[1:] < s[:-1]).any()):
                return "segment_reduce offsets decrease"
            if s.numel() and (int(s.min()) < 0 or int(s.max()) > data.shape[0]):
                return "segment_reduce offsets outside the rows"
            return None
        if s.numel() and int(s.min()) < 0:
            return "segment_reduce lengths negative"
        if int(s.sum()) != data.shape[0]:
            return "segment_reduce lengths do not sum to the rows"
        return None

    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        data, segs = inputs
        key = "offsets" if spec.const("use_offsets") else "lengths"
        if key == "offsets" and segs is not None and segs.device.type == "cpu" and segs.numel():
            # ATen checks offsets only for order: offsets past the rows read past the data (and may
            # crash). As the runtime's fallback, this must raise instead.
            lo, hi = int(segs.min()), int(segs.max())
            if lo < 0 or hi > data.shape[0]:
                raise IndexError(f"segment_reduce: offsets in [{lo}, {hi}] outside [0, {data.shape[0]}] rows")
        out = torch.ops.aten.segment_reduce.default(
            data, str(spec.const("reduce")), axis=0, unsafe=False, initial=spec.const("initial"), **{key: segs}
        )
        return [out]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """float64 segment reduction by index_add / scatter_reduce, rounded to the data dtype."""
        data, segs = inputs
        assert data is not None and segs is not None
        reduce, init = str(spec.const("reduce")), spec.const("initial")
        n = data.shape[0]
        trailing = tuple(data.shape[1:])
        d = math.prod(trailing)
        x = data.reshape(n, d).to(torch.float64)
        sg = segs.reshape(-1).to(torch.int64)
        if spec.const("use_offsets"):
            starts, lens = sg[:-1], sg[1:] - sg[:-1]
        else:
            lens = sg
            starts = torch.cumsum(lens, 0) - lens
        s = lens.numel()
        dev = x.device
        lens_c = lens.clamp(min=0)
        ids = torch.repeat_interleave(torch.arange(s, device=dev), lens_c)
        first = torch.repeat_interleave(torch.cumsum(lens_c, 0) - lens_c, lens_c)
        rows = torch.arange(ids.numel(), device=dev) - first + starts[ids]
        vals = x[rows]  # [total, D]
        idx2 = ids[:, None].expand(-1, d)
        if reduce in ("sum", "mean"):
            out = torch.zeros(s, d, dtype=torch.float64, device=dev).index_add_(0, ids, vals)
            if init is not None:
                out = out + init
            if reduce == "mean":
                cnt = lens.to(torch.float64)[:, None]
                if init is None:
                    out = torch.where(cnt > 0, out / cnt.clamp(min=1), torch.full_like(out, math.nan))
                else:
                    out = torch.where(cnt > 0, out / cnt.clamp(min=1), out)
        elif reduce in ("max", "min"):
            nan = torch.isnan(vals)
            fill = -math.inf if reduce == "max" else math.inf
            clean = torch.where(nan, torch.full_like(vals, fill), vals)
            out = torch.full((s, d), fill, dtype=torch.float64, device=dev)
            out.scatter_reduce_(0, idx2, clean, "amax" if reduce == "max" else "amin", include_self=True)
            if init is not None:
                out = out.clamp(min=init) if reduce == "max" else out.clamp(max=init)
            nan_cnt = torch.zeros(s, d, dtype=torch.float64, device=dev).index_add_(0, ids, nan.to(torch.float64))
            out = torch.where(nan_cnt > 0, torch.full_like(out, math.nan), out)
        elif reduce == "prod":
            out = torch.ones(s, d, dtype=torch.float64, device=dev)
            out.scatter_reduce_(0, idx2, vals, "prod", include_self=True)
            if init is not None:
                out = out * init
        else:
            raise ValueError(f"unknown reduce {reduce!r}")
        out = out.to(data.dtype).to(torch.float64)  # the op's output dtype: overflow to inf like it does
        return [out.reshape((s,) + trailing)]

    # -- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _values(reduce: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        if reduce == "prod":  # magnitudes near 1: long products neither over- nor underflow
            mag = torch.rand(shape, generator=gen) * 0.45 + 0.8
            sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
            return mag * sign
        return torch.randn(shape, generator=gen)

    def _build(
        self, spec: OpSpec, values: torch.Tensor, sizes: torch.Tensor, sigs: Sequence[TensorSig | None] | None = None
    ) -> list[torch.Tensor | None]:
        """Lay dense values / segment sizes out with ``sigs`` (defaults: the spec's) on the spec's device."""
        device = torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)
        d_sig, s_sig = spec.args if sigs is None else sigs
        assert d_sig is not None and s_sig is not None
        sizes = sizes.to(torch.int64)
        if spec.const("use_offsets"):
            segs = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
        else:
            segs = sizes
        return [_strided(d_sig, values, device), _strided(s_sig, segs, device)]

    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        gen = torch.Generator().manual_seed(int(seed))
        n, _, s = self._dims(spec)
        d_sig = spec.args[0]
        assert d_sig is not None
        values = self._values(str(spec.const("reduce")), d_sig.shape, gen)
        return self._build(spec, values, _segment_sizes(n, s, gen))

    def _case(
        self, spec: OpSpec, name: str, values: torch.Tensor, sizes: Sequence[int], row_stride: int | None = None
    ) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
        """An edge case with the spec's dtypes/constants and its own shapes (``values``: [N] or [N, D])."""
        d_sig, s_sig = spec.args
        assert d_sig is not None and s_sig is not None
        n = values.shape[0]
        assert sum(sizes) == n
        if values.dim() == 1:
            shape, stride = (n,), (row_stride or 1,)
        else:
            d = values.shape[1]
            shape, stride = (n, d), (row_stride or d, 1)
        use_off = bool(spec.const("use_offsets"))
        sigs = (TensorSig(d_sig.dtype, shape, stride), TensorSig(s_sig.dtype, (len(sizes) + use_off,), (1,)))
        inputs = self._build(spec, values, torch.tensor(list(sizes), dtype=torch.int64), sigs)
        data, segs = inputs
        assert data is not None and segs is not None
        case_spec = self.spec_for(
            data, str(spec.const("reduce")), lengths=None if use_off else segs, offsets=segs if use_off else None,
            initial=spec.const("initial"), op=spec.op,
        )
        return name, case_spec, inputs

    # NaN in data is part of every verification (the Evaluator's unmodified-input check is NaN-aware).
    nan_edge_cases: bool = True

    def edge_cases(
        self, spec: OpSpec, include_nan: bool | None = None
    ) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        gen = torch.Generator().manual_seed(1234)
        reduce = str(spec.const("reduce"))
        _, d_spec, _ = self._dims(spec)
        dt = spec.args[0].torch_dtype if spec.args[0] is not None else torch.float32
        d = max(1, min(d_spec, 64))

        def vals(n: int, dim: int | None = d) -> torch.Tensor:
            return self._values(reduce, (n,) if dim is None else (n, dim), gen)

        inf = math.inf
        infs = vals(12, 4)
        infs[0:3, 1] = inf  # segment 0: +inf in a column
        infs[3, 2] = -inf  # segment 1: -inf
        infs[6, 3], infs[7, 3] = inf, -inf  # segment 2: inf + -inf = NaN for sum/mean/prod
        infs[9:12, 0] = -inf  # segment 3: all -inf in a column
        big = 1e30 if dt in (torch.float32, torch.bfloat16) else 1e4
        extreme = torch.rand(10, d, generator=gen) * big + big / 4  # one sign: eager's limits not crossed
        cases = [
            self._case(spec, "all_segments_empty", vals(0), [0, 0, 0, 0]),
            self._case(spec, "first_and_last_empty", vals(9), [0, 3, 2, 4, 0]),
            self._case(spec, "one_segment", vals(7), [7]),
            self._case(spec, "one_huge_segment", vals(1002, min(d, 16)), [1, 1000, 1, 0]),
            self._case(spec, "single_row", vals(1), [1]),
            self._case(spec, "dim_1_data_1d", vals(18, None), [3, 0, 5, 1, 9]),
            self._case(spec, "odd_dim_33", vals(23, 33), [5, 0, 1, 17]),
            self._case(spec, "strided_rows", vals(12), [4, 8], row_stride=d + 7),
            self._case(spec, "many_tiny_segments", vals(150, min(d, 4)), [i % 3 for i in range(150)]),
            self._case(spec, "inf_values", infs, [3, 3, 3, 3, 0]),
            self._case(spec, "extreme_values", extreme, [3, 1, 2, 4]),
        ]
        if self.nan_edge_cases if include_nan is None else include_nan:
            nans = vals(14, 4)
            nans[0, 0] = math.nan  # segment 0: one NaN in a column
            nans[3:6, 1] = math.nan  # segment 1: a NaN column
            nans[6, 2], nans[7, 2] = math.nan, inf  # segment 2: NaN next to +inf
            nans[8, 3], nans[9, 3] = -inf, math.nan  # segment 2: NaN after -inf (max/min order)
            nans[12, :] = math.nan  # segment 4: a NaN row
            cases.append(self._case(spec, "nan_values", nans, [3, 3, 4, 2, 2]))
        return cases

    # -- numerics / cost -------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        data, segs = spec.args
        assert data is not None and segs is not None
        n, d, s = self._dims(spec)
        e = _elem_size(data.dtype)
        return n * d * e + segs.numel() * _elem_size(segs.dtype) + s * d * e

    # -- kernels ---------------------------------------------------------------------------------
    @staticmethod
    def _warps(tile: int) -> int:
        """~32 loaded elements per thread, 1..8 warps (untuned on H100: a knob the search varies)."""
        return max(1, min(8, _next_pow2(max(tile // 1024, 1))))

    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """Template x tile proposals, a segment-length-aware default first, ~15-35.

        Offsets specs: the tile space. Lengths specs: the same space on scanned starts (``SCAN``),
        plus in-kernel-prefix candidates where they are cheap (small S, within ``_PREFIX_BUDGET``);
        those come first when S fits one prefix step per program, the scan defaults otherwise.
        """
        if spec.const("use_offsets"):
            return self._realize(self._space(spec, bounded=False))
        n, d, s = self._dims(spec)
        kind = 1 if s <= 8 * _SCAN_MAX_BLOCK else 2  # <= 8 serial steps for the one-program scan
        space = self._space(spec, bounded=False)
        on_scan = self._realize(space, kind, self._scan_block(kind, s))
        other_kind = self._realize(space[:1], 3 - kind, self._scan_block(3 - kind, s))
        prefix: list[Candidate] = []
        if s <= _PREFIX_MAX_S:
            prefix = [c for c in self._realize(self._space(spec, bounded=True))
                      if self._prefix_loads(spec, c) <= _PREFIX_BUDGET]
        if prefix and s <= _PREFIX_FIRST_S:
            heads: dict[str, Candidate] = {}
            for c in prefix:
                heads.setdefault(c.template, c)  # each template's in-kernel-prefix default
            order = [*heads.values(), *on_scan[:1], *other_kind, *prefix, *on_scan]
        else:
            order = [*on_scan[:1], *other_kind, *on_scan, *prefix]
        return list(dict.fromkeys(order))[:35]

    @staticmethod
    def _scan_block(kind: int, s: int) -> int:
        """Lengths per scan step: the one-program scan covers S in few steps; the two-level scan keeps
        its block count (the block-sum prefix each program sums) <= _SCAN2_MAX_BLOCKS."""
        if kind == 1:
            return min(max(_next_pow2(max(s, 1)), 64), _SCAN_MAX_BLOCK)
        return min(max(_next_pow2(_cdiv(max(s, 1), _SCAN2_MAX_BLOCKS)), 1024), 8192)

    @staticmethod
    def _realize(space: list[tuple[str, dict[str, Any]]], scan: int = 0, scan_block: int = 0) -> list[Candidate]:
        """Candidates from (template, config) pairs, deduplicated. ``scan``: 0 the plain sources, else
        that scan kind and block added to the config (BLOCK_R, the in-kernel prefix step, dropped)."""
        seen: set = set()
        cands: list[Candidate] = []
        for template, cfg in space:
            if scan:
                cfg = {k: v for k, v in cfg.items() if k != "BLOCK_R"}
                cfg.update(SCAN=scan, SCAN_BLOCK=scan_block)
            config = tuple(sorted(cfg.items()))
            if (template, config) in seen:
                continue
            seen.add((template, config))
            src = SCAN_SOURCES[template] if scan else TEMPLATES[template][1]
            cands.append(Candidate(source=src, config=config, origin="template", template=template))
        return cands

    def _prefix_loads(self, spec: OpSpec, cand: Candidate) -> float:
        """Lengths loads an in-kernel-prefix candidate spends on prefixes (summed over programs)."""
        plan = self.call_plan(spec, cand)
        _, _, s = self._dims(spec)
        return plan.grid[0] * plan.grid[1] * s / 2

    def _space(self, spec: OpSpec, bounded: bool) -> list[tuple[str, dict[str, Any]]]:
        """The (template, config) proposals, preferred first. ``bounded``: lengths read by in-kernel
        prefixes, so only shapes whose prefix cost fits ``_PREFIX_BUDGET`` (``seg_chunk`` always)."""
        n, d, s = self._dims(spec)
        use_off = not bounded
        avg = n / max(s, 1)
        bd_max = min(_next_pow2(max(d, 1)), 256)
        bd0 = min(bd_max, 128)
        bd_opts = [bd0] + [x for x in (bd0 // 2, bd_max) if 16 <= x and x != bd0]
        br = 2048 if s > 8192 else 1024

        def nd(bd: int) -> int:
            return _cdiv(max(d, 1), bd)

        def prefix_ok(programs: int, bd: int) -> bool:
            return use_off or programs * nd(bd) * s / 2 <= _PREFIX_BUDGET

        out: list[tuple[str, dict[str, Any]]] = []

        def common(bd: int, tile: int, nw: int | None, stages: int, r: int | None = None) -> dict[str, Any]:
            return dict(BLOCK_D=bd, BLOCK_R=r or br, num_warps=nw or self._warps(tile), num_stages=stages)

        def per_program(bd: int, bn: int, acc: bool = False, nw: int | None = None, stages: int = 2) -> None:
            if bd * bn <= _MAX_TILE and prefix_ok(s, bd):
                out.append(("seg_per_program", dict(common(bd, bd * bn, nw, stages), BLOCK_N=bn, ACC_TILE=acc)))

        def tile(bd: int, bs: int, bn: int, nw: int | None = None) -> None:
            if bd * bs * bn <= _MAX_TILE and prefix_ok(_cdiv(s, bs), bd):
                out.append(("seg_tile", dict(common(bd, bd * bs * bn, nw, 2), BLOCK_S=bs, BLOCK_N=bn)))

        def chunk(bd: int, bs: int, bn: int, progs: int, nw: int | None = None, stages: int = 2,
                  r: int | None = None) -> None:
            if bd * bs * bn <= _MAX_TILE:
                out.append(("seg_chunk", dict(common(bd, bd * bs * bn, nw, stages, r), BLOCK_S=bs, BLOCK_N=bn,
                                              PROGRAMS=progs)))

        # One segment per program: BLOCK_N rows per step cover the average segment, tile <= 4K elements.
        bn_cap = max(1, 4096 // bd0)
        bn0 = max(1, min(_next_pow2(max(1, math.ceil(avg))), bn_cap))
        bn_opts = [bn0] + [x for x in (bn0 * 2, bn0 // 2, bn0 * 4) if 1 <= x and bd0 * x <= _MAX_TILE and x != bn0]
        # Tiles of segments: positions per step ~ the average length (<= 16), segments per tile so that
        # a tile holds ~1-4K elements.
        bn_t = max(1, min(_next_pow2(max(1, math.ceil(avg))), 16))
        bs_all = [x for x in (1, 2, 4, 8, 16, 32, 64, 128) if bd0 * x * bn_t <= 4096 and x <= max(1, _next_pow2(s))]
        bs_opts = [x for x in bs_all if x >= 4] or bs_all[-1:]
        bs0 = bs_opts[len(bs_opts) // 2]
        bn_t_opts = [x for x in (bn_t * 2, bn_t // 2) if x >= 1 and bd0 * bs0 * x <= _MAX_TILE]
        # Persistent grids: more programs than chunks of one tile make no sense; lengths specs keep the
        # prefix budget (the smallest grid always stays).
        progs_opts = [p for p in _CHUNK_PROGRAMS if p * bs0 < s] or [min(_CHUNK_PROGRAMS)]
        progs_opts = [progs_opts[0]] + [p for p in progs_opts[1:] if prefix_ok(p, bd0)]
        tiles_ok = prefix_ok(_cdiv(s, bs0), bd0)

        # Default first: long segments (or few) -> one per program; short ones -> segment tiles, or
        # persistent chunks when per-tile lengths prefixes would cost too much.
        if avg >= 32 or s < 64:
            per_program(bd0, bn0)
        if tiles_ok:
            tile(bd0, bs0, bn_t)
        chunk(bd0, bs0, bn_t, progs_opts[0])

        # (a) one segment per program: BLOCK_D x BLOCK_N, tile accumulator, warps/stages.
        for bd in bd_opts:
            for bn in bn_opts[:3]:
                per_program(bd, bn)
        per_program(bd0, bn0, acc=True, nw=max(2, self._warps(bd0 * bn0)))
        per_program(bd0, bn_opts[-1], acc=True)
        nw0 = self._warps(bd0 * bn0)
        if nw0 * 2 <= 8:
            per_program(bd0, bn0, nw=nw0 * 2)
        per_program(bd0, bn0, stages=3)

        # (b) segment tiles: segments per tile x positions per step x BLOCK_D.
        for bs in bs_opts:
            tile(bd0, bs, bn_t)
        for bn in bn_t_opts:
            tile(bd0, bs0, bn)
        if len(bd_opts) > 1:
            tile(bd_opts[1], bs0, bn_t)

        # (c) persistent chunks: grid size, then (all the more when the other templates are out of the
        # prefix budget) the tile's shape.
        for p in progs_opts:
            chunk(bd0, bs0, bn_t, p)
        p0 = progs_opts[0]
        chunk(bd0, max(1, bs0 // 2), bn_t_opts[0] if bn_t_opts else bn_t, p0)
        if s >= 2 * max(progs_opts):  # long chunks of long-ish segments: one segment at a time
            chunk(bd0, 1, bn0, p0)
        if not prefix_ok(s, bd0):  # per-segment programs are out of the lengths budget: vary chunks more
            for bs in bs_opts:
                chunk(bd0, bs, bn_t, p0)
            for bn in bn_t_opts:
                chunk(bd0, bs0, bn, p0)
            for bd in bd_opts[1:]:
                chunk(bd, bs0, bn_t, p0)
            nwc = self._warps(bd0 * bs0 * bn_t)
            for nw in (nwc * 2, nwc // 2):
                if 1 <= nw <= 8:
                    chunk(bd0, bs0, bn_t, p0, nw=nw)
            if len(progs_opts) > 1:
                chunk(bd0, bs0, bn_t, progs_opts[1], nw=nwc * 2 if nwc < 8 else None)
            chunk(bd0, bs0, bn_t, p0, stages=3)
            chunk(bd0, bs0, bn_t, p0, r=4 * br)  # wider prefix steps: fewer, larger loads
        return out

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        data, segs = spec.args
        assert data is not None and segs is not None
        n, d, s = self._dims(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "segment_reduce", variants=SCAN_SOURCES)
        kernel = TEMPLATES[template][0]
        check_pow2(cfg, lambda k: k.startswith("BLOCK_"))
        bd, br = int(cfg["BLOCK_D"]), int(cfg.get("BLOCK_R", 1024))
        nd = _cdiv(max(d, 1), bd) if d > 0 else 0
        if nd > _MAX_GRID_Y:
            raise ValueError(f"BLOCK_D={bd} needs {nd} programs along D (> {_MAX_GRID_Y})")
        use_off = bool(spec.const("use_offsets"))
        scan = int(cfg.get("SCAN", 0))
        pre, workspace = self._scan_steps(spec, cand, scan)
        init = spec.const("initial")
        init_inf = 0 if init is None or math.isfinite(init) else (1 if init > 0 else -1)
        args: list[tuple[str, Any]] = [
            ("data_ptr", In(0)),
            ("seg_ptr", Ws(0) if scan else In(1)),  # scanned: the starts workspace, read as offsets
            ("out_ptr", Out(0)),
            ("num_rows", n),
            ("num_segs", s),
            ("dim", d),
            ("stride_row", data.stride[0] if n > 1 else d),
            ("stride_seg", 1 if scan else segs.stride[0] if segs.shape[0] > 1 else 1),
            ("stride_out", d),
            # Non-finite initials travel as INIT_INF: no inf literal reaches generated wrapper code.
            ("initial", float(init) if init is not None and init_inf == 0 else 0.0),
            ("REDUCE", REDUCE_CODES[str(spec.const("reduce"))]),
            ("USE_OFFSETS", use_off or scan > 0),
            ("HAS_INITIAL", init is not None),
            ("INIT_INF", init_inf),
            ("PREFIX_I64", not scan and n >= 2**31 - 1),
            ("BLOCK_R", br),
            ("BLOCK_D", bd),
        ]
        if template == "seg_per_program":
            args += [("BLOCK_N", int(cfg["BLOCK_N"])), ("ACC_TILE", bool(cfg["ACC_TILE"]))]
            grid = (s, nd)
        elif template == "seg_tile":
            bs = int(cfg["BLOCK_S"])
            args += [("BLOCK_S", bs), ("BLOCK_N", int(cfg["BLOCK_N"]))]
            grid = (_cdiv(s, bs), nd)
        else:  # seg_chunk
            bs, progs = int(cfg["BLOCK_S"]), int(cfg["PROGRAMS"])
            if progs < 1:
                raise ValueError(f"PROGRAMS={progs} < 1")
            per = _cdiv(_cdiv(s, progs), bs) * bs  # whole tiles per program
            args += [("segs_per_prog", per), ("BLOCK_S", bs), ("BLOCK_N", int(cfg["BLOCK_N"]))]
            grid = (_cdiv(s, per), nd)
        return CallPlan(
            kernel=kernel,
            grid=grid,
            args=tuple(args),
            outputs=(OutBuf((s,) + tuple(data.shape[1:]), data.dtype, fill=None),),
            num_warps=int(cfg.get("num_warps", 4)),
            num_stages=int(cfg.get("num_stages", 2)),
            pre=pre,
            workspace=workspace,
        )

    def _scan_steps(self, spec: OpSpec, cand: Candidate, scan: int) -> tuple[tuple[Step, ...], tuple[OutBuf, ...]]:
        """The pre-steps writing ``starts`` (workspace 0, S+1 int64) for ``SCAN`` candidates; none for 0."""
        if scan == 0:
            return (), ()
        segs = spec.args[1]
        assert segs is not None
        if spec.const("use_offsets"):
            raise ValueError("SCAN applies to lengths specs only")
        if scan not in SCAN_KERNELS:
            raise ValueError(f"SCAN={scan} is not a scan kind ({sorted(SCAN_KERNELS)})")
        missing = [k for k in SCAN_KERNELS[scan] if f"def {k}(" not in cand.source]
        if missing:
            raise ValueError(f"SCAN={scan} needs kernel(s) {missing} in the candidate source")
        _, _, s = self._dims(spec)
        blk = int(cand.cfg.get("SCAN_BLOCK", 0))
        if blk < 16 or blk & (blk - 1) or blk > 8192:
            raise ValueError(f"SCAN_BLOCK={blk} is not a power of two in [16, 8192]")
        stride = segs.stride[0] if segs.shape[0] > 1 else 1
        starts = OutBuf((s + 1,), "int64")
        warps = 8 if blk >= 2048 else 4
        if scan == 1:
            step = Step(SCAN_KERNELS[1][0], (1,), (
                ("len_ptr", In(1)), ("starts_ptr", Ws(0)), ("num_segs", s), ("stride_seg", stride), ("BLOCK", blk),
            ), num_warps=warps, num_stages=3)
            return (step,), (starts,)
        nblk = max(1, _cdiv(s, blk))  # >= 1 program: block 0 writes starts[0] even for S = 0
        sums = Step(SCAN_KERNELS[2][0], (nblk,), (
            ("len_ptr", In(1)), ("sums_ptr", Ws(1)), ("num_segs", s), ("stride_seg", stride), ("BLOCK", blk),
        ), num_warps=warps, num_stages=2)
        scan_b = Step(SCAN_KERNELS[2][1], (nblk,), (
            ("len_ptr", In(1)), ("sums_ptr", Ws(1)), ("starts_ptr", Ws(0)), ("num_segs", s), ("stride_seg", stride),
            ("BLOCK", blk), ("BLOCK_B", min(max(_next_pow2(nblk), 16), 1024)),
        ), num_warps=warps, num_stages=2)
        return (sums, scan_b), (starts, OutBuf((nblk,), "int64"))


register(SegmentReduceFamily())
