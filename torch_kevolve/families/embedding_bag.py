"""The embedding_bag family: ``aten._embedding_bag`` / ``aten._embedding_bag_forward_only`` (forward).

Why a family of its own: Inductor falls back to ATen for embedding_bag, and ATen's kernels are tuned
for generic shapes; recommendation models hit it with many small bags, large tables and fp16/bf16.
Only output 0 (the pooled embeddings) is produced; graphs that read offset2bag / bag_size /
max_indices (training graphs, whose backward needs them) are skipped.

ATen semantics pinned here (tests compare against eager):

* ``padding_idx``: ``_embedding_bag`` receives -1 for "none"; ``F.embedding_bag(padding_idx=-2)``
  is wrapped to ``V - 2`` before it reaches the op. Any negative value at the op means "none".
  Padding entries contribute nothing and are *not* counted in the mean's divisor; a bag with only
  padding entries (or no entries) is 0.
* ``include_last_offset``: ``B = len(offsets) - 1`` and bag ``b`` is ``[offsets[b], offsets[b+1])``;
  otherwise the last bag ends at ``len(indices)``.
* ``per_sample_weights`` is only legal with mode sum.
* ``mode='max'`` (same on CPU and CUDA): per column, the first non-padding entry of a bag seeds the
  result and a later entry replaces it only when strictly greater. So NaN propagates only when it is
  the bag's first non-padding value (a later NaN is never greater), and a bag with no non-padding
  entry is 0. The max kernels track that NaN apart (``tl.max`` drops NaN) and come from sources of
  their own (``MAX_TEMPLATES``) so the sum/mean sources, and stored entries, are untouched.

Three templates share one inner reduction (fp32 accumulation, int64 row addressing):

* ``bag_per_program``: grid (B, cdiv(D, BLOCK_D)); a program walks one bag in BLOCK_L chunks.
* ``bags_per_block``: grid (cdiv(B, BAGS_PER_PROG), cdiv(D, BLOCK_D)); a program walks
  BAGS_PER_PROG consecutive bags one after another (amortizes program start for small bags).
* ``bag_tile``: same grid; the BAGS_PER_PROG bags are the rows of a [BAGS_PER_PROG, BLOCK_D] tile
  and the program steps through bag positions, gathering one row per bag per step (parallel
  gathers when pooling factors are small and similar).

Out-of-range indices (eager's CUDA kernel stops on a device-side assert) are masked out of every load,
so no value can fault, and asserted in range right after they are read (``tl.device_assert``: live on
GPU launches, which compile with Triton's ``debug`` as Inductor's own kernels do). Measured on the H100
over the seven shipped kernels: 2.5% on average, at most 6% (an assert brings a branch and a barrier).
Counting bad lanes and asserting once after the stores was no cheaper (up to 12%: one more live vector).
"""
from __future__ import annotations

import math
import operator
from typing import Any, Sequence

import torch

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip
from .util import all_int as _all_int, cdiv as _cdiv, elem_size as _elem_size, next_pow2 as _next_pow2
from .util import meta_val, node_kwargs, template_of
from .util import strided as _strided

_OPS = ("aten._embedding_bag.default", "aten._embedding_bag_forward_only.default")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int32, torch.int64)
_MODE_NAMES = {0: "sum", 1: "mean", 2: "max"}
_MAX_TILE = 8192  # fp32 elements of a gathered tile: keeps register pressure sane on sm_90

# ------------------------------------------------------------------------------------------------
# Kernel sources. Each template's source is a complete module; the shared reduction helper is
# pasted into each so a template's text (and so its hash) depends only on what it runs.
# ------------------------------------------------------------------------------------------------

_HEADER = '''import triton
import triton.language as tl
'''

_BAG_BOUNDS = '''

@triton.jit
def _bag_bounds(offsets_ptr, bag, num_bags, num_indices, stride_off, INCLUDE_LAST_OFFSET: tl.constexpr):
    """[start, end) of ``bag`` (int64; scalar or vector), inside [0, num_indices). ``bag`` must be in
    [0, num_bags)."""
    start = tl.load(offsets_ptr + bag * stride_off).to(tl.int64)
    if INCLUDE_LAST_OFFSET:
        end = tl.load(offsets_ptr + (bag + 1) * stride_off).to(tl.int64)
    else:
        # The last bag ends at len(indices); clamp the read so it stays in bounds.
        nxt = tl.minimum(bag + 1, num_bags - 1)
        end = tl.load(offsets_ptr + nxt * stride_off).to(tl.int64)
        end = tl.where(bag + 1 < num_bags, end, num_indices)
    # Bad offsets (eager raises on them) must not read outside the indices: clamp to [0, num_indices].
    start = tl.minimum(tl.maximum(start, 0), num_indices)
    end = tl.minimum(tl.maximum(end, start), num_indices)
    return start, end
'''

_BAG_REDUCE = '''

@triton.jit
def _bag_reduce(
    weight_ptr, indices_ptr, psw_ptr, start, end, d, d_mask,
    num_embeddings, stride_w, stride_idx, stride_psw,
    MODE: tl.constexpr, HAS_PSW: tl.constexpr, PADDING_IDX: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, ACC_TILE: tl.constexpr,
):
    """Pooled fp32 [BLOCK_D] slice of one bag: sum (x psw) or mean over non-padding entries."""
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    if ACC_TILE:
        acc_tile = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    cnt = tl.zeros([BLOCK_L], dtype=tl.int32)
    for l0 in range(start, end, BLOCK_L):
        pos = l0 + tl.arange(0, BLOCK_L)
        pm = pos < end
        idx = tl.load(indices_ptr + pos * stride_idx, mask=pm, other=0).to(tl.int64)
        # Out-of-range rows are masked (eager raises on them) so a bad index cannot fault.
        keep = pm & (idx >= 0) & (idx < num_embeddings)
        tl.device_assert((idx >= 0) & (idx < num_embeddings), "embedding_bag: index out of range", mask=pm)
        if PADDING_IDX >= 0:
            keep = keep & (idx != PADDING_IDX)
        rows = tl.load(
            weight_ptr + idx[:, None] * stride_w + d[None, :],
            mask=keep[:, None] & d_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        if HAS_PSW:
            p = tl.load(psw_ptr + pos * stride_psw, mask=keep, other=0.0).to(tl.float32)
            rows = rows * p[:, None]
        if ACC_TILE:
            acc_tile += rows
        else:
            acc += tl.sum(rows, axis=0)
        if MODE == 1:
            cnt += keep.to(tl.int32)
    if ACC_TILE:
        acc = tl.sum(acc_tile, axis=0)
    if MODE == 1:
        n = tl.sum(cnt, axis=0)
        acc = acc / tl.maximum(n, 1).to(tl.float32)
    return acc
'''

_SIGNATURE = '''
    weight_ptr, indices_ptr, offsets_ptr, psw_ptr, out_ptr,
    num_indices, num_bags, num_embeddings, dim,
    stride_w, stride_idx, stride_off, stride_psw, stride_out,
    MODE: tl.constexpr, HAS_PSW: tl.constexpr, PADDING_IDX: tl.constexpr,
    INCLUDE_LAST_OFFSET: tl.constexpr, BLOCK_D: tl.constexpr,'''

BAG_PER_PROGRAM_SOURCE = _HEADER + _BAG_BOUNDS + _BAG_REDUCE + '''

@triton.jit
def embedding_bag_bag_per_program(''' + _SIGNATURE + '''
    BLOCK_L: tl.constexpr, ACC_TILE: tl.constexpr,
):
    """One program = one bag x one BLOCK_D slice."""
    bag = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    start, end = _bag_bounds(offsets_ptr, bag, num_bags, num_indices, stride_off, INCLUDE_LAST_OFFSET)
    acc = _bag_reduce(
        weight_ptr, indices_ptr, psw_ptr, start, end, d, d_mask,
        num_embeddings, stride_w, stride_idx, stride_psw,
        MODE, HAS_PSW, PADDING_IDX, BLOCK_D, BLOCK_L, ACC_TILE,
    )
    tl.store(out_ptr + bag * stride_out + d, acc.to(out_ptr.dtype.element_ty), mask=d_mask)
'''

BAGS_PER_BLOCK_SOURCE = _HEADER + _BAG_BOUNDS + _BAG_REDUCE + '''

@triton.jit
def embedding_bag_bags_per_block(''' + _SIGNATURE + '''
    BLOCK_L: tl.constexpr, ACC_TILE: tl.constexpr, BAGS_PER_PROG: tl.constexpr,
):
    """One program = BAGS_PER_PROG consecutive bags (one after another) x one BLOCK_D slice."""
    first = tl.program_id(0).to(tl.int64) * BAGS_PER_PROG
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    for i in range(BAGS_PER_PROG):
        bag = first + i
        live = bag < num_bags
        bag_c = tl.minimum(bag, num_bags - 1)
        start, end = _bag_bounds(offsets_ptr, bag_c, num_bags, num_indices, stride_off, INCLUDE_LAST_OFFSET)
        end = tl.where(live, end, start)  # past the last bag: empty range, masked store
        acc = _bag_reduce(
            weight_ptr, indices_ptr, psw_ptr, start, end, d, d_mask,
            num_embeddings, stride_w, stride_idx, stride_psw,
            MODE, HAS_PSW, PADDING_IDX, BLOCK_D, BLOCK_L, ACC_TILE,
        )
        tl.store(out_ptr + bag_c * stride_out + d, acc.to(out_ptr.dtype.element_ty), mask=d_mask & live)
'''

BAG_TILE_SOURCE = _HEADER + _BAG_BOUNDS + '''

@triton.jit
def embedding_bag_bag_tile(''' + _SIGNATURE + '''
    BAGS_PER_PROG: tl.constexpr,
):
    """One program = a [BAGS_PER_PROG, BLOCK_D] tile of bags; steps through bag positions."""
    bags = tl.program_id(0).to(tl.int64) * BAGS_PER_PROG + tl.arange(0, BAGS_PER_PROG)
    live = bags < num_bags
    bags_c = tl.minimum(bags, num_bags - 1)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    starts, ends = _bag_bounds(offsets_ptr, bags_c, num_bags, num_indices, stride_off, INCLUDE_LAST_OFFSET)
    lens = tl.where(live, ends - starts, 0)
    max_len = tl.max(lens, axis=0)
    acc = tl.zeros([BAGS_PER_PROG, BLOCK_D], dtype=tl.float32)
    cnt = tl.zeros([BAGS_PER_PROG], dtype=tl.int32)
    for j in range(0, max_len):
        jm = j < lens
        idx = tl.load(indices_ptr + (starts + j) * stride_idx, mask=jm, other=0).to(tl.int64)
        keep = jm & (idx >= 0) & (idx < num_embeddings)
        tl.device_assert((idx >= 0) & (idx < num_embeddings), "embedding_bag: index out of range", mask=jm)
        if PADDING_IDX >= 0:
            keep = keep & (idx != PADDING_IDX)
        rows = tl.load(
            weight_ptr + idx[:, None] * stride_w + d[None, :],
            mask=keep[:, None] & d_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        if HAS_PSW:
            p = tl.load(psw_ptr + (starts + j) * stride_psw, mask=keep, other=0.0).to(tl.float32)
            rows = rows * p[:, None]
        acc += rows
        if MODE == 1:
            cnt += keep.to(tl.int32)
    if MODE == 1:
        acc = acc / tl.maximum(cnt, 1).to(tl.float32)[:, None]
    tl.store(
        out_ptr + bags_c[:, None] * stride_out + d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=live[:, None] & d_mask[None, :],
    )
'''

TEMPLATES: dict[str, tuple[str, str]] = {
    # template name -> (kernel name, source)
    "bag_per_program": ("embedding_bag_bag_per_program", BAG_PER_PROGRAM_SOURCE),
    "bags_per_block": ("embedding_bag_bags_per_block", BAGS_PER_BLOCK_SOURCE),
    "bag_tile": ("embedding_bag_bag_tile", BAG_TILE_SOURCE),
}

# ------------------------------------------------------------------------------------------------
# mode='max': sources of their own (the sum/mean sources above stay byte-identical for stored
# entries), same templates, grids and signature.
# ------------------------------------------------------------------------------------------------

_BAG_MAX = '''

@triton.jit
def _bag_max(
    weight_ptr, indices_ptr, start, end, d, d_mask, num_embeddings, stride_w, stride_idx,
    PADDING_IDX: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, ACC_TILE: tl.constexpr,
):
    """Max-pooled fp32 [BLOCK_D] slice of one bag in aten's order: the first non-padding entry seeds
    it and later ones replace it only when greater, so a NaN wins only when it comes first (tracked
    apart: NaN is read as -inf); a bag without non-padding entries is 0."""
    if ACC_TILE:
        acc_tile = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32) + float("-inf")
    else:
        acc = tl.zeros([BLOCK_D], dtype=tl.float32) + float("-inf")
    nan_first = tl.zeros([BLOCK_D], dtype=tl.int32)  # int32: what tl.max of int8 gives on GPU
    seen = start * 0  # non-padding entries before this chunk
    for l0 in range(start, end, BLOCK_L):
        pos = l0 + tl.arange(0, BLOCK_L)
        pm = pos < end
        idx = tl.load(indices_ptr + pos * stride_idx, mask=pm, other=0).to(tl.int64)
        # Out-of-range rows are masked (eager raises on them) so a bad index cannot fault.
        keep = pm & (idx >= 0) & (idx < num_embeddings)
        tl.device_assert((idx >= 0) & (idx < num_embeddings), "embedding_bag: index out of range", mask=pm)
        if PADDING_IDX >= 0:
            keep = keep & (idx != PADDING_IDX)
        x = tl.load(
            weight_ptr + idx[:, None] * stride_w + d[None, :],
            mask=keep[:, None] & d_mask[None, :],
            other=float("-inf"),
        ).to(tl.float32)
        isnan = x != x
        x = tl.where(isnan, float("-inf"), x)
        if ACC_TILE:
            acc_tile = tl.maximum(acc_tile, x)
        else:
            acc = tl.maximum(acc, tl.max(x, axis=0))
        first = keep & (pos == tl.min(tl.where(keep, pos, end), axis=0)) & (seen == 0)
        nan_first = nan_first | tl.max((first[:, None] & isnan).to(tl.int32), axis=0)
        seen += tl.sum(keep.to(tl.int64), axis=0)
    if ACC_TILE:
        acc = tl.max(acc_tile, axis=0)
    acc = tl.where(nan_first > 0, float("nan"), acc)
    return tl.where(seen > 0, acc, 0.0)
'''

BAG_PER_PROGRAM_MAX_SOURCE = _HEADER + _BAG_BOUNDS + _BAG_MAX + '''

@triton.jit
def embedding_bag_max_bag_per_program(''' + _SIGNATURE + '''
    BLOCK_L: tl.constexpr, ACC_TILE: tl.constexpr,
):
    """mode='max'; one program = one bag x one BLOCK_D slice."""
    bag = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    start, end = _bag_bounds(offsets_ptr, bag, num_bags, num_indices, stride_off, INCLUDE_LAST_OFFSET)
    acc = _bag_max(
        weight_ptr, indices_ptr, start, end, d, d_mask, num_embeddings, stride_w, stride_idx,
        PADDING_IDX, BLOCK_D, BLOCK_L, ACC_TILE,
    )
    tl.store(out_ptr + bag * stride_out + d, acc.to(out_ptr.dtype.element_ty), mask=d_mask)
'''

BAGS_PER_BLOCK_MAX_SOURCE = _HEADER + _BAG_BOUNDS + _BAG_MAX + '''

@triton.jit
def embedding_bag_max_bags_per_block(''' + _SIGNATURE + '''
    BLOCK_L: tl.constexpr, ACC_TILE: tl.constexpr, BAGS_PER_PROG: tl.constexpr,
):
    """mode='max'; one program = BAGS_PER_PROG consecutive bags (one after another) x one BLOCK_D slice."""
    first = tl.program_id(0).to(tl.int64) * BAGS_PER_PROG
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    for i in range(BAGS_PER_PROG):
        bag = first + i
        live = bag < num_bags
        bag_c = tl.minimum(bag, num_bags - 1)
        start, end = _bag_bounds(offsets_ptr, bag_c, num_bags, num_indices, stride_off, INCLUDE_LAST_OFFSET)
        end = tl.where(live, end, start)  # past the last bag: empty range, masked store
        acc = _bag_max(
            weight_ptr, indices_ptr, start, end, d, d_mask, num_embeddings, stride_w, stride_idx,
            PADDING_IDX, BLOCK_D, BLOCK_L, ACC_TILE,
        )
        tl.store(out_ptr + bag_c * stride_out + d, acc.to(out_ptr.dtype.element_ty), mask=d_mask & live)
'''

BAG_TILE_MAX_SOURCE = _HEADER + _BAG_BOUNDS + '''

@triton.jit
def embedding_bag_max_bag_tile(''' + _SIGNATURE + '''
    BAGS_PER_PROG: tl.constexpr,
):
    """mode='max' (aten's order, as in _bag_max elsewhere) over a [BAGS_PER_PROG, BLOCK_D] tile of
    bags; steps through bag positions."""
    bags = tl.program_id(0).to(tl.int64) * BAGS_PER_PROG + tl.arange(0, BAGS_PER_PROG)
    live = bags < num_bags
    bags_c = tl.minimum(bags, num_bags - 1)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim
    starts, ends = _bag_bounds(offsets_ptr, bags_c, num_bags, num_indices, stride_off, INCLUDE_LAST_OFFSET)
    lens = tl.where(live, ends - starts, 0)
    max_len = tl.max(lens, axis=0)
    acc = tl.zeros([BAGS_PER_PROG, BLOCK_D], dtype=tl.float32) + float("-inf")
    nan_first = tl.zeros([BAGS_PER_PROG, BLOCK_D], dtype=tl.int8)
    seen = tl.zeros([BAGS_PER_PROG], dtype=tl.int32)
    for j in range(0, max_len):
        jm = j < lens
        idx = tl.load(indices_ptr + (starts + j) * stride_idx, mask=jm, other=0).to(tl.int64)
        keep = jm & (idx >= 0) & (idx < num_embeddings)
        tl.device_assert((idx >= 0) & (idx < num_embeddings), "embedding_bag: index out of range", mask=jm)
        if PADDING_IDX >= 0:
            keep = keep & (idx != PADDING_IDX)
        x = tl.load(
            weight_ptr + idx[:, None] * stride_w + d[None, :],
            mask=keep[:, None] & d_mask[None, :],
            other=float("-inf"),
        ).to(tl.float32)
        isnan = x != x
        nan_first = nan_first | ((keep & (seen == 0))[:, None] & isnan).to(tl.int8)
        acc = tl.maximum(acc, tl.where(isnan, float("-inf"), x))
        seen += keep.to(tl.int32)
    acc = tl.where(nan_first > 0, float("nan"), acc)
    acc = tl.where(seen[:, None] > 0, acc, 0.0)
    tl.store(
        out_ptr + bags_c[:, None] * stride_out + d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=live[:, None] & d_mask[None, :],
    )
'''

MAX_TEMPLATES: dict[str, tuple[str, str]] = {
    # template name -> (kernel name, source) for mode='max'
    "bag_per_program": ("embedding_bag_max_bag_per_program", BAG_PER_PROGRAM_MAX_SOURCE),
    "bags_per_block": ("embedding_bag_max_bags_per_block", BAGS_PER_BLOCK_MAX_SOURCE),
    "bag_tile": ("embedding_bag_max_bag_tile", BAG_TILE_MAX_SOURCE),
}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _bag_count(offsets_sig: TensorSig, include_last_offset: bool) -> int:
    return offsets_sig.numel() - (1 if include_last_offset else 0)


class EmbeddingBagFamily(OpFamily):
    """Forward pooled embeddings (output 0) of ``aten._embedding_bag[_forward_only]``, sum/mean/max."""

    name = "embedding_bag"
    ops = _OPS
    template_version = "1"
    dynamic_ok = True  # consts are modes and flags; configs depend on D (static), never on N or B

    # -- specs -----------------------------------------------------------------------------------
    @staticmethod
    def _unsupported(
        weight: Any, indices: Any, offsets: Any, psw: Any, mode: int, include_last_offset: bool
    ) -> str | None:
        """Why these (real or fake) tensors and constants can't be served, or None."""
        if mode not in (0, 1, 2):
            return f"unknown embedding_bag mode {mode!r}"
        if weight.dtype not in _FLOAT_DTYPES:
            return f"weight dtype {weight.dtype} not in float32/float16/bfloat16"
        if indices.dtype not in _INDEX_DTYPES or offsets.dtype not in _INDEX_DTYPES:
            return f"indices/offsets dtypes {indices.dtype}/{offsets.dtype} not int32/int64"
        if psw is not None:
            if psw.dtype != weight.dtype:
                return f"per_sample_weights dtype {psw.dtype} differs from weight dtype {weight.dtype}"
            if mode != 0:
                return "per_sample_weights with mode != sum (aten rejects it)"
        for what, t in (("weight", weight), ("indices", indices), ("offsets", offsets), ("per_sample_weights", psw)):
            if t is not None and not _all_int(t):
                return f"{what} has symbolic sizes/strides (dynamic shapes not served yet)"
        if weight.dim() != 2:
            return f"weight is {weight.dim()}-D, expected 2-D"
        if weight.shape[1] > 1 and weight.stride(1) != 1:
            return f"weight's last dim has stride {weight.stride(1)}, expected 1"
        if indices.dim() != 1 or offsets.dim() != 1:
            return "indices and offsets must be 1-D (2-D inputs are flattened before the aten op)"
        if psw is not None and tuple(psw.shape) != tuple(indices.shape):
            return "per_sample_weights shape differs from indices shape"
        if offsets.numel() - (1 if include_last_offset else 0) <= 0:
            return "no bags (empty offsets)"
        if weight.device != indices.device or weight.device != offsets.device:
            return "inputs on different devices"
        return None

    @classmethod
    def spec_for(
        cls,
        weight: torch.Tensor,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        psw: torch.Tensor | None = None,
        mode: int = 0,
        include_last_offset: bool = False,
        padding_idx: int | None = -1,
        op: str = "aten._embedding_bag.default",
    ) -> OpSpec:
        """The spec of a call on concrete (or fake) tensors. Raises ValueError if unsupported."""
        mode = int(mode)
        include_last_offset = bool(include_last_offset)
        why = cls._unsupported(weight, indices, offsets, psw, mode, include_last_offset)
        if why is not None:
            raise ValueError(why)
        pad = -1 if padding_idx is None or int(padding_idx) < 0 else int(padding_idx)
        consts = tuple(
            sorted(
                {
                    "mode": mode,
                    "include_last_offset": include_last_offset,
                    "padding_idx": pad,
                    "has_psw": psw is not None,
                }.items()
            )
        )
        return OpSpec(
            family=cls.name,
            op=op,
            args=(TensorSig.of(weight), TensorSig.of(indices), TensorSig.of(offsets),
                  None if psw is None else TensorSig.of(psw)),
            consts=consts,
            device=DeviceSig.of(weight.device),
            versions=software_versions(cls.template_version),
        )

    @staticmethod
    def _dims(spec: OpSpec) -> tuple[int, int, int, int]:
        """(V, D, N, B): table rows, embedding dim, number of indices, number of bags."""
        w, idx, off = spec.args[0], spec.args[1], spec.args[2]
        assert w is not None and idx is not None and off is not None
        return w.shape[0], w.shape[1], idx.numel(), _bag_count(off, bool(spec.const("include_last_offset")))

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op not in _OPS:
            return Skip(f"{op or node!s} is not an embedding_bag op")
        kw = node_kwargs(node)
        if kw is None:
            return Skip("could not normalize embedding_bag arguments")
        val = meta_val

        w_node, i_node, o_node, p_node = kw["weight"], kw["indices"], kw["offsets"], kw.get("per_sample_weights")
        weight, indices, offsets, psw = val(w_node), val(i_node), val(o_node), val(p_node)
        if not all(isinstance(t, torch.Tensor) for t in (weight, indices, offsets)) or (
            p_node is not None and not isinstance(psw, torch.Tensor)
        ):
            return Skip("input tensors have no FakeTensor metadata")
        for name in ("mode", "include_last_offset", "padding_idx"):
            if not isinstance(kw.get(name), (int, bool)):
                return Skip(f"{name} is not a constant ({kw.get(name)!r})")
        mode, ilo, pad = int(kw["mode"]), bool(kw["include_last_offset"]), int(kw["padding_idx"])

        result_users: list = []
        for user in node.users:
            if user.op != "call_function" or user.target is not operator.getitem or user.args[0] is not node:
                return Skip(f"embedding_bag result used by {user.format_node() if hasattr(user, 'format_node') else user}"
                            " (not a getitem)")
            i = user.args[1]
            if i == 0:
                result_users.append(user)
            elif len(user.users) > 0:
                return Skip("offset2bag/bag_size/max_indices are used (training graph); not served yet")

        try:
            spec = self.spec_for(weight, indices, offsets, psw, mode, ilo, pad, op=op)
        except ValueError as e:
            return Skip(str(e))
        return Match(spec=spec, inputs=[w_node, i_node, o_node, p_node], result_users={0: result_users})

    # -- semantics -------------------------------------------------------------------------------
    def input_error(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> str | None:
        """Values eager rejects (the runtime then runs eager, which raises): indices outside the table,
        offsets not starting at 0, decreasing, or past the indices. The kernels mask such entries (never
        out of bounds) but their result is not eager's error."""
        weight, indices, offsets, _ = inputs
        assert weight is not None and indices is not None and offsets is not None
        idx, off = indices.reshape(-1), offsets.reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= weight.shape[0]):
            return "embedding_bag indices out of range"
        if off.numel():
            if int(off[0]) != 0:
                return "embedding_bag offsets[0] is not 0"
            if off.numel() > 1 and bool((off[1:] < off[:-1]).any()):
                return "embedding_bag offsets decrease"
            if int(off[-1]) > idx.numel():
                return "embedding_bag offsets past the indices"
        return None

    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        op = (torch.ops.aten._embedding_bag_forward_only.default if "forward_only" in spec.op
              else torch.ops.aten._embedding_bag.default)
        weight, indices, offsets, psw = inputs
        # The ATen kernel reads indices/offsets/per_sample_weights as if contiguous (embedding_bag
        # makes them so before calling it): a strided view would be read wrong, even out of bounds.
        indices, offsets = indices.contiguous(), offsets.contiguous()
        psw = None if psw is None else psw.contiguous()
        out = op(weight, indices, offsets, False, int(spec.const("mode")), False, psw,
                 bool(spec.const("include_last_offset")), int(spec.const("padding_idx")))[0]
        return [out]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """Vectorized float64 pooling: bag id per position by searchsorted, then index_add."""
        weight, indices, offsets, psw = inputs
        assert weight is not None and indices is not None and offsets is not None
        ilo = bool(spec.const("include_last_offset"))
        mode, pad = int(spec.const("mode")), int(spec.const("padding_idx"))
        w = weight.to(torch.float64)
        idx = indices.reshape(-1).to(torch.int64)
        off = offsets.reshape(-1).to(torch.int64)
        n, d = idx.numel(), w.shape[1]
        b = off.numel() - (1 if ilo else 0)
        starts = off[:b]
        ends = off[1 : b + 1] if ilo else torch.cat([off[1:], off.new_tensor([n])])
        pos = torch.arange(n, device=idx.device)
        bag = torch.searchsorted(starts, pos, right=True) - 1  # last bag starting at or before pos
        bag_c = bag.clamp(min=0)
        keep = (bag >= 0) & (pos < ends[bag_c])  # include_last_offset: nothing past offsets[-1]
        if pad >= 0:
            keep &= idx != pad
        rows = w[idx[keep]]
        if mode == 2:
            return [self._reference_max(rows, bag_c[keep], pos[keep], b, n)]
        if psw is not None:
            rows = rows * psw.reshape(-1).to(torch.float64)[keep][:, None]
        out = torch.zeros(b, d, dtype=torch.float64, device=w.device)
        out.index_add_(0, bag_c[keep], rows)
        if mode == 1:
            cnt = torch.bincount(bag_c[keep], minlength=b).to(torch.float64)
            out = out / cnt.clamp(min=1)[:, None]
        return [out]

    @staticmethod
    def _reference_max(rows: torch.Tensor, bag: torch.Tensor, pos: torch.Tensor, b: int, n: int) -> torch.Tensor:
        """aten's max over the kept entries (rows, their bags and positions): the first entry of a bag
        seeds it, later ones replace it only when greater; so NaN iff the first is NaN; empty -> 0."""
        d = rows.shape[1]
        nan = torch.isnan(rows)
        out = torch.full((b, d), -math.inf, dtype=torch.float64, device=rows.device)
        out.scatter_reduce_(0, bag[:, None].expand(-1, d), rows.masked_fill(nan, -math.inf), "amax", include_self=True)
        first = torch.full((b,), n, dtype=torch.int64, device=rows.device).scatter_reduce(0, bag, pos, "amin")
        is_first = pos == first[bag]
        nan_first = torch.zeros(b, d, dtype=torch.bool, device=rows.device)
        nan_first[bag[is_first]] = nan[is_first]
        out = out.masked_fill(nan_first, math.nan)
        cnt = torch.bincount(bag, minlength=b)
        return out.masked_fill((cnt == 0)[:, None], 0.0)

    # -- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _random_offsets(n: int, b: int, gen: torch.Generator, empty_frac: float = 0.1) -> torch.Tensor:
        """B sorted bag starts from 0, random sizes summing to n, about ``empty_frac`` forced empty."""
        if b <= 1:
            return torch.zeros(max(b, 0), dtype=torch.int64)
        cuts = torch.sort(torch.randint(0, n + 1, (b - 1,), generator=gen)).values
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), cuts])
        forced = torch.rand(b, generator=gen) < empty_frac
        forced[0] = False
        starts = torch.where(forced, torch.zeros_like(starts), starts)
        return torch.cummax(starts, 0).values  # a forced bag takes its predecessor's start: empty

    def _build(
        self,
        spec: OpSpec,
        weight_vals: torch.Tensor,
        idx_vals: torch.Tensor,
        starts: torch.Tensor,
        psw_vals: torch.Tensor | None,
        sigs: Sequence[TensorSig | None] | None = None,
    ) -> list[torch.Tensor | None]:
        """Lay dense values out with ``sigs`` (defaults: the spec's) on the spec's device."""
        device = torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)
        sigs = spec.args if sigs is None else sigs
        ilo = bool(spec.const("include_last_offset"))
        n = idx_vals.numel()
        off_vals = torch.cat([starts, starts.new_tensor([n])]) if ilo else starts
        w_sig, i_sig, o_sig, p_sig = sigs
        assert w_sig is not None and i_sig is not None and o_sig is not None
        out: list[torch.Tensor | None] = [
            _strided(w_sig, weight_vals, device),
            _strided(i_sig, idx_vals, device),
            _strided(o_sig, off_vals, device),
            None,
        ]
        if p_sig is not None:
            assert psw_vals is not None
            out[3] = _strided(p_sig, psw_vals, device)
        return out

    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        gen = torch.Generator().manual_seed(int(seed))
        v, d, n, b = self._dims(spec)
        pad = int(spec.const("padding_idx"))
        weight = torch.randn(v, d, generator=gen)
        idx = torch.randint(0, max(v, 1), (n,), generator=gen)
        if n > 1:  # explicit repeats inside bags
            rep = torch.rand(n, generator=gen) < 0.1
            rep[0] = False
            idx = torch.where(rep, torch.roll(idx, 1), idx)
        if 0 <= pad < v and n > 0:
            idx = torch.where(torch.rand(n, generator=gen) < 0.1, torch.full_like(idx, pad), idx)
        starts = self._random_offsets(n, b, gen)
        psw = torch.randn(n, generator=gen) if spec.const("has_psw") else None
        return self._build(spec, weight, idx, starts, psw)

    def _case(
        self,
        spec: OpSpec,
        name: str,
        weight: torch.Tensor,
        idx: torch.Tensor,
        sizes: Sequence[int],
        gen: torch.Generator,
        psw: torch.Tensor | None = None,
        row_stride: int | None = None,
    ) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
        """An edge case with the spec's dtypes/constants and its own (contiguous) shapes."""
        w_sig, i_sig, o_sig, p_sig = spec.args
        assert w_sig is not None and i_sig is not None and o_sig is not None
        ilo = bool(spec.const("include_last_offset"))
        v, d = weight.shape
        n = idx.numel()
        assert sum(sizes) == n
        starts = torch.tensor([0] + list(sizes[:-1]), dtype=torch.int64).cumsum(0)
        if p_sig is not None and psw is None:
            psw = torch.rand(n, generator=gen) + 0.5
        sigs = (
            TensorSig(w_sig.dtype, (v, d), (row_stride or d, 1)),
            TensorSig(i_sig.dtype, (n,), (1,)),
            TensorSig(o_sig.dtype, (len(sizes) + (1 if ilo else 0),), (1,)),
            None if p_sig is None else TensorSig(p_sig.dtype, (n,), (1,)),
        )
        inputs = self._build(spec, weight, idx, starts, psw, sigs)
        w, i, o, p = inputs
        assert w is not None and i is not None and o is not None
        case_spec = self.spec_for(w, i, o, p, int(spec.const("mode")), ilo, int(spec.const("padding_idx")), op=spec.op)
        return name, case_spec, inputs

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        gen = torch.Generator().manual_seed(1234)
        _, d_spec, _, _ = self._dims(spec)
        pad = int(spec.const("padding_idx"))
        w_dtype = spec.args[0].torch_dtype if spec.args[0] is not None else torch.float32
        d = max(1, min(d_spec, 64))
        v = 16

        def table(rows: int = v, dim: int = d) -> torch.Tensor:
            return torch.randn(rows, dim, generator=gen)

        def ids(n: int, rows: int = v) -> torch.Tensor:
            return torch.randint(0, rows, (n,), generator=gen)

        cases = [
            self._case(spec, "all_bags_empty", table(), ids(0), [0, 0, 0, 0], gen),
            self._case(spec, "first_and_last_bag_empty", table(), ids(9), [0, 3, 2, 4, 0], gen),
            self._case(spec, "one_bag", table(), ids(7), [7], gen),
            self._case(spec, "one_huge_bag", table(v, min(d, 16)), ids(5002), [1, 5000, 1, 0], gen),
            self._case(spec, "repeated_index", table(), torch.full((40,), 3, dtype=torch.int64), [32, 0, 8], gen),
            self._case(spec, "single_element", table(1, d), torch.zeros(1, dtype=torch.int64), [1], gen),
            self._case(spec, "odd_dim_33", table(v, 33), ids(23), [5, 0, 1, 17], gen),
            self._case(spec, "strided_table", table(v, d), ids(12), [4, 8], gen, row_stride=d + 7),
        ]
        if 0 <= pad <= 100_000:
            rows = max(v, pad + 1)
            idx = ids(11, rows)
            idx[0:3] = pad  # bag 0: only padding (mean -> 0)
            idx[3] = pad  # bag 1: padding mixed with real rows
            cases.append(self._case(spec, "bags_hitting_padding_idx", table(rows), idx, [3, 4, 4], gen))
        # Large magnitudes, one sign per table: eager's own overflow limits are not crossed.
        big = 1e30 if w_dtype in (torch.float32, torch.bfloat16) else 1e4
        cases.append(
            self._case(spec, "extreme_values", torch.rand(v, d, generator=gen) * big + big / 4, ids(10),
                       [3, 1, 2, 4], gen, psw=torch.rand(10, generator=gen) * 0.5 + 0.25)
        )
        if int(spec.const("mode")) == 2:
            cases += self._max_cases(spec, gen, d, pad)
        return cases

    def _max_cases(self, spec: OpSpec, gen: torch.Generator, d: int, pad: int) -> list:
        """mode='max': NaN first / later / alone in a bag (aten keeps it only when first, also when
        padding comes before it), -inf rows, and ties of negative values."""
        rows = max(8, pad + 1) if 0 <= pad <= 100_000 else 8
        w = torch.randn(rows, d, generator=gen)
        nan_row, neg_inf_row, small_row = (pad + 1) % rows, (pad + 2) % rows, (pad + 3) % rows
        w[nan_row, 0] = math.nan  # column 0 of this row is NaN
        w[neg_inf_row, :] = -math.inf
        w[small_row, :] = -1e4
        other = [r for r in range(rows) if r not in (nan_row, neg_inf_row, small_row, pad)]
        seqs = [
            [nan_row, other[0]],  # NaN first: NaN in column 0
            [other[0], nan_row, other[1]],  # NaN later: dropped
            [nan_row],  # NaN alone
            [neg_inf_row, neg_inf_row],  # all -inf
            [small_row, neg_inf_row, small_row],  # ties, negative values
            [],  # empty
        ]
        if 0 <= pad < rows:
            seqs += [[pad, nan_row, other[2]], [pad, pad]]  # padding before a NaN; only padding
        idx = torch.tensor([i for sq in seqs for i in sq], dtype=torch.int64)
        return [self._case(spec, "max_nan_inf_padding", w, idx, [len(sq) for sq in seqs], gen)]

    # -- numerics / cost -------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        w, idx, off, psw = spec.args
        assert w is not None and idx is not None and off is not None
        _, d, n, b = self._dims(spec)
        per_index = d * _elem_size(w.dtype) + _elem_size(idx.dtype) + (0 if psw is None else _elem_size(psw.dtype))
        return n * per_index + off.numel() * _elem_size(off.dtype) + b * d * _elem_size(w.dtype)

    # -- kernels ---------------------------------------------------------------------------------
    @staticmethod
    def _warps(tile: int) -> int:
        """32-64 gathered elements per thread, 1..8 warps.

        An H100 sweep (fp32/fp16/bf16, D 33..256, pooling 1..100) favoured many small programs
        with several rows in flight per thread over wide programs: 8-warp tiles lost 2-4x.
        """
        return max(1, min(8, _next_pow2(max(tile // 2048, 1))))

    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """Template x structure x tile proposals, a pooling-factor-aware default first, ~20-35."""
        w = spec.args[0]
        assert w is not None
        _, d, n, b = self._dims(spec)
        avg_len = n / max(b, 1)
        bd_max = max(16, min(_next_pow2(max(d, 1)), 512))  # >= 16: no degenerate 1-wide tiles
        bd0 = min(bd_max, 64)  # narrow D slices: more programs, more gathers in flight
        bd_opts = [bd0] + [x for x in (bd0 // 2, min(bd_max, bd0 * 2)) if 16 <= x and x != bd0]
        bl0 = max(8, min(64, _next_pow2(max(1, math.ceil(1.5 * avg_len)))))  # covers most bags in a chunk
        bl_opts = [bl0] + [x for x in (bl0 // 2, bl0 * 2) if 8 <= x <= 64]

        out: list[tuple[str, dict[str, Any]]] = []

        def add(template: str, **cfg: Any) -> None:
            out.append((template, cfg))

        def fits(*dims: int) -> bool:
            return math.prod(dims) <= _MAX_TILE

        def per_program(bd: int, bl: int, acc: bool = False, nw: int | None = None, stages: int = 2) -> None:
            if fits(bd, bl):
                add("bag_per_program", BLOCK_D=bd, BLOCK_L=bl, ACC_TILE=acc,
                    num_warps=nw or self._warps(bd * bl), num_stages=stages)

        def per_block(bd: int, bl: int, bpp: int) -> None:
            add("bags_per_block", BLOCK_D=bd, BLOCK_L=bl, ACC_TILE=False, BAGS_PER_PROG=bpp,
                num_warps=self._warps(bd * bl), num_stages=2)

        def tile(bd: int, bpp: int) -> None:
            if fits(bd, bpp):
                add("bag_tile", BLOCK_D=bd, BAGS_PER_PROG=bpp, num_warps=self._warps(bd * bpp), num_stages=2)

        # Default by pooling factor (H100 sweep): ~1 index per bag -> bags as tile rows; a few ->
        # consecutive bags per program; otherwise one bag per program.
        if avg_len < 2 and b >= 64:
            tile(bd0, 32)
        elif avg_len < 6 and b >= 64:
            per_block(bd0, 8, 2)

        # (a) one bag per program: BLOCK_D x BLOCK_L grid, then structure / warps / stages of the default.
        for bd in bd_opts:
            for bl in bl_opts:
                per_program(bd, bl)
        nw0 = self._warps(bd0 * bl0)
        for bl in bl_opts[:2]:
            per_program(bd0, bl, acc=True, nw=max(2, self._warps(bd0 * bl)))  # warps split L: reduce once
        for nw in (nw0 * 2, nw0 * 4):
            if nw <= 8:
                per_program(bd0, bl0, nw=nw)
        per_program(bd0, bl0, stages=3)
        per_program(bd0, bl0, stages=1)

        # (b) several consecutive bags per program, one after another (amortize small bags).
        bl_small = min(bl0, 16)
        for bpp in (2, 4, 8, 16):
            if bpp <= max(2, b):
                per_block(bd0, bl_small, bpp)
        if len(bd_opts) > 1:
            per_block(bd_opts[-1], bl_small, 2)

        # (c) bags as tile rows, stepping through positions (tiny, similar pooling factors).
        for bpp in (8, 16, 32, 64):
            if bpp <= max(8, _next_pow2(b)):
                for bd in bd_opts[:2]:
                    tile(bd, bpp)

        seen: set = set()
        cands: list[Candidate] = []
        for template, cfg in out:
            config = tuple(sorted(cfg.items()))
            if (template, config) in seen:
                continue
            seen.add((template, config))
            cands.append(Candidate(source=self._templates(spec)[template][1], config=config, origin="template",
                                   template=template))
        return cands

    @staticmethod
    def _templates(spec: OpSpec) -> dict[str, tuple[str, str]]:
        return MAX_TEMPLATES if int(spec.const("mode")) == 2 else TEMPLATES

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        w, idx, off, psw = spec.args
        assert w is not None and idx is not None and off is not None
        v, d, n, b = self._dims(spec)
        cfg = cand.cfg
        templates = self._templates(spec)
        template = template_of(cand, templates, "embedding_bag")
        kernel = templates[template][0]
        if f"def {kernel}(" not in cand.source:  # e.g. a sum/mean source for a max spec: wrong semantics
            raise ValueError(f"the candidate source has no kernel {kernel} (mode {spec.const('mode')})")
        bd = int(cfg["BLOCK_D"])
        args: list[tuple[str, Any]] = [
            ("weight_ptr", In(0)),
            ("indices_ptr", In(1)),
            ("offsets_ptr", In(2)),
            ("psw_ptr", In(3) if psw is not None else In(0)),  # unused when HAS_PSW=False
            ("out_ptr", Out(0)),
            ("num_indices", n),
            ("num_bags", b),
            ("num_embeddings", v),
            ("dim", d),
            ("stride_w", w.stride[0]),
            ("stride_idx", idx.stride[0]),
            ("stride_off", off.stride[0]),
            ("stride_psw", psw.stride[0] if psw is not None else 0),
            ("stride_out", d),
            ("MODE", int(spec.const("mode"))),
            ("HAS_PSW", psw is not None),
            ("PADDING_IDX", int(spec.const("padding_idx"))),
            ("INCLUDE_LAST_OFFSET", bool(spec.const("include_last_offset"))),
            ("BLOCK_D", bd),
        ]
        if template == "bag_per_program":
            args += [("BLOCK_L", int(cfg["BLOCK_L"])), ("ACC_TILE", bool(cfg["ACC_TILE"]))]
            grid = (b, _cdiv(d, bd))
        elif template == "bags_per_block":
            args += [("BLOCK_L", int(cfg["BLOCK_L"])), ("ACC_TILE", bool(cfg["ACC_TILE"])),
                     ("BAGS_PER_PROG", int(cfg["BAGS_PER_PROG"]))]
            grid = (_cdiv(b, int(cfg["BAGS_PER_PROG"])), _cdiv(d, bd))
        elif template == "bag_tile":
            args += [("BAGS_PER_PROG", int(cfg["BAGS_PER_PROG"]))]
            grid = (_cdiv(b, int(cfg["BAGS_PER_PROG"])), _cdiv(d, bd))
        else:
            raise ValueError(f"unknown embedding_bag template {template!r}")
        return CallPlan(
            kernel=kernel,
            grid=grid,
            args=tuple(args),
            outputs=(OutBuf((b, d), w.dtype, fill=None),),
            num_warps=int(cfg.get("num_warps", 4)),
            num_stages=int(cfg.get("num_stages", 2)),
        )


register(EmbeddingBagFamily())
