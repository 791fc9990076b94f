"""The hstu_attention family: HSTU-style pointwise (SiLU) attention, detected as one *region*.

Generative recommenders (HSTU) use attention without a softmax::

    a = silu(q @ kᵀ [* qk_scale] [+ rel_bias]) * scale      # scale: usually 1 / N
    a = mask(a)                                            # causal / per-sequence lengths / a tensor
    out = a @ v

Inductor lowers it as bmm + pointwise + bmm and writes the [B, H, M, N] scores to memory twice. This
family matches the whole FX subgraph, anchored at the second ``bmm`` (the region's output), and serves
it with one flash-style Triton kernel that never materialises the scores. It is a region family: its
``ops`` is empty (no single op is long-tail) and ``region_anchors`` names the op the region detector
(``detect.detect_regions``) hands to :meth:`HstuAttentionFamily.match`. Spec op:
``kevolve_region.hstu_attention``; it is in ``lowered_ops``, so it is contested (Inductor's kernels are
the search's baseline) where ``Settings.contest`` says so (CUDA by default).

What reaches the post-grad graph (torch 2.13, printed from compiled functions): ``q @ k.transpose``
becomes ``bmm(reshape(expand(q4)), reshape(expand(permute(k4, [0, 1, 3, 2]))))`` (``clone`` nodes in
between when q/k/v are non-contiguous views, e.g. ``view(..).transpose(1, 2)`` of a ``chunk``), then
``reshape`` to [B, H, M, N]; ``F.silu`` arrives decomposed as ``div(s, add(exp(neg(s)), 1))`` (also
matched: ``aten.silu`` and ``mul(s, sigmoid(s))``); ``/ N`` as ``div(x, N)``; ``torch.tril`` as
``where(le(sub(iota, iota), 0), x, 0)``; ``masked_fill(~m, 0.0)`` as ``where(bitwise_not(m), 0, x)``;
``a * m`` as ``mul``; bf16/fp16 silu comes wrapped in ``convert_element_type`` to fp32 and back (skipped:
the kernel computes in fp32). ``torch.einsum("bnhd,bmhd->bhnm", ..)`` (the generative-recommenders
reference style) arrives through 5-D ``unsqueeze``/``permute`` views. Operands are taken *before* their
copies: through every *relabel* (reshape, clone, no-op expand, un/squeeze, a permute moving size-1 dims
only) down to the deepest node that still reads as [B, H, r, c] (or [B*H, r, c]) through its strides, at
any rank; the kernel reads that original (possibly strided) tensor, so no copies are made.

Masks. Every mask condition (``where`` with a zero branch, or ``mul`` by a bool/float tensor) is split
into an AND of terms (De Morgan through ``bitwise_not``/``bitwise_or``), and each term is classified:

* *constant* (its subgraph reads no graph input: iota, full, comparisons, ...): evaluated on the CPU at
  compile time. Equal to ``tril(ones(M, N))`` -> ``causal`` (the kernel skips the blocks above the
  diagonal); all true -> dropped. That evaluation is a proof: the value cannot change at run time.
* *per-sequence length* (the jagged form, below): ``iota(L) < lengths[:, None]`` broadcast along the
  query or the key axis -> ``len_q`` / ``len_k``.
* anything else, e.g. a bool *buffer* such as the zoo HSTU block's ``causal`` (a graph input whose value
  the pass cannot see): a generic mask *tensor* the kernel loads tile by tile through its broadcast
  strides (``mask`` = ``keep`` / ``drop`` for a bool tensor, ``mul`` for a float multiplier). So an
  arbitrary bool mask is served correctly, but without block skipping; causality is assumed only when
  proved. At most one such tensor per region.

Jagged batches: padded [B, H, N, D] q/k/v with a ``lengths`` [B] int tensor, masked with::

    valid = torch.arange(N, device=d) < lengths[:, None]                 # [B, N]
    keep = valid[:, None, :, None] & valid[:, None, None, :]            # queries and keys of b
    a = torch.tril(silu(q @ kᵀ + rb) / N).masked_fill(~keep, 0.0)      # or where(keep, a, 0) / a * keep
    out = a @ v                                                         # rows beyond lengths[b]: zero

The kernel reads ``lengths[b]`` (clamped to [0, N]) and skips every key block beyond it (and writes zero
rows for query blocks beyond it without touching q/k/v). Keys beyond the length contribute nothing,
also when v holds non-finite padding there (eager would give NaN from 0 * inf).

Served: q [.., M, D], kᵀ [.., D, N], v [.., N, DV] as 4-D [B, H, ..] or 3-D [B*H, ..] tensors (or any
rank with extra size-1 dims; the spec's ``dims`` = (B, H, M, N, D, DV)) with any strides, float32/float16/bfloat16 (one dtype); bias any tensor broadcastable to [B, H, M, N] (e.g.
[H, N, N] per head, or absent); static shapes. fp32 accumulation; fp16/bf16 products of the second
matmul use the attention weights rounded to the input dtype, as eager does. fp32 inputs use IEEE
(not TF32) dots. Forward only.

Templates (one program = BLOCK_M query rows of one (b, h); q is held in registers, K/V streamed in
BLOCK_N blocks, the accumulator in fp32):

* ``flash``: one loop over key blocks with per-element bounds/causal masks; ``SKIP`` bounds the loop at
  the diagonal (causal block skipping) or runs the full masked loop.
* ``split``: blocks strictly below the diagonal and inside the sequence run an unmasked loop (no
  bounds or causal compares, no masked loads when the head dims are powers of two), then the diagonal
  and tail blocks run the masked loop.

Knobs: BLOCK_M/BLOCK_N, num_warps/num_stages, ``SIGMOID`` (tl.sigmoid, or exp2 with a fast or an
IEEE division, or one PTX ``tanh.approx`` in fp32 or bf16x2 on CUDA), ``LATE`` (bf16: the scale
multiplies the accumulator once instead of every weight), ``GRID`` (query
blocks fastest: programs of one head run together and share its K/V in L2; or heads fastest),
``REVERSE`` (causal: the longest rows first for load balance).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip
from .util import all_int as _all_int, cdiv as _cdiv, elem_size as _elem_size, next_pow2 as _next_pow2, template_of
from .util import meta_val, strided as _strided, unique_candidates

log = logging.getLogger("torch_kevolve")

OP = "kevolve_region.hstu_attention"
#: Skip reasons with this prefix mean "not this pattern at all" (the detector records no finding).
NO_REGION = "no region: "
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASKS = ("none", "keep", "drop", "mul")  # mask tensor: absent, keep where true, keep where false, multiply
_MAX_GRID_Y = 65535

# ------------------------------------------------------------------------------------------------
# Kernel sources
# ------------------------------------------------------------------------------------------------

_HEADER = '''import triton
import triton.language as tl
'''

_COMMON = '''

@triton.jit
def _silu(x, SIGMOID: tl.constexpr):
    """0: tl.sigmoid; 1: exp2 and a fast (approximate, ~2 ulp) division; 2: exp2 and IEEE division;
    3: silu(x) = h + h·tanh(h), h = x/2, with one MUFU ``tanh.approx.f32`` (rel. error ~2^-11) instead
    of two (exp2 + reciprocal); 4: the same with ``tanh.approx.bf16x2`` (two per MUFU op; the weights
    are rounded to bf16 for the second dot anyway). 3 and 4 are PTX: CUDA only."""
    if SIGMOID == 0:
        y = x * tl.sigmoid(x)
    elif SIGMOID == 1:
        y = tl.fdiv(x, 1.0 + tl.exp2(x * -1.4426950408889634))
    elif SIGMOID == 2:
        y = x / (1.0 + tl.exp2(x * -1.4426950408889634))
    elif SIGMOID == 3:
        h = x * 0.5
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [h], dtype=tl.float32,
                                      is_pure=True, pack=1)
        y = h + h * t
    else:
        h = x * 0.5
        t = tl.inline_asm_elementwise("tanh.approx.bf16x2 $0, $1;", "=r,r", [h.to(tl.bfloat16)],
                                      dtype=tl.bfloat16, is_pure=True, pack=2)
        y = h + h * t.to(tl.float32)
    return y


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        r = tl.dot(a, b, input_precision="ieee")
    else:
        r = tl.dot(a, b)
    return r


@triton.jit
def _block(acc, q, n0, offs_m, offs_d, offs_dv, m_len, k_len, d_qk, d_v,
           k_base, v_base, bias_base, mask_base,
           skd, skn, svn, svd, sbm, sbn, smm, smn, qk_scale, scale,
           HAS_BIAS: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, BOUNDS: tl.constexpr,
           EVEN_M: tl.constexpr, EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, SIGMOID: tl.constexpr,
           IEEE: tl.constexpr, LATE: tl.constexpr, BLOCK_N: tl.constexpr):
    """acc += (mask(silu(q kᵀ * qk_scale + bias) * scale)) v for the key block at n0. BOUNDS: the block
    may cross the sequence end or the diagonal (per-element masks); else every key is live."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    dm = offs_d < d_qk
    dvm = offs_dv < d_v
    if BOUNDS:
        nm = offs_n < k_len
        kt = tl.load(k_base + offs_d[:, None] * skd + offs_n[None, :] * skn,
                     mask=dm[:, None] & nm[None, :], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=nm[:, None] & dvm[None, :], other=0.0)
    else:
        if EVEN_D:
            kt = tl.load(k_base + offs_d[:, None] * skd + offs_n[None, :] * skn)
        else:
            kt = tl.load(k_base + offs_d[:, None] * skd + offs_n[None, :] * skn,
                         mask=dm[:, None], other=0.0)
        if EVEN_DV:
            v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd)
        else:
            v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                        mask=dvm[None, :], other=0.0)
    s = _dot(q, kt, IEEE) * qk_scale
    # rows beyond M must not be read; keys beyond the sequence only in bounded blocks
    if BOUNDS:
        tm = (offs_m < m_len)[:, None] & nm[None, :]
    else:
        tm = (offs_m < m_len)[:, None] & (offs_n >= 0)[None, :]
    if HAS_BIAS:
        b_ptrs = bias_base + offs_m[:, None] * sbm + offs_n[None, :] * sbn
        if BOUNDS or not EVEN_M:
            s += tl.load(b_ptrs, mask=tm, other=0.0).to(tl.float32)
        else:
            s += tl.load(b_ptrs).to(tl.float32)
    if LATE:
        p = _silu(s, SIGMOID)  # the scale multiplies the accumulator once, in the epilogue
    else:
        p = _silu(s, SIGMOID) * scale
    if MASK_KIND != 0:
        mt = tl.load(mask_base + offs_m[:, None] * smm + offs_n[None, :] * smn,
                     mask=tm, other=0)
        if MASK_KIND == 1:
            p = tl.where(mt != 0, p, 0.0)
        elif MASK_KIND == 2:
            p = tl.where(mt != 0, 0.0, p)
        else:
            p = p * mt.to(tl.float32)
    if BOUNDS:
        keep = tm
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        p = tl.where(keep, p, 0.0)
    return acc + _dot(p.to(v.dtype), v, IEEE)


@triton.jit
def _program(num_m, n_heads, q_len_full, k_len_full, len_ptr,
             GRID: tl.constexpr, REVERSE: tl.constexpr, LEN_Q: tl.constexpr, LEN_K: tl.constexpr):
    """(query block, b, h) of this program and the live query/key lengths of its sequence."""
    if GRID == 0:
        mb = tl.program_id(0)
        bh = tl.program_id(1)
    else:
        bh = tl.program_id(0)
        mb = tl.program_id(1)
    if REVERSE:
        mb = num_m - 1 - mb
    b = bh // n_heads
    h = bh - b * n_heads
    q_len = q_len_full + 0 * mb
    k_len = k_len_full + 0 * mb
    if LEN_Q or LEN_K:
        ln = tl.load(len_ptr + b)  # clamped in its own dtype: an int64 2**40 must not wrap to 0
        ln = tl.minimum(tl.maximum(ln, 0), tl.maximum(q_len_full, k_len_full)).to(tl.int32)
        if LEN_Q:
            q_len = tl.minimum(ln, q_len_full)
        if LEN_K:
            k_len = tl.minimum(ln, k_len_full)
    return mb, bh, b.to(tl.int64), h.to(tl.int64), q_len, k_len
'''

# Shapes, strides and scales are constexprs: a kernel is compiled per spec anyway, and as runtime
# arguments Inductor's launcher types the two float scales fp64, which spread fp64 through the score
# math (H100, B=16 H=4 N=1024 D=64 bf16: 0.230 ms in the graph vs 0.049 ms launched directly). With
# runtime int strides the best searched kernel was slower (0.071 vs 0.061 ms): see BENCHMARKS.md.
_SIGNATURE = '''
    q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, len_ptr, o_ptr,
    n_heads: tl.constexpr, m_len: tl.constexpr, n_len: tl.constexpr, d_qk: tl.constexpr, d_v: tl.constexpr,
    num_m: tl.constexpr, sqb: tl.constexpr, sqh: tl.constexpr, sqm: tl.constexpr, sqd: tl.constexpr,
    skb: tl.constexpr, skh: tl.constexpr, skd: tl.constexpr, skn: tl.constexpr, svb: tl.constexpr,
    svh: tl.constexpr, svn: tl.constexpr, svd: tl.constexpr, sbb: tl.constexpr, sbh: tl.constexpr,
    sbm: tl.constexpr, sbn: tl.constexpr, smb: tl.constexpr, smh: tl.constexpr, smm: tl.constexpr,
    smn: tl.constexpr,
    qk_scale: tl.constexpr, scale: tl.constexpr,
    HAS_BIAS: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, LEN_Q: tl.constexpr,
    LEN_K: tl.constexpr, IEEE: tl.constexpr, SIGMOID: tl.constexpr, LATE: tl.constexpr, GRID: tl.constexpr,
    REVERSE: tl.constexpr, EVEN_M: tl.constexpr, EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,'''

_PROLOGUE = '''
    mb, bh, b, h, q_len, k_len = _program(num_m, n_heads, m_len, n_len, len_ptr, GRID, REVERSE, LEN_Q, LEN_K)
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m < q_len)[:, None] & (offs_d < d_qk)[None, :], other=0.0)  # rows past q_len: zeroed
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    bias_base = bias_ptr + b * sbb + h * sbh
    mask_base = mask_ptr + b * smb + h * smh
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    hi = k_len
    if CAUSAL:
        hi = tl.minimum(hi, (mb + 1) * BLOCK_M)
    hi = tl.where(mb * BLOCK_M < q_len, hi, 0)  # query block past the sequence: no work, zero rows
'''

_EPILOGUE = '''
    if LATE:
        acc = acc * scale
    acc = tl.where((offs_m < q_len)[:, None], acc, 0.0)
    o_ptrs = o_ptr + bh.to(tl.int64) * m_len * d_v + offs_m[:, None] * d_v + offs_dv[None, :]
    tl.store(o_ptrs, acc.to(o_ptr.dtype.element_ty), mask=(offs_m < m_len)[:, None] & (offs_dv < d_v)[None, :])
'''

_BLOCK_ARGS = '''offs_m, offs_d, offs_dv, m_len, k_len, d_qk, d_v, k_base, v_base, bias_base, mask_base,
                     skd, skn, svn, svd, sbm, sbn, smm, smn, qk_scale, scale, HAS_BIAS, MASK_KIND, CAUSAL,'''

FLASH_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def hstu_flash(''' + _SIGNATURE + '''
    SKIP: tl.constexpr,
):
    """One masked loop over key blocks; SKIP: stop at the diagonal (causal), else run every block."""''' + _PROLOGUE + '''
    if not SKIP:
        hi = tl.where(mb * BLOCK_M < q_len, k_len, 0)
    for n0 in range(0, hi, BLOCK_N):
        acc = _block(acc, q, n0, ''' + _BLOCK_ARGS + '''
                     True, EVEN_M, EVEN_D, EVEN_DV, SIGMOID, IEEE, LATE, BLOCK_N)
''' + _EPILOGUE

SPLIT_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def hstu_split(''' + _SIGNATURE + '''
):
    """Unmasked loop over the key blocks wholly inside the sequence and below the diagonal, then the
    masked loop over the rest (diagonal and tail blocks)."""''' + _PROLOGUE + '''
    full = k_len
    if CAUSAL:
        full = tl.minimum(full, mb * BLOCK_M + 1)
    full = tl.minimum((full // BLOCK_N) * BLOCK_N, hi)
    full = tl.maximum(full, 0)
    for n0 in range(0, full, BLOCK_N):
        acc = _block(acc, q, n0, ''' + _BLOCK_ARGS + '''
                     False, EVEN_M, EVEN_D, EVEN_DV, SIGMOID, IEEE, LATE, BLOCK_N)
    for n0 in range(full, hi, BLOCK_N):
        acc = _block(acc, q, n0, ''' + _BLOCK_ARGS + '''
                     True, EVEN_M, EVEN_D, EVEN_DV, SIGMOID, IEEE, LATE, BLOCK_N)
''' + _EPILOGUE

TEMPLATES: dict[str, tuple[str, str]] = {
    "flash": ("hstu_flash", FLASH_SOURCE),
    "split": ("hstu_split", SPLIT_SOURCE),
}


# ------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------


def _non1(shape: Sequence[int]) -> list[int]:
    return [int(x) for x in shape if x != 1]


def _bh_strides(shape: Sequence[int], stride: Sequence[int], B: int, H: int, r: int, c: int) -> tuple[int, int, int, int]:
    """(batch, head, row, col) strides of an operand holding [B, H, r, c] (or [B*H, r, c]) in logical
    order, at any rank: its dims of size > 1 must be those of [B, H, r, c] (or [B*H, r, c]) in order
    (einsum's 5-D views carry extra size-1 dims). ValueError otherwise."""
    dims = [(int(x), int(st)) for x, st in zip(shape, stride) if x != 1]
    for full in ((B, H, r, c), (B * H, r, c)):
        want = [i for i, x in enumerate(full) if x != 1]
        if [x for x, _ in dims] != [full[i] for i in want]:
            continue
        st4 = [0] * len(full)
        for i, (_, st) in zip(want, dims):
            st4[i] = st
        if len(full) == 4:
            return st4[0], st4[1], st4[2], st4[3]
        if B > 1 and H > 1 and st4[0] == 0:
            break
        return st4[0] * H, st4[0], st4[1], st4[2]
    raise ValueError(f"operand {list(shape)} does not hold [B={B}, H={H}, {r}, {c}]")


def _broadcast_strides(sig: TensorSig | None, scores: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Strides of a tensor broadcast to the [B, H, M, N] scores (0 along broadcast dims)."""
    if sig is None:
        return 0, 0, 0, 0
    t = torch.empty_strided(sig.shape, sig.stride, device="meta").expand(scores)
    return tuple(int(s) for s in t.stride())  # type: ignore[return-value]


@dataclass(frozen=True)
class Geom:
    B: int
    H: int
    M: int
    N: int
    D: int
    DV: int
    q: tuple[int, int, int, int]
    k: tuple[int, int, int, int]  # (b, h, d, n): kᵀ's strides
    v: tuple[int, int, int, int]
    bias: tuple[int, int, int, int]
    mask: tuple[int, int, int, int]
    dtype: str


# ------------------------------------------------------------------------------------------------
# Graph matching helpers (post-grad aten graphs with FakeTensor metadata)
# ------------------------------------------------------------------------------------------------

_aten = torch.ops.aten


def _is(n: Any, *targets: Any) -> bool:
    return getattr(n, "op", None) == "call_function" and any(n.target is t for t in targets)


_RESHAPES = (_aten.reshape.default, _aten.view.default, _aten._unsafe_view.default)


def _shape(n: Any) -> tuple[int, ...] | None:
    v = meta_val(n)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _is_relabel(n: Any) -> bool:
    """Whether n holds its input's elements in the same logical (row-major) order, only relabelled:
    reshapes/views, unsqueeze/squeeze, no-op expands, clones, and permutes that move size-1 dims only."""
    if not (hasattr(n, "op") and n.op == "call_function" and n.args and hasattr(n.args[0], "op")):
        return False
    src, out = _shape(n.args[0]), _shape(n)
    if src is None or out is None or math.prod(src) != math.prod(out):
        return False
    if _is(n, *_RESHAPES, _aten.unsqueeze.default, _aten.squeeze.dim, _aten.squeeze.default, _aten.squeeze.dims):
        return True
    if _is(n, _aten.expand.default):
        return src == out
    if _is(n, _aten.clone.default):
        return n.kwargs.get("memory_format", torch.contiguous_format) in (
            torch.contiguous_format, torch.preserve_format, None)
    if _is(n, _aten.permute.default):
        perm = [int(d) % len(src) for d in n.args[1]]
        order = [d for d in perm if src[d] != 1]
        return order == sorted(order)
    return False


def _relabels(n: Any) -> list:
    """n and the nodes below it reached through relabels, shallowest first."""
    out = [n]
    while _is_relabel(out[-1]):
        out.append(out[-1].args[0])
    return out


def _strip_operand(n: Any, B: int | None = None, H: int | None = None) -> Any:
    """The deepest node below a bmm operand that holds the same elements in the same order (through
    reshapes, clones, size-1 permutes, ...) and still reads as [B, H, r, c] / [B*H, r, c] through its
    strides: the kernel reads it directly, so the copies Inductor would make are never made."""
    chain = _relabels(n)
    if B is None or H is None:
        return chain[-1]
    r, c = _shape(n)[-2:]  # type: ignore[index]
    for x in reversed(chain):
        sh, v = _shape(x), meta_val(x)
        if sh is None or not _all_int(v):
            continue
        try:
            _bh_strides(sh, v.stride(), B, H, r, c)
            return x
        except ValueError:
            continue
    return n


_CONVERTS = (torch.ops.prims.convert_element_type.default, _aten._to_copy.default)


def _is_float_convert(n: Any) -> bool:
    """A dtype conversion between floating types: Inductor's decompositions upcast bf16/fp16 pointwise
    math to fp32 and back; the kernel computes in fp32 throughout, so these are skipped."""
    if not _is(n, *_CONVERTS) or not n.args:
        return False
    src, out = meta_val(n.args[0]), meta_val(n)
    extra = set(n.kwargs) - {"dtype"}
    return isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor) and src.is_floating_point() \
        and out.is_floating_point() and not extra and tuple(src.shape) == tuple(out.shape)


def _is_zero(x: Any) -> bool:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return x == 0
    if _is(x, _aten.full.default) and len(x.args) >= 2 and x.args[1] == 0 and not list(x.args[0]):
        return True
    if _is(x, _aten.scalar_tensor.default) and x.args and x.args[0] == 0:
        return True
    return False


def _number(x: Any) -> float | None:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    return None


def _silu_input(n: Any) -> Any:
    """x when n computes silu(x) (aten.silu, x * sigmoid(x), or x / (1 + exp(-x))), else None."""
    if _is(n, _aten.silu.default):
        return n.args[0]
    if _is(n, _aten.mul.Tensor) and len(n.args) == 2:
        a, b = n.args
        for x, sg in ((a, b), (b, a)):
            if _is(sg, _aten.sigmoid.default) and sg.args[0] is x:
                return x
    if _is(n, _aten.div.Tensor) and len(n.args) == 2:
        x, den = n.args
        if _is(den, _aten.add.Tensor) and len(den.args) == 2 and not den.kwargs:
            for e, one in ((den.args[0], den.args[1]), (den.args[1], den.args[0])):
                if _number(one) == 1.0 and _is(e, _aten.exp.default) and _is(e.args[0], _aten.neg.default) \
                        and e.args[0].args[0] is x:
                    return x
    return None


def _silu_nodes(n: Any) -> list:
    """The nodes of the silu computation at n (for the region's node set)."""
    out = [n]
    for a in n.all_input_nodes:
        if _is(a, _aten.sigmoid.default, _aten.add.Tensor):
            out.append(a)
            for e in a.all_input_nodes:
                if _is(e, _aten.exp.default):
                    out += [e, e.args[0]]
    return out


_CONST_OPS = {
    _aten.iota.default if hasattr(_aten, "iota") else None,
    torch.ops.prims.iota.default, _aten.arange.default, _aten.arange.start, _aten.arange.start_step,
    _aten.full.default, _aten.ones.default, _aten.zeros.default, _aten.scalar_tensor.default,
    _aten.unsqueeze.default, _aten.squeeze.dim, _aten.view.default, _aten.reshape.default,
    _aten._unsafe_view.default, _aten.expand.default, _aten.permute.default, _aten.slice.Tensor,
    _aten.sub.Tensor, _aten.add.Tensor, _aten.mul.Tensor, _aten.neg.default,
    _aten.le.Scalar, _aten.lt.Scalar, _aten.ge.Scalar, _aten.gt.Scalar, _aten.eq.Scalar, _aten.ne.Scalar,
    _aten.le.Tensor, _aten.lt.Tensor, _aten.ge.Tensor, _aten.gt.Tensor, _aten.eq.Tensor, _aten.ne.Tensor,
    _aten.bitwise_and.Tensor, _aten.bitwise_or.Tensor, _aten.bitwise_not.default, _aten.logical_and.default,
    _aten.logical_or.default, _aten.logical_not.default, _aten.where.self, _aten.tril.default,
    _aten.triu.default, _aten.clone.default, _aten._to_copy.default, torch.ops.prims.convert_element_type.default,
}
_CONST_OPS.discard(None)


def _const_eval(n: Any, memo: dict) -> torch.Tensor | None:
    """The value of a node computed from constants only (no graph input), on the CPU; None if it reads
    an input or an op outside the whitelist. Such a value cannot change at run time."""
    if not hasattr(n, "op"):
        return n
    if n in memo:
        return memo[n]
    val = None
    if n.op == "call_function" and n.target in _CONST_OPS:
        ok = True

        def ev(a: Any) -> Any:
            nonlocal ok
            if isinstance(a, (list, tuple)):
                return type(a)(ev(x) for x in a)
            if hasattr(a, "op"):
                r = _const_eval(a, memo)
                if r is None:
                    ok = False
                return r
            if isinstance(a, torch.device):
                return torch.device("cpu")
            return a

        args = ev(tuple(n.args))
        kwargs = {k: ev(v) for k, v in n.kwargs.items()}
        if ok:
            if "device" in kwargs:
                kwargs["device"] = torch.device("cpu")
            try:
                val = n.target(*args, **kwargs)
            except Exception:  # noqa: BLE001 - not evaluable: not a constant we can prove anything about
                val = None
    memo[n] = val if isinstance(val, torch.Tensor) else None
    return memo[n]


def _strip_unsqueeze(n: Any) -> Any:
    while _is(n, _aten.unsqueeze.default, _aten.expand.default, *_RESHAPES):
        n = n.args[0]
    return n


def _length_term(n: Any) -> tuple[Any, int] | None:
    """(lengths node, length of the iota) when n is ``iota(L) < lengths[:, None]`` (or ``>`` flipped)
    up to unsqueezes/expands: the per-sequence valid mask [B, L] of a padded jagged batch."""
    n = _strip_unsqueeze(n)
    if _is(n, _aten.lt.Tensor):
        io, ln = n.args
    elif _is(n, _aten.gt.Tensor):
        ln, io = n.args
    else:
        return None
    io = _strip_unsqueeze(io)
    if not _is(io, torch.ops.prims.iota.default, _aten.arange.default, _aten.arange.start):
        return None
    if _is(io, torch.ops.prims.iota.default) and (io.kwargs.get("start", 0) != 0 or io.kwargs.get("step", 1) != 1):
        return None
    if _is(io, _aten.arange.start) and io.args[0] != 0:
        return None
    size = _shape(io)
    ln_shape = _shape(ln)
    if size is None or len(size) != 1 or ln_shape is None or len(ln_shape) != 2 or ln_shape[1] != 1:
        return None
    base = _strip_unsqueeze(ln)
    bs = _shape(base)
    lv = meta_val(base)
    if bs is None or len(bs) != 1 or bs[0] != ln_shape[0] or not isinstance(lv, torch.Tensor) or lv.dtype not in (torch.int32, torch.int64):
        return None
    return base, size[0]


def _terms(n: Any, neg: bool) -> list[tuple[Any, bool]]:
    """A bool condition as an AND of (node, negated) terms (De Morgan through not/or)."""
    if _is(n, _aten.bitwise_not.default, _aten.logical_not.default):
        return _terms(n.args[0], not neg)
    if not neg and _is(n, _aten.bitwise_and.Tensor, _aten.logical_and.default):
        return _terms(n.args[0], False) + _terms(n.args[1], False)
    if neg and _is(n, _aten.bitwise_or.Tensor, _aten.logical_or.default):
        return _terms(n.args[0], True) + _terms(n.args[1], True)
    return [(n, neg)]


# ------------------------------------------------------------------------------------------------
# The family
# ------------------------------------------------------------------------------------------------


class HstuAttentionFamily(OpFamily):
    name = "hstu_attention"
    ops = ()  # a region, not an op: see region_anchors
    lowered_ops = (OP,)  # Inductor lowers every op of it: contested, Inductor's kernels are the baseline
    region_anchors = ("aten.bmm.default",)
    template_version = "1"

    # -- specs -------------------------------------------------------------------------------------
    def spec_for(self, q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, lengths: torch.Tensor | None = None, *, heads: int | None = None,
                 causal: bool = False, mask_kind: str = "none", len_q: bool = False, len_k: bool = False,
                 qk_scale: float = 1.0, scale: float = 1.0, out_shape: Sequence[int] | None = None,
                 dims: Sequence[int] | None = None) -> OpSpec:
        """The spec of a region on concrete (or fake) tensors; ValueError if not served. q [.., M, D],
        kt (kᵀ) [.., D, N], v [.., N, DV], each 4-D [B, H, ..] or 3-D [B*H, ..]; ``heads``: H when all
        operands are 3-D (default 1). ``dims`` = (B, H, M, N, D, DV) instead: operands of any rank whose
        dims of size > 1 are those of [B, H, r, c] (or [B*H, r, c]) in order (einsum's views)."""
        ts = [t for t in (q, kt, v, bias, mask, lengths) if t is not None]
        if not all(_all_int(t) for t in ts):
            raise ValueError("symbolic sizes/strides (dynamic shapes not served yet)")
        if q.dtype not in _DTYPES or kt.dtype != q.dtype or v.dtype != q.dtype:
            raise ValueError(f"dtypes {q.dtype}/{kt.dtype}/{v.dtype}: one of float32/float16/bfloat16 needed")
        if dims is not None:
            B, H, M, N, D, DV = (int(x) for x in dims)
        elif any(t.dim() not in (3, 4) for t in (q, kt, v)):
            raise ValueError("q, kᵀ, v must be 3-D or 4-D (or dims given)")
        four = [t for t in (q, kt, v) if t.dim() == 4]
        if dims is not None:
            pass
        elif four:
            B, H = int(four[0].shape[0]), int(four[0].shape[1])
        else:
            H = int(heads or 1)
            if q.shape[0] % H:
                raise ValueError(f"{q.shape[0]} batch entries do not split into {H} heads")
            B = int(q.shape[0]) // H
        if dims is None:
            for t in (q, kt, v):
                if (t.dim() == 4 and tuple(t.shape[:2]) != (B, H)) or (t.dim() == 3 and t.shape[0] != B * H):
                    raise ValueError("q, kᵀ, v batch dims differ")
            M, D = int(q.shape[-2]), int(q.shape[-1])
            N = int(kt.shape[-1])
            if int(kt.shape[-2]) != D or int(v.shape[-2]) != N:
                raise ValueError(f"shapes do not chain: q {list(q.shape)}, kᵀ {list(kt.shape)}, v {list(v.shape)}")
            DV = int(v.shape[-1])
        for t, r, c in ((q, M, D), (kt, D, N), (v, N, DV)):
            _bh_strides(t.shape, t.stride(), B, H, r, c)  # raises when the operand does not read as [B, H, r, c]
        if max(D, DV) > 256:
            raise ValueError(f"head dims {D}/{DV} > 256 not served")
        scores = (B, H, M, N)
        for name, t in (("bias", bias), ("mask", mask)):
            if t is not None:
                try:
                    torch.empty_strided(t.shape, t.stride(), device="meta").expand(scores)
                except RuntimeError as e:
                    raise ValueError(f"{name} {list(t.shape)} does not broadcast to the scores {list(scores)}") from e
        if bias is not None and not bias.is_floating_point():
            raise ValueError("bias must be floating point")
        if mask_kind not in _MASKS or (mask is None) != (mask_kind == "none"):
            raise ValueError(f"mask_kind {mask_kind!r} does not fit the mask tensor")
        if mask is not None and mask_kind in ("keep", "drop") and mask.dtype != torch.bool:
            raise ValueError("keep/drop masks must be bool")
        if (len_q or len_k) != (lengths is not None):
            raise ValueError("len_q/len_k need a lengths tensor and vice versa")
        if lengths is not None and (lengths.dim() != 1 or lengths.shape[0] != B or lengths.dtype not in (torch.int32, torch.int64)):
            raise ValueError(f"lengths must be an int32/int64 [B={B}] tensor")
        if causal and M > N:
            log.debug("causal with M > N: rows past N see every key")
        out = tuple(int(s) for s in (out_shape if out_shape is not None else (B * H, M, DV)))
        if math.prod(out) != B * H * M * DV:
            raise ValueError(f"output shape {list(out)} does not hold [B*H, M, DV] = {[B * H, M, DV]}")
        sig = lambda t: None if t is None else TensorSig.of(t)  # noqa: E731
        dev = q.device
        return OpSpec(
            family=self.name,
            op=OP,
            args=(sig(q), sig(kt), sig(v), sig(bias), sig(mask), sig(lengths)),
            consts=(("causal", bool(causal)), ("dims", (B, H, M, N, D, DV)), ("heads", H), ("len_k", bool(len_k)),
                    ("len_q", bool(len_q)),
                    ("mask", mask_kind), ("out_shape", out), ("qk_scale", float(qk_scale)), ("scale", float(scale))),
            device=DeviceSig.of(dev),
            versions=software_versions(self.template_version),
        )

    @staticmethod
    def geom(spec: OpSpec) -> Geom:
        q, kt, v, bias, mask, _ = spec.args
        assert q is not None and kt is not None and v is not None
        B, H, M, N, D, DV = spec.const("dims")
        sc = (B, H, M, N)
        return Geom(B, H, M, N, D, DV, _bh_strides(q.shape, q.stride, B, H, M, D),
                    _bh_strides(kt.shape, kt.stride, B, H, D, N), _bh_strides(v.shape, v.stride, B, H, N, DV),
                    _broadcast_strides(bias, sc), _broadcast_strides(mask, sc), q.dtype)

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        """``node`` is a bmm: the region's output when it is ``a @ v`` with ``a`` the masked, scaled silu
        of ``q @ kᵀ (+ bias)``. Skips starting with NO_REGION mean the pattern is absent altogether."""
        if not _is(node, _aten.bmm.default):
            return Skip(NO_REGION + "not a bmm")
        region: list = [node]
        a3, v3 = node.args
        a = _strip_operand(a3)
        region += self._chain_between(a3, a)
        scale = 1.0
        masks: list[tuple[Any, bool, str]] = []  # (condition or multiplier node, negated, "bool" | "mul")
        cur = a
        s = None
        for _ in range(32):
            x = _silu_input(cur)
            if x is not None:
                region += _silu_nodes(cur)
                s = x
                break
            region.append(cur)
            if _is_float_convert(cur):
                cur = cur.args[0]
            elif _is(cur, _aten.where.self) and len(cur.args) == 3:
                c, t, f = cur.args
                if _is_zero(f) and hasattr(t, "op"):
                    masks.append((c, False, "bool"))
                    cur = t
                elif _is_zero(t) and hasattr(f, "op"):
                    masks.append((c, True, "bool"))
                    cur = f
                else:
                    return Skip(NO_REGION + "where without a zero branch")
            elif _is(cur, _aten.mul.Tensor) and len(cur.args) == 2:
                x0, x1 = cur.args
                if _number(x1) is not None:
                    scale *= _number(x1)  # type: ignore[operator]
                    cur = x0
                elif _number(x0) is not None:
                    scale *= _number(x0)  # type: ignore[operator]
                    cur = x1
                else:
                    # the chain side leads to the silu; the other is a mask tensor
                    side = 0 if self._leads_to_silu(x0) else 1 if self._leads_to_silu(x1) else None
                    if side is None:
                        return Skip(NO_REGION + "mul of two tensors, neither from a silu")
                    m = cur.args[1 - side]
                    mv = meta_val(m)
                    if not isinstance(mv, torch.Tensor):
                        return Skip(NO_REGION + "mul by a non-tensor")
                    masks.append((m, False, "bool" if mv.dtype == torch.bool else "mul"))
                    cur = cur.args[side]
            elif _is(cur, _aten.div.Tensor) and len(cur.args) == 2 and _number(cur.args[1]) is not None:
                scale /= _number(cur.args[1])  # type: ignore[operator]
                cur = cur.args[0]
            else:
                return Skip(NO_REGION + f"{getattr(cur, 'target', cur)} between the silu and a @ v")
        if s is None:
            return Skip(NO_REGION + "no silu before a @ v")
        # s = qk [* qk_scale] [+ bias]
        while _is_float_convert(s):
            region.append(s)
            s = s.args[0]
        bias = None
        qk_scale = 1.0
        cur = s
        if _is(cur, _aten.add.Tensor) and len(cur.args) == 2 and not cur.kwargs:
            x0, x1 = cur.args
            side = 0 if self._leads_to_bmm(x0) else 1 if self._leads_to_bmm(x1) else None
            if side is None:
                return Skip(NO_REGION + "silu input is not q @ kᵀ + bias")
            bias = cur.args[1 - side]
            if not hasattr(bias, "op"):
                return Skip("a scalar added to the scores is not served")
            region.append(cur)
            cur = cur.args[side]
        while True:
            if _is(cur, _aten.mul.Tensor) and len(cur.args) == 2 and _number(cur.args[1]) is not None:
                qk_scale *= _number(cur.args[1])  # type: ignore[operator]
            elif _is(cur, _aten.div.Tensor) and len(cur.args) == 2 and _number(cur.args[1]) is not None:
                qk_scale /= _number(cur.args[1])  # type: ignore[operator]
            else:
                break
            region.append(cur)
            cur = cur.args[0]
        chain = _relabels(cur)  # bmm [B*H, M, N] -> [B, H, M, N] (einsum: through 5-D views)
        region += chain[:-1]
        cur = chain[-1]
        if not _is(cur, _aten.bmm.default):
            return Skip(NO_REGION + "silu input does not come from q @ kᵀ")
        qk = cur
        region.append(qk)
        sc = _shape(s)
        if sc is None or len(sc) not in (3, 4):
            return Skip(NO_REGION + "scores of unknown rank")
        B, H = (sc[0], sc[1]) if len(sc) == 4 else (sc[0], 1)
        q_n, kt_n = _strip_operand(qk.args[0], B, H), _strip_operand(qk.args[1], B, H)
        v_n = _strip_operand(v3, B, H)
        core = list(region)
        chains = self._chain_between(qk.args[0], q_n) + self._chain_between(qk.args[1], kt_n) \
            + self._chain_between(v3, v_n)
        # -- from here on the pattern is present: failures are reported as skips --------------------
        scores = _shape(s)
        out_val = meta_val(node)
        qv, ktv, vv = meta_val(q_n), meta_val(kt_n), meta_val(v_n)
        if not all(isinstance(t, torch.Tensor) for t in (qv, ktv, vv, out_val)) or scores is None:
            return Skip("region nodes without tensor metadata")
        if len(scores) not in (3, 4):
            return Skip(f"scores of rank {len(scores)}")
        heads = H
        qsh, vsh = _shape(qk.args[0]), _shape(v3)
        dims = (B, H, scores[-2], scores[-1], qsh[-1] if qsh else 0, vsh[-1] if vsh else 0)
        if not out_val.is_contiguous():
            return Skip("a @ v output is not contiguous")
        # intermediates must be ours alone: else the scores are materialised anyway
        members = set(core)
        for n in core:
            if n is node:
                continue
            if any(u not in members for u in n.users):
                return Skip(f"{n.name} (inside the region) has users outside it")
        # masks
        try:
            kind, mask_n, causal, lengths_n, len_q, len_k = self._classify_masks(masks, scores)
        except ValueError as e:
            return Skip(str(e))
        try:
            spec = self.spec_for(qv, ktv, vv, meta_val(bias), meta_val(mask_n), meta_val(lengths_n), heads=heads,
                                 causal=causal, mask_kind=kind, len_q=len_q, len_k=len_k, qk_scale=qk_scale,
                                 scale=scale, out_shape=tuple(out_val.shape), dims=dims)
        except ValueError as e:
            return Skip(str(e))
        if out_val.dtype != qv.dtype:
            return Skip(f"output dtype {out_val.dtype} differs from the inputs' {qv.dtype}")
        m = Match(spec=spec, inputs=[q_n, kt_n, v_n, bias, mask_n, lengths_n], result_users={0: [node]})
        members |= set(chains)
        # operand copies/views go with the region when nothing else reads them (dead code after the rewrite)
        extra = [n for n in chains if all(u in members for u in n.users)]
        m.region = tuple(dict.fromkeys(n.name for n in core + extra))
        return m

    @staticmethod
    def _chain_between(top: Any, bottom: Any) -> list:
        out = []
        n = top
        while n is not bottom and hasattr(n, "op") and n.op == "call_function":
            out.append(n)
            n = n.args[0]
        return out

    @staticmethod
    def _leads_to_silu(n: Any, depth: int = 0) -> bool:
        """Whether n is (a mask/scale of) a silu: the chain side of a ``mul`` of two tensors."""
        if depth > 16 or not hasattr(n, "op"):
            return False
        if _silu_input(n) is not None:
            return True
        if _is_float_convert(n):
            return HstuAttentionFamily._leads_to_silu(n.args[0], depth + 1)
        if _is(n, _aten.where.self, _aten.mul.Tensor, _aten.div.Tensor):
            return any(HstuAttentionFamily._leads_to_silu(a, depth + 1) for a in n.args)
        return False

    @staticmethod
    def _leads_to_bmm(n: Any) -> bool:
        while _is(n, _aten.mul.Tensor, _aten.div.Tensor) and _number(n.args[1]) is not None:
            n = n.args[0]
        return _is(_relabels(n)[-1], _aten.bmm.default)

    def _classify_masks(self, masks: list, scores: tuple[int, ...]) -> tuple:
        """(mask kind, mask tensor node, causal, lengths node, len_q, len_k) from the region's masks."""
        M, N = scores[-2], scores[-1]
        causal = False
        tensor: tuple[Any, str] | None = None
        lengths = None
        len_q = len_k = False
        for cond, neg, how in masks:
            if how == "mul":
                if tensor is not None:
                    raise ValueError("more than one mask tensor in the region")
                tensor = (cond, "mul")
                continue
            for t, tneg in _terms(cond, neg):
                val = _const_eval(t, {})
                if val is not None and val.dtype == torch.bool and val.dim() <= len(scores) \
                        and all(s == 1 for s in val.shape[:-2]):
                    keep = ~val if tneg else val
                    try:
                        keep2 = torch.broadcast_to(keep.reshape(tuple(keep.shape[-2:]) if keep.dim() >= 2 else tuple(keep.shape)), (M, N))
                    except RuntimeError:
                        keep2 = None
                    if keep2 is not None:
                        if bool(keep2.all()):
                            continue
                        if torch.equal(keep2, torch.ones(M, N, dtype=torch.bool).tril()):
                            causal = True
                            continue
                lt = None if tneg else _length_term(t)
                ts = _shape(t)
                if lt is not None and ts is not None and len(scores) == 4 and len(ts) == 4:
                    ln, size = lt
                    if lengths is not None and ln is not lengths:
                        raise ValueError("masks from two different lengths tensors")
                    if ts[0] == scores[0] and ts[1] == 1 and ts[2] == M and ts[3] == 1 and size == M:
                        lengths, len_q = ln, True
                        continue
                    if ts[0] == scores[0] and ts[1] == 1 and ts[2] == 1 and ts[3] == N and size == N:
                        lengths, len_k = ln, True
                        continue
                if tensor is not None:
                    raise ValueError("more than one mask tensor in the region")
                tensor = (t, "drop" if tneg else "keep")
        if tensor is None:
            return "none", None, causal, lengths, len_q, len_k
        return tensor[1], tensor[0], causal, lengths, len_q, len_k

    # -- semantics -------------------------------------------------------------------------------
    def _run(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None], dtype: torch.dtype | None) -> torch.Tensor:
        q, kt, v, bias, mask, lengths = inputs
        assert q is not None and kt is not None and v is not None
        g = self.geom(spec)
        cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)  # noqa: E731
        dev = q.device  # float64 on the device: the bench shape's scores are 64M elements
        q4 = cast(q.to(dev)).reshape(g.B, g.H, g.M, g.D)
        k4 = cast(kt.to(dev)).reshape(g.B, g.H, g.D, g.N)
        v4 = cast(v.to(dev)).reshape(g.B, g.H, g.N, g.DV)
        s = q4 @ k4
        if spec.const("qk_scale") != 1.0:
            s = s * spec.const("qk_scale")
        if bias is not None:
            s = s + cast(bias.to(dev))
        a = F.silu(s) * spec.const("scale")
        keep = None
        if spec.const("causal"):
            keep = torch.ones(g.M, g.N, dtype=torch.bool, device=dev).tril()
        if lengths is not None:
            ln = lengths.to(dev).clamp(min=0)
            if spec.const("len_q"):
                vq = (torch.arange(g.M, device=dev) < ln[:, None])[:, None, :, None]
                keep = vq if keep is None else keep & vq
            if spec.const("len_k"):
                vk = (torch.arange(g.N, device=dev) < ln[:, None])[:, None, None, :]
                keep = vk if keep is None else keep & vk
        kind = spec.const("mask")
        if kind == "keep":
            keep = mask.to(dev) if keep is None else keep & mask.to(dev)
        elif kind == "drop":
            keep = ~mask.to(dev) if keep is None else keep & ~mask.to(dev)
        elif kind == "mul":
            a = a * cast(mask.to(dev))
        if keep is not None:
            a = a.masked_fill(~keep, 0.0)
        if spec.const("len_k") and lengths is not None:
            # keys past the length contribute nothing, whatever v holds there (the kernel never reads them)
            vk = torch.arange(g.N, device=dev) < lengths.to(dev).clamp(min=0)[:, None]
            v4 = v4.masked_fill(~vk[:, None, :, None], 0.0)
        out = a @ v4
        return out.reshape(spec.const("out_shape"))

    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """The region as PyTorch runs it (input dtype), contiguous [B*H, M, DV] (the bmm's shape)."""
        return [self._run(spec, inputs, None).contiguous()]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """float64 (on the inputs' device), cast back to the input dtype."""
        q = inputs[0]
        assert q is not None
        return [self._run(spec, inputs, torch.float64).to(q.dtype).to(q.device).contiguous()]

    # -- inputs ----------------------------------------------------------------------------------
    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """q, k, v ~ N(0, 1); bias ~ N(0, 1); bool masks ~ half true; float masks in [0, 1); lengths
        uniform in [0, N] with the first 0 and the last N when B > 2 (empty and full sequences)."""
        gen = torch.Generator().manual_seed(int(seed))
        dev = torch.device(spec.device.type if spec.device.type != "cuda" else "cuda")
        out: list[torch.Tensor | None] = []
        g = self.geom(spec)
        for j, sig in enumerate(spec.args):
            if sig is None:
                out.append(None)
                continue
            if j == 4 and sig.dtype == "bool":
                vals = torch.rand(sig.shape, generator=gen) < 0.5
            elif j == 4:
                vals = torch.rand(sig.shape, generator=gen)
            elif j == 5:
                vals = torch.randint(0, g.N + 1, sig.shape, generator=gen)
                if sig.shape[0] > 2:
                    vals[0], vals[-1] = 0, g.N
            else:
                vals = torch.randn(sig.shape, generator=gen)
            out.append(_strided(sig, vals, dev))
        return out

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        """The spec's dtype and flags on: one query/key (N=1), lengths not a multiple of any block,
        empty sequences (lengths 0), a length past N, non-contiguous q/k/v, head dims below 16."""
        q_sig = spec.args[0]
        assert q_sig is not None
        dt = q_sig.torch_dtype
        dev = torch.device(spec.device.type)
        c = dict(spec.consts)
        gen = torch.Generator().manual_seed(99)
        cases = []
        has_bias, has_len = spec.args[3] is not None, spec.args[5] is not None
        kind = c["mask"]

        def build(name: str, B: int, H: int, M: int, N: int, D: int, DV: int, transposed: bool = False,
                  lengths: list[int] | None = None) -> None:
            def rnd(*shape: int) -> torch.Tensor:
                return torch.randn(*shape, generator=gen).to(dt).to(dev)
            if transposed:  # [B, M, H, D] storage read as [B, H, M, D]: HSTU's view(..).transpose(1, 2)
                q = rnd(B, M, H, D).transpose(1, 2)
                k = rnd(B, N, H, D).transpose(1, 2)
                v = rnd(B, N, H, DV).transpose(1, 2)
            else:
                q, k, v = rnd(B, H, M, D), rnd(B, H, N, D), rnd(B, H, N, DV)
            kt = k.transpose(-1, -2)
            bias = rnd(H, M, N) if has_bias else None
            mask = None
            if kind in ("keep", "drop"):
                mask = (torch.rand(M, N, generator=gen) < 0.6).to(dev)
            elif kind == "mul":
                mask = torch.rand(M, N, generator=gen).to(dt).to(dev)
            ln = None
            if has_len:
                ln = torch.tensor(lengths if lengths is not None else [min(N, M)] * B, dtype=getattr(torch, spec.args[5].dtype)).to(dev)
            s = self.spec_for(q, kt, v, bias, mask, ln, causal=c["causal"], mask_kind=kind, len_q=c["len_q"],
                              len_k=c["len_k"], qk_scale=c["qk_scale"], scale=c["scale"])
            cases.append((name, s, [q, kt, v, bias, mask, ln]))

        build("one_token", 1, 1, 1, 1, 16, 16, lengths=[1])
        build("odd_lengths", 2, 1, 37, 37, 16, 16, lengths=[0, 23])
        build("empty_sequences", 2, 2, 20, 20, 16, 16, lengths=[0, 0])
        build("length_past_n", 1, 2, 24, 24, 16, 16, lengths=[1000])
        build("strided_qkv", 2, 2, 19, 19, 16, 16, transposed=True, lengths=[19, 5])
        build("small_head_dims", 1, 2, 17, 17, 8, 12, lengths=[17])
        return cases

    # -- numerics / cost -------------------------------------------------------------------------
    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        """fp32: sums of N products in a different order (and the score in fp32 instead of rounding it
        between ops) -> 1e-4 scaled; halves: the weights rounded to the dtype before the second dot."""
        return {torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2), torch.float32: (2e-4, 2e-4)}.get(
            dtype, (1e-9, 1e-9))

    def floor_bytes(self, spec: OpSpec) -> int:
        """q, kᵀ, v, the bias, mask and lengths each read once (their own sizes: a per-head bias is read
        once, not per batch), the output written once."""
        total = 0
        for sig in spec.args:
            if sig is not None:
                total += sig.numel() * _elem_size(sig.dtype)
        q = spec.args[0]
        assert q is not None
        return total + math.prod(spec.const("out_shape")) * _elem_size(q.dtype)

    def floor_flops(self, spec: OpSpec) -> int:
        """Two matmuls, 2·B·H·M·N·(D + DV) (4·B·H·N²·D for square heads), halved when causal."""
        g = self.geom(spec)
        f = 2 * g.B * g.H * g.M * g.N * (g.D + g.DV)
        return f // 2 if spec.const("causal") else f

    # -- kernels ---------------------------------------------------------------------------------
    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """~12 proposals on CUDA, best guess first (split, 128x64, 8 warps, 3 stages, causal rows in
        reverse); interpreter specs get a few small-block ones (~0.6 ms per program instance there)."""
        g = self.geom(spec)
        causal = bool(spec.const("causal"))
        gpu = spec.device.type == "cuda"
        out: list[tuple[str, dict[str, Any]]] = []

        def add(t: str, bm: int, bn: int, nw: int, ns: int, **kw: Any) -> None:
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=nw, num_stages=ns, GRID=kw.pop("GRID", 0),
                       REVERSE=kw.pop("REVERSE", 1 if causal else 0), SIGMOID=kw.pop("SIGMOID", 1), **kw)
            if t == "flash":
                cfg.setdefault("SKIP", 1)
            out.append((t, cfg))

        if not gpu:
            bm = max(16, min(64, _next_pow2(g.M)))
            bn = max(16, min(32, _next_pow2(g.N)))
            add("split", bm, bn, 4, 1)
            add("flash", bm, bn, 4, 1)
            add("split", bm, max(16, bn // 2), 4, 1, SIGMOID=0)
            add("flash", max(16, bm // 2), bn, 4, 1, GRID=1, REVERSE=0)
            return unique_candidates(out, lambda t: TEMPLATES[t][1])
        if g.dtype == "float32":  # IEEE fp32 dots run on FMA units and fp32 tiles take twice the registers
            for t, bm, bn, nw, ns in (("split", 64, 32, 4, 2), ("flash", 64, 32, 4, 2), ("split", 32, 32, 4, 2),
                                      ("split", 64, 16, 4, 2), ("split", 128, 32, 8, 2), ("flash", 32, 32, 4, 3)):
                add(t, bm, bn, nw, ns)
            return unique_candidates(out, lambda t: TEMPLATES[t][1])
        big = max(g.D, g.DV) > 128
        bm0, bn0 = (64, 64) if big else (128, 64)
        add("split", bm0, bn0, 8 if not big else 4, 3 if not big else 2)
        add("flash", bm0, bn0, 8 if not big else 4, 3 if not big else 2)
        add("split", 64, 64, 4, 3)
        add("split", 128, 128, 8, 2)
        add("split", 128, 32, 4, 4)
        add("split", 128, 64, 4, 3)
        add("split", 64, 128, 8, 2)
        add("split", bm0, bn0, 8, 4)
        add("split", bm0, bn0, 8, 3, GRID=1)
        add("split", bm0, bn0, 8, 3, SIGMOID=0)
        add("split", bm0, bn0, 8, 3, SIGMOID=2)
        add("flash", 64, 32, 4, 4)
        add("flash", 128, 128, 8, 2)
        if causal:
            add("split", bm0, bn0, 8, 3, REVERSE=0)
            add("flash", bm0, bn0, 8, 3, SKIP=0)
        # one MUFU op per score (tanh.approx) instead of two (exp2 + reciprocal); bf16: the scale once
        # on the accumulator (fp16 weights could overflow unscaled)
        late = 1 if g.dtype == "bfloat16" else 0
        for bm, bn, nw, ns in ((bm0, bn0, 8 if not big else 4, 3 if not big else 2), (64, 64, 4, 3),
                               (128, 128, 8, 2), (128, 64, 4, 3), (64, 128, 4, 2)):
            add("split", bm, bn, nw, ns, SIGMOID=3, LATE=late)
            if g.dtype == "bfloat16":
                add("split", bm, bn, nw, ns, SIGMOID=4, LATE=late)
        return unique_candidates(out, lambda t: TEMPLATES[t][1])

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        q_sig = spec.args[0]
        assert q_sig is not None
        g = self.geom(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "hstu_attention")
        bm, bn = int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"])
        for k, v in (("BLOCK_M", bm), ("BLOCK_N", bn)):
            if v < 16 or v & (v - 1):
                raise ValueError(f"{k}={v} is not a power of two >= 16 (tl.dot)")
        if int(cfg.get("SIGMOID", 1)) in (3, 4) and spec.device.type != "cuda":
            raise ValueError("SIGMOID 3/4 are PTX (tanh.approx): CUDA only")
        if int(cfg.get("LATE", 0)) and g.dtype == "float16":
            raise ValueError("LATE scale with fp16: unscaled weights may overflow fp16")
        bd, bdv = max(16, _next_pow2(g.D)), max(16, _next_pow2(g.DV))
        num_m = _cdiv(g.M, bm)
        bh = g.B * g.H
        grid_order = int(cfg.get("GRID", 0))
        grid = (num_m, bh) if grid_order == 0 else (bh, num_m)
        if grid[1] > _MAX_GRID_Y:
            raise ValueError(f"grid {grid}: dim 1 over {_MAX_GRID_Y}")
        if num_m * bh * g.DV == 0:
            grid = (0, 0)
        # tile offsets inside one (b, h) slice are int32 (64-bit pointer tiles cost ~2x the registers);
        # the slice bases are int64
        for what, st, rows, cols in (("q", g.q, g.M, g.D), ("kᵀ", g.k, g.D, g.N), ("v", g.v, g.N, g.DV),
                                     ("bias", g.bias, g.M, g.N), ("mask", g.mask, g.M, g.N), ("out", (0, 0, g.DV, 1), g.M, g.DV)):
            if (max(rows, 1) - 1) * abs(st[2]) + (max(cols, 1) - 1) * abs(st[3]) >= 2**31 - 1:
                raise ValueError(f"{what}: offsets inside one head exceed int32")
        kind = spec.const("mask")
        # absent tensors are bound to q: never read (their flags are off)
        args: list[tuple[str, Any]] = [
            ("q_ptr", In(0)), ("k_ptr", In(1)), ("v_ptr", In(2)),
            ("bias_ptr", In(3) if spec.args[3] is not None else In(0)),
            ("mask_ptr", In(4) if spec.args[4] is not None else In(0)),
            ("len_ptr", In(5) if spec.args[5] is not None else In(0)),
            ("o_ptr", Out(0)),
            ("n_heads", g.H), ("m_len", g.M), ("n_len", g.N), ("d_qk", g.D), ("d_v", g.DV), ("num_m", num_m),
            *zip(("sqb", "sqh", "sqm", "sqd"), g.q), *zip(("skb", "skh", "skd", "skn"), g.k),
            *zip(("svb", "svh", "svn", "svd"), g.v), *zip(("sbb", "sbh", "sbm", "sbn"), g.bias),
            *zip(("smb", "smh", "smm", "smn"), g.mask),
            ("qk_scale", float(spec.const("qk_scale"))), ("scale", float(spec.const("scale"))),
            ("HAS_BIAS", spec.args[3] is not None), ("MASK_KIND", _MASKS.index(kind)),
            ("CAUSAL", bool(spec.const("causal"))), ("LEN_Q", bool(spec.const("len_q"))),
            ("LEN_K", bool(spec.const("len_k"))), ("IEEE", q_sig.dtype == "float32"),
            ("SIGMOID", int(cfg.get("SIGMOID", 1))), ("LATE", int(cfg.get("LATE", 0))), ("GRID", grid_order), ("REVERSE", int(cfg.get("REVERSE", 0))),
            ("EVEN_M", g.M % bm == 0), ("EVEN_D", bd == g.D), ("EVEN_DV", bdv == g.DV),
            ("BLOCK_M", bm), ("BLOCK_N", bn), ("BLOCK_D", bd), ("BLOCK_DV", bdv),
        ]
        if template == "flash":
            args.append(("SKIP", int(cfg.get("SKIP", 1))))
        kernel = TEMPLATES[template][0]
        return CallPlan(kernel=kernel, grid=grid, args=tuple(args),
                        outputs=(OutBuf(tuple(spec.const("out_shape")), q_sig.dtype, fill=None),),
                        num_warps=int(cfg.get("num_warps", 4)), num_stages=int(cfg.get("num_stages", 1)))


register(HstuAttentionFamily())
