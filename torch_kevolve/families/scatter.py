"""The scatter family: index_add / scatter_add / scatter_reduce as they reach the post-grad graph.

What reaches Inductor's post-grad graph (torch 2.13, checked by compiling small functions):

* ``torch.index_add(x, dim, idx, src, alpha=a)`` never arrives as ``aten.index_add``: the
  decompositions turn it into ``aten.index_put.default(x, [None] * dim + [idx], src, True)`` (an
  ``aten.mul`` in front for ``alpha != 1``); ``x.index_put_((idx,), v, accumulate=True)`` arrives as the
  same node. On a fresh buffer (``torch.zeros(...).index_add_(...)``, or index_add on a ``.contiguous()``
  copy) it arrives as the in-place ``aten.index_put_.default`` on that buffer; it is served as the
  functional op where nothing else sees the buffer (its only user is the node, and it is no graph
  input). Served: ``accumulate=True`` with one integer index tensor; skipped: ``accumulate=False``
  (an index_copy), bool masks, several index tensors (advanced indexing).
* ``aten.scatter_add.default`` and ``aten.scatter_reduce.two`` arrive as themselves (``scatter_reduce_``
  on a fresh buffer arrives as the functional op too). ``aten.scatter.reduce`` and
  ``aten.index_reduce.default`` also arrive; not served here.

How Inductor treats them (``torch/_inductor/lowering.py``):

* ``index_put`` (accumulate) and ``scatter_add`` are *lowered*: a clone of ``self`` then a scatter kernel
  with ``atomic_add`` in the data dtype. Conditional fallbacks inside the lowerings: deterministic
  algorithms, bool indices, int64/bool data, bf16 on CUDA before sm_90, and on CPU with more than one
  thread ``scatter_add``/``scatter_reduce(sum)`` (``config.cpp.fallback_scatter_reduce_sum``).
* ``scatter_reduce.two`` is lowered only for ``reduce="sum"``; ``prod``/``mean``/``amax``/``amin`` become an
  ATen ``ScatterFallback`` inside the lowering, on every device. Those are real long-tail calls, but
  ``detect.py`` decides per op name, so all ops are in ``lowered_ops`` (contested) and
  :meth:`ScatterFamily.inductor_fallback_reason` says per node when Inductor falls back, for the
  detector to use.

Semantics (pinned against eager on CPU in the tests):

* the op is functional: ``out = self.clone()`` then ``out[idx] op= src``. Positions no index hits keep
  ``self``, whatever the reduction and ``include_self``.
* ``include_self=False``: a hit position reduces over ``src`` only. ``mean`` divides by the hit count
  (plus one with ``include_self``). NaN anywhere in a reduced group makes amax/amin NaN.
* ``index_put`` wraps negative indices (``-1`` is the last row); scatter rejects them. Out-of-range
  indices make eager raise; the kernels skip them (nothing is written for them, never out of bounds),
  so results differ from eager only where eager would have raised.
* eager CPU ``index_put`` accumulates fp16/bf16 in the data dtype (3000 fp16 ones sum to 2048; CUDA
  atomics too), ``scatter_add``/``scatter_reduce`` in fp32. The reference is float64 rounded once.

Served: float32/float16/bfloat16 ``self``/``src`` of one dtype, int32/int64 indices; ``index_put`` on
dim 0 of any rank whose trailing dims flatten to one dim ``D``, or dim 1 of a 2-D tensor, with values
broadcast to the indexed shape (stride 0); scatter on 1-D and 2-D tensors along either dim; any
strides; static shapes; outputs must be contiguous (as the node's FakeTensor says). Everything but
``prod`` on large problems (see the scan budget).

Canonical problem: every call becomes ``out[N, D]``, ``self[N, D]``, ``src[M, K]`` (all by strides) and
either a *row* index ``idx[M]`` (index_put; scatter whose index is expanded along the non-scatter dim,
stride 0: the recsys ``idx[:, None].expand(M, D)``) or an *element* index ``idx[M, K]``. Dim 1 of a 2-D
tensor is dim 0 of its transpose: only strides are swapped.

Templates (every plan writes every output element):

* ``copy_atomic`` (two or three launches): copy ``self`` into the output (plain stores), for
  ``include_self=False`` store the identity at every hit position (plain stores; writers agree), then
  combine ``src`` atomically in the data dtype: Inductor's plan, with this family's tiles. sum: native
  atomic add (fp32, fp16; bf16 only on CUDA -- the interpreter has no bf16 atomics); amax/amin (fp32
  only): integer atomics on the float's bits -- signed max where the sign bit is clear, unsigned min
  where it is set (mirrored for min) -- with NaN stored as the bit pattern that wins and then stays
  (+NaN for max, -NaN for min), so NaN propagates on any device and in any order.
* ``atomic`` (one launch, include_self only): the output is pre-filled with the identity
  (``OutBuf(fill=...)``) and ``self`` is combined atomically too, by the first programs; atomic
  sums/maxima commute, so the copy needs no ordering against the scatter.
* ``ws_fp32`` (two launches): atomics into an identity-filled fp32 workspace (plus int32 hit counts for
  ``mean`` and ``include_self=False``), then a finalize pass combining it with ``self``. Every reduction
  but ``prod`` (no atomic multiply), every dtype, fp32 accumulation.
* ``scan`` (one launch, no atomics): one program per output tile ``[BLOCK_N, BLOCK_D]`` scans the whole
  index ``BLOCK_M`` at a time and reduces the matching ``src`` values in fp32 in registers
  (``[BLOCK_N, BLOCK_M, BLOCK_D]`` tiles, or for row-index sum/mean a one-hot ``tl.dot``, ``USE_DOT``,
  with non-finite values counted apart since ``0 * inf`` is NaN). Exact for every reduction and
  deterministic, but O(N * M * K) work: offered only under ``_SCAN_BUDGET`` -- the only plan for ``prod``.
* ``csr`` (row index, sum/mean, four or five launches, no float atomics): a counting sort of the index
  into CSR form in the ``pre`` steps -- ``scatter_csr_hist`` (int32 atomic counts per row into a
  zero-filled workspace, invalid rows skipped, index_put's negatives wrapped), a row-pointer scan
  (``SCAN=1``: one program, ``tl.cumsum`` with a carried total; ``SCAN=2``: block sums then per-block
  scans, as segment_reduce's lengths scan), ``scatter_csr_fill`` (``perm[rowptr[r] + slot] = m``, the slot
  from an atomic countdown of the row's count) -- then ``scatter_csr_reduce``: one program per
  ``BLOCK_N`` output rows x ``BLOCK_D`` columns (``D_LOOP``: all columns) walks its rows' CSR ranges in
  lockstep, gathers the src rows through ``perm``, sums in fp32, reads ``self`` once and writes the
  output once: the memory floor plus ~4 * (2N + M) bytes of int32 traffic a few times over. Offered
  when that workspace is small against the floor (or small outright, so a spec's edge cases are
  served too). Not bitwise deterministic: the fill's atomic slots order each row's src rows
  arbitrarily, so the fp32 sum order varies from run to run (within the family tolerance, as the
  atomic plans); a stable per-row rank would fix it. Rows with very many hits serialize their
  program (the lockstep walk is as long as the block's longest row).

Structural knobs of the atomic plans: tile shape ``BLOCK_M x BLOCK_D`` (and ``BLOCK_N`` for the copy /
finalize), ``SEG_COMBINE`` (runs of equal consecutive indices in a tile are pre-reduced by a segmented
scan in fp32 and committed with one atomic per run: exact for any index, fewer atomics and less fp16/bf16
rounding on sorted or duplicate-heavy indices), ``D_LOOP`` (a program walks all columns: the index is
read once), ``TILES`` (index tiles per program) and warps. Atomic sums are order-nondeterministic:
they match the float64 reference within the family tolerance, not bit for bit. Sorted-index
(segmented) kernels that trust the input order are not offered: sortedness is a property of the
values, not of the spec, and a plan cannot cheaply check it before choosing (``csr`` sorts instead).
Knobs of ``csr``: ``BLOCK_N``, ``BLOCK_D``, ``D_LOOP``, ``SCAN`` / ``SCAN_BLOCK``, ``CSR_BLOCK_M`` (indices
per histogram / fill program), warps and stages; ``FLAT`` with ``BLOCK_E``: the main step gathers BLOCK_E
of its rows' sorted entries at once and sums each row's run with a segmented scan (a hot row goes
BLOCK_E entries per step, not one); slower than the lockstep walk on a uniform index (H100:
233-509 us against 185), so offered after it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip, Step, Ws
from .util import all_int as _all_int, cdiv as _cdiv, elem_size as _elem_size, next_pow2 as _next_pow2, template_of, check_pow2
from .util import unique_candidates
from .util import meta_val, node_kwargs, storage_size

log = logging.getLogger("torch_kevolve")

INDEX_PUT = "aten.index_put.default"
INDEX_PUT_ = "aten.index_put_.default"  # matched where its mutation is invisible; specs say INDEX_PUT
SCATTER_ADD = "aten.scatter_add.default"
SCATTER_REDUCE = "aten.scatter_reduce.two"
_OPS = (INDEX_PUT, SCATTER_ADD, SCATTER_REDUCE)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int32, torch.int64)
REDUCE_CODES = {"sum": 0, "prod": 1, "mean": 2, "amax": 3, "amin": 4}
_FILL = {"sum": 0.0, "amax": -math.inf, "amin": math.inf}  # atomic template: the output's pre-fill
_MAX_TILE = 8192  # fp32 elements of a register tile: keeps register pressure sane on sm_90
# Work (N * M * K compare-and-combine steps) the scan template may spend: ~2.7e8, tens of us on an
# H100; beyond it only the atomic template is offered.
_SCAN_BUDGET = 1 << 28
_MAX_GRID_Y = 65535
# csr template: int32 row pointers / permutation (N, M below this), and its int32 workspace traffic
# (~4 * (2N + M) bytes, read and written a few times) at most this fraction of the floor bytes.
_CSR_MAX_ROWS = 2**31 - 8192 - 1
_CSR_WS_FRACTION = 0.5
_CSR_WS_ALWAYS = 1 << 20  # ... or at most this many bytes
_CSR_SCAN1_MAX_STEPS = 8  # the one-program scan: at most this many SCAN_BLOCK steps

# ------------------------------------------------------------------------------------------------
# Kernel sources. Each template's source is a complete module; shared helpers are pasted into each
# so a template's text (and so its hash) depends only on what it runs.
# ------------------------------------------------------------------------------------------------

_HEADER = '''import triton
import triton.language as tl
'''

_COMMON = '''

@triton.jit
def _max_nan(a, b):
    \"\"\"max that propagates NaN as torch's amax does (GPU max.f32 would drop it).\"\"\"
    return tl.where((a != a) | (a > b), a, b)


@triton.jit
def _min_nan(a, b):
    return tl.where((a != a) | (a < b), a, b)


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _identity(REDUCE: tl.constexpr):
    \"\"\"The reduction's identity (sum/mean 0, prod 1, amax -inf, amin +inf).\"\"\"
    if REDUCE == 3:
        v = float("-inf")
    elif REDUCE == 4:
        v = float("inf")
    elif REDUCE == 1:
        v = 1.0
    else:
        v = 0.0
    return v


@triton.jit
def _rows(idx, num_rows, WRAP_NEG: tl.constexpr):
    \"\"\"int64 output row of each index (index_put wraps negatives). Rows outside [0, num_rows) are
    invalid: eager raises for them, the kernels skip them.\"\"\"
    r = idx.to(tl.int64)
    if WRAP_NEG:
        r = tl.where(r < 0, r + num_rows, r)
    return r


@triton.jit
def _load_rows(ptrs, mask, num_rows, WRAP_NEG: tl.constexpr):
    \"\"\"``_rows`` of the indices at ``ptrs`` (masked lanes read 0). An index eager rejects is a device-side
    assert where Triton's debug is on (GPU launches, as Inductor's own), else the kernels skip its row.\"\"\"
    r = _rows(tl.load(ptrs, mask=mask, other=0), num_rows, WRAP_NEG)
    tl.device_assert((r >= 0) & (r < num_rows), "scatter: index out of range", mask=mask)
    return r
'''

_SIGNATURE = '''
    x_ptr, idx_ptr, src_ptr, out_ptr,
    num_rows, num_cols, num_idx, idx_cols,
    stride_xn, stride_xd, stride_im, stride_ik, stride_sm, stride_sk, stride_on, stride_od,
    REDUCE: tl.constexpr, ROW_INDEX: tl.constexpr, WRAP_NEG: tl.constexpr,'''

_SEG_SUM = '''
@triton.jit
def _seg_sum(a, fa, b, fb):
    \"\"\"Segmented-scan step: a run restarts where the flag (a run head) is set.\"\"\"
    return tl.where(fb != 0, b, a + b), fa | fb
'''

_SCATTER = '''
''' + _SEG_SUM + '''

@triton.jit
def _seg_max(a, fa, b, fb):
    return tl.where(fb != 0, b, _max_nan(a, b)), fa | fb


@triton.jit
def _seg_min(a, fa, b, fb):
    return tl.where(fb != 0, b, _min_nan(a, b)), fa | fb


@triton.jit
def _atomic_reduce(out_ptr, offs, v, mask, REDUCE: tl.constexpr):
    \"\"\"out[offs] op= v where mask. sum/mean: the native atomic add in out's dtype. amax/amin (fp32 out):
    integer atomics on the bits -- for max, signed max where the sign bit is clear and unsigned min
    where it is set orders floats correctly; NaN becomes +NaN (0x7FC00000), which beats every float
    under both and is never replaced. min mirrors it with -NaN (0xFFC00000).\"\"\"
    if REDUCE == 0 or REDUCE == 2:
        tl.atomic_add(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask, sem="relaxed")
    else:
        v = v.to(tl.float32)
        b = v.to(tl.int32, bitcast=True)
        iptr = out_ptr.to(tl.pointer_type(tl.int32)) + offs
        uptr = out_ptr.to(tl.pointer_type(tl.uint32)) + offs
        if REDUCE == 3:
            b = tl.where(v != v, 0x7FC00000, b)
            tl.atomic_max(iptr, b, mask=mask & (b >= 0), sem="relaxed")
            tl.atomic_min(uptr, b.to(tl.uint32, bitcast=True), mask=mask & (b < 0), sem="relaxed")
        else:
            b = tl.where(v != v, -4194304, b)  # 0xFFC00000
            tl.atomic_min(iptr, b, mask=mask & (b >= 0), sem="relaxed")
            tl.atomic_max(uptr, b.to(tl.uint32, bitcast=True), mask=mask & (b < 0), sem="relaxed")


@triton.jit
def _scatter_tiles(
    idx_ptr, src_ptr, out_ptr, cnt_ptr, tile0, d_lo, d_hi,
    num_rows, num_idx, idx_cols, stride_im, stride_ik, stride_sm, stride_sk, stride_on, stride_od,
    REDUCE: tl.constexpr, ROW_INDEX: tl.constexpr, WRAP_NEG: tl.constexpr, RESET: tl.constexpr,
    COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, SEG_COMBINE: tl.constexpr,
    TILES: tl.constexpr,
):
    \"\"\"Index tiles [tile0, tile0 + TILES) of BLOCK_M rows x columns [d_lo, d_hi), BLOCK_D at a time:
    out[row] op= src atomically (COUNT: cnt[row] += hits, int32 atomics). RESET: out[row] = identity
    instead, by plain stores (every writer of a position writes the same value). SEG_COMBINE: runs of
    equal consecutive indices in a tile are reduced by a segmented scan (fp32) and committed once.\"\"\"
    mi = tl.arange(0, BLOCK_M)
    dd = tl.arange(0, BLOCK_D)
    for t in range(TILES):
        m = (tile0 + t) * BLOCK_M + mi
        mm = m < num_idx
        if ROW_INDEX:  # one index per row: read it once for all columns
            r = _load_rows(idx_ptr + m * stride_im, mm, num_rows, WRAP_NEG)
            if SEG_COMBINE and not RESET:  # run heads/ends inside this tile (neighbours wrapped alike)
                p_ok = mm & (mi > 0)
                q_ok = ((m + 1) < num_idx) & (mi < BLOCK_M - 1)
                # the neighbours' indices: asserted where their own lane reads them
                rp = _rows(tl.load(idx_ptr + (m - 1) * stride_im, mask=p_ok, other=0), num_rows, WRAP_NEG)
                rq = _rows(tl.load(idx_ptr + (m + 1) * stride_im, mask=q_ok, other=0), num_rows, WRAP_NEG)
                head_r = (~p_ok | (rp != r)).to(tl.int32)
                end_r = ~q_ok | (rq != r)
        for d0 in range(d_lo, d_hi, BLOCK_D):
            d = (d0 + dd).to(tl.int64)
            dk = d < idx_cols
            m2 = mm[:, None] & dk[None, :]
            if ROW_INDEX:
                r2 = r[:, None] + d[None, :] * 0
            else:
                r2 = _load_rows(idx_ptr + m[:, None] * stride_im + d[None, :] * stride_ik, m2,
                           num_rows, WRAP_NEG)
            valid = m2 & (r2 >= 0) & (r2 < num_rows)
            offs = r2 * stride_on + d[None, :] * stride_od
            if RESET:
                ident = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32) + _identity(REDUCE)
                tl.store(out_ptr + offs, ident.to(out_ptr.dtype.element_ty), mask=valid)
            else:
                v = tl.load(src_ptr + m[:, None] * stride_sm + d[None, :] * stride_sk, mask=valid)
                if SEG_COMBINE:
                    if ROW_INDEX:
                        head = head_r[:, None] + (d[None, :] * 0).to(tl.int32)
                        end = end_r[:, None] & dk[None, :]
                    else:
                        p_ok2 = m2 & (mi > 0)[:, None]
                        q_ok2 = ((m + 1) < num_idx)[:, None] & dk[None, :] & (mi < BLOCK_M - 1)[:, None]
                        rp2 = _rows(tl.load(idx_ptr + (m - 1)[:, None] * stride_im + d[None, :] * stride_ik,
                                            mask=p_ok2, other=0), num_rows, WRAP_NEG)
                        rq2 = _rows(tl.load(idx_ptr + (m + 1)[:, None] * stride_im + d[None, :] * stride_ik,
                                            mask=q_ok2, other=0), num_rows, WRAP_NEG)
                        head = (~p_ok2 | (rp2 != r2)).to(tl.int32)
                        end = ~q_ok2 | (rq2 != r2)
                    v32 = tl.where(valid, v.to(tl.float32), _identity(REDUCE))
                    if REDUCE == 3:
                        s, _ = tl.associative_scan((v32, head), 0, _seg_max)
                    elif REDUCE == 4:
                        s, _ = tl.associative_scan((v32, head), 0, _seg_min)
                    else:
                        s, _ = tl.associative_scan((v32, head), 0, _seg_sum)
                    _atomic_reduce(out_ptr, offs, s, valid & end, REDUCE)
                    if COUNT:
                        c, _ = tl.associative_scan((valid.to(tl.int32), head), 0, _seg_sum)
                        tl.atomic_add(cnt_ptr + offs, c, mask=valid & end, sem="relaxed")
                else:
                    _atomic_reduce(out_ptr, offs, v, valid, REDUCE)
                    if COUNT:
                        tl.atomic_add(cnt_ptr + offs, valid.to(tl.int32), mask=valid, sem="relaxed")
'''

_D_RANGE = '''
    if D_LOOP:
        d_lo = 0
        d_hi = num_cols
    else:
        d_lo = tl.program_id(1) * BLOCK_D
        d_hi = tl.minimum(d_lo + BLOCK_D, num_cols)'''

_SRC_SIGNATURE = '''
    idx_ptr, src_ptr, out_ptr, cnt_ptr,
    num_rows, num_cols, num_idx, idx_cols,
    stride_im, stride_ik, stride_sm, stride_sk, stride_on, stride_od,
    REDUCE: tl.constexpr, ROW_INDEX: tl.constexpr, WRAP_NEG: tl.constexpr, RESET: tl.constexpr,
    COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, D_LOOP: tl.constexpr,
    SEG_COMBINE: tl.constexpr, TILES: tl.constexpr,'''

_SCATTER_SRC = '''

@triton.jit
def scatter_src(''' + _SRC_SIGNATURE + '''
):
    \"\"\"One program = TILES index tiles x one BLOCK_D column slice (D_LOOP: all columns).\"\"\"''' + _D_RANGE + '''
    _scatter_tiles(
        idx_ptr, src_ptr, out_ptr, cnt_ptr, tl.program_id(0).to(tl.int64) * TILES, d_lo, d_hi,
        num_rows, num_idx, idx_cols, stride_im, stride_ik, stride_sm, stride_sk, stride_on, stride_od,
        REDUCE, ROW_INDEX, WRAP_NEG, RESET, COUNT, BLOCK_M, BLOCK_D, SEG_COMBINE, TILES,
    )
'''

_SCATTER_COPY = '''

@triton.jit
def scatter_copy(
    x_ptr, out_ptr, num_rows, num_cols, stride_xn, stride_xd, stride_on, stride_od,
    REDUCE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    \"\"\"out = self, one [BLOCK_N, BLOCK_D] tile per program (plain loads and stores). Before max/min
    atomics, NaN is stored as the NaN those keep (+NaN for max, -NaN for min: see _atomic_reduce).\"\"\"
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (n < num_rows)[:, None] & (d < num_cols)[None, :]
    x = tl.load(x_ptr + n[:, None] * stride_xn + d[None, :] * stride_xd, mask=mask)
    if REDUCE == 3 or REDUCE == 4:
        if REDUCE == 3:
            bits = tl.full([BLOCK_N, BLOCK_D], 0x7FC00000, tl.int32)
        else:
            bits = tl.full([BLOCK_N, BLOCK_D], -4194304, tl.int32)
        x = tl.where(x != x, bits.to(tl.float32, bitcast=True).to(x.dtype), x)
    tl.store(out_ptr + n[:, None] * stride_on + d[None, :] * stride_od, x, mask=mask)
'''

_SCATTER_FINALIZE = '''

@triton.jit
def scatter_finalize(
    x_ptr, acc_ptr, cnt_ptr, out_ptr, num_rows, num_cols, stride_xn, stride_xd, stride_on, stride_od,
    REDUCE: tl.constexpr, INCLUDE_SELF: tl.constexpr, HAS_COUNT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    \"\"\"out = self combined with the fp32 accumulator (row-major [N, D] workspace) and hit counts:
    positions nothing hit keep self; mean divides by the hits (+1 with self).\"\"\"
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (n < num_rows)[:, None] & (d < num_cols)[None, :]
    x = tl.load(x_ptr + n[:, None] * stride_xn + d[None, :] * stride_xd, mask=mask).to(tl.float32)
    w = n[:, None] * num_cols + d[None, :]
    a = tl.load(acc_ptr + w, mask=mask, other=0.0)
    if HAS_COUNT:
        c = tl.load(cnt_ptr + w, mask=mask, other=0)
    if REDUCE == 2:
        if INCLUDE_SELF:
            res = (x + a) / (c + 1).to(tl.float32)
        else:
            res = a / tl.maximum(c, 1).to(tl.float32)
    elif INCLUDE_SELF:
        if REDUCE == 3:
            res = _max_nan(x, a)
        elif REDUCE == 4:
            res = _min_nan(x, a)
        else:
            res = x + a
    else:
        res = a
    if HAS_COUNT:
        res = tl.where(c > 0, res, x)
    tl.store(out_ptr + n[:, None] * stride_on + d[None, :] * stride_od, res.to(out_ptr.dtype.element_ty), mask=mask)
'''

ATOMIC_SOURCE = _HEADER + _COMMON + _SCATTER + '''

@triton.jit
def scatter_atomic(
    x_ptr, idx_ptr, src_ptr, out_ptr,
    num_rows, num_cols, num_idx, idx_cols,
    stride_xn, stride_xd, stride_im, stride_ik, stride_sm, stride_sk, stride_on, stride_od,
    self_progs,
    REDUCE: tl.constexpr, ROW_INDEX: tl.constexpr, WRAP_NEG: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    D_LOOP: tl.constexpr, SEG_COMBINE: tl.constexpr, TILES: tl.constexpr,
):
    \"\"\"One launch into the identity-filled output: programs [0, self_progs) combine BLOCK_N rows of
    self atomically, the rest TILES index tiles of src each.\"\"\"
    pid = tl.program_id(0)''' + _D_RANGE + '''
    if pid < self_progs:
        n = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        nm = n < num_rows
        for d0 in range(d_lo, d_hi, BLOCK_D):
            d = (d0 + tl.arange(0, BLOCK_D)).to(tl.int64)
            m2 = nm[:, None] & (d < num_cols)[None, :]
            x = tl.load(x_ptr + n[:, None] * stride_xn + d[None, :] * stride_xd, mask=m2)
            _atomic_reduce(out_ptr, n[:, None] * stride_on + d[None, :] * stride_od, x, m2, REDUCE)
    else:
        _scatter_tiles(
            idx_ptr, src_ptr, out_ptr, out_ptr, (pid - self_progs).to(tl.int64) * TILES, d_lo, d_hi,
            num_rows, num_idx, idx_cols, stride_im, stride_ik, stride_sm, stride_sk, stride_on, stride_od,
            REDUCE, ROW_INDEX, WRAP_NEG, False, False, BLOCK_M, BLOCK_D, SEG_COMBINE, TILES,
        )
'''

COPY_ATOMIC_SOURCE = _HEADER + _COMMON + _SCATTER + _SCATTER_COPY + _SCATTER_SRC

WS_SOURCE = _HEADER + _COMMON + _SCATTER + _SCATTER_SRC + _SCATTER_FINALIZE

SCAN_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def scatter_scan(''' + _SIGNATURE + '''
    INCLUDE_SELF: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, USE_DOT: tl.constexpr,
):
    \"\"\"One program = output rows [BLOCK_N] x columns [BLOCK_D]: scan the whole index for hits on its
    rows, reduce the hit src values in fp32 (and count them), combine with self, store once.\"\"\"
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    nm = n < num_rows
    dm = d < num_cols
    dk = d < idx_cols
    x = tl.load(x_ptr + n[:, None] * stride_xn + d[None, :] * stride_xd, mask=nm[:, None] & dm[None, :])
    x = x.to(tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32) + _identity(REDUCE)
    cnt = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.int32)
    if REDUCE == 1:  # products accumulate elementwise, one (generic, slower) reduction at the end
        acc3 = tl.zeros([BLOCK_N, BLOCK_M, BLOCK_D], dtype=tl.float32) + 1.0
    if REDUCE == 3 or REDUCE == 4:  # NaN seen per output element (tl.max/tl.min may drop NaN)
        nan_seen = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.int8)
    if USE_DOT:  # non-finite src hits per output element: 1 +inf, 2 -inf, 4 NaN
        special = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.int8)
    mi = tl.arange(0, BLOCK_M)
    for m0 in range(0, num_idx, BLOCK_M):
        m = m0 + mi.to(tl.int64)
        mm = m < num_idx
        m2 = mm[:, None] & dk[None, :]
        s = tl.load(src_ptr + m[:, None] * stride_sm + d[None, :] * stride_sk, mask=m2, other=0.0)
        if ROW_INDEX:
            r = _load_rows(idx_ptr + m * stride_im, mm, num_rows, WRAP_NEG)
            hit = (r[None, :] == n[:, None]) & mm[None, :]  # [BLOCK_N, BLOCK_M]
            if USE_DOT:  # one-hot [N, M] @ src [M, D]: exact products, fp32 accumulation
                # 0 * inf is NaN: non-finite values stay out of the dot and are counted apart, by a
                # second dot over exact integer codes, only for chunks that hold any.
                fin = (s == s) & (s != float("inf")) & (s != float("-inf"))
                if src_ptr.dtype.element_ty == tl.float16:
                    acc += tl.dot(hit.to(tl.float16), tl.where(fin, s, 0.0).to(tl.float16))
                else:
                    acc += tl.dot(hit.to(tl.float32), tl.where(fin, s.to(tl.float32), 0.0), input_precision="ieee")
                if tl.max(tl.max((~fin).to(tl.int32), axis=1), axis=0) > 0:
                    code = tl.where(fin, 0.0, tl.where(s != s, 16384.0, tl.where(s > 0, 1.0, 128.0)))
                    c = tl.dot(hit.to(tl.float32), code.to(tl.float32), input_precision="ieee").to(tl.int32)
                    special = special | tl.where(c >= 16384, 4, 0).to(tl.int8)
                    special = special | tl.where((c // 128) % 128 > 0, 2, 0).to(tl.int8)
                    special = special | tl.where(c % 128 > 0, 1, 0).to(tl.int8)
                cnt += tl.where(dk[None, :], tl.sum(hit.to(tl.int32), axis=1)[:, None], 0)
            else:
                hit3 = hit[:, :, None] & dk[None, None, :]
        else:
            r2 = _load_rows(idx_ptr + m[:, None] * stride_im + d[None, :] * stride_ik, m2,
                       num_rows, WRAP_NEG)
            hit3 = (r2[None, :, :] == n[:, None, None]) & m2[None, :, :]
        if not USE_DOT:
            s3 = s.to(tl.float32)[None, :, :]
            if REDUCE == 3 or REDUCE == 4:
                nan_seen = nan_seen | tl.max((hit3 & (s3 != s3)).to(tl.int8), axis=1).to(tl.int8)
            if REDUCE == 3:
                acc = tl.maximum(acc, tl.max(tl.where(hit3, s3, float("-inf")), axis=1))
            elif REDUCE == 4:
                acc = tl.minimum(acc, tl.min(tl.where(hit3, s3, float("inf")), axis=1))
            elif REDUCE == 1:
                acc3 = acc3 * tl.where(hit3, s3, 1.0)
            else:
                acc += tl.sum(tl.where(hit3, s3, 0.0), axis=1)
            cnt += tl.sum(hit3.to(tl.int32), axis=1)
    if USE_DOT:
        inf_sum = tl.where((special & 1) > 0, float("inf"), 0.0) + tl.where((special & 2) > 0, float("-inf"), 0.0)
        acc = acc + tl.where((special & 4) > 0, float("nan"), inf_sum)
    if REDUCE == 1:
        acc = tl.reduce(acc3, 1, _mul)
    if REDUCE == 3 or REDUCE == 4:
        acc = tl.where(nan_seen > 0, float("nan"), acc)
    if REDUCE == 2:
        if INCLUDE_SELF:
            res = (x + acc) / (cnt + 1).to(tl.float32)
        else:
            res = acc / tl.maximum(cnt, 1).to(tl.float32)
    elif INCLUDE_SELF:
        if REDUCE == 3:
            res = _max_nan(x, acc)
        elif REDUCE == 4:
            res = _min_nan(x, acc)
        elif REDUCE == 1:
            res = x * acc
        else:
            res = x + acc
    else:
        res = acc
    res = tl.where(cnt > 0, res, x)  # positions no index hits keep self exactly
    tl.store(out_ptr + n[:, None] * stride_on + d[None, :] * stride_od, res.to(out_ptr.dtype.element_ty),
             mask=nm[:, None] & dm[None, :])
'''

_CSR_MAIN_SIGNATURE = '''
    x_ptr, perm_ptr, rowptr_ptr, src_ptr, out_ptr,
    num_rows, num_cols, idx_cols,
    stride_xn, stride_xd, stride_sm, stride_sk, stride_on, stride_od,
    REDUCE: tl.constexpr, INCLUDE_SELF: tl.constexpr,
'''  # both csr main kernels (lockstep walk, FLAT)

_CSR = '''

@triton.jit
def scatter_csr_hist(
    idx_ptr, cnt_ptr, num_rows, num_idx, stride_im,
    WRAP_NEG: tl.constexpr, CSR_BLOCK_M: tl.constexpr,
):
    \"\"\"CSR step 1: cnt[row(idx[m])] += 1 (int32 atomics; cnt zero-filled). Invalid rows skipped.\"\"\"
    m = tl.program_id(0).to(tl.int64) * CSR_BLOCK_M + tl.arange(0, CSR_BLOCK_M)
    mm = m < num_idx
    r = _load_rows(idx_ptr + m * stride_im, mm, num_rows, WRAP_NEG)
    ok = mm & (r >= 0) & (r < num_rows)
    one = tl.full([CSR_BLOCK_M], 1, tl.int32)
    tl.atomic_add(cnt_ptr + tl.where(ok, r, 0), one, mask=ok, sem="relaxed")


@triton.jit
def scatter_csr_scan(cnt_ptr, rowptr_ptr, num_rows, SCAN_BLOCK: tl.constexpr):
    \"\"\"CSR step 2 (one program): rowptr[0..N] = exclusive prefix sums of cnt, SCAN_BLOCK rows per
    step with the running total carried.\"\"\"
    r = tl.arange(0, SCAN_BLOCK)
    carry = tl.program_id(0) * 0
    for s0 in range(0, num_rows, SCAN_BLOCK):
        ss = s0 + r
        m = ss < num_rows
        c = tl.load(cnt_ptr + ss, mask=m, other=0)
        tl.store(rowptr_ptr + ss + 1, carry + tl.cumsum(c, axis=0), mask=m)
        carry += tl.sum(c, axis=0)
    tl.store(rowptr_ptr, carry * 0)


@triton.jit
def scatter_csr_block_sums(cnt_ptr, sums_ptr, num_rows, SCAN_BLOCK: tl.constexpr):
    \"\"\"CSR step 2, two-level scan (a): sums[b] = total count of row block b.\"\"\"
    b = tl.program_id(0)
    ss = b * SCAN_BLOCK + tl.arange(0, SCAN_BLOCK)
    c = tl.load(cnt_ptr + ss, mask=ss < num_rows, other=0)
    tl.store(sums_ptr + b, tl.sum(c, axis=0))


@triton.jit
def scatter_csr_block_scan(cnt_ptr, sums_ptr, rowptr_ptr, num_rows,
                           SCAN_BLOCK: tl.constexpr, BLOCK_B: tl.constexpr):
    \"\"\"CSR step 2, two-level scan (b): block b's rowptr = sum(sums[:b]) + its own inclusive cumsum,
    one slot ahead; rowptr[0] = 0 by the lane holding row 0.\"\"\"
    b = tl.program_id(0)
    rb = tl.arange(0, BLOCK_B)
    acc = tl.zeros([BLOCK_B], dtype=tl.int32)
    for b0 in range(0, b, BLOCK_B):
        bb = b0 + rb
        acc += tl.load(sums_ptr + bb, mask=bb < b, other=0)
    carry = tl.sum(acc, axis=0)
    ss = b * SCAN_BLOCK + tl.arange(0, SCAN_BLOCK)
    m = ss < num_rows
    c = tl.load(cnt_ptr + ss, mask=m, other=0)
    tl.store(rowptr_ptr + ss + 1, carry + tl.cumsum(c, axis=0), mask=m)
    tl.store(rowptr_ptr + ss * 0, c * 0, mask=ss == 0)


@triton.jit
def scatter_csr_fill(
    idx_ptr, cnt_ptr, rowptr_ptr, perm_ptr, num_rows, num_idx, stride_im,
    WRAP_NEG: tl.constexpr, CSR_BLOCK_M: tl.constexpr,
):
    \"\"\"CSR step 3: perm[rowptr[r] + slot] = m, the slot taken by an atomic countdown of cnt[r]
    (cnt ends all zero). Slots within a row are in atomic order: the set is exact, its order not.\"\"\"
    m = tl.program_id(0).to(tl.int64) * CSR_BLOCK_M + tl.arange(0, CSR_BLOCK_M)
    mm = m < num_idx
    r = _load_rows(idx_ptr + m * stride_im, mm, num_rows, WRAP_NEG)
    ok = mm & (r >= 0) & (r < num_rows)
    rr = tl.where(ok, r, 0)
    minus = tl.full([CSR_BLOCK_M], -1, tl.int32)
    left = tl.atomic_add(cnt_ptr + rr, minus, mask=ok, sem="relaxed")
    start = tl.load(rowptr_ptr + rr, mask=ok, other=0)
    slot = tl.where(ok, start + left - 1, 0)
    tl.store(perm_ptr + slot, m.to(tl.int32), mask=ok)


@triton.jit
def scatter_csr_reduce(''' + _CSR_MAIN_SIGNATURE + '''    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D_LOOP: tl.constexpr,
):
    \"\"\"CSR main step, atomic-free: one program = BLOCK_N output rows x one BLOCK_D column slice
    (D_LOOP: all columns). Rows advance in lockstep over their CSR ranges (as long as the block's
    longest), gathering src rows through perm and summing in fp32; self is read once and the
    output written once. Rows (and columns past idx_cols) nothing hits keep self exactly.\"\"\"
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < num_rows
    start = tl.load(rowptr_ptr + n, mask=nm, other=0)
    cnt = tl.load(rowptr_ptr + n + 1, mask=nm, other=0) - start
    longest = tl.max(cnt, axis=0)''' + _D_RANGE + '''
    for d0 in range(d_lo, d_hi, BLOCK_D):
        d = (d0 + tl.arange(0, BLOCK_D)).to(tl.int64)
        dm = d < num_cols
        dk = d < idx_cols
        acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for j in range(0, longest):
            has = j < cnt
            mi = tl.load(perm_ptr + start + j, mask=has, other=0).to(tl.int64)
            s = tl.load(src_ptr + mi[:, None] * stride_sm + d[None, :] * stride_sk,
                        mask=has[:, None] & dk[None, :], other=0.0)
            acc += s.to(tl.float32)
        mask = nm[:, None] & dm[None, :]
        x = tl.load(x_ptr + n[:, None] * stride_xn + d[None, :] * stride_xd, mask=mask)
        xf = x.to(tl.float32)
        if REDUCE == 2:
            if INCLUDE_SELF:
                res = (xf + acc) / (cnt + 1).to(tl.float32)[:, None]
            else:
                res = acc / tl.maximum(cnt, 1).to(tl.float32)[:, None]
        elif INCLUDE_SELF:
            res = xf + acc
        else:
            res = acc
        hit = (cnt > 0)[:, None] & dk[None, :]
        res = tl.where(hit, res, xf)  # fp16/bf16 -> fp32 -> back is exact for the kept self
        tl.store(out_ptr + n[:, None] * stride_on + d[None, :] * stride_od, res.to(out_ptr.dtype.element_ty),
                 mask=mask)
'''

_CSR_FLAT = '''
''' + _SEG_SUM + '''

@triton.jit
def scatter_csr_flat(''' + _CSR_MAIN_SIGNATURE + '''    BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr, D_LOOP: tl.constexpr,
):
    \"\"\"CSR main step over flat entries (``FLAT``): one program = BLOCK_N output rows x one BLOCK_D
    column slice. Its rows' entries are one contiguous range of the permutation; BLOCK_E of them at a
    time gather their src rows in one go (all loads in flight together, not one row per row per
    step), a segmented scan sums each row's run in fp32 and the run's last entry writes its row. A
    run crossing a BLOCK_E boundary is carried. Rows nothing hits, and columns past idx_cols, copy
    self; self is read once and the output written once.\"\"\"
    n0 = tl.program_id(0).to(tl.int64) * BLOCK_N
    n = n0 + tl.arange(0, BLOCK_N)
    nm = n < num_rows
    start = tl.load(rowptr_ptr + n, mask=nm, other=0)
    end = tl.load(rowptr_ptr + n + 1, mask=nm, other=2147483647)  # rows past the end never end
    cnt = tl.where(nm, end - start, 0)
    e_lo = tl.load(rowptr_ptr + n0)
    e_hi = tl.load(rowptr_ptr + tl.minimum(n0 + BLOCK_N, num_rows))
    ei = tl.arange(0, BLOCK_E)''' + _D_RANGE + '''
    for d0 in range(d_lo, d_hi, BLOCK_D):
        d = (d0 + tl.arange(0, BLOCK_D)).to(tl.int64)
        dm = d < num_cols
        dk = d < idx_cols
        keep = nm[:, None] & dm[None, :] & ((cnt == 0)[:, None] | ~dk[None, :])
        xk = tl.load(x_ptr + n[:, None] * stride_xn + d[None, :] * stride_xd, mask=keep)
        tl.store(out_ptr + n[:, None] * stride_on + d[None, :] * stride_od, xk, mask=keep)
        carry = tl.zeros([BLOCK_D], dtype=tl.float32)
        for e0 in range(e_lo, e_hi, BLOCK_E):
            e = e0 + ei
            em = e < e_hi
            before = end[None, :] <= e[:, None]  # [BLOCK_E, BLOCK_N]: rows whose run ended before e
            rl = tl.sum(before.to(tl.int32), axis=1)  # e's row, local to the block
            run_lo = tl.max(tl.where(before, end[None, :], e_lo), axis=1)
            run_hi = tl.min(tl.where(before, 2147483647, end[None, :]), axis=1)
            head = ((e == e0) | (e == run_lo)).to(tl.int32)
            last = em & (e + 1 == run_hi)
            mi = tl.load(perm_ptr + e, mask=em, other=0).to(tl.int64)
            s = tl.load(src_ptr + mi[:, None] * stride_sm + d[None, :] * stride_sk,
                        mask=em[:, None] & dk[None, :], other=0.0).to(tl.float32)
            s = tl.where((ei == 0)[:, None], s + carry[None, :], s)
            v, _ = tl.associative_scan((s, head[:, None] + (d[None, :] * 0).to(tl.int32)), 0, _seg_sum)
            carry = tl.sum(tl.where((em & (ei == BLOCK_E - 1) & ~last)[:, None], v, 0.0), axis=0)
            row = n0 + rl
            wm = last[:, None] & dk[None, :]
            xf = tl.load(x_ptr + row[:, None] * stride_xn + d[None, :] * stride_xd, mask=wm).to(tl.float32)
            c = (run_hi - run_lo).to(tl.float32)[:, None]
            if REDUCE == 2:
                if INCLUDE_SELF:
                    res = (xf + v) / (c + 1.0)
                else:
                    res = v / c
            elif INCLUDE_SELF:
                res = xf + v
            else:
                res = v
            tl.store(out_ptr + row[:, None] * stride_on + d[None, :] * stride_od, res.to(out_ptr.dtype.element_ty),
                     mask=wm)
'''

CSR_SOURCE = _HEADER + _COMMON + _CSR + _CSR_FLAT


TEMPLATES: dict[str, tuple[str, str]] = {
    # template name -> (main kernel name, source)
    "copy_atomic": ("scatter_src", COPY_ATOMIC_SOURCE),
    "atomic": ("scatter_atomic", ATOMIC_SOURCE),
    "ws_fp32": ("scatter_finalize", WS_SOURCE),
    "scan": ("scatter_scan", SCAN_SOURCE),
    "csr": ("scatter_csr_reduce", CSR_SOURCE),
}


# ------------------------------------------------------------------------------------------------
# Geometry: every served call as out[N, D] += src[M, K] through a row index [M] or element index [M, K]
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geom:
    n: int  # output rows (the scattered dim)
    d: int  # output columns (everything else, flattened)
    m: int  # index rows
    k: int  # columns an index row touches (<= d)
    xs: tuple[int, int]  # self strides (row, col)
    idx_s: tuple[int, int]  # index strides (row, col); col unused for a row index
    src_s: tuple[int, int]  # src strides (row, col)
    out_s: tuple[int, int]  # output strides (row, col) in the contiguous output buffer
    row: bool  # one index per row (index_put; scatter with an index expanded along the columns)
    wrap: bool  # negative indices wrap (index_put)


def _flat(shape: Sequence[int], stride: Sequence[int]) -> tuple[int, int]:
    """(size, stride) of dims flattened to one; ValueError if they don't flatten (size-1 dims and
    all-zero strides of broadcast dims do)."""
    dims = [(int(s), int(st)) for s, st in zip(shape, stride) if s != 1]
    for (s0, st0), (s1, st1) in zip(dims, dims[1:]):
        if st0 != st1 * s1:
            raise ValueError(f"dims {tuple(shape)} with strides {tuple(stride)} do not flatten to one dim")
    return math.prod(int(s) for s in shape), (dims[-1][1] if dims else 1)


def _broadcast_strides(sig: TensorSig, target: Sequence[int]) -> tuple[int, ...]:
    """Strides of ``sig`` broadcast to ``target`` (0 along broadcast dims); ValueError if it doesn't."""
    if len(sig.shape) > len(target):
        raise ValueError(f"values of shape {sig.shape} do not broadcast to {tuple(target)}")
    pad = len(target) - len(sig.shape)
    shape = (1,) * pad + tuple(sig.shape)
    stride = (0,) * pad + tuple(sig.stride)
    out = []
    for s, st, t in zip(shape, stride, target):
        if s == t and t != 1:
            out.append(int(st))
        elif s == 1 or s == t:
            out.append(0)
        else:
            raise ValueError(f"values of shape {sig.shape} do not broadcast to {tuple(target)}")
    return tuple(out)


def _contig(shape: Sequence[int]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(tuple(shape)):
        out.append(acc)
        acc *= max(int(s), 1)
    return tuple(reversed(out))


def geometry(op: str, x: TensorSig, idx: TensorSig, src: TensorSig, dim: int) -> Geom:
    """The canonical problem of a call; ValueError when it is not served."""
    r = len(x.shape)
    if r == 0:
        raise ValueError("0-D self is not served")
    oc = _contig(x.shape)
    if op == INDEX_PUT:
        if len(idx.shape) != 1:
            raise ValueError(f"index is {len(idx.shape)}-D; only a 1-D index tensor is served")
        m = idx.shape[0]
        ism = idx.stride[0]
        if dim == 0:
            n, (d, xsd) = x.shape[0], _flat(x.shape[1:], x.stride[1:])
            vst = _broadcast_strides(src, (m,) + tuple(x.shape[1:]))
            _, vsd = _flat(x.shape[1:], vst[1:])
            return Geom(n, d, m, d, (x.stride[0], xsd), (ism, 0), (vst[0], vsd), (d, 1), True, True)
        if dim == 1 and r == 2:
            vst = _broadcast_strides(src, (x.shape[0], m))
            return Geom(x.shape[1], x.shape[0], m, x.shape[0], (x.stride[1], x.stride[0]), (ism, 0),
                        (vst[1], vst[0]), (oc[1], oc[0]), True, True)
        raise ValueError(f"index_put on dim {dim} of a {r}-D tensor is not served (dim 0, or dim 1 of 2-D)")
    if r > 2:
        raise ValueError(f"scatter on a {r}-D tensor is not served (1-D and 2-D)")
    if len(idx.shape) != r or len(src.shape) != r:
        raise ValueError("self, index and src must have the same number of dims")
    if not 0 <= dim < r:
        raise ValueError(f"dim {dim} out of range for a {r}-D tensor")
    for a in range(r):
        if idx.shape[a] > src.shape[a] or (a != dim and idx.shape[a] > x.shape[a]):
            raise ValueError(f"index shape {idx.shape} exceeds src {src.shape} / self {x.shape} (eager raises)")
    if r == 1:
        return Geom(x.shape[0], 1, idx.shape[0], 1, (x.stride[0], 0), (idx.stride[0], 0), (src.stride[0], 0),
                    (1, 0), True, False)
    a_n, a_d = (0, 1) if dim == 0 else (1, 0)
    k = idx.shape[a_d]
    row = k <= 1 or idx.stride[a_d] == 0
    return Geom(x.shape[a_n], x.shape[a_d], idx.shape[a_n], k, (x.stride[a_n], x.stride[a_d]),
                (idx.stride[a_n], idx.stride[a_d]), (src.stride[a_n], src.stride[a_d]), (oc[a_n], oc[a_d]),
                row, False)


def _layout(sig: TensorSig, values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor with exactly ``sig``'s shape/stride/dtype showing ``values`` (dense, sig's shape) where
    its storage allows: along stride-0 (expanded) dims the first slice is kept. Unlike util.strided,
    an index expanded along one dim keeps varying along the others."""
    base = torch.zeros(storage_size(sig.shape, sig.stride), dtype=sig.torch_dtype, device=device)
    if base.numel() == 0:
        return base.as_strided(sig.shape, sig.stride)
    ushape = [1 if st == 0 else s for s, st in zip(sig.shape, sig.stride)]
    base.as_strided(ushape, sig.stride).copy_(values[tuple(slice(0, u) for u in ushape)].to(sig.torch_dtype))
    return base.as_strided(sig.shape, sig.stride)


def _index_values(n: int, shape: tuple[int, ...], kind: int, gen: torch.Generator) -> torch.Tensor:
    """Indices in [0, n): kind 0 uniform, 1 sorted along dim 0, 2 hot rows (80% on ~n/16 rows)."""
    if n == 0 or math.prod(shape) == 0:
        return torch.zeros(shape, dtype=torch.int64)
    idx = torch.randint(0, n, shape, generator=gen)
    if kind == 1:
        idx = torch.sort(idx, dim=0).values
    elif kind == 2:
        hot = torch.randint(0, n, (max(1, n // 16),), generator=gen)
        pick = hot[torch.randint(0, hot.numel(), shape, generator=gen)]
        idx = torch.where(torch.rand(shape, generator=gen) < 0.8, pick, idx)
    return idx


class ScatterFamily(OpFamily):
    """index_put(accumulate=True) / scatter_add / scatter_reduce.two: sum/prod/mean/amax/amin."""

    name = "scatter"
    ops = _OPS + (INDEX_PUT_,)
    # All have Inductor lowerings; scatter_reduce.two falls back inside its lowering unless
    # reduce="sum" (see inductor_fallback_reason).
    lowered_ops = _OPS + (INDEX_PUT_,)
    template_version = "1"

    # -- specs -----------------------------------------------------------------------------------
    @classmethod
    def spec_for(
        cls,
        op: str,
        self_t: torch.Tensor,
        index: torch.Tensor,
        src: torch.Tensor,
        dim: int,
        reduce: str = "sum",
        include_self: bool = True,
    ) -> OpSpec:
        """The spec of a call on concrete (or fake) tensors; ValueError if not served. For index_put,
        ``dim`` is the position of the index tensor in ``indices`` and ``src`` is ``values``."""
        if op not in _OPS:
            raise ValueError(f"{op} is not a scatter op")
        if op != SCATTER_REDUCE and (reduce != "sum" or not include_self):
            raise ValueError(f"{op} only sums with self")
        if reduce not in REDUCE_CODES:
            raise ValueError(f"unknown scatter reduction {reduce!r}")
        if self_t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"self dtype {self_t.dtype} not in float32/float16/bfloat16")
        if src.dtype != self_t.dtype:
            raise ValueError(f"src dtype {src.dtype} differs from self dtype {self_t.dtype} (eager raises)")
        if index.dtype not in _INDEX_DTYPES:
            raise ValueError(f"index dtype {index.dtype} not int32/int64")
        for what, t in (("self", self_t), ("index", index), ("src", src)):
            if not _all_int(t):
                raise ValueError(f"{what} has symbolic sizes/strides (dynamic shapes not served yet)")
        if len({self_t.device, index.device, src.device}) != 1:
            raise ValueError("inputs on different devices")
        r = self_t.dim()
        if not isinstance(dim, int) or isinstance(dim, bool) or not -max(r, 1) <= dim < max(r, 1):
            raise ValueError(f"dim={dim!r} out of range")
        dim %= max(r, 1)
        sigs = (TensorSig.of(self_t), TensorSig.of(index), TensorSig.of(src))
        g = geometry(op, *sigs, dim)
        if g.n == 0 and g.m * g.k > 0:
            raise ValueError("self has no rows to scatter into but the index is not empty (eager raises)")
        if _cdiv(max(g.d, 1), 16) > _MAX_GRID_Y:
            raise ValueError(f"{g.d} columns are too many for the grid")
        consts = (("dim", dim), ("include_self", bool(include_self)), ("reduce", reduce))
        spec = OpSpec(
            family=cls.name,
            op=op,
            args=sigs,
            consts=consts,
            device=DeviceSig.of(self_t.device),
            versions=software_versions(cls.template_version),
        )
        if not cls.templates_for(spec):
            raise ValueError(
                f"reduce={reduce} has no atomic; its scan is over budget here (N*M*K = {g.n * g.m * g.k} > "
                f"{_SCAN_BUDGET})"
            )
        return spec

    @staticmethod
    def geom(spec: OpSpec) -> Geom:
        x, idx, src = spec.args
        assert x is not None and idx is not None and src is not None
        return geometry(spec.op, x, idx, src, int(spec.const("dim")))

    @staticmethod
    def atomics_in_dtype(spec: OpSpec) -> bool:
        """Whether the op's own dtype has the atomics the reduction needs: add for fp32/fp16 (and bf16
        on CUDA: the interpreter has no bf16 atomics), max/min (on the bits) for fp32 only."""
        reduce, x = spec.const("reduce"), spec.args[0]
        assert x is not None
        if reduce == "sum":
            return x.dtype in ("float32", "float16") or (x.dtype == "bfloat16" and spec.device.type == "cuda")
        return reduce in ("amax", "amin") and x.dtype == "float32"

    @classmethod
    def csr_ok(cls, spec: OpSpec) -> bool:
        """The csr template: a row index, sum or mean, int32-addressable N and M, and its int32
        workspace (counts, row pointers, permutation) small against the data the op moves."""
        g = cls.geom(spec)
        x_sig, i_sig, _ = spec.args
        assert x_sig is not None and i_sig is not None
        if not g.row or spec.const("reduce") not in ("sum", "mean") or max(g.n, g.m) >= _CSR_MAX_ROWS:
            return False
        e, ei = _elem_size(x_sig.dtype), _elem_size(i_sig.dtype)
        floor = 2 * g.n * g.d * e + g.m * ei + g.m * g.k * e
        # small problems (edge cases of a large spec included) are always served
        return 4 * (2 * g.n + g.m + 1) <= max(_CSR_WS_FRACTION * floor, _CSR_WS_ALWAYS)

    @staticmethod
    def _csr_scan(n: int, kind: int = 0) -> tuple[int, int]:
        """(SCAN, SCAN_BLOCK) for the csr row-pointer scan over n counts: kind 1 the one-program scan
        (few steps), 2 the two-level scan (<= 2048 blocks); 0 picks by n."""
        if kind == 0:
            kind = 1 if n <= _CSR_SCAN1_MAX_STEPS * 4096 else 2
        if kind == 1:
            return 1, min(max(_next_pow2(max(n, 1)), 64), 4096)
        return 2, min(max(_next_pow2(_cdiv(max(n, 1), 2048)), 1024), 8192)

    @classmethod
    def templates_for(cls, spec: OpSpec) -> list[str]:
        """Templates that can serve ``spec`` (see the module docstring for why each has its limits)."""
        reduce, incl = spec.const("reduce"), bool(spec.const("include_self"))
        g = cls.geom(spec)
        ok = {
            "copy_atomic": reduce in _FILL and cls.atomics_in_dtype(spec),
            "atomic": reduce in _FILL and incl and cls.atomics_in_dtype(spec),
            "ws_fp32": reduce != "prod",
            "scan": g.n * g.m * g.k <= _SCAN_BUDGET,
            "csr": cls.csr_ok(spec),
        }
        return [t for t in TEMPLATES if ok[t]]

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op not in self.ops:
            return Skip(f"{op or node!s} is not a scatter op ({', '.join(self.ops)})")
        kw = node_kwargs(node)
        if kw is None:
            return Skip(f"could not normalize {op} arguments")
        val = meta_val
        self_n = kw["self"] if "self" in kw else kw.get("input")  # normalize_function may say "input"
        reduce, include_self = "sum", True
        if op == INDEX_PUT_:
            # zeros(...).index_add_(...) arrives as index_put_ on a fresh buffer. Served as the
            # functional op where nothing but this node sees that buffer (no other user, not an input).
            users = set(getattr(self_n, "users", ()))
            if getattr(self_n, "op", None) != "call_function" or users != {node}:
                return Skip("index_put_ whose mutated tensor is seen elsewhere (another user or a graph input)")
            op = INDEX_PUT
        if op == INDEX_PUT:
            if kw.get("accumulate") is not True:
                return Skip("index_put with accumulate=False (an index_copy) is not served")
            indices = list(kw["indices"])
            while indices and indices[-1] is None:
                indices.pop()
            if not indices or any(t is not None for t in indices[:-1]):
                return Skip("index_put with several index tensors (advanced indexing) is not served")
            dim, idx_n, src_n = len(indices) - 1, indices[-1], kw["values"]
            if isinstance(val(idx_n), torch.Tensor) and val(idx_n).dtype in (torch.bool, torch.uint8):
                return Skip("index_put with a boolean mask is not served")
        else:
            dim, idx_n, src_n = kw["dim"], kw["index"], kw["src"]
            if op == SCATTER_REDUCE:
                reduce, include_self = kw["reduce"], kw.get("include_self", True)
        if not isinstance(dim, int) or not isinstance(reduce, str) or not isinstance(include_self, bool):
            return Skip(f"dim/reduce/include_self are not constants ({dim!r}, {reduce!r}, {include_self!r})")
        x, idx, src, out = val(self_n), val(idx_n), val(src_n), val(node)
        if not all(isinstance(t, torch.Tensor) for t in (x, idx, src, out)):
            return Skip("inputs or result have no FakeTensor metadata")
        try:
            spec = self.spec_for(op, x, idx, src, dim, reduce, include_self)
        except ValueError as e:
            return Skip(str(e))
        if not _all_int(out) or tuple(out.shape) != tuple(x.shape) or not out.is_contiguous():
            return Skip(f"the op's output (strides {tuple(out.stride())}) is not a contiguous tensor of self's shape")
        return Match(spec=spec, inputs=[self_n, idx_n, src_n], result_users={0: [node]})

    @staticmethod
    def inductor_fallback_reason(node: Any) -> str | None:
        """Why Inductor's lowering of this node calls ATen instead (for the detector), or None.

        Mirrors ``use_scatter_fallback`` / ``index_put_impl_`` for the cases this family serves:
        scatter_reduce with reduce != sum (every device); bf16 atomics on CUDA before sm_90;
        deterministic algorithms; scatter_add / scatter_reduce(sum) on multi-threaded CPU
        (``config.cpp.fallback_scatter_reduce_sum``)."""
        op = str(getattr(node, "target", ""))
        if op not in _OPS + (INDEX_PUT_,):
            return None
        kw = node_kwargs(node) or {}
        if torch.are_deterministic_algorithms_enabled():
            return "Inductor falls back to ATen under deterministic algorithms"
        if op == SCATTER_REDUCE and kw.get("reduce") != "sum":
            return f"Inductor falls back to ATen for scatter_reduce(reduce={kw.get('reduce')!r}) (ScatterFallback)"
        x = meta_val(kw.get("self", kw.get("input")))
        if not isinstance(x, torch.Tensor):
            return None
        if x.device.type == "cuda" and x.dtype == torch.bfloat16:
            idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
            if torch.cuda.is_available() and torch.cuda.get_device_capability(idx) < (9, 0):
                return "Inductor falls back to ATen for bf16 atomics before sm_90"
        if x.device.type == "cpu" and op not in (INDEX_PUT, INDEX_PUT_):
            from torch._inductor import config as ic

            try:
                from torch._inductor.utils import parallel_num_threads
            except ImportError:  # other torch versions: no such CPU rule to mirror
                return None
            cpp = ic.cpp
            if getattr(cpp, "fallback_scatter_reduce_sum", False) and (
                getattr(cpp, "dynamic_threads", False) or parallel_num_threads() != 1
            ):
                return "Inductor falls back to ATen for a scatter sum on multi-threaded CPU"
        return None

    # -- semantics -------------------------------------------------------------------------------
    def input_error(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> str | None:
        """Indices eager rejects (the runtime then runs eager, which raises): outside ``[0, size)`` for
        scatter, ``[-size, size)`` for index_put. The kernels skip them (never out of bounds), but
        their result is not eager's error."""
        x, idx, _ = inputs
        assert x is not None and idx is not None
        if idx.numel() == 0:
            return None
        size = x.shape[int(spec.const("dim"))] if x.dim() else 1
        lo = -size if spec.op == INDEX_PUT else 0
        if int(idx.min()) < lo or int(idx.max()) >= size:
            return f"{spec.op.split('.')[1]} index out of range"
        return None

    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        x, idx, src = inputs
        assert x is not None and idx is not None and src is not None
        dim = int(spec.const("dim"))
        if spec.op == INDEX_PUT:
            return [torch.ops.aten.index_put.default(x, [None] * dim + [idx], src, True)]
        if spec.op == SCATTER_ADD:
            return [torch.ops.aten.scatter_add.default(x, dim, idx, src)]
        return [torch.ops.aten.scatter_reduce.two(x, dim, idx, src, str(spec.const("reduce")),
                                                  include_self=bool(spec.const("include_self")))]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """The op in float64 on CPU (sequential, exact order), rounded to the data dtype."""
        x, idx, src = inputs
        assert x is not None and idx is not None and src is not None
        x64, s64, i64 = x.double().cpu(), src.double().cpu(), idx.long().cpu()
        dim = int(spec.const("dim"))
        if spec.op == INDEX_PUT:
            out = torch.ops.aten.index_put.default(x64, [None] * dim + [i64], s64, True)
        elif spec.op == SCATTER_ADD:
            out = torch.scatter_add(x64, dim, i64, s64)
        else:
            out = torch.scatter_reduce(x64, dim, i64, s64, str(spec.const("reduce")),
                                       include_self=bool(spec.const("include_self")))
        return [out.to(x.dtype).to(torch.float64).to(x.device)]

    # -- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _values(reduce: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        if reduce == "prod":  # magnitudes near 1: products of many neither over- nor underflow
            mag = torch.rand(shape, generator=gen) * 0.45 + 0.8
            return mag * torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
        return torch.randn(shape, generator=gen)

    @staticmethod
    def _device(spec: OpSpec) -> torch.device:
        return torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)

    def _orient_index(self, spec: OpSpec, g: Geom, canon: torch.Tensor) -> torch.Tensor:
        """Canonical index values ([M] row, [M, K] element) in the index sig's dense shape."""
        idx_sig = spec.args[1]
        assert idx_sig is not None
        if spec.op == INDEX_PUT or len(idx_sig.shape) == 1:
            return canon.reshape(idx_sig.shape)
        full = canon[:, None].expand(g.m, g.k) if canon.dim() == 1 else canon
        return full if int(spec.const("dim")) == 0 else full.T

    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """Random self/src; indices uniform, sorted or on hot rows (by seed), index_put's partly negative."""
        gen = torch.Generator().manual_seed(int(seed))
        g = self.geom(spec)
        x_sig, i_sig, s_sig = spec.args
        assert x_sig is not None and i_sig is not None and s_sig is not None
        reduce = str(spec.const("reduce"))
        kind = int(seed) % 3
        canon = _index_values(g.n, (g.m,) if g.row else (g.m, g.k), kind, gen)
        if g.wrap and kind != 1 and canon.numel():  # index_put: some rows addressed from the end
            canon = torch.where(torch.rand(canon.shape, generator=gen) < 0.25, canon - g.n, canon)
        dev = self._device(spec)
        return [
            _layout(x_sig, self._values(reduce, x_sig.shape, gen), dev),
            _layout(i_sig, self._orient_index(spec, g, canon), dev),
            _layout(s_sig, self._values(reduce, s_sig.shape, gen), dev),
        ]

    def _case(
        self, spec: OpSpec, name: str, x_c: torch.Tensor, idx_c: torch.Tensor, src_c: torch.Tensor,
        strided: bool = False,
    ) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
        """An edge case with the spec's op, dim, dtypes, constants and index kind (row/element) and its
        own shapes: canonical x_c [N, D], idx_c [M] (row) or [M, K], src_c [M, K] (float64)."""
        x_sig, i_sig, _ = spec.args
        assert x_sig is not None and i_sig is not None
        g = self.geom(spec)
        dt, it = x_sig.torch_dtype, i_sig.torch_dtype
        dim = int(spec.const("dim"))
        one_d = len(x_sig.shape) == 1
        dev = self._device(spec)

        def lay(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            """t (dense) on the device; ``strided``: as a view with padded rows (non-contiguous)."""
            t = t.to(dtype)
            if strided and t.dim() == 1 and t.numel():
                base = torch.zeros(2 * t.shape[0], dtype=dtype)
                base[::2] = t
                return base.to(dev)[::2]
            if strided and t.dim() == 2 and t.numel():
                base = torch.zeros(t.shape[0], t.shape[1] + 5, dtype=dtype)
                base[:, : t.shape[1]] = t
                return base.to(dev)[:, : t.shape[1]]
            return t.to(dev)

        if one_d:
            x, src = x_c[:, 0], src_c[:, 0]
            idx = idx_c if idx_c.dim() == 1 else idx_c[:, 0]
            inputs = [lay(x, dt), idx.to(it).to(dev), lay(src, dt)]
        else:
            if spec.op == INDEX_PUT or g.row:
                idx1 = idx_c if idx_c.dim() == 1 else idx_c[:, 0]
                if spec.op == INDEX_PUT:
                    idx = idx1.to(it).to(dev)
                else:  # expanded along the columns, as the spec's index is
                    idx = idx1.to(it).to(dev)[:, None].expand(idx1.shape[0], src_c.shape[1])
                    idx = idx if dim == 0 else idx.T
            else:
                idx = idx_c.to(it).to(dev)
                idx = idx if dim == 0 else idx.T.contiguous()
            if dim == 0:
                inputs = [lay(x_c, dt), idx, lay(src_c, dt)]
            else:
                inputs = [lay(x_c.T.contiguous(), dt), idx, lay(src_c.T.contiguous(), dt)]
        x, idx, src = inputs
        assert x is not None and idx is not None and src is not None
        case_spec = self.spec_for(spec.op, x, idx, src, dim, str(spec.const("reduce")),
                                  bool(spec.const("include_self")))
        return name, case_spec, inputs

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        gen = torch.Generator().manual_seed(1234)
        g = self.geom(spec)
        x_sig = spec.args[0]
        assert x_sig is not None
        reduce = str(spec.const("reduce"))
        dt = x_sig.torch_dtype
        one_d = len(x_sig.shape) == 1
        dc = 1 if one_d else max(1, min(g.d, 16))

        def vals(*shape: int) -> torch.Tensor:
            return self._values(reduce, shape, gen).double()

        def idx(n: int, m: int, k: int = dc, kind: int = 0) -> torch.Tensor:
            return _index_values(n, (m,) if g.row else (m, k), kind, gen)

        cases = []

        def case(name: str, x_c: torch.Tensor, i_c: torch.Tensor, s_c: torch.Tensor, **kw: Any) -> None:
            cases.append(self._case(spec, name, x_c, i_c, s_c, **kw))

        case("empty_index", vals(6, dc), idx(6, 0), vals(0, dc))
        case("single_element", vals(1, 1), idx(1, 1, 1), vals(1, 1))
        case("all_same_index", vals(5, dc), torch.full((64,) if g.row else (64, dc), 2), vals(64, dc))
        sparse = torch.tensor([3, 7, 11, 7, 3, 3])
        case("untouched_rows", vals(20, dc), sparse if g.row else sparse[:, None].expand(6, dc).contiguous(),
             vals(6, dc))
        case("sorted_runs", vals(30, dc), idx(30, 50, kind=1), vals(50, dc))
        d_odd = 1 if one_d else 33
        case("odd_dims", vals(37, d_odd), idx(37, 29, d_odd), vals(29, d_odd))
        if not one_d and not (g.row and spec.op == INDEX_PUT):  # the index covers only some columns
            kc = max(1, dc // 2)
            case("partial_columns", vals(9, dc), idx(9, 12, kc), vals(12, kc))
        case("strided", vals(11, dc), idx(11, 17), vals(17, dc), strided=True)
        if g.wrap:
            case("negative_index", vals(8, dc), torch.tensor([-1, -8, 0, 7, -3, -1, 2]), vals(7, dc))
        inf = math.inf
        xi, si = vals(8, dc), vals(12, dc)
        si[0, 0], si[1, 0], si[2, -1], si[3, -1] = inf, -inf, -inf, -inf  # row 0: inf + -inf
        xi[5, 0] = inf
        case("inf_values", xi, torch.tensor([0, 0, 1, 1, 2, 3, 4, 4, 6, 6, 6, 7]) if g.row else
             torch.tensor([0, 0, 1, 1, 2, 3, 4, 4, 6, 6, 6, 7])[:, None].expand(12, dc).contiguous(), si)
        big = 1e30 if dt in (torch.float32, torch.bfloat16) else 1e3  # <= 4 per row + self: no overflow
        xh = torch.rand(8, dc, generator=gen).double() * big + big
        sh = torch.rand(16, dc, generator=gen).double() * big + big
        hi = torch.arange(16) // 2 % 8
        case("huge_values", xh, hi if g.row else hi[:, None].expand(16, dc).contiguous(), sh)
        xn, sn = vals(10, dc), vals(14, dc)
        sn[0, 0] = math.nan  # row 1 (below): NaN among finite values
        sn[3, :] = math.nan  # row 4: a NaN row
        sn[6, 0], sn[7, 0] = inf, math.nan  # row 5: NaN after inf
        xn[2, 0] = math.nan  # NaN in self at a hit row (row 2) ...
        xn[9, 0] = math.nan  # ... and at a row nothing hits (kept as is)
        ni = torch.tensor([1, 1, 2, 4, 4, 2, 5, 5, 1, 0, 0, 3, 3, 6])
        case("nan_values", xn, ni if g.row else ni[:, None].expand(14, dc).contiguous(), sn)
        return cases

    # -- numerics / cost -------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        """self read once, the index and the src values it selects read once, the output written once."""
        x_sig, i_sig, _ = spec.args
        assert x_sig is not None and i_sig is not None
        g = self.geom(spec)
        e, ei = _elem_size(x_sig.dtype), _elem_size(i_sig.dtype)
        return 2 * g.n * g.d * e + g.m * (1 if g.row else g.k) * ei + g.m * g.k * e

    # -- kernels ---------------------------------------------------------------------------------
    @staticmethod
    def _warps(tile: int) -> int:
        """~16-32 elements per thread, 1..8 warps (a knob the search varies)."""
        return max(1, min(8, _next_pow2(max(tile // 512, 1))))

    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """~15-40 proposals: the atomic templates' tiles and knobs, then scan tiles. Default first:
        scan for small problems (one launch, no atomics), else copy_atomic, else ws_fp32; the csr
        variants (where offered) right after it."""
        g = self.geom(spec)
        reduce = str(spec.const("reduce"))
        templates = self.templates_for(spec)
        n, d, m = max(g.n, 1), max(g.d, 1), max(g.m, 1)
        bd_max = min(_next_pow2(d), 256)
        bd0 = min(bd_max, 128)
        bd_opts = [bd0] + [x for x in (bd0 // 2, bd_max) if x >= 16 and x != bd0]
        bm0 = max(1, min(_next_pow2(m), 2048 // bd0))
        nw0 = self._warps(bd0 * bm0)
        out: list[tuple[str, dict[str, Any]]] = []

        def atomic(t: str, bd: int = bd0, bm: int = bm0, bn: int | None = None, seg: bool = False,
                   dloop: bool = False, tiles: int = 1, nw: int | None = None) -> None:
            if t not in templates:
                return
            bn = bn or max(1, min(_next_pow2(n), 4096 // bd))
            if bd * bm <= _MAX_TILE and bd * bn <= _MAX_TILE:
                out.append((t, dict(BLOCK_D=bd, BLOCK_M=bm, BLOCK_N=bn, SEG_COMBINE=seg, D_LOOP=dloop, TILES=tiles,
                                    num_warps=nw or self._warps(bd * bm), num_stages=1)))

        def scan(bn: int, bm: int, bd: int, dot: bool = False, nw: int | None = None, stages: int = 2) -> None:
            tile = bn * bd if dot else bn * bm * bd
            if "scan" in templates and tile <= _MAX_TILE and (not dot or min(bn, bm, bd) >= 16):
                out.append(("scan", dict(BLOCK_N=bn, BLOCK_M=bm, BLOCK_D=bd, USE_DOT=dot,
                                         num_warps=nw or self._warps(tile), num_stages=stages)))

        # csr (counting sort of the row index, then an atomic-free gather-reduce at the memory floor):
        # placed right after the default below, so the search meets it early
        csr_out: list[tuple[str, dict[str, Any]]] = []
        scan_kind, _ = self._csr_scan(n)
        cbm = max(16, min(_next_pow2(m), 1024))

        def csr(bn: int, bd: int, dloop: bool = False, nw: int | None = None, scan: int = 0, stages: int = 2) -> None:
            if "csr" not in templates or bn * bd > _MAX_TILE or bn < 1:
                return
            kind, sblk = self._csr_scan(n, scan or scan_kind)
            csr_out.append(("csr", dict(BLOCK_N=bn, BLOCK_D=bd, D_LOOP=dloop, SCAN=kind, SCAN_BLOCK=sblk,
                                        CSR_BLOCK_M=cbm, num_warps=nw or self._warps(bn * bd), num_stages=stages)))

        def flat(bn: int, bd: int, spread: int = 1, dloop: bool = False, nw: int | None = None) -> None:
            """csr with FLAT: BLOCK_E entries per step, ``spread`` x the block's mean hit count."""
            be = max(16, min(_next_pow2(max(1, spread * bn * m // n)), 256))
            if "csr" not in templates or be * bd > _MAX_TILE or bn * bd > _MAX_TILE or bn < 1:
                return
            kind, sblk = self._csr_scan(n, scan_kind)
            csr_out.append(("csr", dict(FLAT=1, BLOCK_N=bn, BLOCK_E=be, BLOCK_D=bd, D_LOOP=dloop, SCAN=kind,
                                        SCAN_BLOCK=sblk, CSR_BLOCK_M=cbm, num_warps=nw or self._warps(be * bd),
                                        num_stages=1)))

        cbd = bd0
        cbn = max(1, min(_next_pow2(n), 4096 // cbd, 32))
        csr(cbn, cbd)
        csr(max(1, cbn // 2), cbd)
        if cbn * 2 <= _next_pow2(n):
            csr(cbn * 2, cbd)
        if cbd >= 64:
            csr(max(1, min(_next_pow2(n), 4096 // (cbd // 2))), cbd // 2)
        if d > cbd // 2 and cbd >= 32:
            csr(cbn, cbd // 2, dloop=True)
        csr(cbn, cbd, scan=3 - scan_kind)
        csr(cbn, cbd, stages=1, nw=max(1, self._warps(cbn * cbd) // 2))
        # FLAT after the lockstep walk: on the uniform bench index it is slower (233-365 us against
        # 185, H100), but a hot row's entries go BLOCK_E per step instead of one
        if d > cbd // 2 and cbd >= 32:
            flat(cbn, cbd // 2, dloop=True, nw=4)
        flat(cbn, cbd)

        sbn = max(1, min(_next_pow2(n), 16))
        sbd = max(1, min(_next_pow2(d), 32))
        sbm = max(1, min(_next_pow2(m), 64, _MAX_TILE // (sbn * sbd)))
        if g.n * g.m * g.k <= 1 << 18:
            scan(sbn, sbm, sbd)
        # copy then atomics: tile shapes, run pre-combining, column loop, tiles per program, warps
        atomic("copy_atomic")
        atomic("copy_atomic", seg=True)
        for bm in (bm0 * 2, bm0 // 2, bm0 * 4):
            if 1 <= bm <= _next_pow2(m) * 2:
                atomic("copy_atomic", bm=bm)
        atomic("copy_atomic", bm=bm0 * 2, seg=True)
        for bd in bd_opts[1:]:
            atomic("copy_atomic", bd=bd, bm=max(1, min(_next_pow2(m), 2048 // bd)))
        if d > bd0:
            atomic("copy_atomic", dloop=True)
            atomic("copy_atomic", dloop=True, seg=True)
        for tiles in (4, 16):
            if _cdiv(m, bm0) >= 8 * tiles:
                atomic("copy_atomic", tiles=tiles)
        for nw in (nw0 * 2, nw0 // 2):
            if 1 <= nw <= 8:
                atomic("copy_atomic", nw=nw)
        atomic("copy_atomic", bn=max(1, min(_next_pow2(n), 1024 // bd0)))
        # one launch into an identity-filled output (self combined atomically too)
        atomic("atomic")
        atomic("atomic", seg=True)
        atomic("atomic", bm=bm0 * 2)
        # fp32 workspace + finalize: every reduction but prod, any dtype
        atomic("ws_fp32")
        atomic("ws_fp32", seg=True)
        atomic("ws_fp32", bm=bm0 * 2)
        if len(bd_opts) > 1:
            atomic("ws_fp32", bd=bd_opts[1], bm=max(1, min(_next_pow2(m), 2048 // bd_opts[1])))
        if d > bd0:
            atomic("ws_fp32", dloop=True, seg=True)
        if _cdiv(m, bm0) >= 32:
            atomic("ws_fp32", tiles=4)
        if "copy_atomic" not in templates:  # the workspace is the atomic plan here: vary it more
            atomic("ws_fp32", bm=max(1, bm0 // 2))
            atomic("ws_fp32", bm=bm0 * 2, seg=True)
            for nw in (nw0 * 2, nw0 // 2):
                if 1 <= nw <= 8:
                    atomic("ws_fp32", nw=nw)
            if d > bd0:
                atomic("ws_fp32", dloop=True)
        # scan: output rows x index chunk x columns; a one-hot dot for row-index sums
        scan(sbn, sbm, sbd)
        scan(sbn * 2, max(1, sbm // 2), sbd)
        scan(sbn, max(1, sbm // 2), sbd)
        scan(max(1, sbn // 2), min(sbm * 2, 128), sbd)
        if sbd >= 2:
            scan(sbn, sbm, max(1, sbd // 2))
        if sbd * 2 <= _next_pow2(d):
            scan(sbn, max(1, sbm // 2), sbd * 2)
        scan(sbn, sbm, sbd, stages=3)
        if g.row and reduce in ("sum", "mean"):
            dbd = max(16, min(_next_pow2(d), 64))
            scan(max(16, min(_next_pow2(n), 64)), 32, dbd, dot=True)
            scan(max(16, min(_next_pow2(n), 32)), 64, dbd, dot=True)
            scan(16, 32, max(16, min(_next_pow2(d), 128)), dot=True, nw=4)

        out = out[:1] + csr_out + out[1:]
        return unique_candidates(out, lambda t: TEMPLATES[t][1])

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        x_sig = spec.args[0]
        assert x_sig is not None
        g = self.geom(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "scatter")
        if template not in self.templates_for(spec):
            raise ValueError(f"the {template} template cannot serve {spec.describe()}")
        check_pow2(cfg, lambda k: k.startswith("BLOCK_"))
        reduce = str(spec.const("reduce"))
        incl = bool(spec.const("include_self"))
        bd = int(cfg["BLOCK_D"])
        nd = _cdiv(g.d, bd)
        if nd > _MAX_GRID_Y:
            raise ValueError(f"BLOCK_D={bd} needs {nd} programs along D (> {_MAX_GRID_Y})")
        nw, ns = int(cfg.get("num_warps", 4)), int(cfg.get("num_stages", 2))
        rc = REDUCE_CODES[reduce]
        geo: list[tuple[str, Any]] = [("num_rows", g.n), ("num_cols", g.d), ("num_idx", g.m), ("idx_cols", g.k)]
        x_strides = [("stride_xn", g.xs[0]), ("stride_xd", g.xs[1])]
        src_strides = [("stride_im", g.idx_s[0]), ("stride_ik", g.idx_s[1]),
                       ("stride_sm", g.src_s[0]), ("stride_sk", g.src_s[1])]
        out_strides = [("stride_on", g.out_s[0]), ("stride_od", g.out_s[1])]
        modes: list[tuple[str, Any]] = [("REDUCE", rc), ("ROW_INDEX", g.row), ("WRAP_NEG", g.wrap)]
        out_buf = OutBuf(tuple(x_sig.shape), x_sig.dtype, fill=None)
        pre: tuple[Step, ...] = ()
        workspace: tuple[OutBuf, ...] = ()

        if template == "csr":
            bn, dloop = int(cfg["BLOCK_N"]), bool(cfg["D_LOOP"])
            scan, sblk, cbm = int(cfg["SCAN"]), int(cfg["SCAN_BLOCK"]), int(cfg["CSR_BLOCK_M"])
            if scan not in (1, 2):
                raise ValueError(f"SCAN={scan} is not a scan kind (1, 2)")
            for k, v, lo, hi in (("SCAN_BLOCK", sblk, 16, 8192), ("CSR_BLOCK_M", cbm, 16, 8192)):
                if v < lo or v & (v - 1) or v > hi:
                    raise ValueError(f"{k}={v} is not a power of two in [{lo}, {hi}]")
            # workspace: per-row counts (zeroed; the fill counts them back down to zero), row pointers
            # [N + 1], the permutation [M] (index positions grouped by row), scan block sums
            workspace = (OutBuf((max(g.n, 1),), "int32", fill=0), OutBuf((g.n + 1,), "int32"),
                         OutBuf((max(g.m, 1),), "int32"))
            idx_progs = _cdiv(g.m, cbm)
            idx_geo: list[tuple[str, Any]] = [("num_rows", g.n), ("num_idx", g.m), ("stride_im", g.idx_s[0])]
            hist = Step("scatter_csr_hist", (idx_progs,), tuple(
                [("idx_ptr", In(1)), ("cnt_ptr", Ws(0))] + idx_geo + [("WRAP_NEG", g.wrap), ("CSR_BLOCK_M", cbm)]
            ), 4, 1)
            swarps = 8 if sblk >= 2048 else 4
            if scan == 1:
                scans: tuple[Step, ...] = (Step("scatter_csr_scan", (1,), (
                    ("cnt_ptr", Ws(0)), ("rowptr_ptr", Ws(1)), ("num_rows", g.n), ("SCAN_BLOCK", sblk),
                ), swarps, 3),)
            else:
                nblk = max(1, _cdiv(g.n, sblk))  # >= 1 program: block 0 writes rowptr[0] even for N = 0
                workspace += (OutBuf((nblk,), "int32"),)
                scans = (
                    Step("scatter_csr_block_sums", (nblk,), (
                        ("cnt_ptr", Ws(0)), ("sums_ptr", Ws(3)), ("num_rows", g.n), ("SCAN_BLOCK", sblk),
                    ), swarps, 1),
                    Step("scatter_csr_block_scan", (nblk,), (
                        ("cnt_ptr", Ws(0)), ("sums_ptr", Ws(3)), ("rowptr_ptr", Ws(1)), ("num_rows", g.n),
                        ("SCAN_BLOCK", sblk), ("BLOCK_B", min(max(_next_pow2(nblk), 16), 1024)),
                    ), swarps, 1),
                )
            fill = Step("scatter_csr_fill", (idx_progs,), tuple(
                [("idx_ptr", In(1)), ("cnt_ptr", Ws(0)), ("rowptr_ptr", Ws(1)), ("perm_ptr", Ws(2))] + idx_geo
                + [("WRAP_NEG", g.wrap), ("CSR_BLOCK_M", cbm)]
            ), 4, 1)
            pre = (hist, *scans, fill)
            flat = int(cfg.get("FLAT", 0))
            blocks: list[tuple[str, Any]] = [("BLOCK_N", bn), ("BLOCK_D", bd)]
            if flat:
                be = int(cfg["BLOCK_E"])
                if be < 16 or be & (be - 1):
                    raise ValueError(f"BLOCK_E={be} is not a power of two >= 16")
                blocks = [("BLOCK_N", bn), ("BLOCK_E", be), ("BLOCK_D", bd)]
            main = Step("scatter_csr_flat" if flat else "scatter_csr_reduce", (_cdiv(g.n, bn), 1 if dloop else nd), tuple(
                [("x_ptr", In(0)), ("perm_ptr", Ws(2)), ("rowptr_ptr", Ws(1)), ("src_ptr", In(2)), ("out_ptr", Out(0)),
                 ("num_rows", g.n), ("num_cols", g.d), ("idx_cols", g.k)] + x_strides
                + [("stride_sm", g.src_s[0]), ("stride_sk", g.src_s[1])] + out_strides
                + [("REDUCE", rc), ("INCLUDE_SELF", incl)] + blocks + [("D_LOOP", dloop)]
            ), nw, ns)
        elif template == "scan":
            dot = bool(cfg["USE_DOT"])
            bn, bm = int(cfg["BLOCK_N"]), int(cfg["BLOCK_M"])
            if dot and (not g.row or reduce not in ("sum", "mean") or min(bn, bm, bd) < 16):
                raise ValueError("USE_DOT needs a row index, sum/mean and blocks >= 16")
            main = Step("scatter_scan", (_cdiv(g.n, bn), nd), tuple(
                [("x_ptr", In(0)), ("idx_ptr", In(1)), ("src_ptr", In(2)), ("out_ptr", Out(0))] + geo + x_strides
                + src_strides + out_strides + modes
                + [("INCLUDE_SELF", incl), ("BLOCK_N", bn), ("BLOCK_M", bm), ("BLOCK_D", bd), ("USE_DOT", dot)]
            ), nw, ns)
        else:
            bn, bm, tiles = int(cfg["BLOCK_N"]), int(cfg["BLOCK_M"]), int(cfg["TILES"])
            if tiles < 1:
                raise ValueError(f"TILES={tiles} < 1")
            dloop, seg = bool(cfg["D_LOOP"]), bool(cfg["SEG_COMBINE"])
            src_progs = _cdiv(_cdiv(g.m, bm), tiles) if g.k > 0 else 0
            gy = 1 if dloop else nd
            tiles_cfg = [("BLOCK_M", bm), ("BLOCK_D", bd), ("D_LOOP", dloop), ("SEG_COMBINE", seg), ("TILES", tiles)]
            row_tiles = (_cdiv(g.n, bn), nd)
            cw = self._warps(bn * bd)

            def src_step(out: Any, cnt: Any, out_s: list, reset: bool, count: bool) -> Step:
                # cnt_ptr is only dereferenced with COUNT; otherwise it aliases out_ptr
                return Step("scatter_src", (src_progs, gy), tuple(
                    [("idx_ptr", In(1)), ("src_ptr", In(2)), ("out_ptr", out), ("cnt_ptr", cnt)] + geo
                    + src_strides + out_s + modes + [("RESET", reset), ("COUNT", count)] + tiles_cfg
                ), nw, ns)

            if template == "atomic":
                self_progs = _cdiv(g.n, bn)
                main = Step("scatter_atomic", (self_progs + src_progs, gy), tuple(
                    [("x_ptr", In(0)), ("idx_ptr", In(1)), ("src_ptr", In(2)), ("out_ptr", Out(0))] + geo + x_strides
                    + src_strides + out_strides + [("self_progs", self_progs)] + modes + [("BLOCK_N", bn)] + tiles_cfg
                ), nw, ns)
                out_buf = OutBuf(tuple(x_sig.shape), x_sig.dtype, fill=_FILL[reduce])
            elif template == "copy_atomic":
                copy = Step("scatter_copy", row_tiles, tuple(
                    [("x_ptr", In(0)), ("out_ptr", Out(0)), ("num_rows", g.n), ("num_cols", g.d)] + x_strides
                    + out_strides + [("REDUCE", rc), ("BLOCK_N", bn), ("BLOCK_D", bd)]
                ), cw, 1)
                pre = (copy,) if incl else (copy, src_step(Out(0), Out(0), out_strides, True, False))
                main = src_step(Out(0), Out(0), out_strides, False, False)
            else:  # ws_fp32: accumulate in fp32 workspace [N, D] (row-major), then finalize into out
                count = reduce == "mean" or not incl
                workspace = (OutBuf((g.n * g.d,), "float32", fill=_FILL.get(reduce, 0.0)),)
                if count:
                    workspace += (OutBuf((g.n * g.d,), "int32", fill=0),)
                ws_s = [("stride_on", g.d), ("stride_od", 1)]
                pre = (src_step(Ws(0), Ws(1) if count else Ws(0), ws_s, False, count),)
                main = Step("scatter_finalize", row_tiles, tuple(
                    [("x_ptr", In(0)), ("acc_ptr", Ws(0)), ("cnt_ptr", Ws(1) if count else Ws(0)), ("out_ptr", Out(0)),
                     ("num_rows", g.n), ("num_cols", g.d)] + x_strides + out_strides
                    + [("REDUCE", rc), ("INCLUDE_SELF", incl), ("HAS_COUNT", count), ("BLOCK_N", bn), ("BLOCK_D", bd)]
                ), cw, 1)
        return CallPlan(
            kernel=main.kernel,
            grid=main.grid,
            args=main.args,
            outputs=(out_buf,),
            num_warps=main.num_warps,
            num_stages=main.num_stages,
            pre=pre,
            workspace=workspace,
        )


register(ScatterFamily())
