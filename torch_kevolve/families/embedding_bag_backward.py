"""The embedding_bag_backward family: ``aten._embedding_bag_backward.default`` with ``sparse=False``
(the dense weight gradient of ``nn.EmbeddingBag``; what a DLRM training step's backward graph calls).

Why a family of its own: Inductor falls back to ATen for it on every device. ATen's CUDA dense path
sorts the indices (a radix sort of all N indices), builds per-segment partial sums and reduces them
(several launches plus a sort's temporary storage) even when there are few repeats; on CPU it is a
serial index_add loop. Our plans accumulate straight into the gradient with atomics.

Served: mode sum (with or without ``per_sample_weights``), mean and max; ``padding_idx``; include_last_offset
or not (told apart by ``len(offsets)`` vs ``B = grad.shape[0]``); grad fp32/fp16/bf16 with a unit
column stride (any row stride); int32/int64 indices and offsets of any stride. Skipped: ``sparse=True``,
``scale_grad_by_freq``.

Canonical inputs: ``(grad [B, D], indices [N], offsets, per_sample_weights [N] | None, offset2bag,
bag_size)``. The kernels read only the first four: on CPU ATen leaves the forward's ``offset2bag`` empty
for sum mode and ``bag_size`` zero, so they derive bag membership and the mean's divisor from
``offsets`` and ``indices`` themselves. ``offset2bag`` / ``bag_size`` are there for :meth:`eager`, the
search's baseline: ATen's backward exactly as the graph runs it, nothing added.

ATen semantics pinned here (tests compare with eager autograd through ``F.embedding_bag``):

* bag ``b`` is positions ``[offsets[b], offsets[b+1])``; the last bag (no include_last_offset) ends at N.
* ``grad_weight[indices[p]] += grad[bag(p)] * psw[p]`` (sum) or ``grad[bag(p)] / count(bag(p))`` (mean),
  where ``count`` is the number of non-padding entries of the bag. Padding entries contribute nothing.
* max: ``grad_weight[maximum_indices[b, d], d] += grad[b, d]`` for bags with a non-padding entry (ATen
  writes 0 (CPU) or -1 (CUDA) as the argmax of the others; ``maximum_indices`` is input 6, max mode only).
* rows never indexed are 0; the result has the grad's dtype and shape ``[num_weights, D]``.

Templates (the atomic ones add in fp32; for fp16/bf16 into an fp32 workspace a last step casts):

* ``bag_atomic``: grid (cdiv(B, BAGS), cdiv(D, BLOCK_D)); a program walks BAGS bags, loads each bag's
  grad slice once (and, for mean, counts the bag's non-padding entries), then adds it to the rows of the
  bag's indices BLOCK_L at a time. One grad read per bag; skewed bag lengths unbalance programs.
* ``index_atomic``: two ``pre`` steps write ``bag_of[N]`` (int32, -1 outside every bag) and the per-bag
  scale (1 or 1/count) to workspace, then grid (cdiv(N, BLOCK_N), cdiv(D, BLOCK_D)) programs each take
  BLOCK_N positions, gather their bags' grad rows and add them atomically: balanced whatever the bag
  lengths, at one grad gather per index.
* ``csr`` (six launches, no float atomics): the same bag marks, then a counting sort of the contributing
  positions by row -- ``ebb_csr_hist`` (int32 atomic counts per row), ``ebb_csr_scan`` (row starts,
  one program), ``ebb_csr_fill`` (positions into their row's slots through an atomic cursor) -- and
  ``ebb_csr_reduce``: one program per gradient row x BLOCK_D sums its positions' scaled grad rows in
  registers and writes the row once in the gradient's dtype (untouched rows 0; no pre-fill, no cast).
  Hot rows hit by many bags cost no atomic contention; summation order within a row follows the
  cursor's (not bitwise deterministic; a stable rank would make it so).

* ``max_atomic`` (mode max only): grid (cdiv(B, BAGS), cdiv(D, BLOCK_D)); per bag, count its non-padding
  entries, then one atomic add per column to the argmax row.

Not done (issue 11): the row-wise sparse gradient (``sparse=True``), ``scale_grad_by_freq``.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch._subclasses.fake_tensor import is_fake

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip, Step, Ws
from .util import cdiv as _cdiv, elem_size as _elem_size, meta_val, next_pow2 as _next_pow2, node_kwargs, template_of, check_pow2
from .util import strided as _strided

log = logging.getLogger("torch_kevolve")

_OP = "aten._embedding_bag_backward.default"
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int32, torch.int64)
_MAX_GRID_Y = 65535

_HEADER = '''import triton
import triton.language as tl


@triton.jit
def _bag_bounds(off_ptr, b, num_offsets, num_idx, stride_off):
    """Positions [start, end) of bag b, clamped to [0, num_idx]; the last bag may end at num_idx."""
    start = tl.load(off_ptr + b * stride_off).to(tl.int64)
    nxt = b + 1
    end = tl.load(off_ptr + nxt * stride_off, mask=nxt < num_offsets, other=num_idx).to(tl.int64)
    start = tl.minimum(tl.maximum(start, 0), num_idx)
    end = tl.maximum(tl.minimum(end, num_idx), start)
    return start, end


@triton.jit
def _count(idx_ptr, start, end, stride_idx, num_weights, PADDING_IDX: tl.constexpr, BLOCK_L: tl.constexpr):
    """Non-padding (in-range) entries of positions [start, end): the mean's divisor."""
    l = tl.arange(0, BLOCK_L)
    acc = tl.zeros([BLOCK_L], dtype=tl.int32)
    for p0 in range(start, end, BLOCK_L):
        p = p0 + l
        pm = p < end
        rows = tl.load(idx_ptr + p * stride_idx, mask=pm, other=-1).to(tl.int64)
        ok = pm & (rows >= 0) & (rows < num_weights)
        tl.device_assert((rows >= 0) & (rows < num_weights), "embedding_bag_backward: index out of range", mask=pm)
        if PADDING_IDX >= 0:
            ok = ok & (rows != PADDING_IDX)
        acc += ok.to(tl.int32)
    return tl.sum(acc, axis=0)


@triton.jit
def ebb_cast(acc_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    """fp32 accumulator -> the gradient's dtype (fp16/bf16 plans only)."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < numel
    tl.store(out_ptr + o, tl.load(acc_ptr + o, mask=m, other=0.0).to(out_ptr.dtype.element_ty), mask=m)
'''

BAG_ATOMIC_SOURCE = _HEADER + '''

@triton.jit
def ebb_bag_atomic(
    grad_ptr, idx_ptr, off_ptr, psw_ptr, acc_ptr,
    num_bags, num_idx, num_offsets, dim, num_weights, stride_gb, stride_idx, stride_off, stride_psw,
    MODE: tl.constexpr, PADDING_IDX: tl.constexpr, HAS_PSW: tl.constexpr,
    BAGS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """BAGS bags x one BLOCK_D slice: each bag's grad slice (scaled for mean) added to its rows."""
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < dim
    l = tl.arange(0, BLOCK_L)
    for k in range(BAGS):
        b = tl.program_id(0).to(tl.int64) * BAGS + k
        if b < num_bags:
            start, end = _bag_bounds(off_ptr, b, num_offsets, num_idx, stride_off)
            g = tl.load(grad_ptr + b * stride_gb + d, mask=dm, other=0.0).to(tl.float32)
            if MODE == 1:
                cnt = _count(idx_ptr, start, end, stride_idx, num_weights, PADDING_IDX, BLOCK_L)
                g = g / tl.maximum(cnt, 1).to(tl.float32)
            for p0 in range(start, end, BLOCK_L):
                p = p0 + l
                pm = p < end
                rows = tl.load(idx_ptr + p * stride_idx, mask=pm, other=-1).to(tl.int64)
                ok = pm & (rows >= 0) & (rows < num_weights)
                tl.device_assert((rows >= 0) & (rows < num_weights), "embedding_bag_backward: index out of range", mask=pm)
                if PADDING_IDX >= 0:
                    ok = ok & (rows != PADDING_IDX)
                contrib = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32) + g[None, :]
                if HAS_PSW:
                    w = tl.load(psw_ptr + p * stride_psw, mask=pm, other=0.0).to(tl.float32)
                    contrib = contrib * w[:, None]
                tl.atomic_add(acc_ptr + rows[:, None] * dim + d[None, :], contrib, mask=ok[:, None] & dm[None, :])
'''

_MARK = '''

@triton.jit
def ebb_clear_bags(bag_ptr, num_idx, BLOCK: tl.constexpr):
    """bag_of[p] = -1: positions outside every bag (include_last_offset tails) stay unowned."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(bag_ptr + o, tl.full([BLOCK], -1, tl.int32), mask=o < num_idx)


@triton.jit
def ebb_mark_bags(
    idx_ptr, off_ptr, bag_ptr, scale_ptr,
    num_bags, num_idx, num_offsets, num_weights, stride_idx, stride_off,
    MODE: tl.constexpr, PADDING_IDX: tl.constexpr, BAGS: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """For BAGS bags: bag_of[p] = b over the bag's positions, scale[b] = 1 (sum) or 1/count (mean)."""
    l = tl.arange(0, BLOCK_L)
    for k in range(BAGS):
        b = tl.program_id(0).to(tl.int64) * BAGS + k
        if b < num_bags:
            start, end = _bag_bounds(off_ptr, b, num_offsets, num_idx, stride_off)
            for p0 in range(start, end, BLOCK_L):
                p = p0 + l
                tl.store(bag_ptr + p, tl.zeros([BLOCK_L], dtype=tl.int32) + b.to(tl.int32), mask=p < end)
            s = 1.0
            if MODE == 1:
                cnt = _count(idx_ptr, start, end, stride_idx, num_weights, PADDING_IDX, BLOCK_L)
                s = 1.0 / tl.maximum(cnt, 1).to(tl.float32)
            tl.store(scale_ptr + b, s)
'''

INDEX_ATOMIC_SOURCE = _HEADER + _MARK + '''

@triton.jit
def ebb_index_atomic(
    grad_ptr, idx_ptr, psw_ptr, bag_ptr, scale_ptr, acc_ptr,
    num_idx, dim, num_weights, stride_gb, stride_idx, stride_psw,
    PADDING_IDX: tl.constexpr, HAS_PSW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """BLOCK_N positions x one BLOCK_D slice: gather grad[bag_of[p]] * scale, add to row indices[p]."""
    p = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < dim
    pm = p < num_idx
    bag = tl.load(bag_ptr + p, mask=pm, other=-1).to(tl.int64)
    rows = tl.load(idx_ptr + p * stride_idx, mask=pm, other=-1).to(tl.int64)
    ok = pm & (bag >= 0) & (rows >= 0) & (rows < num_weights)
    tl.device_assert((rows >= 0) & (rows < num_weights), "embedding_bag_backward: index out of range", mask=pm & (bag >= 0))
    if PADDING_IDX >= 0:
        ok = ok & (rows != PADDING_IDX)
    s = tl.load(scale_ptr + bag, mask=ok, other=0.0)
    if HAS_PSW:
        s = s * tl.load(psw_ptr + p * stride_psw, mask=ok, other=0.0).to(tl.float32)
    m2 = ok[:, None] & dm[None, :]
    g = tl.load(grad_ptr + bag[:, None] * stride_gb + d[None, :], mask=m2, other=0.0).to(tl.float32)
    tl.atomic_add(acc_ptr + rows[:, None] * dim + d[None, :], g * s[:, None], mask=m2)
'''

CSR_SOURCE = _HEADER + _MARK + '''

@triton.jit
def _valid(bag_ptr, idx_ptr, p, num_idx, num_weights, stride_idx, PADDING_IDX: tl.constexpr):
    """(rows, ok) of positions p: ok where p is in a bag and its row is in range and not padding."""
    pm = p < num_idx
    bag = tl.load(bag_ptr + p, mask=pm, other=-1)
    rows = tl.load(idx_ptr + p * stride_idx, mask=pm, other=-1).to(tl.int64)
    ok = pm & (bag >= 0) & (rows >= 0) & (rows < num_weights)
    tl.device_assert((rows >= 0) & (rows < num_weights), "embedding_bag_backward: index out of range", mask=pm & (bag >= 0))
    if PADDING_IDX >= 0:
        ok = ok & (rows != PADDING_IDX)
    return rows, ok


@triton.jit
def ebb_csr_hist(bag_ptr, idx_ptr, cnt_ptr, num_idx, num_weights, stride_idx,
                 PADDING_IDX: tl.constexpr, BLOCK: tl.constexpr):
    """cnt[row] += 1 per contributing position (int32 atomics; cnt pre-filled with 0)."""
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows, ok = _valid(bag_ptr, idx_ptr, p, num_idx, num_weights, stride_idx, PADDING_IDX)
    tl.atomic_add(cnt_ptr + rows, tl.full([BLOCK], 1, tl.int32), mask=ok)


@triton.jit
def ebb_csr_scan(cnt_ptr, start_ptr, num_weights, BLOCK: tl.constexpr):
    """start[0..V] = exclusive prefix sum of cnt (one program, BLOCK rows per step)."""
    total = tl.zeros([1], dtype=tl.int64)
    o = tl.arange(0, BLOCK)
    tl.store(start_ptr + tl.zeros([1], dtype=tl.int64), total)
    for r0 in range(0, num_weights, BLOCK):
        r = r0 + o
        x = tl.load(cnt_ptr + r, mask=r < num_weights, other=0).to(tl.int64)
        tl.store(start_ptr + r + 1, tl.cumsum(x, axis=0) + tl.sum(total, axis=0), mask=r < num_weights)
        total = total + tl.sum(x, axis=0)


@triton.jit
def ebb_csr_fill(bag_ptr, idx_ptr, start_ptr, cursor_ptr, perm_ptr, num_idx, num_weights, stride_idx,
                 PADDING_IDX: tl.constexpr, BLOCK: tl.constexpr):
    """perm[start[row] + k] = p, k from an atomic cursor per row (cursor pre-filled with 0)."""
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows, ok = _valid(bag_ptr, idx_ptr, p, num_idx, num_weights, stride_idx, PADDING_IDX)
    k = tl.atomic_add(cursor_ptr + rows, tl.full([BLOCK], 1, tl.int32), mask=ok)
    base = tl.load(start_ptr + rows, mask=ok, other=0)
    tl.store(perm_ptr + base + k.to(tl.int64), p.to(tl.int32), mask=ok)


@triton.jit
def ebb_csr_reduce(
    grad_ptr, psw_ptr, bag_ptr, scale_ptr, start_ptr, perm_ptr, out_ptr,
    dim, stride_gb, stride_psw,
    HAS_PSW: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One gradient row x one BLOCK_D slice: the sum over the row's positions (no float atomics; every
    row written, untouched ones 0)."""
    r = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < dim
    lo = tl.load(start_ptr + r)
    hi = tl.load(start_ptr + r + 1)
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
    for k0 in range(lo, hi, BLOCK_K):
        k = k0 + kk
        km = k < hi
        p = tl.load(perm_ptr + k, mask=km, other=0).to(tl.int64)
        bag = tl.load(bag_ptr + p, mask=km, other=0).to(tl.int64)
        s = tl.load(scale_ptr + bag, mask=km, other=0.0)
        if HAS_PSW:
            s = s * tl.load(psw_ptr + p * stride_psw, mask=km, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + bag[:, None] * stride_gb + d[None, :], mask=km[:, None] & dm[None, :],
                    other=0.0).to(tl.float32)
        acc += g * s[:, None]
    tl.store(out_ptr + r * dim + d, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=dm)
'''

MAX_SOURCE = _HEADER + '''

@triton.jit
def ebb_max_atomic(
    grad_ptr, idx_ptr, off_ptr, mi_ptr, acc_ptr,
    num_bags, num_idx, num_offsets, dim, num_weights, stride_gb, stride_idx, stride_off, stride_mi,
    PADDING_IDX: tl.constexpr, BAGS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Mode max, BAGS bags x one BLOCK_D slice: grad[b, d] added to row maximum_indices[b, d] (column d)
    for bags with a non-padding entry (ATen on CPU writes 0 there for empty bags, on CUDA -1)."""
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < dim
    for k in range(BAGS):
        b = tl.program_id(0).to(tl.int64) * BAGS + k
        if b < num_bags:
            start, end = _bag_bounds(off_ptr, b, num_offsets, num_idx, stride_off)
            cnt = _count(idx_ptr, start, end, stride_idx, num_weights, PADDING_IDX, BLOCK_L)
            mi = tl.load(mi_ptr + b * stride_mi + d, mask=dm, other=-1).to(tl.int64)
            ok = dm & (mi >= 0) & (mi < num_weights) & (cnt > 0)
            g = tl.load(grad_ptr + b * stride_gb + d, mask=ok, other=0.0).to(tl.float32)
            tl.atomic_add(acc_ptr + mi * dim + d, g, mask=ok)
'''

#: template -> (main kernel, source); ``max_atomic`` serves mode max only, the others sum and mean
TEMPLATES: dict[str, tuple[str, str]] = {
    "max_atomic": ("ebb_max_atomic", MAX_SOURCE),
    "bag_atomic": ("ebb_bag_atomic", BAG_ATOMIC_SOURCE),
    "index_atomic": ("ebb_index_atomic", INDEX_ATOMIC_SOURCE),
    "csr": ("ebb_csr_reduce", CSR_SOURCE),
}
_MODE_NAMES = {0: "sum", 1: "mean", 2: "max"}


class EmbeddingBagBackwardFamily(OpFamily):
    name = "embedding_bag_backward"
    ops = (_OP,)
    template_version = "1"

    # -- specs -----------------------------------------------------------------------------------
    @staticmethod
    def _unsupported(grad: Any, indices: Any, offsets: Any, psw: Any, mode: int) -> str | None:
        if mode not in (0, 1, 2):
            return f"mode {mode} is not an embedding_bag mode"
        if grad.dtype not in _FLOAT_DTYPES:
            return f"grad dtype {grad.dtype} not served"
        # the kernels read grad[b, d] at b * stride(0) + d: a column stride other than 1 matters whenever
        # D > 1, also for one bag (a [1, D] step view)
        if grad.dim() != 2 or (grad.shape[1] > 1 and grad.stride(1) != 1):
            return "grad must be 2-D with a unit column stride"
        if indices.dim() != 1 or offsets.dim() != 1:
            return "indices and offsets must be 1-D"
        if indices.dtype not in _INDEX_DTYPES or offsets.dtype not in _INDEX_DTYPES:
            return f"index dtypes {indices.dtype}/{offsets.dtype} not served"
        b = grad.shape[0]
        if offsets.numel() not in (b, b + 1):
            return f"{offsets.numel()} offsets for {b} bags"
        if psw is not None and (mode != 0 or psw.dim() != 1 or psw.numel() != indices.numel()
                                or psw.dtype not in _FLOAT_DTYPES):
            return "per_sample_weights must be 1-D, one per index, with mode sum"
        return None

    @classmethod
    def spec_for(cls, grad: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, psw: torch.Tensor | None,
                 num_weights: int, mode: int = 0, padding_idx: int | None = -1, offset2bag: Any = None,
                 bag_size: Any = None, max_indices: Any = None) -> OpSpec:
        """The spec of a call on concrete (or fake) tensors. Raises ValueError if unsupported.

        ``offset2bag`` / ``bag_size`` (the forward's bookkeeping; default: N and B entries of the offsets'
        dtype) are read by no kernel, only by :meth:`eager`, which is also the search's baseline: ATen's
        backward exactly as the graph calls it (on CPU, sum mode, ATen leaves offset2bag empty)."""
        why = cls._unsupported(grad, indices, offsets, psw, int(mode))
        if why is not None:
            raise ValueError(why)
        o2b = TensorSig.of(offset2bag) if offset2bag is not None else TensorSig(
            str(offsets.dtype).replace("torch.", ""), (indices.shape[0],), (1,))
        bsz = TensorSig.of(bag_size) if bag_size is not None else TensorSig(
            str(offsets.dtype).replace("torch.", ""), (grad.shape[0],), (1,))
        if len(o2b.shape) != 1 or o2b.shape[0] not in (0, indices.shape[0]) or len(bsz.shape) != 1:
            raise ValueError(f"offset2bag {o2b.shape} / bag_size {bsz.shape} do not fit {indices.shape[0]} indices")
        # maximum_indices: read in max mode only (ATen's [B, D] argmax rows); else the graph's, or None
        mis = TensorSig.of(max_indices) if max_indices is not None else None
        if int(mode) == 2:
            if mis is None:
                mis = TensorSig(str(offsets.dtype).replace("torch.", ""), tuple(grad.shape), (grad.shape[1], 1))
            if mis.shape != tuple(grad.shape) or mis.dtype not in ("int32", "int64") or (
                    mis.shape[1] > 1 and mis.stride[1] != 1):
                raise ValueError(f"maximum_indices {mis.dtype}{list(mis.shape)} does not fit grad {list(grad.shape)}")
        else:
            mis = None
        pad = -1 if padding_idx is None or int(padding_idx) < 0 else int(padding_idx)
        consts = tuple(sorted({"mode": int(mode), "num_weights": int(num_weights), "padding_idx": pad,
                               "has_psw": psw is not None}.items()))
        return OpSpec(family=cls.name, op=_OP,
                      args=(TensorSig.of(grad), TensorSig.of(indices), TensorSig.of(offsets),
                            None if psw is None else TensorSig.of(psw), o2b, bsz, mis),
                      consts=consts, device=DeviceSig.of(grad.device),
                      versions=software_versions(cls.template_version))

    @staticmethod
    def _dims(spec: OpSpec) -> tuple[int, int, int, int]:
        """(V, D, N, B): gradient rows, embedding dim, number of indices, number of bags."""
        g, idx = spec.args[0], spec.args[1]
        assert g is not None and idx is not None
        return int(spec.const("num_weights")), g.shape[1], idx.numel(), g.shape[0]

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op != _OP:
            return Skip(f"{op or node!s} is not _embedding_bag_backward")
        kw = node_kwargs(node)
        if kw is None:
            return Skip("could not normalize _embedding_bag_backward arguments")
        for name in ("num_weights", "scale_grad_by_freq", "mode", "sparse", "padding_idx"):
            if not isinstance(kw.get(name), (int, bool)):
                return Skip(f"{name} is not a constant ({kw.get(name)!r})")
        if kw["sparse"]:
            return Skip("sparse=True (row-wise sparse gradient) is not served yet")
        if kw["scale_grad_by_freq"]:
            return Skip("scale_grad_by_freq is not served yet")
        g_node, i_node, o_node, p_node = kw["grad"], kw["indices"], kw["offsets"], kw.get("per_sample_weights")
        b_node, s_node = kw["offset2bag"], kw["bag_size"]
        m_node = kw["maximum_indices"] if int(kw["mode"]) == 2 else None
        grad, indices, offsets, psw, o2b, bsz, mi = (meta_val(x) for x in (g_node, i_node, o_node, p_node, b_node,
                                                                           s_node, m_node))
        if not all(isinstance(t, torch.Tensor) for t in (grad, indices, offsets, o2b, bsz)) or (
                p_node is not None and not isinstance(psw, torch.Tensor)):
            return Skip("input tensors have no FakeTensor metadata")
        try:
            spec = self.spec_for(grad, indices, offsets, psw, int(kw["num_weights"]), int(kw["mode"]),
                                 int(kw["padding_idx"]), o2b, bsz, mi)
        except ValueError as e:
            return Skip(str(e))
        return Match(spec=spec, inputs=[g_node, i_node, o_node, p_node, b_node, s_node, m_node], result_users={0: [node]})

    # -- semantics -------------------------------------------------------------------------------
    def input_error(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> str | None:
        """Values eager rejects or reads differently (indices outside the table, offsets not starting at 0,
        decreasing or past the indices): the runtime then runs eager."""
        _, indices, offsets = inputs[:3]
        assert indices is not None and offsets is not None
        v = int(spec.const("num_weights"))
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= v):
            return "embedding_bag indices out of range"
        if not indices.is_contiguous():
            return "embedding_bag indices not contiguous"  # ATen's CPU backward raises (checkContiguous)
        mi = inputs[6] if len(inputs) > 6 else None
        if int(spec.const("mode")) == 2 and mi is not None and mi.numel() and (int(mi.min()) < 0 or int(mi.max()) >= v):
            return "embedding_bag maximum_indices out of range"  # eager (CPU) raises IndexError
        if offsets.numel():
            if int(offsets[0]) != 0:
                return "embedding_bag offsets[0] is not 0"
            if offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any()):
                return "embedding_bag offsets decrease"
            if int(offsets[-1]) > indices.numel():
                return "embedding_bag offsets past the indices"
        return None

    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """ATen's backward as the graph calls it, on the forward's offset2bag / bag_size (inputs 4, 5);
        ``maximum_indices`` (input 6) is read only in max mode; otherwise the offsets stand in for it."""
        grad, indices, offsets, psw, o2b, bsz, mi = inputs
        assert grad is not None and indices is not None and offsets is not None
        assert o2b is not None and bsz is not None
        if indices.device.type == "cpu" and not is_fake(indices):
            # ATen's CPU backward trusts the forward's checks: an index outside the table makes it write out
            # of bounds (segfault / heap corruption), offsets[0] != 0 with the sum mode's empty offset2bag
            # reads uninitialized memory. The forward rejects all of these: raise as it does.
            why = self.input_error(spec, inputs)
            if why is not None:
                raise RuntimeError(f"_embedding_bag_backward: {why}")
        it = indices.dtype  # ATen reads offset2bag / bag_size / offsets with the indices' index type
        out = torch.ops.aten._embedding_bag_backward.default(
            grad, indices, offsets.to(it), o2b.to(it), bsz.to(it), offsets.to(it) if mi is None else mi.to(it),
            int(spec.const("num_weights")),
            False, int(spec.const("mode")), False, psw, int(spec.const("padding_idx")))
        return [out]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """float64: bag per position by searchsorted, contributions index_add-ed into the table rows."""
        grad, indices, offsets, psw = inputs[:4]
        assert grad is not None and indices is not None and offsets is not None
        v, d, n, b = self._dims(spec)
        mode, pad = int(spec.const("mode")), int(spec.const("padding_idx"))
        g = grad.to(torch.float64)
        idx = indices.reshape(-1).to(torch.int64)
        off = offsets.reshape(-1).to(torch.int64)
        starts = off[:b]
        ends = torch.cat([off[1:b + 1], off.new_full((b + 1 - off.numel(),), n)])[:b]
        pos = torch.arange(n, device=idx.device)
        bag = torch.searchsorted(starts, pos, right=True) - 1
        bag_c = bag.clamp(min=0)
        keep = (bag >= 0) & (pos < ends[bag_c]) if b > 0 else torch.zeros(n, dtype=torch.bool, device=idx.device)
        if pad >= 0:
            keep &= idx != pad
        if mode == 2:  # grad[b, d] to row maximum_indices[b, d] for bags with a non-padding entry
            mi = inputs[6]
            assert mi is not None
            cnt = torch.bincount(bag_c[keep], minlength=b)[:b]
            rows = mi.to(torch.int64)
            live = (cnt > 0)[:, None] & (rows >= 0) & (rows < v)
            cols = torch.arange(d).expand(b, d)
            out = torch.zeros(v, d, dtype=torch.float64, device=g.device)
            out.index_put_((rows[live], cols[live]), g[live], accumulate=True)
            return [out.to(grad.dtype)]
        contrib = g[bag_c[keep]] if b > 0 else g.new_zeros(0, d)
        if psw is not None:
            contrib = contrib * psw.reshape(-1).to(torch.float64)[keep][:, None]
        if mode == 1:
            cnt = torch.bincount(bag_c[keep], minlength=b).to(torch.float64)
            contrib = contrib / cnt.clamp(min=1)[bag_c[keep]][:, None]
        out = torch.zeros(v, d, dtype=torch.float64, device=g.device)
        out.index_add_(0, idx[keep], contrib)
        return [out.to(grad.dtype)]

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        # atomics add in any order: a row hit by many bags sums in fp32 in arbitrary order
        return {torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2),
                torch.float32: (1e-4, 1e-5)}.get(dtype, (1e-9, 1e-9))

    def tolerance_slack(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None],
                        refs: Sequence[torch.Tensor]) -> list[torch.Tensor | None] | None:
        """A table row's gradient sums one term per hit in fp32 (atomics in any order, or ATen's own
        order); its rounding grows with Σ|terms|, not with the result, which cancels. Allow 32·u·Σ|terms|
        per element (u = 2⁻²⁴; Σ|terms| = the reference on |grad|, |weights|). H100, the zoo's hot row
        (65k hits, Σ|terms| ≈ 5e4): atomics were 0.025-0.043 off float64 (≈ 8-14 u·Σ), the sorted kernel
        0.0033, so rtol 1e-4 of the ~256 result failed every candidate. Rows with few hits keep a tight
        bound: a lost or doubled term is still caught."""
        grad, indices, offsets, psw = inputs[:4]
        if grad is None or indices is None or offsets is None or grad.dtype != torch.float32 or indices.numel() == 0:
            return None
        idx = indices.reshape(-1).to(torch.int64)
        if bool(((idx < 0) | (idx >= int(spec.const("num_weights")))).any()):
            return None
        absref = self.reference(spec, [grad.abs(), indices, offsets, None if psw is None else psw.abs(), *inputs[4:]])[0]
        return [absref * (32 * 2.0**-24)]

    # -- inputs ----------------------------------------------------------------------------------
    def _build(self, spec: OpSpec, grad: torch.Tensor, idx: torch.Tensor, sizes: Sequence[int],
               psw: torch.Tensor | None, sigs: Sequence[TensorSig | None] | None = None) -> list[torch.Tensor | None]:
        device = torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)
        sigs = spec.args if sigs is None else sigs
        g_sig, i_sig, o_sig, p_sig, b_sig, s_sig = sigs[:6]
        assert g_sig is not None and i_sig is not None and o_sig is not None
        assert b_sig is not None and s_sig is not None
        starts = torch.tensor([0, *sizes], dtype=torch.int64).cumsum(0)
        off = starts[: o_sig.shape[0]]  # include_last_offset: all B + 1 bounds; else the B starts
        out: list[torch.Tensor | None] = [_strided(g_sig, grad, device), _strided(i_sig, idx, device),
                                          _strided(o_sig, off, device), None]
        if p_sig is not None:
            assert psw is not None
            out[3] = _strided(p_sig, psw, device)
        # the forward's bookkeeping as ATen writes it: bag per position, non-padding entries per bag
        bag_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(list(sizes), dtype=torch.int64))
        pad = int(spec.const("padding_idx"))
        keep = (idx != pad) if pad >= 0 else torch.ones(idx.numel(), dtype=torch.bool)
        counts = torch.zeros(len(sizes), dtype=torch.int64).index_add_(0, bag_of, keep.to(torch.int64))
        out.append(_strided(b_sig, bag_of if b_sig.shape[0] else bag_of[:0], device))
        out.append(_strided(s_sig, counts, device))
        m_sig = sigs[6]
        if m_sig is None:
            out.append(None)
            return out
        # argmax rows as the forward writes them: per (bag, column) some non-padding entry's row; a bag
        # without one gets 0 (ATen CPU) or -1 (CUDA)
        gen = torch.Generator().manual_seed(int(idx.sum()) + len(sizes))
        b, d = m_sig.shape
        mi = torch.full((b, d), -1 if device.type == "cuda" else 0, dtype=torch.int64)
        pos = 0
        for j, size in enumerate(sizes):
            rows = idx[pos:pos + size]
            rows = rows[keep[pos:pos + size]]
            if rows.numel():
                mi[j] = rows[torch.randint(0, rows.numel(), (d,), generator=gen)]
            pos += size
        out.append(_strided(m_sig, mi, device))
        return out

    @staticmethod
    def _sizes(n: int, b: int, gen: torch.Generator) -> list[int]:
        """B bag sizes summing to n, some empty."""
        if b == 0:
            return []
        cuts = torch.sort(torch.randint(0, n + 1, (b - 1,), generator=gen)).values.tolist()
        bounds = [0, *cuts, n]
        return [bounds[i + 1] - bounds[i] for i in range(b)]

    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        gen = torch.Generator().manual_seed(int(seed))
        v, d, n, b = self._dims(spec)
        pad = int(spec.const("padding_idx"))
        o_sig = spec.args[2]
        assert o_sig is not None
        idx = torch.randint(0, max(v, 1), (n,), generator=gen)
        if n > 1:  # hot rows: repeats inside and across bags
            hot = torch.rand(n, generator=gen) < 0.2
            idx = torch.where(hot, idx[0].expand(n), idx)
        if 0 <= pad < v and n > 0:
            idx = torch.where(torch.rand(n, generator=gen) < 0.1, torch.full_like(idx, pad), idx)
        sizes = self._sizes(n, b, gen)  # without include_last_offset the last bag runs to N anyway
        psw = torch.randn(n, generator=gen) if spec.const("has_psw") else None
        return self._build(spec, torch.randn(b, d, generator=gen), idx, sizes, psw)

    def _case(self, spec: OpSpec, name: str, v: int, d: int, idx: torch.Tensor, sizes: Sequence[int],
              gen: torch.Generator, ilo: bool) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
        g_sig, i_sig, o_sig, p_sig, b_sig, s_sig, m_sig = spec.args
        assert g_sig is not None and i_sig is not None and o_sig is not None
        assert b_sig is not None and s_sig is not None
        b, n = len(sizes), idx.numel()
        assert sum(sizes) == n
        sigs = (TensorSig(g_sig.dtype, (b, d), (d, 1)), TensorSig(i_sig.dtype, (n,), (1,)),
                TensorSig(o_sig.dtype, (b + (1 if ilo else 0),), (1,)),
                None if p_sig is None else TensorSig(p_sig.dtype, (n,), (1,)),
                TensorSig(b_sig.dtype, (n if b_sig.shape[0] else 0,), (1,)), TensorSig(s_sig.dtype, (b,), (1,)),
                None if m_sig is None else TensorSig(m_sig.dtype, (b, d), (d, 1)))
        psw = None if p_sig is None else torch.rand(n, generator=gen) + 0.5
        inputs = self._build(spec, torch.randn(b, d, generator=gen), idx, sizes, psw, sigs)
        g, i, o, p, o2b, bsz, mi = inputs
        assert g is not None and i is not None and o is not None
        case_spec = self.spec_for(g, i, o, p, v, int(spec.const("mode")), int(spec.const("padding_idx")), o2b, bsz,
                                  mi)
        return name, case_spec, inputs

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        gen = torch.Generator().manual_seed(4321)
        v_spec, d_spec, _, b_spec = self._dims(spec)
        o_sig = spec.args[2]
        assert o_sig is not None
        ilo = o_sig.shape[0] == b_spec + 1
        pad = int(spec.const("padding_idx"))
        d = max(1, min(d_spec, 32))
        v = max(16, pad + 1)

        def ids(n: int) -> torch.Tensor:
            return torch.randint(0, v, (n,), generator=gen)

        cases = [
            self._case(spec, "all_bags_empty", v, d, ids(0), [0, 0, 0], gen, ilo),
            self._case(spec, "first_and_last_bag_empty", v, d, ids(9), [0, 3, 2, 4, 0], gen, ilo),
            self._case(spec, "one_bag", v, d, ids(7), [7], gen, ilo),
            self._case(spec, "one_long_bag", v, min(d, 8), ids(700), [1, 698, 1], gen, ilo),
            self._case(spec, "repeated_index", v, d, torch.full((40,), 3, dtype=torch.int64), [32, 0, 8], gen, ilo),
            self._case(spec, "odd_dim_33", v, 33, ids(23), [5, 0, 1, 17], gen, ilo),
        ]
        if pad >= 0:
            idx = ids(11)
            idx[0:3] = pad  # bag 0: only padding
            idx[3] = pad  # bag 1: padding mixed with real rows (mean divides by 3, not 4)
            cases.append(self._case(spec, "bags_hitting_padding_idx", v, d, idx, [3, 4, 4], gen, ilo))
        return cases

    # -- cost ------------------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        g, idx, off, psw = spec.args[:4]
        assert g is not None and idx is not None and off is not None
        v, d, n, b = self._dims(spec)
        e = _elem_size(g.dtype)
        # every grad row read once, every index (and weight) once, every gradient row written once
        return (b * d * e + n * _elem_size(idx.dtype) + off.numel() * _elem_size(off.dtype)
                + (n * _elem_size(psw.dtype) if psw is not None else 0) + v * d * e)

    # -- kernels ---------------------------------------------------------------------------------
    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """Both templates over BLOCK_D x (bags per program | positions per program); the default first
        follows the average bag length (short bags: index_atomic balances; long: bag_atomic reads grad once)."""
        v, d, n, b = self._dims(spec)
        avg = n / max(b, 1)
        bd_max = min(_next_pow2(max(d, 1)), 256)
        bd_opts = list(dict.fromkeys([min(bd_max, 128), bd_max, max(16, min(bd_max, 64))]))
        bl0 = max(8, min(_next_pow2(max(1, int(avg))), 64))
        out: list[tuple[str, dict[str, Any]]] = []
        if int(spec.const("mode")) == 2:  # one template: scatter of the argmax rows (BLOCK_L: the count's step)
            for bd in bd_opts:
                for bags in (1, 4, 16):
                    out.append(("max_atomic", dict(BLOCK_D=bd, BAGS=bags, BLOCK_L=bl0, num_warps=max(1, min(8, bd // 64)))))
            return [Candidate(source=MAX_SOURCE, config=tuple(sorted(c.items())), origin="template", template=t)
                    for t, c in out]
        for bd in bd_opts:
            for bags in (1, 4, 16):
                for bl in dict.fromkeys((bl0, max(8, bl0 // 2), min(128, bl0 * 2))):
                    if bd * bl <= 8192:
                        out.append(("bag_atomic", dict(BLOCK_D=bd, BAGS=bags, BLOCK_L=bl,
                                                       num_warps=max(1, min(8, bd * bl // 512)))))
            for bn in (16, 32, 64, 128):
                if bd * bn <= 8192:
                    out.append(("index_atomic", dict(BLOCK_D=bd, BLOCK_N=bn, BAGS=16, BLOCK_L=32,
                                                     num_warps=max(1, min(8, bd * bn // 512)))))
            for bk in (8, 32):
                if bd * bk <= 8192:
                    out.append(("csr", dict(BLOCK_D=bd, BLOCK_K=bk, BAGS=16, BLOCK_L=32,
                                            num_warps=max(1, min(8, bd * bk // 512)))))
        first = "bag_atomic" if avg >= 16 else "index_atomic"
        out.sort(key=lambda tc: tc[0] != first)  # stable: the first template's proposals lead
        cands, seen = [], set()
        for t, cfg in out:
            key = (t, tuple(sorted(cfg.items())))
            if key not in seen:
                seen.add(key)
                cands.append(Candidate(source=TEMPLATES[t][1], config=key[1], origin="template", template=t))
        # interleave the templates (the preferred atomic one, the other atomic one, csr) so small candidate
        # budgets see each
        groups = [[c for c in cands if c.template == t]
                  for t in (first, *[t for t in ("bag_atomic", "index_atomic") if t != first], "csr")]
        mixed: list[Candidate] = []
        for i in range(max(len(x) for x in groups)):
            mixed += [x[i] for x in groups if i < len(x)]
        return mixed[:36]

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        g, idx, off, psw = spec.args[:4]
        assert g is not None and idx is not None and off is not None
        v, d, n, b = self._dims(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "embedding_bag_backward")
        check_pow2(cfg, lambda k: k.startswith("BLOCK_"))
        bd = int(cfg["BLOCK_D"])
        nd = _cdiv(d, bd) if d > 0 else 0
        if nd > _MAX_GRID_Y:
            raise ValueError(f"BLOCK_D={bd} needs {nd} programs along D")
        mode, pad, has_psw = int(spec.const("mode")), int(spec.const("padding_idx")), psw is not None
        fp32 = g.dtype == "float32"
        out_buf = OutBuf((v, d), g.dtype, fill=0.0 if fp32 else None)
        workspace: list[OutBuf] = []
        if fp32:
            acc: Any = Out(0)
        else:
            workspace.append(OutBuf((v, d), "float32", fill=0.0))
            acc = Ws(0)
        stride_gb = g.stride[0] if b > 1 else d
        stride_idx = idx.stride[0] if n > 1 else 1
        stride_off = off.stride[0] if off.shape[0] > 1 else 1
        stride_psw = (psw.stride[0] if psw.shape[0] > 1 else 1) if psw is not None else 0
        nw = int(cfg.get("num_warps", 4))
        steps: list[Step] = []
        bags, bl = int(cfg.get("BAGS", 1)), int(cfg.get("BLOCK_L", 32))
        if (template == "max_atomic") != (mode == 2):
            raise ValueError(f"template {template} does not serve mode {_MODE_NAMES[mode]}")
        if template == "max_atomic":
            mi = spec.args[6]
            assert mi is not None
            steps.append(Step("ebb_max_atomic", (_cdiv(b, bags), nd), (
                ("grad_ptr", In(0)), ("idx_ptr", In(1)), ("off_ptr", In(2)), ("mi_ptr", In(6)), ("acc_ptr", acc),
                ("num_bags", b), ("num_idx", n), ("num_offsets", off.shape[0]), ("dim", d), ("num_weights", v),
                ("stride_gb", stride_gb), ("stride_idx", stride_idx), ("stride_off", stride_off),
                ("stride_mi", mi.stride[0] if b > 1 else d), ("PADDING_IDX", pad), ("BAGS", bags), ("BLOCK_L", bl),
                ("BLOCK_D", bd)), num_warps=nw))
        elif template == "bag_atomic":
            steps.append(Step("ebb_bag_atomic", (_cdiv(b, bags), nd), (
                ("grad_ptr", In(0)), ("idx_ptr", In(1)), ("off_ptr", In(2)), ("psw_ptr", In(3) if has_psw else In(1)),
                ("acc_ptr", acc), ("num_bags", b), ("num_idx", n), ("num_offsets", off.shape[0]), ("dim", d),
                ("num_weights", v), ("stride_gb", stride_gb), ("stride_idx", stride_idx), ("stride_off", stride_off),
                ("stride_psw", stride_psw), ("MODE", mode), ("PADDING_IDX", pad), ("HAS_PSW", has_psw),
                ("BAGS", bags), ("BLOCK_L", bl), ("BLOCK_D", bd)), num_warps=nw))
        elif template == "csr":
            return self._csr_plan(spec, cand)
        else:
            k0 = len(workspace)
            workspace += [OutBuf((max(n, 1),), "int32"), OutBuf((max(b, 1),), "float32")]
            bag_ws, scale_ws = Ws(k0), Ws(k0 + 1)
            blk = 1024
            steps.append(Step("ebb_clear_bags", (_cdiv(n, blk),), (
                ("bag_ptr", bag_ws), ("num_idx", n), ("BLOCK", blk))))
            steps.append(Step("ebb_mark_bags", (_cdiv(b, bags),), (
                ("idx_ptr", In(1)), ("off_ptr", In(2)), ("bag_ptr", bag_ws), ("scale_ptr", scale_ws),
                ("num_bags", b), ("num_idx", n), ("num_offsets", off.shape[0]), ("num_weights", v),
                ("stride_idx", stride_idx), ("stride_off", stride_off), ("MODE", mode), ("PADDING_IDX", pad),
                ("BAGS", bags), ("BLOCK_L", bl))))
            bn = int(cfg["BLOCK_N"])
            steps.append(Step("ebb_index_atomic", (_cdiv(n, bn), nd), (
                ("grad_ptr", In(0)), ("idx_ptr", In(1)), ("psw_ptr", In(3) if has_psw else In(1)),
                ("bag_ptr", bag_ws), ("scale_ptr", scale_ws), ("acc_ptr", acc), ("num_idx", n), ("dim", d),
                ("num_weights", v), ("stride_gb", stride_gb), ("stride_idx", stride_idx), ("stride_psw", stride_psw),
                ("PADDING_IDX", pad), ("HAS_PSW", has_psw), ("BLOCK_N", bn), ("BLOCK_D", bd)), num_warps=nw))
        if not fp32:
            blk = 1024
            steps.append(Step("ebb_cast", (_cdiv(v * d, blk),), (
                ("acc_ptr", Ws(0)), ("out_ptr", Out(0)), ("numel", v * d), ("BLOCK", blk))))
        main = steps[-1]
        return CallPlan(kernel=main.kernel, grid=main.grid, args=main.args, outputs=(out_buf,),
                        num_warps=main.num_warps, num_stages=main.num_stages, pre=tuple(steps[:-1]),
                        workspace=tuple(workspace))

    def _csr_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        """Counting sort of the contributing positions by row (CSR), then one program per row reduces its
        positions: bag marks, histogram, scan, fill, reduce (six launches, integer atomics only)."""
        g, idx, off, psw = spec.args[:4]
        assert g is not None and idx is not None and off is not None
        v, d, n, b = self._dims(spec)
        cfg = cand.cfg
        bd, bk = int(cfg["BLOCK_D"]), int(cfg["BLOCK_K"])
        nd = _cdiv(d, bd) if d > 0 else 0
        mode, pad, has_psw = int(spec.const("mode")), int(spec.const("padding_idx")), psw is not None
        stride_idx = idx.stride[0] if n > 1 else 1
        stride_off = off.stride[0] if off.shape[0] > 1 else 1
        stride_psw = (psw.stride[0] if psw.shape[0] > 1 else 1) if psw is not None else 0
        bags, bl, blk = int(cfg.get("BAGS", 16)), int(cfg.get("BLOCK_L", 32)), 1024
        workspace = (OutBuf((max(n, 1),), "int32"), OutBuf((max(b, 1),), "float32"),  # bag_of, scale
                     OutBuf((max(v, 1),), "int32", fill=0), OutBuf((v + 1,), "int64"),  # cnt, start
                     OutBuf((max(v, 1),), "int32", fill=0), OutBuf((max(n, 1),), "int32"))  # cursor, perm
        pre = (
            Step("ebb_clear_bags", (_cdiv(n, blk),), (("bag_ptr", Ws(0)), ("num_idx", n), ("BLOCK", blk))),
            Step("ebb_mark_bags", (_cdiv(b, bags),), (
                ("idx_ptr", In(1)), ("off_ptr", In(2)), ("bag_ptr", Ws(0)), ("scale_ptr", Ws(1)),
                ("num_bags", b), ("num_idx", n), ("num_offsets", off.shape[0]), ("num_weights", v),
                ("stride_idx", stride_idx), ("stride_off", stride_off), ("MODE", mode), ("PADDING_IDX", pad),
                ("BAGS", bags), ("BLOCK_L", bl))),
            Step("ebb_csr_hist", (_cdiv(n, blk),), (
                ("bag_ptr", Ws(0)), ("idx_ptr", In(1)), ("cnt_ptr", Ws(2)), ("num_idx", n), ("num_weights", v),
                ("stride_idx", stride_idx), ("PADDING_IDX", pad), ("BLOCK", blk))),
            Step("ebb_csr_scan", (1,), (("cnt_ptr", Ws(2)), ("start_ptr", Ws(3)), ("num_weights", v),
                                        ("BLOCK", min(max(_next_pow2(max(v, 1)), 64), 4096))),
                 num_warps=8 if v >= 2048 else 4),
            Step("ebb_csr_fill", (_cdiv(n, blk),), (
                ("bag_ptr", Ws(0)), ("idx_ptr", In(1)), ("start_ptr", Ws(3)), ("cursor_ptr", Ws(4)),
                ("perm_ptr", Ws(5)), ("num_idx", n), ("num_weights", v), ("stride_idx", stride_idx),
                ("PADDING_IDX", pad), ("BLOCK", blk))),
        )
        return CallPlan(kernel="ebb_csr_reduce", grid=(v, nd), args=(
            ("grad_ptr", In(0)), ("psw_ptr", In(3) if has_psw else In(1)), ("bag_ptr", Ws(0)), ("scale_ptr", Ws(1)),
            ("start_ptr", Ws(3)), ("perm_ptr", Ws(5)), ("out_ptr", Out(0)), ("dim", d),
            ("stride_gb", g.stride[0] if b > 1 else d), ("stride_psw", stride_psw), ("HAS_PSW", has_psw),
            ("BLOCK_K", bk), ("BLOCK_D", bd)), outputs=(OutBuf((v, d), g.dtype, fill=None),),
            num_warps=int(cfg.get("num_warps", 4)), pre=pre, workspace=workspace)


register(EmbeddingBagBackwardFamily())
