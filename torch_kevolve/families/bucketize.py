"""The bucketize family: ``aten.bucketize.Tensor`` and ``aten.searchsorted.Tensor``.

What reaches Inductor's post-grad graph (torch 2.13, checked by compiling small functions):

* ``torch.bucketize(x, b)`` arrives as ``aten.bucketize.Tensor(x, b, out_int32=, right=)`` and
  ``torch.searchsorted(s, x)`` as ``aten.searchsorted.Tensor(s, x, out_int32=, right=, side=, sorter=)``
  (``side`` and ``sorter`` as given). The ``.Scalar`` overloads never arrive: a Python number is turned
  into ``aten.full([1], v)`` feeding the ``.Tensor`` op, then a ``select``/``squeeze``. A fp16 input with
  fp32 boundaries arrives as such (no cast node): the op itself promotes.
* Canonical inputs here are ``[values, boundaries, sorter | None]`` for both ops (searchsorted's
  argument order is swapped back by :meth:`BucketizeFamily.eager`).

How Inductor treats them (``torch/_inductor/lowering.py``): both are lowered to a Pointwise kernel
calling ``triton_helpers.bucketize_binary_search`` when every tensor's device has
``BackendFeature.BUCKETIZE`` (Triton devices: CUDA, XPU); every other device (CPU) calls the ATen kernel
(``fallback_handler``). There is no argument-dependent fallback. Both ops are in ``lowered_ops``;
:meth:`BucketizeFamily.inductor_fallback_reason` says which case a node is in. (Inductor's helper tests
``v > b`` / ``v >= b`` with NaN values forced right, not ATen's ``!(b >= v)``: with NaN *boundaries* its
answer can differ from eager's; ours follows eager.)

ATen semantics pinned here (tests compare against eager on CPU):

* Per value, ATen runs ``lo, hi = 0, M; while lo < hi: mid = lo + (hi - lo) // 2`` and moves right when
  ``!(b[mid] >= v)`` (``right=False``: the first index with ``b >= v``) or ``!(b[mid] > v)`` (``right``).
  NaN values therefore land at ``M`` for both ``right`` settings; NaN *boundaries* (``torch.sort`` puts
  them last) make the answer depend on the search path, so every template either replays that exact
  path or (``count``) checks for NaN boundaries first and replays it when there are any. Ties: a value
  equal to boundaries goes before them (left) or after them (right); ``-0.0 == 0.0``.
* Mixed dtypes compare in ``torch.result_type(boundaries, values)`` (0-D values do not promote 1-D
  boundaries' category), both sides converted first: int64 values against fp32 boundaries compare as
  fp32 (``2**53 + 1`` rounds); int -> fp16/bf16 goes through fp32 as c10 does. Kernels compare in that
  dtype exactly: fp16/bf16 are rounded to it and compared in fp32 (exact and order-preserving); ints in
  int64; fp64 in fp64.
* ``sorter`` (int64, boundaries' shape): ``b[sorter[mid]]`` replaces ``b[mid]``; out-of-range entries
  make eager raise; the kernels mask them (never read out of bounds; the result is then undefined).
* Boundaries must be sorted (torch: "otherwise the return value is undefined"). The ``count``
  template counts boundaries below each value, which equals the search for sorted boundaries only; so
  unsorted boundaries may give another (equally undefined) answer than eager there.
* Empty boundaries: 0 everywhere (NaN too). Output: ``int64`` or ``int32`` (``out_int32``), the
  values' shape, contiguous.

Served: values/boundaries float32/float16/bfloat16/float64/int8/int16/int32/int64/uint8 (bool raises
in eager), 1-D boundaries with values whose dims collapse to at most two strided dims (``[R, K]``), and
per-row (N-D) sorted sequences whose leading dims match the values' (each collapsing to one strided
dim); static shapes. Skipped: symbolic shapes, other dtypes, layouts that do not collapse.

Templates (each a complete module; every element of the output written exactly once):

* ``search``: flat over elements (``BLOCK`` per program); a per-element binary search in global memory,
  ``STEPS = bit_length(M)`` masked steps as a constexpr (unrolled; replays ATen's path exactly). Serves
  everything (any M, per-row sequences, sorter).
* ``smem`` (1-D boundaries, ``M <= 4096``): the program loads the boundaries (through the sorter when
  given) once into a register tile, then searches ``TILES`` blocks of ``BLOCK`` values with ``tl.gather``
  from that tile instead of dependent global loads. On sm_90 every gather stores the tile to shared
  memory linearly and reads it back by index (checked in the PTX), so a binary search's first steps
  (strides M/2, M/4, ...: all multiples of 32 words) hit one bank; ``SWZ`` stores boundary i at
  ``i ^ ((i >> 5) & 31)``, which spreads the first six steps over distinct banks. ``FAST`` searches
  by halving (one gather, compare and select per step: about half the instructions of the masked
  lo/hi search, which is what bounds it once the banks are spread); its answer is the count of
  boundaries ATen's step passes, equal to ATen's for sorted NaN-free boundaries (like ``count``,
  unsorted ones may give another, equally undefined, answer). A program whose boundaries hold a NaN
  replays the exact search.
* ``count`` (1-D boundaries, ``M <= 512``): branch-free: per value the number of boundaries for which
  ATen's step moves right (``!(b >= v)``, ``!(b > v)`` for right: ``b < v`` / ``b <= v``, and every
  boundary for a NaN value) over ``BC``-wide boundary chunks (no sorter reads: a count ignores order).
  A program that sees a NaN boundary replays the exact search instead (uniform branch).
* ``row`` (per-row sequences, ``M <= 4096``): one program per ``BLOCK_R`` rows loads their sequences once
  as one flat ``BLOCK_R * NB`` tile and walks the rows' values ``BLOCK_R * BLOCK_K`` at a time, each
  searching its row's slice with ``tl.gather`` (a 2-D ``[BLOCK_R, NB]`` tile gathered along its rows
  spilled registers on sm_90 even for one row).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip
from .util import all_int as _all_int, cdiv as _cdiv, elem_size as _elem_size, next_pow2 as _next_pow2, template_of
from .util import unique_candidates
from .util import meta_val, node_kwargs
from .util import strided as _strided

log = logging.getLogger("torch_kevolve")

BUCKETIZE = "aten.bucketize.Tensor"
SEARCHSORTED = "aten.searchsorted.Tensor"
_OPS = (BUCKETIZE, SEARCHSORTED)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16, torch.int32,
           torch.int64, torch.uint8)
# Comparison modes (the CMP constexpr): the promoted dtype both sides are converted to.
CMP_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 3, torch.bfloat16: 4}  # ints: 2
_SMEM_MAX = 4096  # boundaries one program holds in registers / shared memory (smem, row)
_COUNT_MAX = 512  # count compares every value with every boundary: O(M) per value
_MAX_TILE = 8192  # elements of a 2-D register tile (register pressure on sm_90)
_MAX_GRID_X = 2**31 - 1

# ------------------------------------------------------------------------------------------------
# Kernel sources. Each template's source is a complete module; shared helpers are pasted into each
# so a template's text (and so its hash) depends only on what it runs.
# ------------------------------------------------------------------------------------------------

_HEADER = '''import triton
import triton.language as tl
'''

_COMMON = '''

@triton.jit
def _round_bf16(f):
    \"\"\"fp32 -> nearest-even bf16, kept in fp32, by integer ops (c10's rule; Triton's interpreter
    truncates in ``.to(tl.bfloat16)``). NaN stays NaN; overflow rounds to inf.\"\"\"
    bits = f.to(tl.int32, bitcast=True)
    r = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return tl.where(f != f, f, r.to(tl.float32, bitcast=True))


@triton.jit
def _key(v, CMP: tl.constexpr):
    \"\"\"A value as torch compares it: converted to the promoted dtype (0 fp32, 1 fp64, 2 integers,
    3 fp16, 4 bf16; int -> half goes through fp32 as c10 does), half types then widened to fp32
    (exact, order-preserving).\"\"\"
    if CMP == 0:
        k = v.to(tl.float32)
    elif CMP == 1:
        k = v.to(tl.float64)
    elif CMP == 2:
        k = v.to(tl.int64)
    elif CMP == 3:
        k = v.to(tl.float32).to(tl.float16).to(tl.float32)
    else:
        k = _round_bf16(v.to(tl.float32))
    return k


@triton.jit
def _go_right(b, v, RIGHT: tl.constexpr):
    \"\"\"ATen's step: lower bound moves right unless b >= v, upper bound unless b > v (so a NaN on
    either side moves right).\"\"\"
    if RIGHT:
        r = ~(b > v)
    else:
        r = ~(b >= v)
    return r


@triton.jit
def _search_global(b_ptr, s_ptr, b_row, s_row, v, live, n_bounds, stride_bm, stride_sm,
                   RIGHT: tl.constexpr, CMP: tl.constexpr, HAS_SORTER: tl.constexpr, STEPS: tl.constexpr):
    \"\"\"Per element, ATen's binary search over one sequence in global memory (b_row / s_row: the
    element's sequence offsets). STEPS = bit_length(M) masked steps replay its path exactly.\"\"\"
    lo = tl.zeros(v.shape, dtype=tl.int32)
    hi = lo + n_bounds
    for _ in tl.static_range(STEPS):
        active = live & (lo < hi)
        mid = lo + ((hi - lo) >> 1)
        if HAS_SORTER:
            j = tl.load(s_ptr + s_row + mid.to(tl.int64) * stride_sm, mask=active, other=0)
            ok = active & (j >= 0) & (j < n_bounds)  # out of range: eager raises; never read outside
            tl.device_assert((j >= 0) & (j < n_bounds), "searchsorted: sorter index out of range", mask=active)
            bv = tl.load(b_ptr + b_row + j * stride_bm, mask=ok, other=0)
        else:
            bv = tl.load(b_ptr + b_row + mid.to(tl.int64) * stride_bm, mask=active, other=0)
        right = _go_right(_key(bv, CMP), v, RIGHT)
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    return lo


@triton.jit
def _element(e, n_cols, stride_xr, stride_xk, TWO_D: tl.constexpr):
    \"\"\"Flat element e -> (row, values offset); one-dim values skip the division.\"\"\"
    if TWO_D:
        r = e // n_cols
        off = r * stride_xr + (e - r * n_cols) * stride_xk
    else:
        r = e * 0
        off = e * stride_xk
    return r, off
'''

_TILE = '''

@triton.jit
def _swizzle(i):
    \"\"\"Tile position of boundary i (an involution): the low 5 bits XOR bits 5..9, so the
    power-of-two strides of a binary search's first steps hit distinct shared-memory banks.\"\"\"
    return i ^ ((i >> 5) & 31)


@triton.jit
def _search_tile(bk, base, v, live, n_bounds, RIGHT: tl.constexpr, STEPS: tl.constexpr, SWZ: tl.constexpr = False):
    \"\"\"ATen's binary search over boundaries held in a flat register tile ``bk`` (already keyed; each
    value's sequence starts at ``base``), read with tl.gather (shared memory on the GPU). ``SWZ``: the
    tile holds boundary i at ``_swizzle(i)``.\"\"\"
    lo = tl.zeros(v.shape, dtype=tl.int32)
    hi = lo + n_bounds
    for _ in tl.static_range(STEPS):
        active = live & (lo < hi)
        mid = lo + ((hi - lo) >> 1)
        pos = tl.where(active, base + mid, 0)
        if SWZ:
            pos = _swizzle(pos)
        bv = tl.gather(bk, pos, 0)
        right = _go_right(bv, v, RIGHT)
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    return lo


@triton.jit
def _search_tile_fast(bk, v, n_bounds, RIGHT: tl.constexpr, HALVINGS: tl.constexpr, SWZ: tl.constexpr):
    \"\"\"For sorted NaN-free 1-D boundaries: the number of boundaries ATen's step moves right of (b < v;
    b <= v for right; all of them for a NaN value), which is ATen's answer there, by halving (the
    branch-free lower bound of Khuong and Morin): per step one gather, compare and select, no
    masks. Invariant: every boundary before ``base`` is passed, the answer lies in [base, base + n]
    and base + n <= M, so every read is in range. HALVINGS = ceil(log2(M)) brings n to 1.\"\"\"
    base = tl.zeros(v.shape, dtype=tl.int32)
    n = n_bounds
    for _ in tl.static_range(HALVINGS):
        half = n // 2
        pos = base + half
        if SWZ:
            pos = _swizzle(pos)
        base = tl.where(_go_right(tl.gather(bk, pos, 0), v, RIGHT), base + half, base)
        n = n - half
    pos = base
    if SWZ:
        pos = _swizzle(pos)
    last = _go_right(tl.gather(bk, pos, 0), v, RIGHT)
    return tl.where(n_bounds > 0, base + last.to(tl.int32), 0)
'''

_SIGNATURE = '''
    x_ptr, b_ptr, s_ptr, out_ptr,
    numel, n_cols, n_bounds,
    stride_xr, stride_xk, stride_br, stride_bm, stride_sr, stride_sm,
    RIGHT: tl.constexpr, CMP: tl.constexpr, HAS_SORTER: tl.constexpr, STEPS: tl.constexpr,'''

SEARCH_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def bucketize_search(''' + _SIGNATURE + '''
    TWO_D: tl.constexpr, BLOCK: tl.constexpr,
):
    \"\"\"One program = BLOCK consecutive output elements, each searching its sequence in global memory.\"\"\"
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    live = e < numel
    r, off = _element(e, n_cols, stride_xr, stride_xk, TWO_D)
    v = _key(tl.load(x_ptr + off, mask=live, other=0), CMP)
    lo = _search_global(b_ptr, s_ptr, r * stride_br, r * stride_sr, v, live, n_bounds, stride_bm, stride_sm,
                        RIGHT, CMP, HAS_SORTER, STEPS)
    tl.store(out_ptr + e, lo.to(out_ptr.dtype.element_ty), mask=live)
'''

SMEM_SOURCE = _HEADER + _COMMON + _TILE + '''

@triton.jit
def bucketize_smem(''' + _SIGNATURE + '''
    TWO_D: tl.constexpr, NB: tl.constexpr, BLOCK: tl.constexpr, TILES: tl.constexpr, SWZ: tl.constexpr = False,
    FAST: tl.constexpr = False, HALVINGS: tl.constexpr = 0,
):
    \"\"\"One program = TILES blocks of BLOCK elements; the (1-D) boundaries are loaded once into a
    register tile of NB >= M (through the sorter) and searched with gathers. ``SWZ``: position j of
    the tile holds boundary ``_swizzle(j)`` (the gather's shared-memory copy is laid out linearly, so
    an unswizzled search's first steps all read bank 0). ``FAST``: the branch-free halving search,
    unless the tile holds a NaN boundary (then ATen's path decides: replayed, a uniform branch).\"\"\"
    j = tl.arange(0, NB)
    if SWZ:
        j = _swizzle(j)
    jm = j < n_bounds
    if HAS_SORTER:
        sj = tl.load(s_ptr + j.to(tl.int64) * stride_sm, mask=jm, other=0)
        tl.device_assert((sj >= 0) & (sj < n_bounds), "searchsorted: sorter index out of range", mask=jm)
        jm = jm & (sj >= 0) & (sj < n_bounds)
        bt = tl.load(b_ptr + sj * stride_bm, mask=jm, other=0)
    else:
        bt = tl.load(b_ptr + j.to(tl.int64) * stride_bm, mask=jm, other=0)
    bk = _key(bt, CMP)
    n_nan = tl.full([], 0, tl.int32)
    if FAST:
        if CMP != 2:
            n_nan = tl.sum((jm & (bk != bk)).to(tl.int32))
    for t in range(TILES):
        e = (tl.program_id(0).to(tl.int64) * TILES + t) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        live = e < numel
        r, off = _element(e, n_cols, stride_xr, stride_xk, TWO_D)
        v = _key(tl.load(x_ptr + off, mask=live, other=0), CMP)
        if FAST:
            if n_nan == 0:
                lo = _search_tile_fast(bk, v, n_bounds, RIGHT, HALVINGS, SWZ)
            else:
                lo = _search_tile(bk, 0, v, live, n_bounds, RIGHT, STEPS, SWZ)
        else:
            lo = _search_tile(bk, 0, v, live, n_bounds, RIGHT, STEPS, SWZ)
        tl.store(out_ptr + e, lo.to(out_ptr.dtype.element_ty), mask=live)
'''

COUNT_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def bucketize_count(''' + _SIGNATURE + '''
    TWO_D: tl.constexpr, BC: tl.constexpr, BLOCK: tl.constexpr, TILES: tl.constexpr,
):
    \"\"\"One program = TILES blocks of BLOCK elements; each value's bucket is the number of (1-D)
    boundaries below it (at or below: right), compared BC boundaries at a time, branch-free. Equal to
    the search for sorted NaN-free boundaries; a program that sees a NaN boundary searches instead.\"\"\"
    jj = tl.arange(0, BC)
    n_nan = tl.full([], 0, tl.int32)
    if CMP != 2:
        for c in range(0, n_bounds, BC):
            jm = (c + jj) < n_bounds
            bk = _key(tl.load(b_ptr + (c + jj).to(tl.int64) * stride_bm, mask=jm, other=0), CMP)
            n_nan += tl.sum((jm & (bk != bk)).to(tl.int32))
    for t in range(TILES):
        e = (tl.program_id(0).to(tl.int64) * TILES + t) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        live = e < numel
        r, off = _element(e, n_cols, stride_xr, stride_xk, TWO_D)
        v = _key(tl.load(x_ptr + off, mask=live, other=0), CMP)
        if n_nan > 0:  # the answer depends on the search path: replay it
            res = _search_global(b_ptr, s_ptr, r * 0, r * 0, v, live, n_bounds, stride_bm, stride_sm,
                                 RIGHT, CMP, HAS_SORTER, STEPS)
        else:
            res = tl.zeros([BLOCK], dtype=tl.int32)
            for c in range(0, n_bounds, BC):
                jm = (c + jj) < n_bounds
                bk = _key(tl.load(b_ptr + (c + jj).to(tl.int64) * stride_bm, mask=jm, other=0), CMP)
                # ATen's step predicate: a NaN value is "right of" every boundary, so it counts M
                below = _go_right(bk[None, :], v[:, None], RIGHT)
                res += tl.sum((below & jm[None, :]).to(tl.int32), axis=1)
        tl.store(out_ptr + e, res.to(out_ptr.dtype.element_ty), mask=live)
'''

ROW_SOURCE = _HEADER + _COMMON + _TILE + '''

@triton.jit
def bucketize_row(''' + _SIGNATURE + '''
    n_rows, NB: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    \"\"\"One program = BLOCK_R rows: their sequences loaded once, through the sorter, as one flat
    [BLOCK_R * NB] tile (a 1-D tile keeps gathers cheap; a [BLOCK_R, NB] one spills on sm_90), then the
    rows' values as flat [BLOCK_R * BLOCK_K] blocks, each searching its row's slice with gathers.\"\"\"
    r0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    j = tl.arange(0, BLOCK_R * NB)
    jr = r0 + j // NB
    jp = (j % NB).to(tl.int64)
    jm = (jr < n_rows) & (jp < n_bounds)
    if HAS_SORTER:
        sj = tl.load(s_ptr + jr * stride_sr + jp * stride_sm, mask=jm, other=0)
        tl.device_assert((sj >= 0) & (sj < n_bounds), "searchsorted: sorter index out of range", mask=jm)
        jm = jm & (sj >= 0) & (sj < n_bounds)
        bt = tl.load(b_ptr + jr * stride_br + sj * stride_bm, mask=jm, other=0)
    else:
        bt = tl.load(b_ptr + jr * stride_br + jp * stride_bm, mask=jm, other=0)
    bk = _key(bt, CMP)
    e = tl.arange(0, BLOCK_R * BLOCK_K)
    er = e // BLOCK_K
    r = r0 + er
    base = er * NB  # the row's slice of the tile
    for k0 in range(0, n_cols, BLOCK_K):
        k = k0 + (e % BLOCK_K).to(tl.int64)
        live = (r < n_rows) & (k < n_cols)
        x = tl.load(x_ptr + r * stride_xr + k * stride_xk, mask=live, other=0)
        lo = _search_tile(bk, base, _key(x, CMP), live, n_bounds, RIGHT, STEPS)
        tl.store(out_ptr + r * n_cols + k, lo.to(out_ptr.dtype.element_ty), mask=live)
'''

TEMPLATES: dict[str, tuple[str, str]] = {
    # template name -> (kernel name, source)
    "search": ("bucketize_search", SEARCH_SOURCE),
    "smem": ("bucketize_smem", SMEM_SOURCE),
    "count": ("bucketize_count", COUNT_SOURCE),
    "row": ("bucketize_row", ROW_SOURCE),
}


# ------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------


def _collapse(shape: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int]]:
    """Dims as few strided (size, stride) dims as row-major order allows (size-1 dims dropped); []
    for one element."""
    dims = [(int(s), int(st)) for s, st in zip(shape, stride) if s != 1]
    out: list[tuple[int, int]] = []
    for s, st in dims:
        if out and out[-1][1] == s * st:
            out[-1] = (out[-1][0] * s, st)
        else:
            out.append((s, st))
    return out


def _one_dim(shape: Sequence[int], stride: Sequence[int], what: str) -> tuple[int, int]:
    """``shape`` as one strided dim (size, stride); ValueError when it does not collapse."""
    size = math.prod(shape)
    if size == 0:
        return 0, 0
    dims = _collapse(shape, stride)
    if len(dims) > 1:
        raise ValueError(f"{what} (shape {tuple(shape)}, strides {tuple(stride)}) do not collapse to one strided dim")
    return size, dims[0][1] if dims else 0


@dataclass(frozen=True)
class Geom:
    """The canonical problem: values as ``[rows, cols]`` (``numel = rows * cols``, row-major output),
    ``bounds`` boundaries per sequence; ``per_row``: sequence r for values row r, else one sequence."""

    rows: int
    cols: int
    bounds: int
    xs: tuple[int, int]  # values (row, col) strides
    bs: tuple[int, int]  # boundaries (row, position) strides; row stride 0 for 1-D
    ss: tuple[int, int]  # sorter strides, (0, 0) without one
    per_row: bool
    two_d: bool  # values need a row split (strided rows or per-row sequences)
    cmp: int
    common: torch.dtype

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def common_dtype(values: TensorSig, boundaries: TensorSig) -> torch.dtype:
    """The dtype ATen compares in (``searchsorted_maybe_trim_input_tensors``: result_type of
    boundaries and values; a 0-D tensor does not promote a dimensioned one of its category)."""
    def t(sig: TensorSig) -> torch.Tensor:
        return torch.empty((1,) * min(len(sig.shape), 1), dtype=sig.torch_dtype)

    return torch.result_type(t(boundaries), t(values))


def geometry(x: TensorSig, b: TensorSig, s: TensorSig | None) -> Geom:
    """The canonical problem of a call; ValueError when it is not served (or eager raises)."""
    common = common_dtype(x, b)
    cmp = CMP_CODES.get(common, 2)
    if len(b.shape) == 0:
        raise ValueError("boundaries is 0-D (eager raises)")
    m = int(b.shape[-1])
    if s is not None and (s.shape != b.shape):
        raise ValueError(f"sorter shape {s.shape} differs from boundaries shape {b.shape} (eager raises)")
    ss = (0, 0)
    if len(b.shape) == 1:
        dims = _collapse(x.shape, x.stride)
        if len(dims) > 2:
            raise ValueError(f"values (shape {x.shape}, strides {x.stride}) do not collapse to two strided dims")
        if math.prod(x.shape) == 0:
            dims = [(0, 1)]
        while len(dims) < 2:
            dims.insert(0, (1, 0))
        (rows, sr), (cols, sk) = dims
        if s is not None:
            ss = (0, int(s.stride[0]))
        return Geom(rows, cols, m, (sr, sk), (0, int(b.stride[0])), ss, False, rows > 1, cmp, common)
    if len(x.shape) != len(b.shape) or tuple(x.shape[:-1]) != tuple(b.shape[:-1]):
        raise ValueError(f"boundaries {b.shape} are N-D but their leading dims do not match values {x.shape} "
                         "(eager raises)")
    rows, sr = _one_dim(x.shape[:-1], x.stride[:-1], "values' leading dims")
    _, br = _one_dim(b.shape[:-1], b.stride[:-1], "boundaries' leading dims")
    if s is not None:
        ss = (_one_dim(s.shape[:-1], s.stride[:-1], "sorter's leading dims")[1], int(s.stride[-1]))
    return Geom(rows, int(x.shape[-1]), m, (sr, int(x.stride[-1])), (br, int(b.stride[-1])), ss, True, True,
                cmp, common)


def _fit(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 case values in ``dtype``: integers clamped into its range (a monotone map, so sorted
    sequences stay sorted; out-of-range float -> int conversion is undefined in C++)."""
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        t = t.clamp(info.min, info.max)
    return t.to(dtype)


def _device(spec: OpSpec) -> torch.device:
    return torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)


def _random(shape: Sequence[int], dtype: torch.dtype, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """Values in [lo, hi) of ``dtype`` (ints: integers in range, clipped to the dtype)."""
    shape = tuple(shape)
    if dtype.is_floating_point:
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).to(dtype)
    info = torch.iinfo(dtype)
    a, b = max(int(math.floor(lo)), info.min), min(int(math.ceil(hi)), info.max)
    return torch.randint(a, max(b, a + 1), shape, generator=gen).to(dtype)


# ------------------------------------------------------------------------------------------------
# The family
# ------------------------------------------------------------------------------------------------


class BucketizeFamily(OpFamily):
    """bucketize / searchsorted: 1-D boundaries or per-row sorted sequences, right/side, out_int32, sorter."""

    name = "bucketize"
    ops = _OPS
    # Inductor lowers both on Triton devices (a per-element binary search); CPU calls ATen.
    lowered_ops = _OPS
    template_version = "1"

    # -- specs -----------------------------------------------------------------------------------
    @classmethod
    def spec_for(
        cls, op: str, values: torch.Tensor, boundaries: torch.Tensor, sorter: torch.Tensor | None = None,
        right: bool = False, out_int32: bool = False,
    ) -> OpSpec:
        """The spec of a call on concrete (or fake) tensors in canonical order; ValueError if not served."""
        if op not in _OPS:
            raise ValueError(f"{op} is not bucketize/searchsorted")
        if op == BUCKETIZE and sorter is not None:
            raise ValueError("bucketize takes no sorter")
        for what, t in (("values", values), ("boundaries", boundaries)):
            if t.dtype not in _DTYPES:
                raise ValueError(f"{what} dtype {t.dtype} not served")
        if sorter is not None and sorter.dtype != torch.int64:
            raise ValueError(f"sorter dtype {sorter.dtype} is not int64 (eager raises)")
        tensors = [t for t in (values, boundaries, sorter) if t is not None]
        for t in tensors:
            if not _all_int(t):
                raise ValueError("symbolic sizes/strides (dynamic shapes not served yet)")
        if len({t.device for t in tensors}) != 1:
            raise ValueError("inputs on different devices")
        if op == BUCKETIZE and boundaries.dim() != 1:
            raise ValueError(f"bucketize boundaries are {boundaries.dim()}-D (eager raises)")
        sigs = (TensorSig.of(values), TensorSig.of(boundaries), None if sorter is None else TensorSig.of(sorter))
        g = geometry(*sigs)
        if g.bounds >= 2**31 - 1:
            raise ValueError("too many boundaries for int32 positions")
        return OpSpec(
            family=cls.name,
            op=op,
            args=sigs,
            consts=(("out_int32", bool(out_int32)), ("right", bool(right))),
            device=DeviceSig.of(values.device),
            versions=software_versions(cls.template_version),
        )

    @staticmethod
    def geom(spec: OpSpec) -> Geom:
        x, b, s = spec.args
        assert x is not None and b is not None
        return geometry(x, b, s)

    @classmethod
    def templates_for(cls, spec: OpSpec) -> list[str]:
        g = cls.geom(spec)
        ok = {
            "search": True,
            "smem": not g.per_row and g.bounds <= _SMEM_MAX,
            "count": not g.per_row and g.bounds <= _COUNT_MAX,
            "row": g.per_row and g.bounds <= _SMEM_MAX,
        }
        return [t for t in TEMPLATES if ok[t]]

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op not in _OPS:
            return Skip(f"{op or node!s} is not bucketize/searchsorted")
        kw = node_kwargs(node)
        if kw is None:
            return Skip(f"could not normalize {op} arguments")
        right, out_int32 = kw.get("right", False), kw.get("out_int32", False)
        if op == BUCKETIZE:
            x_n, b_n, s_n = kw["self"] if "self" in kw else kw.get("input"), kw["boundaries"], None
        else:
            x_n, b_n, s_n = kw["self"] if "self" in kw else kw.get("input"), kw["sorted_sequence"], kw.get("sorter")
            side = kw.get("side")
            if side not in (None, "left", "right"):
                return Skip(f"side={side!r} is not a constant 'left'/'right'")
            if side == "left" and right is True:
                return Skip("side='left' with right=True (eager raises)")
            right = right or side == "right"
        if not isinstance(right, bool) or not isinstance(out_int32, bool):
            return Skip(f"right/out_int32 are not constants ({right!r}, {out_int32!r})")
        x, b, s, out = meta_val(x_n), meta_val(b_n), meta_val(s_n), meta_val(node)
        missing = s_n is not None and not isinstance(s, torch.Tensor)
        if missing or not all(isinstance(t, torch.Tensor) for t in (x, b, out)):
            return Skip("inputs or result have no FakeTensor metadata")
        try:
            spec = self.spec_for(op, x, b, s, right, out_int32)
        except ValueError as e:
            return Skip(str(e))
        want = torch.int32 if out_int32 else torch.int64
        if not _all_int(out) or tuple(out.shape) != tuple(x.shape) or out.dtype != want or not out.is_contiguous():
            return Skip(f"the op's output ({out.dtype}, strides {tuple(out.stride())}) is not a contiguous "
                        f"{want} tensor of the values' shape")
        return Match(spec=spec, inputs=[x_n, b_n, s_n], result_users={0: [node]})

    def inductor_fallback_reason(self, node: Any) -> str | None:
        """Inductor lowers both ops only where every tensor's device has ``BackendFeature.BUCKETIZE``
        (Triton devices); elsewhere the lowering calls ``fallback_handler``. No argument falls back."""
        devs = {t.device.type for t in (meta_val(a) for a in node.all_input_nodes) if isinstance(t, torch.Tensor)}
        other = sorted(d for d in devs if d not in ("cuda", "xpu"))
        if other:
            return f"Inductor's bucketize lowering needs a Triton device: calls ATen on {other[0]}"
        return None

    # -- semantics -------------------------------------------------------------------------------
    def input_error(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> str | None:
        """Inputs the kernels were not verified for (the runtime then runs eager): a sorter entry
        outside ``[0, M)`` (eager raises; the kernels mask the read, never out of bounds) and unsorted
        boundaries (documented as undefined; eager's binary search and the counting templates answer
        differently, so eager's answer is the one given)."""
        _, b, s = inputs
        assert b is not None
        m = b.shape[-1] if b.dim() else 0
        if s is not None and s.numel():
            if int(s.min()) < 0 or int(s.max()) >= m:
                return "searchsorted sorter index out of range"
            b = torch.gather(b, -1, s)
        if m > 1 and b.dtype != torch.bool and bool((b[..., 1:] < b[..., :-1]).any()):
            return "bucketize boundaries not sorted"
        return None

    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        x, b, s = inputs
        assert x is not None and b is not None
        right, out_int32 = bool(spec.const("right")), bool(spec.const("out_int32"))
        if spec.op == BUCKETIZE:
            return [torch.ops.aten.bucketize.Tensor(x, b, out_int32=out_int32, right=right)]
        return [torch.ops.aten.searchsorted.Tensor(b, x, out_int32=out_int32, right=right, sorter=s)]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """ATen's search written out in torch ops on CPU, vectorized over values (log2(M) steps): both
        sides converted to the promoted dtype, compared there."""
        x, b, s = inputs
        assert x is not None and b is not None
        g = self.geom(spec)
        right = bool(spec.const("right"))
        out_dt = torch.int32 if spec.const("out_int32") else torch.int64
        xv = x.cpu().to(g.common).reshape(1 if not g.per_row else max(g.rows, 1), -1) if x.numel() else None
        if xv is None:
            return [torch.empty(x.shape, dtype=out_dt, device=x.device)]
        m = g.bounds
        bb = b.cpu().to(g.common).reshape(-1, m) if m else None
        if bb is not None and s is not None:
            bb = torch.gather(bb, 1, s.cpu().reshape(-1, m).clamp(0, m - 1))
        lo = torch.zeros(xv.shape, dtype=torch.int64)
        hi = torch.full(xv.shape, m, dtype=torch.int64)
        while bb is not None:
            active = lo < hi
            if not bool(active.any()):
                break
            mid = lo + (hi - lo) // 2
            bv = torch.gather(bb.expand(xv.shape[0], m), 1, mid.clamp(max=m - 1))
            go = ~(bv > xv) if right else ~(bv >= xv)
            lo = torch.where(active & go, mid + 1, lo)
            hi = torch.where(active & ~go, mid, hi)
        return [lo.reshape(x.shape).to(out_dt).to(x.device)]

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        return 0.0, 0.0  # positions are exact

    # -- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _sequences(rows: int, m: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
        """``rows`` sorted sequences of ``m`` values in [-4, 4] (ints: [-40, 40]) with duplicates."""
        span = 4.0 if dtype.is_floating_point else 40.0
        b = _random((rows, m), dtype, -span, span, gen)
        if m > 2:  # some repeated boundaries: ties among them
            dup = torch.rand(rows, m, generator=gen) < 0.15
            b = torch.where(dup, torch.roll(b, 1, dims=1), b)
        return torch.sort(b, dim=1).values

    def _values_for(self, g: Geom, shape: Sequence[int], dtype: torch.dtype, bvals: torch.Tensor,
                    gen: torch.Generator) -> torch.Tensor:
        """Values around the boundaries' range, ~25% exactly on a boundary of their row (ties)."""
        span = 5.0 if dtype.is_floating_point else 50.0
        v = _random(shape, dtype, -span, span, gen)
        n = v.numel()
        if n and bvals.numel():
            rows = bvals.shape[0]
            flat = v.reshape(max(rows, 1) if g.per_row else 1, -1).clone()
            pos = torch.randint(0, bvals.shape[1], flat.shape, generator=gen)
            hits = torch.gather(bvals.expand(flat.shape[0], -1), 1, pos).to(dtype)
            flat = torch.where(torch.rand(flat.shape, generator=gen) < 0.25, hits, flat)
            v = flat.reshape(shape)
        return v

    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """Sorted random sequences (with repeats), values around them with ties; with a sorter, the
        sequences shuffled and the sorter their stable argsort."""
        gen = torch.Generator().manual_seed(int(seed))
        x_sig, b_sig, s_sig = spec.args
        assert x_sig is not None and b_sig is not None
        g = self.geom(spec)
        dev = _device(spec)
        rows = max(g.rows, 1) if g.per_row else 1
        seq = self._sequences(rows, g.bounds, b_sig.torch_dtype, gen)
        x = self._values_for(g, x_sig.shape, x_sig.torch_dtype, seq, gen)
        sorter = None
        if s_sig is not None:
            perm = torch.argsort(torch.rand(rows, g.bounds, generator=gen), dim=1)
            seq = torch.gather(seq, 1, perm)
            sorter = _strided(s_sig, torch.argsort(seq, dim=1, stable=True), dev)
        return [_strided(x_sig, x, dev), _strided(b_sig, seq.reshape(b_sig.shape), dev), sorter]

    def _case(self, spec: OpSpec, name: str, x: torch.Tensor, seq: torch.Tensor, shuffle: bool = True,
              ) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
        """An edge case with the spec's op, dtypes and constants: values ``x`` (any layout) and sorted
        sequences ``seq`` ([M] for 1-D specs, [rows, M] per row), shuffled behind a sorter when the spec
        has one."""
        x_sig, b_sig, s_sig = spec.args
        assert x_sig is not None and b_sig is not None
        dev = _device(spec)
        seq = _fit(seq, b_sig.torch_dtype)
        sorter = None
        if s_sig is not None:
            s2 = seq.reshape(math.prod(seq.shape[:-1]), seq.shape[-1])
            if shuffle and s2.numel():
                gen = torch.Generator().manual_seed(len(name))
                perm = torch.argsort(torch.rand(s2.shape, generator=gen), dim=-1)
                s2 = torch.gather(s2, -1, perm)
            sorter = torch.argsort(s2, dim=-1, stable=True).reshape(seq.shape).to(dev)
            seq = s2.reshape(seq.shape)
        x = _fit(x, x_sig.torch_dtype).to(dev)
        b = seq.to(dev)
        case_spec = self.spec_for(spec.op, x, b, sorter, bool(spec.const("right")), bool(spec.const("out_int32")))
        return name, case_spec, [x, b, sorter]

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        """Ties, repeated boundaries, values outside the range, empty boundaries / values, one boundary,
        strided values; floats: NaN/inf values, NaN/inf boundaries (sorted as torch sorts them: NaN
        last), -0.0; mixed dtypes: values that round in the promoted dtype."""
        x_sig, b_sig, _ = spec.args
        assert x_sig is not None and b_sig is not None
        g = self.geom(spec)
        xd, bd = x_sig.torch_dtype, b_sig.torch_dtype
        nan, inf = math.nan, math.inf
        rows = 3

        def seq(*vals: float) -> torch.Tensor:
            t = torch.tensor(vals, dtype=torch.float64)
            return t.expand(rows, -1).clone() if g.per_row else t

        def vals(*v: float) -> torch.Tensor:
            t = torch.tensor(v, dtype=torch.float64)
            return t.expand(rows, -1).clone() if g.per_row else t

        base = seq(-3, -1, -1, 0, 2, 2, 2, 5, 7)
        cases = [
            self._case(spec, "ties", vals(-3, -1, 0, 2, 5, 7, -2, 1, 3, 6, -1, 2), base),
            self._case(spec, "outside_range", vals(-100, -4, 8, 100, -100, 100), base),
            self._case(spec, "all_equal_boundaries", vals(1, 2, 3, 2), seq(2, 2, 2, 2, 2)),
            self._case(spec, "one_boundary", vals(0, 1, 2, 1), seq(1)),
            self._case(spec, "empty_boundaries", vals(0, 1, 2), seq()),
            self._case(spec, "empty_values", torch.empty((rows, 0) if g.per_row else (0,)), base),
        ]
        if g.per_row:
            per = torch.tensor([[-3.0, -1, 0, 2, 5, 7, 9, 11, 12], [0, 0, 1, 1, 2, 2, 3, 3, 4],
                                [-9, -8, -7, -6, -5, -4, -3, -2, -1]])
            xr = torch.tensor([[0.0, 2, 12, 13], [1, 1, 4, 5], [-9, -5, 0, -1]])
            cases.append(self._case(spec, "rows_differ", xr, per))
            t = torch.arange(40, dtype=torch.float64).reshape(5, 8) % 9 - 3
            cases.append(self._case(spec, "strided_values", t.T, base[:1].expand(8, -1)))  # [8, 5] transposed
            x3 = (torch.arange(24, dtype=torch.float64).reshape(2, 3, 4) % 7) - 2
            cases.append(self._case(spec, "three_d", x3, torch.tensor([-3.0, -1, 0, 2, 2, 5]).expand(2, 3, 6).clone()))
        else:
            t = (torch.arange(35, dtype=torch.float64).reshape(5, 7) % 11) - 4
            cases.append(self._case(spec, "strided_values", t.T, base))  # a transposed [7, 5] view
            cases.append(self._case(spec, "zero_d_value", torch.tensor(2.0, dtype=torch.float64), base))
            x3 = (torch.arange(30, dtype=torch.float64).reshape(2, 3, 5) % 13) - 5
            cases.append(self._case(spec, "values_3d", x3, base))
            cases.append(self._case(spec, "many_boundaries", torch.linspace(-10, 110, 53, dtype=torch.float64),
                                    torch.arange(0, min(max(g.bounds, 100), _COUNT_MAX), dtype=torch.float64)))
        if xd.is_floating_point:
            cases.append(self._case(spec, "nan_inf_values", vals(nan, inf, -inf, 2, nan, 0), base))
            cases.append(self._case(spec, "negative_zero", vals(-0.0, 0.0, -0.0, 1), seq(-1, -0.0, 0.0, 0.0, 1)))
        if bd.is_floating_point:
            # torch.sort order: -inf first, NaN last. The answer follows ATen's search path.
            for name, sq in (("nan_boundaries", seq(-1, 0, 2, nan)),
                             ("nan_boundaries_many", seq(-inf, 1, nan, nan, nan)),
                             ("inf_boundaries", seq(-inf, -inf, 0, inf, inf))):
                v = vals(-inf, -2, 0, 1, 2, 3, inf) if xd.is_floating_point else vals(-2, 0, 1, 2, 3, 100, -100)
                cases.append(self._case(spec, name, v, sq))
        if g.common != xd or g.common != bd:  # values that round where the comparison happens
            big = {torch.float16: 2049.0, torch.bfloat16: 257.0, torch.float32: 16777217.0}.get(g.common)
            if big is not None and all(d.is_floating_point or big <= torch.iinfo(d).max for d in (xd, bd)):
                cases.append(self._case(spec, "promotion_rounding", vals(big, big - 1, big + 1, big + 2),
                                        seq(big - 1, big, big + 1, big + 3)))
        return cases

    # -- numerics / cost -------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        """Values read once, the boundaries (and sorter) read once, the output written once."""
        x, b, s = spec.args
        assert x is not None and b is not None
        out_e = 4 if spec.const("out_int32") else 8
        total = x.numel() * (_elem_size(x.dtype) + out_e) + b.numel() * _elem_size(b.dtype)
        return total + (s.numel() * 8 if s is not None else 0)

    def floor_flops(self, spec: OpSpec) -> int:
        return 0  # comparisons, not FLOPs: the search is latency/bandwidth bound

    # -- kernels ---------------------------------------------------------------------------------
    @staticmethod
    def _warps(tile: int) -> int:
        """~8-16 elements per thread, 1..8 warps (a knob the search varies)."""
        return max(1, min(8, _next_pow2(max(tile // 256, 1))))

    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """~10-25 proposals. Default first: per-row tiles for per-row sequences that fit, else count for
        a few boundaries, registers/shared memory up to 4096, else the global search."""
        g = self.geom(spec)
        templates = self.templates_for(spec)
        n, m = max(g.numel, 1), g.bounds
        nb = _next_pow2(max(m, 1))
        blk0 = max(16, min(_next_pow2(n), 1024))
        out: list[tuple[str, dict[str, Any]]] = []

        def add(t: str, tile: int, nw: int | None = None, **cfg: Any) -> None:
            if t in templates and tile <= _MAX_TILE:
                out.append((t, dict(cfg, num_warps=nw or self._warps(tile), num_stages=1)))

        def tiles_opts(blk: int) -> list[int]:
            progs = _cdiv(n, blk)
            return [1] + [t for t in (4, 16) if progs >= 8 * t]

        def count(blk: int, bc: int, tiles: int = 1, nw: int | None = None) -> None:
            add("count", blk * bc, nw, BLOCK=blk, BC=bc, TILES=tiles)

        def smem(blk: int, tiles: int = 1, nw: int | None = None, swz: bool = True, fast: bool = True) -> None:
            extra = {"SWZ": 1} if swz and nb >= 64 else {}  # below 64 boundaries the swizzle is the identity
            if fast and m >= 2:
                extra["FAST"] = 1
            add("smem", blk, nw or self._warps(max(blk, nb)), BLOCK=blk, TILES=tiles, **extra)

        def search(blk: int, nw: int | None = None) -> None:
            add("search", blk, nw, BLOCK=blk)

        bc0 = min(nb, 32)
        cblk = max(16, min(blk0, 4096 // bc0))
        if g.per_row:
            bk = max(1, min(_next_pow2(g.cols), 256))
            br = max(1, min(_next_pow2(max(g.rows, 1)), _SMEM_MAX // nb, 1024 // bk, 64))

            def row(br_: int, bk_: int, nw: int | None = None) -> None:
                if br_ * nb <= _SMEM_MAX and br_ * bk_ <= 4096:
                    add("row", br_ * max(bk_, nb), nw, BLOCK_R=br_, BLOCK_K=bk_)  # warps for the boundary tile

            row(br, bk)
            for br_ in (br * 2, max(1, br // 2), 1):
                if br_ <= _next_pow2(max(g.rows, 1)):
                    row(br_, bk)
            for bk_ in (bk * 2, bk // 2):
                if 1 <= bk_ <= 2 * _next_pow2(max(g.cols, 1)):
                    row(br, bk_)
            nw0 = self._warps(br * max(bk, nb))
            for nw in (nw0 * 2, nw0 // 2):
                if 1 <= nw <= 8:
                    row(br, bk, nw)
        else:
            if m <= 32:
                count(cblk, bc0)
            smem(blk0)
        search(blk0)
        if not g.per_row:
            for blk in (blk0 * 2, blk0 // 2, blk0 * 4):
                if 16 <= blk <= 4096:
                    smem(blk)
            for tiles in tiles_opts(blk0)[1:]:
                smem(blk0, tiles)
            smem(blk0, fast=False)
            smem(blk0, swz=False, fast=False)
            nw0 = self._warps(blk0)
            for nw in (nw0 * 2, nw0 // 2):
                if 1 <= nw <= 8:
                    smem(blk0, nw=nw)
            count(cblk, bc0)
            for bc in (bc0 * 2, bc0 // 2):
                if 1 <= bc <= max(nb, 1) and bc >= 4:
                    count(max(16, min(blk0, 4096 // bc)), bc)
            for tiles in tiles_opts(cblk)[1:]:
                count(cblk, bc0, tiles)
            count(max(16, cblk // 2), bc0)
        for blk in (blk0 * 2, blk0 // 2, 256, 2048):
            if 16 <= blk <= 4096:
                search(blk)
        nw0 = self._warps(blk0)
        for nw in (nw0 * 2, nw0 // 2):
            if 1 <= nw <= 8:
                search(blk0, nw)

        return unique_candidates(out, lambda t: TEMPLATES[t][1])

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        g = self.geom(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "bucketize")
        if template not in self.templates_for(spec):
            raise ValueError(f"the {template} template cannot serve {spec.describe()}")
        for k, v in cfg.items():
            if (k.startswith("BLOCK") or k == "BC") and (int(v) < 1 or int(v) & (int(v) - 1)):
                raise ValueError(f"{k}={v} is not a power of two")
        nb = _next_pow2(max(g.bounds, 1))  # the register tile of smem / row: every boundary of a sequence
        has_sorter = spec.args[2] is not None
        kernel, _ = TEMPLATES[template]
        args: list[tuple[str, Any]] = [
            ("x_ptr", In(0)), ("b_ptr", In(1)), ("s_ptr", In(2) if has_sorter else In(1)), ("out_ptr", Out(0)),
            ("numel", g.numel), ("n_cols", max(g.cols, 1)), ("n_bounds", g.bounds),
            ("stride_xr", g.xs[0]), ("stride_xk", g.xs[1]), ("stride_br", g.bs[0]), ("stride_bm", g.bs[1]),
            ("stride_sr", g.ss[0]), ("stride_sm", g.ss[1]),
            ("RIGHT", bool(spec.const("right"))), ("CMP", g.cmp), ("HAS_SORTER", has_sorter),
            ("STEPS", g.bounds.bit_length()),
        ]
        if template == "row":
            br, bk = int(cfg["BLOCK_R"]), int(cfg["BLOCK_K"])
            args += [("n_rows", g.rows), ("NB", nb), ("BLOCK_R", br), ("BLOCK_K", bk)]
            grid = (_cdiv(g.rows, br) if g.numel else 0,)
        else:
            blk = int(cfg["BLOCK"])
            args += [("TWO_D", g.two_d)]
            if template == "search":
                args += [("BLOCK", blk)]
                grid = (_cdiv(g.numel, blk),)
            else:
                tiles = int(cfg["TILES"])
                if tiles < 1:
                    raise ValueError(f"TILES={tiles} < 1")
                extra = [("NB", nb)] if template == "smem" else [("BC", int(cfg["BC"]))]
                args += extra + [("BLOCK", blk), ("TILES", tiles)]
                # knobs bound only when on: older stored sources lack them
                if template == "smem" and (cfg.get("SWZ") or cfg.get("FAST")):
                    args += [("SWZ", bool(cfg.get("SWZ")))]
                if template == "smem" and cfg.get("FAST"):
                    args += [("FAST", True), ("HALVINGS", max(g.bounds - 1, 0).bit_length())]
                grid = (_cdiv(g.numel, blk * tiles),)
        if grid[0] > _MAX_GRID_X:
            raise ValueError(f"grid {grid} exceeds the launch limit")
        x_sig = spec.args[0]
        assert x_sig is not None
        out_dt = "int32" if spec.const("out_int32") else "int64"
        return CallPlan(
            kernel=kernel,
            grid=grid,
            args=tuple(args),
            outputs=(OutBuf(tuple(x_sig.shape), out_dt, fill=None),),
            num_warps=int(cfg.get("num_warps", 4)),
            num_stages=int(cfg.get("num_stages", 1)),
        )


register(BucketizeFamily())
