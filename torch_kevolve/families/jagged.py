"""The jagged family: ``aten._jagged_to_padded_dense_forward`` and ``aten._padded_dense_to_jagged_forward``.

Why a family of its own: both are pure data movement, so a kernel's floor is the bytes it moves, but
ATen's CPU kernels loop over the batch in C++ issuing one ``copy_`` per sequence (``.item()`` per
offset), and Inductor lowers them only on CUDA and only for the common shapes (below); everything else
is an ATen fallback.

What reaches the post-grad graph. A call ``torch.ops.aten._jagged_to_padded_dense_forward(...)``
inside ``torch.compile`` reaches the post-grad graph as is (no decomposition), with its offsets as a
list of one node and ``max_lengths`` as a list of ints. ``_padded_dense_to_jagged_forward`` reaches it
as is when ``total_L`` is given; with ``total_L=None`` its output size is data-dependent: Dynamo graph-
breaks (``DynamicOutputShapeException``) or, with ``capture_dynamic_output_shape_ops``, the node has an
unbacked-SymInt size (we Skip it). Several jagged dims (``len(offsets) > 1``, fbgemm's nested offsets)
never reach a graph: the meta/fake implementations of both ops assert one jagged dim (so tracing fails on
every device), and so do ATen's CPU kernels. So one jagged dim is served; fbgemm's own ops take several.

Where Inductor lowers (``torch/_inductor/jagged_lowerings.py``), both ops in ``lowered_ops``: a
Pointwise kernel only when the device is CUDA and there is one jagged dim with 1-D integer offsets on the
same device and, for jagged->padded, 2-D values (``[total, D]``) / for padded->jagged, a 3-D dense input
and ``total_L`` given. Everything else (CPU and every other device, 1-D or >2-D values, 2-D or >3-D
dense) calls the ATen kernel (``fallback_handler``). :meth:`JaggedFamily.lowering_applies` says which
case a node is in.

ATen semantics pinned here (tests compare against eager on CPU):

* jagged->padded: ``out[b, m] = values[offsets[b] + m]`` for ``m < min(offsets[b+1] - offsets[b],
  max_length)``, else ``padding_value``. Sequences longer than ``max_length`` are truncated; offsets need
  not start at 0 (rows outside every sequence are ignored). Output ``[B, max_length, *values.shape[1:]]``
  with ``B = len(offsets) - 1``, contiguous; 1-D values give ``[B, max_length]``.
* ``padding_value`` is a double converted to the values dtype by ``fill_``: 1e30 becomes inf in fp16,
  NaN stays NaN; for integer dtypes the conversion is a C++ cast (-2.7 -> -2; NaN or out-of-range values
  are undefined behaviour: we Skip them); bool: nonzero -> True.
* padded->jagged: ``out[j] = padded[b, j - offsets[b]]`` for ``offsets[b] <= j < offsets[b+1]``. Output
  ``[total_L, *padded.shape[2:]]``, contiguous. Eager CPU checks ``offsets[-1] == total_L`` and raises on
  a sequence longer than ``padded.shape[1]``; Inductor's CUDA lowering writes 0 at positions
  ``>= padded.shape[1]`` ("jagged sequence longer than max_seq_len"), and so do we (ATen's CUDA kernel is
  fbgemm's ``dense_to_jagged``, not run here: on a GPU, compare it before trusting this case). Rows
  before ``offsets[0]`` (offsets not starting at 0) are left uninitialized by eager (``new_empty``); our
  kernels write 0 there (every output element is written). ``padded.shape[0]`` may exceed B (extra rows
  unused); fewer rows make eager raise (Skip).
* every dtype works in eager (it's a copy); served: float32/16, bfloat16, float64, int8/16/32/64, uint8,
  bool. Offsets: int32/int64 (eager also takes int16 and floats, rarely seen: Skip). A copy is exact, so
  :meth:`tolerance` is 0 for every dtype.

Bad offsets (decreasing, outside the values) make eager raise or read garbage; the kernels mask every
read and write to its tensor's bounds (padding / 0 there) so they cannot fault.

Layouts: values (and the dense input) may have any row/batch/position stride; the dims after the jagged
one must collapse to one strided dim ``D`` (transposed 2-D values do). Outputs are contiguous.

The padding value travels as its bit pattern (``PAD_BITS``, a constexpr) and is rebuilt with a bitcast in
the kernel: exact for every dtype (float64 included; a Python float kernel argument would be fp32), and
no inf/NaN literal reaches generated wrapper code.

Templates (each a complete module; int64 addressing throughout):

* jagged->padded ``j2p_tile``: grid (cdiv(B, BLOCK_B) * cdiv(M, BLOCK_M), cdiv(D, BLOCK_D)); a program
  fills a [BLOCK_B, BLOCK_M, BLOCK_D] output tile, loading values where a sequence covers the position
  and padding elsewhere. BLOCK_B > 1 packs several short rows into one program.
* ``j2p_loop``: grid (B, cdiv(D, BLOCK_D)); one program per batch row walks positions BLOCK_M at a time: a
  copy phase over the sequence's (truncated) rows, then a store-only padding phase (no index math or
  loads for padding). Long max_length with skewed lengths.
* ``j2p_flat``: grid (cdiv(B*M*D, BLOCK),); flat over output elements, (b, m, d) by division, offsets
  gathered per element. Tiny D (1-D values), where [.., BLOCK_D] tiles waste lanes.
* padded->jagged ``p2j_search``: grid (cdiv(total_L, BLOCK_J), cdiv(D, BLOCK_D)); BLOCK_J consecutive
  jagged rows find their batch by a vectorized binary search over the offsets. NARROW: two scalar
  searches bound the batches the block touches first, so each row's search runs over that window only
  (about one step for long sequences instead of log2(B)).
* ``p2j_batch``: grid (B, cdiv(D, BLOCK_D)); one program per batch row walks its jagged rows BLOCK_J at
  a time (no search); the first and last programs zero rows no sequence covers.
* ``p2j_flat``: grid (cdiv(total_L*D, BLOCK),); flat over output elements with a per-element search.

The op returns one tensor (no getitems), so ``Match.result_users`` is ``{0: [node]}``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip
from .util import all_int as _all_int, cdiv as _cdiv, elem_size as _elem_size, next_pow2 as _next_pow2
from .util import check_pow2, template_of, unique_candidates
from .util import meta_val, node_kwargs
from .util import strided as _strided


J2P = "aten._jagged_to_padded_dense_forward.default"
P2J = "aten._padded_dense_to_jagged_forward.default"
_DTYPES = (
    torch.float32, torch.float16, torch.bfloat16, torch.float64,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
)
_INDEX_DTYPES = (torch.int32, torch.int64)
_MAX_TILE = 8192  # elements of one tile: register pressure on sm_90
_MAX_GRID_X = 2**31 - 1
_MAX_GRID_Y = 65535
_INT_OF_WIDTH = {8: torch.int8, 16: torch.int16, 32: torch.int32, 64: torch.int64}

# ------------------------------------------------------------------------------------------------
# Kernel sources. Each template's source is a complete module; shared helpers are pasted into each
# so a template's text (and so its hash) depends only on what it runs.
# ------------------------------------------------------------------------------------------------

_HEADER = '''import triton
import triton.language as tl
'''

_PADDING = '''

@triton.jit
def _padding(out_ptr, PAD_BITS: tl.constexpr, PAD_WIDTH: tl.constexpr):
    \"\"\"The padding value as a [1] tensor of the output dtype, rebuilt from its bit pattern (exact for
    every dtype; no inf/NaN literal in generated code). PAD_WIDTH 1 is bool.\"\"\"
    if PAD_WIDTH == 64:
        bits = tl.full([1], PAD_BITS, tl.int64)
    elif PAD_WIDTH == 32:
        bits = tl.full([1], PAD_BITS, tl.int32)
    elif PAD_WIDTH == 16:
        bits = tl.full([1], PAD_BITS, tl.int16)
    else:
        bits = tl.full([1], PAD_BITS, tl.int8)
    if PAD_WIDTH == 1:
        pad = bits != 0
    else:
        pad = bits.to(out_ptr.dtype.element_ty, bitcast=True)
    return pad
'''

_J2P_SIGNATURE = '''
    values_ptr, offsets_ptr, out_ptr,
    num_rows, batch, max_len, dim, stride_row, stride_d, stride_off,
    PAD_BITS: tl.constexpr, PAD_WIDTH: tl.constexpr,'''

J2P_TILE_SOURCE = _HEADER + _PADDING + '''

@triton.jit
def jagged_to_padded_tile(''' + _J2P_SIGNATURE + '''
    m_blocks, BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    \"\"\"One program = a [BLOCK_B rows, BLOCK_M positions, BLOCK_D columns] tile of the padded output.\"\"\"
    pid = tl.program_id(0)
    bb = pid // m_blocks
    mb = pid - bb * m_blocks
    b = bb.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    m = mb.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    b_live = b < batch
    d_mask = d < dim
    start = tl.load(offsets_ptr + b * stride_off, mask=b_live, other=0).to(tl.int64)
    end = tl.load(offsets_ptr + (b + 1) * stride_off, mask=b_live, other=0).to(tl.int64)
    n = tl.minimum(end - start, max_len)  # sequences longer than max_length are truncated
    rows = start[:, None] + m[None, :]
    # Rows outside the values (bad offsets) read as padding: no fault.
    ok = (m[None, :] < n[:, None]) & (rows >= 0) & (rows < num_rows)
    ok3 = ok[:, :, None] & d_mask[None, None, :]
    x = tl.load(values_ptr + rows[:, :, None] * stride_row + d[None, None, :] * stride_d, mask=ok3)
    val = tl.where(ok3, x, _padding(out_ptr, PAD_BITS, PAD_WIDTH))
    out_row = (b[:, None] * max_len + m[None, :]) * dim
    live = b_live[:, None] & (m < max_len)[None, :]
    tl.store(out_ptr + out_row[:, :, None] + d[None, None, :], val, mask=live[:, :, None] & d_mask[None, None, :])
'''

J2P_LOOP_SOURCE = _HEADER + _PADDING + '''

@triton.jit
def jagged_to_padded_loop(''' + _J2P_SIGNATURE + '''
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    \"\"\"One program = one batch row x BLOCK_D columns: a copy phase over the (truncated) sequence, then a
    store-only padding phase up to max_length.\"\"\"
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    d_mask = d < dim
    start = tl.load(offsets_ptr + b * stride_off).to(tl.int64)
    end = tl.load(offsets_ptr + (b + 1) * stride_off).to(tl.int64)
    n = tl.maximum(tl.minimum(end - start, max_len), 0)
    pad = _padding(out_ptr, PAD_BITS, PAD_WIDTH)
    mm = tl.arange(0, BLOCK_M).to(tl.int64)
    out_row = out_ptr + b * max_len * dim
    for m0 in range(0, n, BLOCK_M):
        m = m0 + mm
        rows = start + m
        ok = (m < n) & (rows >= 0) & (rows < num_rows)  # bad offsets read as padding: no fault
        x = tl.load(values_ptr + rows[:, None] * stride_row + d[None, :] * stride_d,
                    mask=ok[:, None] & d_mask[None, :])
        val = tl.where(ok[:, None], x, pad)
        tl.store(out_row + m[:, None] * dim + d[None, :], val, mask=(m < max_len)[:, None] & d_mask[None, :])
    pad_tile = tl.broadcast_to(tl.expand_dims(pad, 0), (BLOCK_M, BLOCK_D))
    for m0 in range((n + BLOCK_M - 1) // BLOCK_M * BLOCK_M, max_len, BLOCK_M):
        m = m0 + mm
        tl.store(out_row + m[:, None] * dim + d[None, :], pad_tile, mask=(m < max_len)[:, None] & d_mask[None, :])
'''

J2P_FLAT_SOURCE = _HEADER + _PADDING + '''

@triton.jit
def jagged_to_padded_flat(''' + _J2P_SIGNATURE + '''
    numel, per_batch, BLOCK: tl.constexpr,
):
    \"\"\"One program = BLOCK consecutive output elements; (b, m, d) by division (per_batch = M * D).\"\"\"
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    live = e < numel
    b = e // per_batch
    r = e - b * per_batch
    m = r // dim
    d = r - m * dim
    start = tl.load(offsets_ptr + b * stride_off, mask=live, other=0).to(tl.int64)
    end = tl.load(offsets_ptr + (b + 1) * stride_off, mask=live, other=0).to(tl.int64)
    n = tl.minimum(end - start, max_len)
    rows = start + m
    ok = live & (m < n) & (rows >= 0) & (rows < num_rows)
    x = tl.load(values_ptr + rows * stride_row + d * stride_d, mask=ok)
    tl.store(out_ptr + e, tl.where(ok, x, _padding(out_ptr, PAD_BITS, PAD_WIDTH)), mask=live)
'''

_SEARCH = '''

@triton.jit
def _upper_bound(offsets_ptr, stride_off, j, lo, hi, steps):
    \"\"\"Per element: the first k in [lo, hi) with offsets[k] > j, else hi (offsets non-decreasing);
    ``steps`` >= bit_length(hi - lo). Works on scalars and vectors alike.\"\"\"
    for _ in range(0, steps):
        active = lo < hi
        mid = (lo + hi) // 2
        o = tl.load(offsets_ptr + mid * stride_off, mask=active, other=0).to(tl.int64)
        right = active & (o <= j)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(active & (o > j), mid, hi)
    return lo


@triton.jit
def _source(offsets_ptr, stride_off, j, ub, live, batch, max_len):
    \"\"\"Jagged row j -> (batch b, position pos, ok): ok where j lies in sequence b at a position below
    max_len (positions past the dense input and rows in no sequence are 0).\"\"\"
    b = ub - 1
    ok = live & (b >= 0) & (b < batch)
    start = tl.load(offsets_ptr + b * stride_off, mask=ok, other=0).to(tl.int64)
    end = tl.load(offsets_ptr + (b + 1) * stride_off, mask=ok, other=0).to(tl.int64)
    pos = j - start
    ok = ok & (pos >= 0) & (j < end) & (pos < max_len)
    return b, pos, ok
'''

_P2J_SIGNATURE = '''
    dense_ptr, offsets_ptr, out_ptr,
    total_len, batch, max_len, dim, stride_b, stride_l, stride_d, stride_off,'''

P2J_SEARCH_SOURCE = _HEADER + _SEARCH + '''

@triton.jit
def padded_to_jagged_search(''' + _P2J_SIGNATURE + '''
    search_steps, NARROW: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    \"\"\"One program = BLOCK_J consecutive jagged rows x BLOCK_D columns; rows find their batch by binary
    search over the offsets (NARROW: within the window the block's first and last rows bound).\"\"\"
    j0 = tl.program_id(0).to(tl.int64) * BLOCK_J
    j = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    live = j < total_len
    d_mask = d < dim
    zero = tl.zeros([BLOCK_J], dtype=tl.int64)
    if NARROW:
        j_last = tl.minimum(j0 + BLOCK_J, total_len) - 1
        lo0 = _upper_bound(offsets_ptr, stride_off, j0, j0 * 0, j0 * 0 + batch + 1, search_steps)
        hi0 = _upper_bound(offsets_ptr, stride_off, j_last, j0 * 0, j0 * 0 + batch + 1, search_steps)
        hi0 = tl.maximum(hi0, lo0)
        w = hi0 - lo0  # steps = bit_length(w)
        steps = w * 0
        while w > 0:
            w = w // 2
            steps += 1
        ub = _upper_bound(offsets_ptr, stride_off, j, zero + lo0, zero + hi0, steps)
    else:
        ub = _upper_bound(offsets_ptr, stride_off, j, zero, zero + batch + 1, search_steps)
    b, pos, ok = _source(offsets_ptr, stride_off, j, ub, live, batch, max_len)
    x = tl.load(dense_ptr + (b * stride_b + pos * stride_l)[:, None] + d[None, :] * stride_d,
                mask=ok[:, None] & d_mask[None, :], other=0)
    tl.store(out_ptr + j[:, None] * dim + d[None, :], x, mask=live[:, None] & d_mask[None, :])
'''

P2J_BATCH_SOURCE = _HEADER + '''

@triton.jit
def _zero_rows(out_ptr, lo, hi, dim, d, d_mask, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    \"\"\"Zero jagged rows [lo, hi) (rows no sequence covers; eager leaves them uninitialized).\"\"\"
    zeros = tl.zeros([BLOCK_J, BLOCK_D], dtype=out_ptr.dtype.element_ty)
    jj = tl.arange(0, BLOCK_J).to(tl.int64)
    for r0 in range(lo, hi, BLOCK_J):
        r = r0 + jj
        tl.store(out_ptr + r[:, None] * dim + d[None, :], zeros, mask=(r < hi)[:, None] & d_mask[None, :])


@triton.jit
def padded_to_jagged_batch(''' + _P2J_SIGNATURE + '''
    last_prog, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    \"\"\"One program = one batch row x BLOCK_D columns, walking its jagged rows BLOCK_J at a time.\"\"\"
    pid = tl.program_id(0)
    b = pid.to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    d_mask = d < dim
    b_live = b < batch
    start = tl.load(offsets_ptr + b * stride_off, mask=b_live, other=0).to(tl.int64)
    end = tl.load(offsets_ptr + (b + 1) * stride_off, mask=b_live, other=0).to(tl.int64)
    # Rows written: clamped to [0, total_len) so bad offsets cannot fault.
    lo = tl.minimum(tl.maximum(start, 0), total_len)
    hi = tl.maximum(tl.minimum(end, total_len), lo)
    jj = tl.arange(0, BLOCK_J).to(tl.int64)
    for r0 in range(lo, hi, BLOCK_J):
        r = r0 + jj
        pos = r - start
        rm = r < hi
        ok = rm & (pos < max_len)  # positions past the dense input are 0
        x = tl.load(dense_ptr + (b * stride_b + pos * stride_l)[:, None] + d[None, :] * stride_d,
                    mask=ok[:, None] & d_mask[None, :], other=0)
        tl.store(out_ptr + r[:, None] * dim + d[None, :], x, mask=rm[:, None] & d_mask[None, :])
    if pid == 0:
        first = tl.minimum(tl.maximum(tl.load(offsets_ptr).to(tl.int64), 0), total_len)
        _zero_rows(out_ptr, start * 0, first, dim, d, d_mask, BLOCK_J, BLOCK_D)
    if pid == last_prog:
        final = tl.minimum(tl.maximum(tl.load(offsets_ptr + batch * stride_off).to(tl.int64), 0), total_len)
        _zero_rows(out_ptr, final, start * 0 + total_len, dim, d, d_mask, BLOCK_J, BLOCK_D)
'''

P2J_FLAT_SOURCE = _HEADER + _SEARCH + '''

@triton.jit
def padded_to_jagged_flat(''' + _P2J_SIGNATURE + '''
    search_steps, numel, BLOCK: tl.constexpr,
):
    \"\"\"One program = BLOCK consecutive output elements, each searching its row's batch.\"\"\"
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    live = e < numel
    j = e // dim
    d = e - j * dim
    zero = tl.zeros([BLOCK], dtype=tl.int64)
    ub = _upper_bound(offsets_ptr, stride_off, j, zero, zero + batch + 1, search_steps)
    b, pos, ok = _source(offsets_ptr, stride_off, j, ub, live, batch, max_len)
    x = tl.load(dense_ptr + b * stride_b + pos * stride_l + d * stride_d, mask=ok, other=0)
    tl.store(out_ptr + e, x, mask=live)
'''

TEMPLATES: dict[str, tuple[str, str, str]] = {
    # template name -> (op, kernel name, source)
    "j2p_tile": (J2P, "jagged_to_padded_tile", J2P_TILE_SOURCE),
    "j2p_loop": (J2P, "jagged_to_padded_loop", J2P_LOOP_SOURCE),
    "j2p_flat": (J2P, "jagged_to_padded_flat", J2P_FLAT_SOURCE),
    "p2j_search": (P2J, "padded_to_jagged_search", P2J_SEARCH_SOURCE),
    "p2j_batch": (P2J, "padded_to_jagged_batch", P2J_BATCH_SOURCE),
    "p2j_flat": (P2J, "padded_to_jagged_flat", P2J_FLAT_SOURCE),
}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _inner(shape: Sequence[int], stride: Sequence[int]) -> tuple[int, int] | None:
    """Dims ``shape`` (those after the jagged one) as one strided dim: (size, stride), or None when they
    do not collapse (size-1 dims may have any stride)."""
    size = math.prod(shape)
    if size == 0:
        return 0, 1
    dims = [(int(s), int(st)) for s, st in zip(shape, stride) if s != 1]
    if not dims:
        return 1, 1
    for (_, st0), (s1, st1) in zip(dims, dims[1:]):
        if st0 != s1 * st1:
            return None
    return size, dims[-1][1]


def normalize_padding(value: Any, dtype: torch.dtype) -> float | int | bool:
    """``padding_value`` as ``fill_`` stores it in ``dtype``. Raises ValueError where eager's conversion
    is undefined (NaN/inf/out of range into an integer dtype) or the value is not a constant."""
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, (int, float)):
        raise ValueError(f"padding_value {value!r} is not a constant number")
    v = float(value)
    if dtype == torch.bool:
        return v != 0.0
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        if not math.isfinite(v) or not info.min <= math.trunc(v) <= info.max:
            raise ValueError(f"padding_value {value!r} does not fit {dtype} (eager's conversion is undefined)")
        return int(math.trunc(v))
    return float(torch.tensor(v, dtype=torch.float64).to(dtype).item())


def _pad_repr(v: float | int | bool) -> str:
    """A spec constant for the padding: exact (repr round-trips), and NaN compares equal as a string."""
    return repr(v)


def _pad_value(text: str) -> float | int | bool:
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        return float(text)


def pad_bits(value: float | int | bool, dtype: torch.dtype) -> tuple[int, int]:
    """(bit pattern as a signed int of the dtype's width, width; 1 for bool) for ``PAD_BITS``."""
    if dtype == torch.bool:
        return int(bool(value)), 1
    t = torch.tensor([value], dtype=torch.float64 if dtype.is_floating_point else torch.int64).to(dtype)
    width = t.element_size() * 8
    return int(t.view(_INT_OF_WIDTH[width]).item()), width


def _lengths(
    total: int, b: int, gen: torch.Generator, cap: int | None = None, empty_frac: float = 0.15
) -> torch.Tensor:
    """``b`` random non-negative lengths summing to ``total``, about ``empty_frac`` of them forced empty;
    with ``cap``, none above it where ``b * cap`` allows (the excess is water-filled into rows with room,
    non-empty ones first). O(b)."""
    if b <= 0:
        return torch.zeros(0, dtype=torch.int64)
    cuts = torch.sort(torch.randint(0, total + 1, (b - 1,), generator=gen)).values
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), cuts])
    forced = torch.rand(b, generator=gen) < empty_frac
    forced[0] = False
    starts = torch.cummax(torch.where(forced, torch.zeros_like(starts), starts), 0).values  # forced: empty
    lens = torch.diff(torch.cat([starts, torch.tensor([total])]))
    if cap is not None:
        spill = int((lens - cap).clamp(min=0).sum())
        lens = lens.clamp(max=cap)
        if spill:
            order = torch.randperm(b, generator=gen)
            order = torch.cat([order[~forced[order]], order[forced[order]]])
            room = cap - lens[order]
            short = spill - int(room.sum())
            if short > 0:  # cannot respect the cap: the last row takes the rest
                room[-1] += short
            before = torch.cumsum(room, 0) - room
            lens[order] += torch.minimum(room, (spill - before).clamp(min=0))
    return lens


def _offsets(lens: torch.Tensor, start: int = 0) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)]) + start


def _random_values(shape: Sequence[int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    shape = tuple(shape)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    lo, hi = (0, 256) if dtype == torch.uint8 else (-100, 101)
    return torch.randint(lo, hi, shape, generator=gen).to(dtype)


def _device(spec: OpSpec) -> torch.device:
    return torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)


# ------------------------------------------------------------------------------------------------
# The family
# ------------------------------------------------------------------------------------------------


class JaggedFamily(OpFamily):
    """Jagged <-> padded dense conversions with one jagged dim (ATen's forward ops)."""

    name = "jagged"
    ops = (J2P, P2J)
    # Inductor lowers both on CUDA for one jagged dim, 2-D values / 3-D dense, total_L given (see the
    # module docstring and ``lowering_applies``); every other case is an ATen fallback.
    lowered_ops = (J2P, P2J)
    template_version = "1"

    # -- specs -----------------------------------------------------------------------------------
    @staticmethod
    def _check_common(data: Any, offsets: Any, what: str) -> tuple[Any, str | None]:
        """(the single offsets tensor, why not) for the data tensor and the offsets list."""
        if isinstance(offsets, torch.Tensor):
            offsets = [offsets]
        offsets = list(offsets)
        if len(offsets) != 1:
            return None, (f"{len(offsets)} jagged dims: one is served (ATen's meta and CPU kernels assert one "
                          "jagged dim)")
        off = offsets[0]
        if not isinstance(data, torch.Tensor) or not isinstance(off, torch.Tensor):
            return off, "inputs are not tensors"
        if data.dtype not in _DTYPES:
            return off, f"{what} dtype {data.dtype} not served"
        if off.dtype not in _INDEX_DTYPES:
            return off, f"offsets dtype {off.dtype} not int32/int64"
        for name, t in ((what, data), ("offsets", off)):
            if not _all_int(t):
                return off, f"{name} has symbolic sizes/strides (dynamic shapes not served yet)"
        if off.dim() != 1:
            return off, f"offsets is {off.dim()}-D, expected 1-D (eager raises)"
        if off.shape[0] < 1:
            return off, "offsets is empty (eager raises)"
        if data.device != off.device:
            return off, "inputs on different devices"
        return off, None

    @classmethod
    def j2p_spec(
        cls, values: torch.Tensor, offsets: Sequence[torch.Tensor] | torch.Tensor, max_lengths: Sequence[Any] | int,
        padding_value: Any = 0.0, op: str = J2P,
    ) -> OpSpec:
        """The spec of a jagged->padded call on concrete (or fake) tensors. Raises ValueError if unsupported."""
        off, why = cls._check_common(values, offsets, "values")
        if why is not None:
            raise ValueError(why)
        ml = [max_lengths] if isinstance(max_lengths, int) else list(max_lengths)
        if len(ml) != 1:
            raise ValueError(f"{len(ml)} max_lengths for one jagged dim")
        m = ml[0]
        if not isinstance(m, int) or isinstance(m, bool):
            raise ValueError(f"max_length {m!r} is not a constant int (dynamic shapes not served yet)")
        if m < 0:
            raise ValueError(f"max_length {m} < 0")
        if values.dim() < 1:
            raise ValueError("values is 0-D (eager raises)")
        inner = _inner(values.shape[1:], values.stride()[1:])
        if inner is None:
            raise ValueError(f"values' trailing dims (strides {tuple(values.stride())[1:]}) do not collapse to one "
                             "strided dim")
        if _cdiv(inner[0], 256) > _MAX_GRID_Y:
            raise ValueError(f"inner size {inner[0]} too large for the grid")
        pad = normalize_padding(padding_value, values.dtype)
        return OpSpec(
            family=cls.name,
            op=op,
            args=(TensorSig.of(values), TensorSig.of(off)),
            consts=(("max_length", int(m)), ("padding_value", _pad_repr(pad))),
            device=DeviceSig.of(values.device),
            versions=software_versions(cls.template_version),
        )

    @classmethod
    def p2j_spec(
        cls, dense: torch.Tensor, offsets: Sequence[torch.Tensor] | torch.Tensor, total_L: Any, op: str = P2J,
    ) -> OpSpec:
        """The spec of a padded->jagged call on concrete (or fake) tensors. Raises ValueError if unsupported."""
        off, why = cls._check_common(dense, offsets, "dense")
        if why is not None:
            raise ValueError(why)
        if total_L is None:
            raise ValueError("total_L is None: the output size is data-dependent (pass total_L)")
        if not isinstance(total_L, int) or isinstance(total_L, bool):
            raise ValueError(f"total_L {total_L!r} is not a constant int (dynamic shapes not served yet)")
        if total_L < 0:
            raise ValueError(f"total_L {total_L} < 0")
        if dense.dim() < 2:
            raise ValueError(f"dense is {dense.dim()}-D, expected [B, max_length, ...] (eager raises)")
        if dense.shape[0] < off.shape[0] - 1:
            raise ValueError(f"dense has {dense.shape[0]} rows for {off.shape[0] - 1} sequences (eager raises)")
        inner = _inner(dense.shape[2:], dense.stride()[2:])
        if inner is None:
            raise ValueError(f"dense's trailing dims (strides {tuple(dense.stride())[2:]}) do not collapse to one "
                             "strided dim")
        if _cdiv(inner[0], 256) > _MAX_GRID_Y:
            raise ValueError(f"inner size {inner[0]} too large for the grid")
        return OpSpec(
            family=cls.name,
            op=op,
            args=(TensorSig.of(dense), TensorSig.of(off)),
            consts=(("total_L", int(total_L)),),
            device=DeviceSig.of(dense.device),
            versions=software_versions(cls.template_version),
        )

    @staticmethod
    def _dims(spec: OpSpec) -> dict[str, Any]:
        """Sizes and strides the kernels need, for either op."""
        data, off = spec.args
        assert data is not None and off is not None
        b = off.shape[0] - 1
        s_off = off.stride[0] if off.shape[0] > 1 else 1
        if spec.op == J2P:
            inner = _inner(data.shape[1:], data.stride[1:])
            assert inner is not None
            d, sd = inner
            n = data.shape[0]
            return dict(N=n, B=b, M=int(spec.const("max_length")), D=d, stride_row=data.stride[0] if n > 1 else 1,
                        stride_d=sd, stride_off=s_off, inner=tuple(data.shape[1:]))
        inner = _inner(data.shape[2:], data.stride[2:])
        assert inner is not None
        d, sd = inner
        return dict(T=int(spec.const("total_L")), B=b, Bp=data.shape[0], L=data.shape[1], D=d,
                    stride_b=data.stride[0] if data.shape[0] > 1 else 1,
                    stride_l=data.stride[1] if data.shape[1] > 1 else 1, stride_d=sd, stride_off=s_off,
                    inner=tuple(data.shape[2:]))

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op not in self.ops:
            return Skip(f"{op or node!s} is not a jagged<->padded op")
        kw = node_kwargs(node)
        if kw is None:
            return Skip("could not normalize the op's arguments")
        off_nodes = kw.get("offsets")
        if not isinstance(off_nodes, (list, tuple)) or not off_nodes:
            return Skip("offsets is not a list of tensors")
        if len(off_nodes) != 1:
            return Skip(f"{len(off_nodes)} jagged dims: one is served (ATen's meta and CPU kernels assert one "
                        "jagged dim)")
        data_node = kw["values"] if op == J2P else kw["dense"]
        data, off = meta_val(data_node), meta_val(off_nodes[0])
        if not isinstance(data, torch.Tensor) or not isinstance(off, torch.Tensor):
            return Skip("input tensors have no FakeTensor metadata")
        if not isinstance(meta_val(node), torch.Tensor):
            return Skip("the op's result has no FakeTensor metadata")
        try:
            if op == J2P:
                ml = kw.get("max_lengths")
                if not isinstance(ml, (list, tuple)) or any(hasattr(x, "meta") for x in ml):
                    return Skip(f"max_lengths is not a list of constant ints ({ml!r})")
                pad = kw.get("padding_value", 0.0)
                if hasattr(pad, "meta"):
                    return Skip(f"padding_value is not a constant ({pad!r})")
                spec = self.j2p_spec(data, [off], list(ml), pad, op=op)
            else:
                total = kw.get("total_L")
                if hasattr(total, "meta"):
                    return Skip(f"total_L is not a constant int ({total!r})")
                spec = self.p2j_spec(data, [off], total, op=op)
        except ValueError as e:
            return Skip(str(e))
        # The op returns one tensor (no getitems): the node itself stands for output 0.
        return Match(spec=spec, inputs=[data_node, off_nodes[0]], result_users={0: [node]})

    @staticmethod
    def lowering_applies(node: Any) -> bool:
        """Whether Inductor generates its own kernel for this node (``jagged_lowerings.py``'s conditions)
        rather than calling the ATen kernel: CUDA, one jagged dim with 1-D integer offsets on the same
        device, 2-D values (jagged->padded) / 3-D dense and total_L given (padded->jagged)."""
        op = str(getattr(node, "target", ""))
        kw = node_kwargs(node) if op in (J2P, P2J) else None
        if kw is None:
            return False
        offs = kw.get("offsets")
        if not isinstance(offs, (list, tuple)) or len(offs) != 1:
            return False
        data, off = meta_val(kw["values"] if op == J2P else kw["dense"]), meta_val(offs[0])
        if not isinstance(data, torch.Tensor) or not isinstance(off, torch.Tensor):
            return False
        if data.device.type != "cuda" or data.device != off.device or off.dim() != 1:
            return False
        if off.dtype.is_floating_point or off.dtype.is_complex or off.dtype == torch.bool:
            return False
        if op == J2P:
            ml = kw.get("max_lengths")
            return data.dim() == 2 and isinstance(ml, (list, tuple)) and len(ml) == 1
        return data.dim() == 3 and kw.get("total_L") is not None

    def inductor_fallback_reason(self, node: Any) -> str | None:
        if self.lowering_applies(node):
            return None
        return ("Inductor's jagged lowering covers CUDA, one jagged dim, 2-D values / 3-D dense with total_L "
                "only: this node calls the ATen kernel")

    # -- semantics -------------------------------------------------------------------------------
    def input_error(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> str | None:
        """Offsets the kernels were not verified for (the runtime then runs eager, which raises or
        defines the result): decreasing or negative, past the values (to padded), not ending at
        total_L or longer than the padded length (to jagged). The kernels read such rows as padding or
        skip them (never out of bounds)."""
        data, off = inputs
        assert data is not None and off is not None
        o = off.reshape(-1)
        if o.numel() > 1 and bool((o[1:] < o[:-1]).any()):
            return "jagged offsets decrease"
        if o.numel() and int(o.min()) < 0:
            return "jagged offsets negative"
        if spec.op == J2P:
            if o.numel() and int(o.max()) > data.shape[0]:
                return "jagged offsets past the values"
            return None
        if int(o[0]) != 0 or int(o[-1]) != int(spec.const("total_L")):
            return "jagged offsets do not span total_L"
        if o.numel() > 1 and int((o[1:] - o[:-1]).max()) > data.shape[1]:
            return "jagged sequence longer than the padded length"
        return None

    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        data, off = inputs
        if spec.op == J2P:
            out = torch.ops.aten._jagged_to_padded_dense_forward.default(
                data, [off], [int(spec.const("max_length"))], float(_pad_value(spec.const("padding_value")))
            )
        else:
            out = torch.ops.aten._padded_dense_to_jagged_forward.default(data, [off], int(spec.const("total_L")))
        return [out]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """Gather/scatter by index in plain torch: float64 for float dtypes, the dtype itself otherwise
        (a copy is exact either way; int64 values would not survive float64)."""
        data, off = inputs
        assert data is not None and off is not None
        dims = self._dims(spec)
        dt = data.dtype
        work = torch.float64 if dt.is_floating_point else dt
        o = off.to(torch.int64)
        b, d = dims["B"], dims["D"]
        dev = data.device
        if spec.op == J2P:
            n, m = dims["N"], dims["M"]
            v = data.reshape(n, d).to(work)
            pad = _pad_value(spec.const("padding_value"))
            out = torch.full((b, m, d), pad, dtype=work, device=dev)
            pos = torch.arange(m, device=dev)
            rows = o[:-1, None] + pos[None, :]
            n_copy = torch.minimum(o[1:] - o[:-1], torch.tensor(m, device=dev))
            ok = (pos[None, :] < n_copy[:, None]) & (rows >= 0) & (rows < n)
            out[ok] = v[rows[ok]]
            return [out.reshape((b, m) + dims["inner"])]
        t, bp, L = dims["T"], dims["Bp"], dims["L"]
        x = data.reshape(bp, L, d).to(work)
        j = torch.arange(t, device=dev)
        out = torch.zeros((t, d), dtype=work, device=dev)
        if b > 0 and t > 0:
            bi = torch.searchsorted(o, j, right=True) - 1
            ok = (bi >= 0) & (bi < b)
            bc = bi.clamp(0, b - 1)
            pos = j - o[bc]
            ok &= (pos >= 0) & (j < o[bc + 1]) & (pos < L)
            out[ok] = x[bc[ok], pos[ok]]
        return [out.reshape((t,) + dims["inner"])]

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        return 0.0, 0.0  # a copy: bit-exact (NaN where the reference has NaN)

    # -- inputs ----------------------------------------------------------------------------------
    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """Random data and offsets from 0 with some empty sequences; jagged->padded lengths sum to the
        values' rows (some truncated when rows/B exceeds max_length), padded->jagged lengths sum to
        total_L within the dense input's max length (when it fits)."""
        gen = torch.Generator().manual_seed(int(seed))
        data_sig, off_sig = spec.args
        assert data_sig is not None and off_sig is not None
        dims = self._dims(spec)
        if spec.op == J2P:
            lens = _lengths(dims["N"], dims["B"], gen)
        else:
            lens = _lengths(dims["T"], dims["B"], gen, cap=dims["L"])
        dev = _device(spec)
        return [_strided(data_sig, _random_values(data_sig.shape, data_sig.torch_dtype, gen), dev),
                _strided(off_sig, _offsets(lens), dev)]

    def _case(
        self, spec: OpSpec, name: str, data: torch.Tensor, offsets: torch.Tensor, max_length: int | None = None,
        padding: Any = None, total_L: int | None = None,
    ) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
        """An edge case with the spec's dtypes (data cast, offsets in the spec's index dtype) on its device."""
        data_sig, off_sig = spec.args
        assert data_sig is not None and off_sig is not None
        dev = _device(spec)
        data = data.to(device=dev)
        off = offsets.to(device=dev, dtype=off_sig.torch_dtype)
        if spec.op == J2P:
            m = int(spec.const("max_length")) if max_length is None else max_length
            pad = _pad_value(spec.const("padding_value")) if padding is None else padding
            case_spec = self.j2p_spec(data, [off], [m], pad, op=spec.op)
        else:
            t = int(off[-1]) if total_L is None else total_L
            case_spec = self.p2j_spec(data, [off], t, op=spec.op)
        return name, case_spec, [data, off]

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        gen = torch.Generator().manual_seed(1234)
        data_sig = spec.args[0]
        assert data_sig is not None
        dt = data_sig.torch_dtype
        dims = self._dims(spec)
        d = max(1, min(dims["D"], 8))

        def vals(rows: int, *inner: int) -> torch.Tensor:
            return _random_values((rows,) + (inner or (d,)), dt, gen)

        def off(*lens: int, start: int = 0) -> torch.Tensor:
            return _offsets(torch.tensor(lens, dtype=torch.int64), start)

        cases = []
        if spec.op == J2P:
            m = int(spec.const("max_length"))
            mm = max(m, 1)
            big = m + 3
            lens = [0, min(3, m), 0, m, min(1, m)]
            cases += [
                self._case(spec, "empty_sequences", vals(sum(lens)), off(*lens)),
                self._case(spec, "all_empty", vals(0), off(0, 0, 0)),
                self._case(spec, "longer_than_max_length", vals(big + 1 + 2 * m + 1), off(big, 1, 2 * m + 1)),
                self._case(spec, "exactly_max_length", vals(3 * m), off(m, m, m)),
                self._case(spec, "batch_1", vals(min(m, 5)), off(min(m, 5))),
                self._case(spec, "values_1d", _random_values((7,), dt, gen), off(2, 0, 5)),
                self._case(spec, "inner_3d", vals(6, 2, 3), off(4, 0, 2)),
                self._case(spec, "offsets_not_from_0", vals(9), off(2, 0, 3, start=2)),
                self._case(spec, "transposed_values", vals(d, 11).t(), off(3, 0, 8)),
                self._case(spec, "strided_rows", vals(10, d + 5)[:, 2:d + 2], off(1, 9)),
                self._case(spec, "long_max_length", vals(5), off(2, 3), max_length=mm + 70),
            ]
            if dt.is_floating_point:
                nans = vals(8)
                nans[0, 0] = math.nan
                nans[3] = math.nan
                nans[5, -1] = math.inf
                nans[6, 0] = -math.inf
                cases.append(self._case(spec, "nan_inf_values", nans, off(3, 0, 5)))
                for label, p in (("nan", math.nan), ("inf", math.inf), ("-1e30", -1e30)):
                    cases.append(self._case(spec, f"padding_{label}", vals(6), off(4, 0, 2), padding=p))
        else:
            lmax = max(dims["L"], 1)

            def dense(b: int, L: int, *inner: int) -> torch.Tensor:
                return _random_values((b, L) + (inner or (d,)), dt, gen)

            lens = [0, min(3, lmax), 0, lmax, min(1, lmax)]
            cases += [
                self._case(spec, "empty_sequences", dense(5, lmax), off(*lens)),
                self._case(spec, "all_empty", dense(3, lmax), off(0, 0, 0)),
                self._case(spec, "exactly_max_length", dense(3, lmax), off(lmax, lmax, lmax)),
                self._case(spec, "batch_1", dense(1, lmax), off(lmax)),
                self._case(spec, "dense_2d", _random_values((3, 5), dt, gen), off(2, 0, 5)),
                self._case(spec, "inner_3d", dense(3, 4, 2, 3), off(4, 0, 2)),
                self._case(spec, "extra_dense_rows", dense(5, 4), off(3, 4)),
                self._case(spec, "transposed_dense", dense(4, d, 6).transpose(1, 2), off(3, 6, 0, 1)),
                # Longer than the dense input: positions past it are 0 (fbgemm / Inductor on CUDA; eager
                # CPU raises). Rows before offsets[0]: 0 (eager leaves them uninitialized).
                self._case(spec, "longer_than_dense", dense(3, 4), off(6, 0, 5)),
                self._case(spec, "offsets_not_from_0", dense(2, 4), off(3, 2, start=2)),
            ]
            if dt.is_floating_point:
                nans = dense(3, 4)
                nans[0, 0, 0] = math.nan
                nans[1, 1] = math.nan
                nans[2, 0, -1] = math.inf
                nans[2, 3, 0] = -math.inf
                cases.append(self._case(spec, "nan_inf_values", nans, off(2, 4, 4)))
        return cases

    # -- numerics / cost -------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        """jagged->padded: the values landing in the output (at most min(N, B*M) rows), the offsets, the
        whole padded output; padded->jagged: the needed dense rows (total_L rows at most B*L), the
        offsets, the jagged output."""
        data, off = spec.args
        assert data is not None and off is not None
        dims = self._dims(spec)
        e = _elem_size(data.dtype)
        off_bytes = off.numel() * _elem_size(off.dtype)
        if spec.op == J2P:
            b, m, d = dims["B"], dims["M"], dims["D"]
            return min(dims["N"], b * m) * d * e + off_bytes + b * m * d * e
        t, d = dims["T"], dims["D"]
        return min(t, dims["B"] * dims["L"]) * d * e + off_bytes + t * d * e

    # -- kernels ---------------------------------------------------------------------------------
    @staticmethod
    def _warps(tile: int) -> int:
        """~16 elements per thread, 1..8 warps (untuned on H100: a knob the search varies)."""
        return max(1, min(8, _next_pow2(max(tile // 512, 1))))

    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """Template x tile proposals, a shape-aware default first, ~15-25."""
        dims = self._dims(spec)
        d = dims["D"]
        bd_max = min(_next_pow2(max(d, 1)), 256)
        bd0 = min(bd_max, 128)
        bd_opts = [bd0] + [x for x in (bd0 // 2, bd_max) if x >= 16 and x != bd0]
        out: list[tuple[str, dict[str, Any]]] = []

        def add(template: str, tile: int, nw: int | None = None, **cfg: Any) -> None:
            if tile <= _MAX_TILE:
                out.append((template, dict(cfg, num_warps=nw or self._warps(tile), num_stages=2)))

        def flat_all(default: int) -> list[int]:
            return [default] + [x for x in (1024, 2048, 4096) if x != default]

        if spec.op == J2P:
            b, m = dims["B"], dims["M"]
            bm0 = max(1, min(_next_pow2(max(m, 1)), 2048 // bd0))
            bb0 = max(1, min(_next_pow2(max(b, 1)), 2048 // (bm0 * bd0), 64))
            bm_l = max(1, min(_next_pow2(max(m, 1)), 4096 // bd0))

            def tile(bb: int, bm: int, bd: int, nw: int | None = None) -> None:
                add("j2p_tile", bb * bm * bd, nw, BLOCK_B=bb, BLOCK_M=bm, BLOCK_D=bd)

            def loop(bm: int, bd: int, nw: int | None = None) -> None:
                add("j2p_loop", bm * bd, nw, BLOCK_M=bm, BLOCK_D=bd)

            def flat(blk: int, nw: int | None = None) -> None:
                add("j2p_flat", blk, nw, BLOCK=blk)

            # Default first: narrow rows (D < 16) -> flat elements; else tiles.
            if d < 16:
                flat(2048)
            tile(bb0, bm0, bd0)
            loop(bm_l, bd0)
            for bm in (bm0 * 2, bm0 // 2, bm0 * 4):
                if 1 <= bm <= _next_pow2(max(m, 1)):
                    tile(max(1, min(bb0, 4096 // (bm * bd0))), bm, bd0)
            for bb in (bb0 * 2, bb0 // 2, 1):
                if 1 <= bb <= _next_pow2(max(b, 1)) and bb != bb0:
                    tile(bb, bm0, bd0)
            for bd in bd_opts[1:]:
                tile(bb0, max(1, min(bm0, 2048 // bd)), bd)
                loop(max(1, min(bm_l, 4096 // bd)), bd)
            nw0 = self._warps(bb0 * bm0 * bd0)
            for nw in (nw0 * 2, nw0 // 2):
                if 1 <= nw <= 8:
                    tile(bb0, bm0, bd0, nw=nw)
            for bm in (bm_l // 2, bm_l * 2):
                if 1 <= bm:
                    loop(bm, bd0)
            for blk in flat_all(2048):
                flat(blk)
            flat(2048, nw=8 if self._warps(2048) != 8 else 4)
        else:
            t, b = dims["T"], dims["B"]
            avg = t / max(b, 1)
            steps = (b + 1).bit_length()
            bj0 = max(1, min(_next_pow2(max(t, 1)), 2048 // bd0))
            bj_b = max(1, min(_next_pow2(max(1, math.ceil(avg))), 4096 // bd0))

            def search(bj: int, bd: int, narrow: bool, nw: int | None = None) -> None:
                add("p2j_search", bj * bd, nw, BLOCK_J=bj, BLOCK_D=bd, NARROW=narrow)

            def batch(bj: int, bd: int, nw: int | None = None) -> None:
                add("p2j_batch", bj * bd, nw, BLOCK_J=bj, BLOCK_D=bd)

            def flat(blk: int, nw: int | None = None) -> None:
                add("p2j_flat", blk, nw, BLOCK=blk)

            # Default first: narrow rows -> flat; long sequences -> one program per batch row; else
            # row blocks with a windowed search.
            if d < 16:
                flat(2048)
            if avg >= 64:
                batch(bj_b, bd0)
            search(bj0, bd0, narrow=steps > 2)
            search(bj0, bd0, narrow=not steps > 2)
            batch(bj_b, bd0)
            for bj in (bj0 * 2, bj0 // 2, bj0 * 4):
                if bj >= 1:
                    search(bj, bd0, narrow=True)
            for bd in bd_opts[1:]:
                search(max(1, min(bj0, 2048 // bd)), bd, narrow=True)
                batch(max(1, min(bj_b, 4096 // bd)), bd)
            nw0 = self._warps(bj0 * bd0)
            for nw in (nw0 * 2, nw0 // 2):
                if 1 <= nw <= 8:
                    search(bj0, bd0, narrow=True, nw=nw)
            for bj in (bj_b * 2, bj_b // 2):
                if bj >= 1:
                    batch(bj, bd0)
            for blk in flat_all(2048):
                flat(blk)

        return unique_candidates(out, lambda t: TEMPLATES[t][2])

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        data, off = spec.args
        assert data is not None and off is not None
        dims = self._dims(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "jagged")
        top, kernel, _ = TEMPLATES[template]
        if top != spec.op:
            raise ValueError(f"template {template!r} serves {top}, not {spec.op}")
        check_pow2(cfg)
        b, d = dims["B"], dims["D"]
        bd = int(cfg.get("BLOCK_D", 1))
        nd = _cdiv(d, bd)
        if nd > _MAX_GRID_Y:
            raise ValueError(f"BLOCK_D={bd} needs {nd} programs along D (> {_MAX_GRID_Y})")
        if spec.op == J2P:
            m = dims["M"]
            bits, width = pad_bits(_pad_value(spec.const("padding_value")), data.torch_dtype)
            args: list[tuple[str, Any]] = [
                ("values_ptr", In(0)), ("offsets_ptr", In(1)), ("out_ptr", Out(0)),
                ("num_rows", dims["N"]), ("batch", b), ("max_len", m), ("dim", d),
                ("stride_row", dims["stride_row"]), ("stride_d", dims["stride_d"]), ("stride_off", dims["stride_off"]),
                ("PAD_BITS", bits), ("PAD_WIDTH", width),
            ]
            if template == "j2p_tile":
                bb, bm = int(cfg["BLOCK_B"]), int(cfg["BLOCK_M"])
                mb = _cdiv(m, bm)
                args += [("m_blocks", max(mb, 1)), ("BLOCK_B", bb), ("BLOCK_M", bm), ("BLOCK_D", bd)]
                grid = (_cdiv(b, bb) * mb, nd)
            elif template == "j2p_loop":
                args += [("BLOCK_M", int(cfg["BLOCK_M"])), ("BLOCK_D", bd)]
                grid = (b, nd)
            else:
                blk = int(cfg["BLOCK"])
                numel = b * m * d
                args += [("numel", numel), ("per_batch", max(m * d, 1)), ("BLOCK", blk)]
                grid = (_cdiv(numel, blk),)
            outputs = (OutBuf((b, m) + dims["inner"], data.dtype, fill=None),)
        else:
            t = dims["T"]
            args = [
                ("dense_ptr", In(0)), ("offsets_ptr", In(1)), ("out_ptr", Out(0)),
                ("total_len", t), ("batch", b), ("max_len", dims["L"]), ("dim", d),
                ("stride_b", dims["stride_b"]), ("stride_l", dims["stride_l"]), ("stride_d", dims["stride_d"]),
                ("stride_off", dims["stride_off"]),
            ]
            steps = (b + 1).bit_length()
            if template == "p2j_search":
                bj = int(cfg["BLOCK_J"])
                args += [("search_steps", steps), ("NARROW", bool(cfg["NARROW"])), ("BLOCK_J", bj), ("BLOCK_D", bd)]
                grid = (_cdiv(t, bj), nd)
            elif template == "p2j_batch":
                progs = max(b, 1)  # B = 0 still needs a program to zero rows no sequence covers
                args += [("last_prog", progs - 1), ("BLOCK_J", int(cfg["BLOCK_J"])), ("BLOCK_D", bd)]
                grid = (progs, nd)
            else:
                blk = int(cfg["BLOCK"])
                numel = t * d
                args += [("search_steps", steps), ("numel", numel), ("BLOCK", blk)]
                grid = (_cdiv(numel, blk),)
            outputs = (OutBuf((t,) + dims["inner"], data.dtype, fill=None),)
        if grid[0] > _MAX_GRID_X:
            raise ValueError(f"grid {grid} exceeds the launch limit")
        return CallPlan(
            kernel=kernel,
            grid=grid,
            args=tuple(args),
            outputs=outputs,
            num_warps=int(cfg.get("num_warps", 4)),
            num_stages=int(cfg.get("num_stages", 2)),
        )


register(JaggedFamily())
