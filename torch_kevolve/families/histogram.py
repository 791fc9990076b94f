"""The histogram family: ``aten.histc.default`` and ``aten.bincount.default``.

What reaches Inductor's post-grad graph (torch 2.13, checked by compiling small functions):

* ``torch.histc(x, bins, min, max)`` arrives as itself with a static ``[bins]`` output in x's dtype.
  Inductor has no lowering (``make_fallback(aten.histc)``): it calls ATen on every device.
* ``torch.bincount(x, weights, minlength)`` reaches the graph only with
  ``torch._dynamo.config.capture_dynamic_output_shape_ops=True`` (else Dynamo graph-breaks). Its output
  size is an unbacked SymInt ``u0`` (``max(x) + 1`` or ``minlength``), followed by ``sym_size`` /
  ``_assert_scalar(u0 >= minlength)`` nodes; Inductor falls back to ATen (``make_fallback``). Our call
  plans have static output shapes, so bincount is served only where the graph proves the size is
  ``minlength``: its input is ``remainder(y, k)`` with ``0 < k <= minlength`` or ``clamp(y, lo, hi)``
  with ``0 <= lo <= hi < minlength``. The kernel then reads ``y`` and applies the wrap itself (the
  remainder/clamp node dies when nothing else uses it). Any other bincount is skipped with that reason.

ATen semantics pinned here (tests compare against eager on CPU; ``SummaryOps.cu`` computes the same):

* histc: ``lo = float(min)``, ``hi = float(max)`` in the input dtype; ``min == max`` means the data's
  ``[amin, amax]``; if still ``lo == hi`` then ``lo - 1, hi + 1``. An element counts when
  ``lo <= x <= hi`` (NaN and out-of-range never), in bin ``int((x - lo) * bins / (hi - lo))`` computed
  in the input dtype with IEEE division, and ``x == hi`` (bin == bins) goes to the last bin. Counts
  are in the input dtype. Served: float32 and float64 (ATen's half/bf16 paths round bins and counts
  differently on CPU and CUDA); data-range specs with NaN/inf data raise in eager (not verified).
* bincount: int64 counts; float32 weights give float32 sums, other float weights float64 sums.

Canonical inputs: histc ``[x]`` (contiguous, flattened), bincount ``[y, weights | None]`` (1-D).

Templates (every plan's steps handle the empty input; output zero-filled unless said otherwise):

* ``private``: each program strides over ``BLOCK`` tiles (``PROGRAMS`` programs: a persistent grid
  sized to the SMs, or 0 for one tile per program), keeps a private ``NB``-bin histogram in registers
  (``tl.histogram``; weighted, or ``ONEHOT`` counts for <= 64 bins: ``[BLOCK, NB]`` one-hot masked
  sums), then one atomic add per non-empty bin.
* ``shared``: a bin array in shared memory per program (persistent grid), one shared atomic per counted
  element, then one global atomic per non-empty bin. Triton's language has neither shared arrays nor
  shared atomics, so the array is declared and updated by inline PTX (``red.shared.add``; counts compile
  to a warp-aggregated ``ATOMS.POPC.INC``): CUDA only, up to 32 KB of bins (8,192 counts or f32 sums,
  4,096 f64 sums). On H100 it runs 16M values into 1,000 bins in 33 us (histc) where ATen's histc
  takes 75 us and ``private``'s ``tl.histogram`` (ballots) took 272 us for bincount.
* ``atomic``: one global atomic per element: any number of bins.
* ``twopass``: programs write private histograms to a ``[PROGRAMS, NB]`` workspace (no atomics; or,
  ``GLOBAL``, one relaxed atomic per element into their own zero-filled row of it, any bins), a
  second kernel sums them per bin into the output (output not pre-filled; deterministic, except
  GLOBAL's float weights, whose atomic order varies).

A data-range histc (``min == max``) adds a ``hist_minmax`` pre-step: ``R_PROGRAMS`` partial
(min, max) pairs into a workspace, reduced by every program of the main kernel.
"""
from __future__ import annotations

import logging
import math
import struct
from typing import Any, Sequence

import torch

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip, Step, Ws
from .util import all_int as _all_int, cdiv as _cdiv, elem_size as _elem_size, next_pow2 as _next_pow2, template_of, check_pow2
from .util import meta_val, node_kwargs, unique_candidates

log = logging.getLogger("torch_kevolve")

HISTC = "aten.histc.default"
BINCOUNT = "aten.bincount.default"
_OPS = (HISTC, BINCOUNT)
_HISTC_DTYPES = (torch.float32, torch.float64)
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_WEIGHT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_WRAPS = {"none": 0, "mod": 1, "clamp": 2}
_MAX_N = 2**31 - 1
_MAX_PRIVATE_BINS = 4096  # tl.histogram block; weighted one-hot sums: 256
_MAX_PRIVATE_BINS_W = 256
_H100_SMS = 132
_MAX_SHARED_BYTES = 32768  # the shared template's static array (48 KB is PTX's static limit)
_ONE_HOT = 2**13  # weighted private histograms: a BLOCK x NB one-hot tile (2**15 used all 255 registers)

# ------------------------------------------------------------------------------------------------
# Kernel sources: each template's source is a complete module with the shared helpers pasted in.
# ------------------------------------------------------------------------------------------------

_HEADER = '''import triton
import triton.language as tl
'''

_COMMON = '''

@triton.jit
def _range(range_ptr, n_parts, lo_bits, hi_bits, KIND: tl.constexpr, DATA_RANGE: tl.constexpr, RPB: tl.constexpr):
    \"\"\"histc's [lo, hi]: the given bounds (passed as bit patterns: exact in fp32 and fp64), or the
    data's min/max reduced from the pre-step's partials, widened by 1 each way when equal.\"\"\"
    if KIND == 1:
        lo = tl.cast(lo_bits, tl.int64).to(tl.float64, bitcast=True)
        hi = tl.cast(hi_bits, tl.int64).to(tl.float64, bitcast=True)
    else:
        lo = tl.cast(lo_bits, tl.int32).to(tl.float32, bitcast=True)
        hi = tl.cast(hi_bits, tl.int32).to(tl.float32, bitcast=True)
    if DATA_RANGE:
        r = tl.arange(0, RPB)
        rm = r < n_parts
        lo = tl.min(tl.load(range_ptr + r, mask=rm, other=float("inf")), axis=0)
        hi = tl.max(tl.load(range_ptr + n_parts + r, mask=rm, other=float("-inf")), axis=0)
        same = lo == hi
        lo = tl.where(same, lo - 1, lo)
        hi = tl.where(same, hi + 1, hi)
    return lo, hi


@triton.jit
def _bins(x_ptr, w_ptr, offs, m, lo, hi, nbins, wrap_a, wrap_b,
          OP: tl.constexpr, KIND: tl.constexpr, WRAP: tl.constexpr, WEIGHTED: tl.constexpr, ACC: tl.constexpr):
    \"\"\"(bin, counts?, weight) of a tile. histc: ATen's int((x - lo) * bins / (hi - lo)) in the input
    dtype, x == hi into the last bin, NaN / out of range not counted. bincount: the wrapped value.\"\"\"
    x = tl.load(x_ptr + offs, mask=m, other=0)
    if OP == 0:
        if KIND == 1:
            v = x.to(tl.float64)
            q = (v - lo) * nbins / (hi - lo)
        else:
            v = x.to(tl.float32)
            q = tl.math.div_rn((v - lo) * nbins, hi - lo)
        valid = m & (v >= lo) & (v <= hi)
        b = tl.where(valid, q, 0).to(tl.int32)
        b = tl.where(b == nbins, nbins - 1, b)
        # a non-finite range (a data range over inf/NaN data: eager raises, the CPU runtime sends it to eager,
        # a GPU call does not check) gives q = NaN or inf, whose int32 is anything: never add outside the bins
        valid = valid & (b >= 0) & (b < nbins)
        b = tl.where(valid, b, 0)
    else:
        v = x.to(tl.int64)
        if WRAP == 1:  # wrap_a is a constexpr: a remainder by a constant (multiply-high, no 64-bit division)
            v = v % wrap_a
            v = tl.where(v < 0, v + wrap_a, v)
        elif WRAP == 2:
            v = tl.minimum(tl.maximum(v, wrap_a), wrap_b)
        valid = m & (v >= 0) & (v < nbins)
        b = tl.where(valid, v, 0).to(tl.int32)
    if WEIGHTED:
        w = tl.load(w_ptr + offs, mask=valid, other=0)
        if ACC == 1:
            w = w.to(tl.float32)
        else:
            w = w.to(tl.float64)
    else:
        w = tl.where(valid, 1, 0)
    return b, valid, w


@triton.jit
def _private(x_ptr, w_ptr, n, nbins, wrap_a, wrap_b, lo, hi, start, stride,
             OP: tl.constexpr, KIND: tl.constexpr, WRAP: tl.constexpr, WEIGHTED: tl.constexpr, ACC: tl.constexpr,
             BLOCK: tl.constexpr, NB: tl.constexpr, ONEHOT: tl.constexpr):
    \"\"\"A program's private histogram over tiles start, start + stride, ...: tl.histogram counts (int32),
    or one-hot [BLOCK, NB] masked sums (of the weights; of ones for ONEHOT counts: few bins).\"\"\"
    nb = tl.arange(0, NB)
    if WEIGHTED:
        if ACC == 1:
            acc = tl.zeros([NB], tl.float32)
        else:
            acc = tl.zeros([NB], tl.float64)
    else:
        acc = tl.zeros([NB], tl.int32)
    for s in range(start, n, stride):
        offs = s + tl.arange(0, BLOCK).to(tl.int64)
        m = offs < n
        b, valid, w = _bins(x_ptr, w_ptr, offs, m, lo, hi, nbins, wrap_a, wrap_b, OP, KIND, WRAP, WEIGHTED, ACC)
        if WEIGHTED or ONEHOT:
            hit = (b[:, None] == nb[None, :]) & valid[:, None]
            acc += tl.sum(tl.where(hit, w[:, None], 0), axis=0)
        else:
            acc += tl.histogram(b, NB, mask=valid)
    return acc


@triton.jit
def hist_minmax(x_ptr, range_ptr, n, n_parts, KIND: tl.constexpr, BLOCK: tl.constexpr):
    \"\"\"Pre-step of a data-range histc: program p's (min, max) -> range[p], range[n_parts + p].\"\"\"
    pid = tl.program_id(0)
    if KIND == 1:
        mn = tl.full([BLOCK], float("inf"), tl.float64)
        mx = tl.full([BLOCK], float("-inf"), tl.float64)
    else:
        mn = tl.full([BLOCK], float("inf"), tl.float32)
        mx = tl.full([BLOCK], float("-inf"), tl.float32)
    for s in range(pid * BLOCK, n, n_parts * BLOCK):
        offs = s + tl.arange(0, BLOCK).to(tl.int64)
        m = offs < n
        x = tl.load(x_ptr + offs, mask=m, other=0).to(mn.dtype)
        mn = tl.where(m, tl.minimum(mn, x), mn)
        mx = tl.where(m, tl.maximum(mx, x), mx)
    tl.store(range_ptr + pid, tl.min(mn, axis=0))
    tl.store(range_ptr + n_parts + pid, tl.max(mx, axis=0))
'''

_SIGNATURE = '''
    x_ptr, w_ptr, out_ptr, range_ptr,
    n, nbins, wrap_a: tl.constexpr, wrap_b, lo_bits, hi_bits, n_parts,
    OP: tl.constexpr, KIND: tl.constexpr, WRAP: tl.constexpr, WEIGHTED: tl.constexpr, ACC: tl.constexpr,
    DATA_RANGE: tl.constexpr, RPB: tl.constexpr,'''

PRIVATE_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def hist_private(''' + _SIGNATURE + '''
    BLOCK: tl.constexpr, NB: tl.constexpr, ONEHOT: tl.constexpr,
):
    \"\"\"Privatized: a register histogram per program over its tiles, then one atomic per non-empty bin.\"\"\"
    pid = tl.program_id(0).to(tl.int64)
    lo, hi = _range(range_ptr, n_parts, lo_bits, hi_bits, KIND, DATA_RANGE, RPB)
    acc = _private(x_ptr, w_ptr, n, nbins, wrap_a, wrap_b, lo, hi, pid * BLOCK, tl.num_programs(0) * BLOCK,
                   OP, KIND, WRAP, WEIGHTED, ACC, BLOCK, NB, ONEHOT)
    nb = tl.arange(0, NB)
    tl.atomic_add(out_ptr + nb, acc.to(out_ptr.dtype.element_ty), mask=(nb < nbins) & (acc != 0))
'''

ATOMIC_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def hist_atomic(''' + _SIGNATURE + '''
    BLOCK: tl.constexpr,
):
    \"\"\"Global atomics: one per counted element, straight into the output (any number of bins).\"\"\"
    pid = tl.program_id(0).to(tl.int64)
    lo, hi = _range(range_ptr, n_parts, lo_bits, hi_bits, KIND, DATA_RANGE, RPB)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m = offs < n
    b, valid, w = _bins(x_ptr, w_ptr, offs, m, lo, hi, nbins, wrap_a, wrap_b, OP, KIND, WRAP, WEIGHTED, ACC)
    tl.atomic_add(out_ptr + b, w.to(out_ptr.dtype.element_ty), mask=valid)
'''

TWOPASS_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def hist_partial(''' + _SIGNATURE + '''
    part_ptr, BLOCK: tl.constexpr, NB: tl.constexpr, ONEHOT: tl.constexpr, GLOBAL: tl.constexpr = False,
):
    \"\"\"Pass 1: program p's private histogram -> part[p, :NB] (every bin written, no atomics); GLOBAL:
    one atomic per element into part[p, :] itself (zero-filled, L2-resident, its own program's only: no
    contention), no register histogram (tl.histogram's per-element cost grows with the bins).\"\"\"
    pid = tl.program_id(0).to(tl.int64)
    lo, hi = _range(range_ptr, n_parts, lo_bits, hi_bits, KIND, DATA_RANGE, RPB)
    if GLOBAL:
        for s in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
            offs = s + tl.arange(0, BLOCK).to(tl.int64)
            b, valid, w = _bins(x_ptr, w_ptr, offs, offs < n, lo, hi, nbins, wrap_a, wrap_b, OP, KIND, WRAP,
                                WEIGHTED, ACC)
            tl.atomic_add(part_ptr + pid * NB + b, w.to(part_ptr.dtype.element_ty), mask=valid, sem="relaxed")
    else:
        acc = _private(x_ptr, w_ptr, n, nbins, wrap_a, wrap_b, lo, hi, pid * BLOCK, tl.num_programs(0) * BLOCK,
                       OP, KIND, WRAP, WEIGHTED, ACC, BLOCK, NB, ONEHOT)
        tl.store(part_ptr + pid * NB + tl.arange(0, NB), acc)


@triton.jit
def hist_reduce(
    part_ptr, out_ptr, nbins, n_progs,
    NB: tl.constexpr, RB: tl.constexpr, PCHUNK: tl.constexpr, ACC: tl.constexpr,
):
    \"\"\"Pass 2: out[bins of this program] = sum over programs of part[:, bins], in a fixed order.\"\"\"
    bins = tl.program_id(0) * RB + tl.arange(0, RB)
    bm = bins < nbins
    if ACC == 0:
        acc = tl.zeros([RB], tl.int64)
    elif ACC == 1:
        acc = tl.zeros([RB], tl.float32)
    else:
        acc = tl.zeros([RB], tl.float64)
    for p0 in range(0, n_progs, PCHUNK):
        p = p0 + tl.arange(0, PCHUNK)
        m = (p < n_progs)[:, None] & bm[None, :]
        part = tl.load(part_ptr + p.to(tl.int64)[:, None] * NB + bins[None, :], mask=m, other=0)
        acc += tl.sum(part.to(acc.dtype), axis=0)
    tl.store(out_ptr + bins, acc.to(out_ptr.dtype.element_ty), mask=bm)
'''

SHARED_SOURCE = _HEADER + _COMMON + """

@triton.jit
def _smem_base(anchor, SMEM: tl.constexpr):
    \"\"\"The shared-memory address of the kernel's one static bin array (SMEM bytes). Triton's language
    has no shared arrays or shared atomics; PTX does: the declaration sits in an asm statement run once
    per thread (on a scalar), so it appears once in the kernel, and its address is returned for the
    other asm statements. Constexpr branches: one size per compiled kernel.\"\"\"
    if SMEM <= 4096:
        base = tl.inline_asm_elementwise(".shared .align 16 .b8 kv_hist_smem[4096]; mov.u32 $0, kv_hist_smem;",
                                         "=r,r", [anchor], dtype=tl.int32, is_pure=False, pack=1)
    elif SMEM <= 8192:
        base = tl.inline_asm_elementwise(".shared .align 16 .b8 kv_hist_smem[8192]; mov.u32 $0, kv_hist_smem;",
                                         "=r,r", [anchor], dtype=tl.int32, is_pure=False, pack=1)
    elif SMEM <= 16384:
        base = tl.inline_asm_elementwise(".shared .align 16 .b8 kv_hist_smem[16384]; mov.u32 $0, kv_hist_smem;",
                                         "=r,r", [anchor], dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.static_assert(SMEM <= 32768, "shared bins: 32 KB at most")
        base = tl.inline_asm_elementwise(".shared .align 16 .b8 kv_hist_smem[32768]; mov.u32 $0, kv_hist_smem;",
                                         "=r,r", [anchor], dtype=tl.int32, is_pure=False, pack=1)
    return base


@triton.jit
def hist_shared(""" + _SIGNATURE + """
    BLOCK: tl.constexpr, NB: tl.constexpr, SMEM: tl.constexpr, OFF32: tl.constexpr,
):
    \"\"\"A shared-memory histogram per program (PTX red.shared: one shared atomic per counted element,
    u32 counts or f32/f64 weight sums) over its tiles, then one global atomic per non-empty bin. CUDA
    only (the interpreter cannot run PTX). Every asm statement has side effects (is_pure=False), so
    none is moved across the barriers or dropped.\"\"\"
    pid = tl.program_id(0).to(tl.int64)
    lo, hi = _range(range_ptr, n_parts, lo_bits, hi_bits, KIND, DATA_RANGE, RPB)
    base = _smem_base(tl.program_id(0), SMEM)
    nb = tl.arange(0, NB)
    if WEIGHTED and ACC == 2:
        slot = base + nb * 8
        tl.inline_asm_elementwise("st.shared.u64 [$1], 0; mov.u32 $0, 0;", "=r,r", [slot], dtype=tl.int32,
                                  is_pure=False, pack=1)
    else:
        slot = base + nb * 4
        tl.inline_asm_elementwise("st.shared.u32 [$1], 0; mov.u32 $0, 0;", "=r,r", [slot], dtype=tl.int32,
                                  is_pure=False, pack=1)
    tl.debug_barrier()
    for s in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
        if OFF32:  # n + BLOCK < 2**31: 32-bit offsets and bounds checks (one instruction each, not two)
            offs = s.to(tl.int32) + tl.arange(0, BLOCK)
        else:
            offs = s + tl.arange(0, BLOCK).to(tl.int64)
        b, valid, w = _bins(x_ptr, w_ptr, offs, offs < n, lo, hi, nbins, wrap_a, wrap_b, OP, KIND, WRAP,
                            WEIGHTED, ACC)
        ok = valid.to(tl.int32)
        if WEIGHTED:
            if ACC == 1:
                tl.inline_asm_elementwise(
                    "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p red.shared.add.f32 [$1], $3; mov.u32 $0, 0; }",
                    "=r,r,r,f", [base + b * 4, ok, w], dtype=tl.int32, is_pure=False, pack=1)
            else:
                tl.inline_asm_elementwise(
                    "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p red.shared.add.f64 [$1], $3; mov.u32 $0, 0; }",
                    "=r,r,r,d", [base + b * 8, ok, w], dtype=tl.int32, is_pure=False, pack=1)
        else:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p red.shared.add.u32 [$1], 1; mov.u32 $0, 0; }",
                "=r,r,r", [base + b * 4, ok], dtype=tl.int32, is_pure=False, pack=1)
    tl.debug_barrier()
    if WEIGHTED:
        if ACC == 1:
            c = tl.inline_asm_elementwise("ld.shared.f32 $0, [$1];", "=f,r", [slot], dtype=tl.float32,
                                          is_pure=False, pack=1)
        else:
            c = tl.inline_asm_elementwise("ld.shared.f64 $0, [$1];", "=d,r", [slot], dtype=tl.float64,
                                          is_pure=False, pack=1)
    else:
        c = tl.inline_asm_elementwise("ld.shared.u32 $0, [$1];", "=r,r", [slot], dtype=tl.int32,
                                      is_pure=False, pack=1)
    tl.atomic_add(out_ptr + nb, c.to(out_ptr.dtype.element_ty), mask=(nb < nbins) & (c != 0), sem="relaxed")
"""

TEMPLATES: dict[str, tuple[str, str]] = {
    # template name -> (main kernel name, source)
    "private": ("hist_private", PRIVATE_SOURCE),
    "atomic": ("hist_atomic", ATOMIC_SOURCE),
    "twopass": ("hist_reduce", TWOPASS_SOURCE),
    "shared": ("hist_shared", SHARED_SOURCE),
}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _bits(v: float, dtype: torch.dtype) -> int:
    """The bit pattern of ``v`` rounded to ``dtype`` (fp32 or fp64), as a signed int (what the kernel
    bitcasts back: scalar float kernel arguments would be rounded to fp32)."""
    if dtype == torch.float64:
        return struct.unpack("<q", struct.pack("<d", float(v)))[0]
    return struct.unpack("<i", struct.pack("<f", float(v)))[0]


def _round(v: float, dtype: torch.dtype) -> float:
    return float(torch.tensor(float(v), dtype=torch.float64).to(dtype).item())


def _device(spec: OpSpec) -> torch.device:
    return torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)


def _acc_dtype(spec: OpSpec) -> torch.dtype:
    """The output dtype (what is accumulated)."""
    if spec.op == HISTC:
        return spec.args[0].torch_dtype  # type: ignore[union-attr]
    w = spec.args[1]
    if w is None:
        return torch.int64
    return torch.float32 if w.torch_dtype == torch.float32 else torch.float64


def _acc_code(dt: torch.dtype) -> int:
    return {torch.int64: 0, torch.float32: 1, torch.float64: 2}[dt]


def _shared_bytes(spec: OpSpec) -> int:
    """The ``shared`` template's bin array: the bins rounded up to a power of two, u32 counts or f32
    sums (4 bytes) or f64 sums (8)."""
    nb = _next_pow2(HistogramFamily.nbins(spec))
    weighted = spec.op == BINCOUNT and spec.args[1] is not None
    return nb * (8 if weighted and _acc_dtype(spec) == torch.float64 else 4)


def _int_const(n: Any) -> int | None:
    if isinstance(n, bool) or not isinstance(n, int):
        return None
    return int(n)


# ------------------------------------------------------------------------------------------------
# The family
# ------------------------------------------------------------------------------------------------


class HistogramFamily(OpFamily):
    """histc (static bins) and bincount whose size the graph proves is ``minlength``."""

    name = "histogram"
    ops = _OPS
    lowered_ops = ()  # both are Inductor fallbacks (make_fallback) on every device
    template_version = "1"

    # -- specs -----------------------------------------------------------------------------------
    @classmethod
    def histc_spec(cls, x: torch.Tensor, bins: int, min: float = 0.0, max: float = 0.0) -> OpSpec:
        """The spec of ``torch.histc`` on a concrete (or fake) tensor; ValueError if not served."""
        if x.dtype not in _HISTC_DTYPES:
            raise ValueError(f"histc of {x.dtype} not served (float32/float64 only)")
        if not _all_int(x):
            raise ValueError("symbolic sizes/strides (dynamic shapes not served yet)")
        if not x.is_contiguous():
            raise ValueError("input is not contiguous")
        if x.numel() > _MAX_N:
            raise ValueError("more than 2**31 - 1 elements")
        bins = _int_const(bins)
        if bins is None or not 0 < bins < 2**24:
            raise ValueError(f"bins={bins!r} not served (1 .. 2**24 - 1)")
        mn, mx = float(min), float(max)
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise ValueError("min/max not finite")
        data_range = mn == mx
        if not data_range and not _round(mn, x.dtype) < _round(mx, x.dtype):
            raise ValueError(f"min={mn} and max={mx} do not give an increasing {x.dtype} range")
        return OpSpec(
            family=cls.name, op=HISTC, args=(TensorSig.of(x),),
            consts=(("bins", bins), ("data_range", data_range), ("max", mx), ("min", mn)),
            device=DeviceSig.of(x.device), versions=software_versions(cls.template_version),
        )

    @classmethod
    def bincount_spec(cls, y: torch.Tensor, weights: torch.Tensor | None, minlength: int, wrap: str = "none",
                      wrap_a: int = 0, wrap_b: int = 0) -> OpSpec:
        """The spec of ``torch.bincount(wrap(y), weights, minlength)`` whose output size is ``minlength``:
        ``wrap`` is "mod" (``remainder(y, wrap_a)``, ``0 < wrap_a <= minlength``) or "clamp"
        (``clamp(y, wrap_a, wrap_b)``, ``0 <= wrap_a <= wrap_b < minlength``). "none" is served only for
        direct calls (tests), never from a graph, where the size would be data-dependent."""
        if y.dtype not in _INT_DTYPES:
            raise ValueError(f"bincount of {y.dtype} not served (uint8/int8/16/32/64)")
        if y.dim() != 1 or not _all_int(y) or not y.is_contiguous():
            raise ValueError("input is not a contiguous 1-D tensor with static size")
        if y.numel() > _MAX_N:
            raise ValueError("more than 2**31 - 1 elements")
        minlength = _int_const(minlength)
        if minlength is None or not 0 < minlength < 2**31:
            raise ValueError(f"minlength={minlength!r}: the output size is not static")
        if wrap not in _WRAPS:
            raise ValueError(f"unknown wrap {wrap!r}")
        info = torch.iinfo(y.dtype)
        if wrap != "none" and not all(info.min <= v <= info.max for v in (wrap_a, wrap_b)):
            raise ValueError(f"wrap bounds ({wrap_a}, {wrap_b}) do not fit {y.dtype} (torch wraps them: no bound)")
        if wrap == "mod" and not 0 < wrap_a <= minlength:
            raise ValueError(f"remainder by {wrap_a} does not bound the input below minlength={minlength}")
        if wrap == "clamp" and not 0 <= wrap_a <= wrap_b < minlength:
            raise ValueError(f"clamp to [{wrap_a}, {wrap_b}] does not bound the input to [0, {minlength})")
        if weights is not None:
            if y.numel() == 0 and wrap == "none":
                # ATen returns int64 zeros here, not the weights' dtype (FakeTensors say the weights' dtype,
                # which the wrapped forms, the only ones from a graph, follow): leave the direct call to ATen
                raise ValueError("empty weighted bincount (ATen's result is int64 zeros)")
            if weights.dtype not in _WEIGHT_DTYPES:
                raise ValueError(f"weights of {weights.dtype} not served")
            if tuple(weights.shape) != tuple(y.shape) or not _all_int(weights) or not weights.is_contiguous():
                raise ValueError("weights are not a contiguous tensor of the input's length")
        return OpSpec(
            family=cls.name, op=BINCOUNT, args=(TensorSig.of(y), None if weights is None else TensorSig.of(weights)),
            consts=(("minlength", minlength), ("wrap", wrap), ("wrap_a", int(wrap_a)), ("wrap_b", int(wrap_b))),
            device=DeviceSig.of(y.device), versions=software_versions(cls.template_version),
        )

    @staticmethod
    def nbins(spec: OpSpec) -> int:
        return int(spec.const("bins") if spec.op == HISTC else spec.const("minlength"))

    @staticmethod
    def numel(spec: OpSpec) -> int:
        return spec.args[0].numel()  # type: ignore[union-attr]

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op not in _OPS:
            return Skip(f"{op or node!s} is not histc/bincount")
        kw = node_kwargs(node)
        if kw is None:
            return Skip(f"could not normalize {op} arguments")
        x_n = kw["self"] if "self" in kw else kw.get("input")
        x = meta_val(x_n)
        if not isinstance(x, torch.Tensor):
            return Skip("input has no FakeTensor metadata")
        try:
            if op == HISTC:
                spec = self.histc_spec(x, kw.get("bins", 100), kw.get("min", 0), kw.get("max", 0))
                return Match(spec=spec, inputs=[x_n], result_users={0: [node]})
            w_n = kw.get("weights")
            w = meta_val(w_n)
            if w_n is not None and not isinstance(w, torch.Tensor):
                return Skip("weights have no FakeTensor metadata")
            minlength = kw.get("minlength", 0)
            wrap = self._wrap_of(x_n, minlength)
            if isinstance(wrap, Skip):
                return wrap
            kind, y_n, a, b = wrap
            y = meta_val(y_n)
            if not isinstance(y, torch.Tensor):
                return Skip("the wrapped input has no FakeTensor metadata")
            spec = self.bincount_spec(y, w, minlength, kind, a, b)
        except ValueError as e:
            return Skip(str(e))
        return Match(spec=spec, inputs=[y_n, w_n], result_users={0: [node]})

    @staticmethod
    def _wrap_of(x_n: Any, minlength: Any) -> tuple[str, Any, int, int] | Skip:
        """How the graph bounds bincount's input below ``minlength`` (so the output size is static)."""
        why = ("bincount's output size is data-dependent (max(input) + 1 when above minlength): served only "
               "when the input is remainder(y, k <= minlength) or clamp(y, 0 <= lo, hi < minlength) in the graph")
        m = _int_const(minlength)
        if m is None or m <= 0 or getattr(x_n, "op", None) != "call_function":
            return Skip(why)

        def arg(n: Any, i: int, name: str) -> Any:
            return n.args[i] if len(n.args) > i else n.kwargs.get(name)

        t = str(x_n.target)
        if t == "aten.remainder.Scalar":
            k = _int_const(arg(x_n, 1, "other"))
            if k is not None and 0 < k <= m:
                return "mod", arg(x_n, 0, "self"), k, 0
            return Skip(why)
        # clamp(y, lo, hi) reaches the post-grad graph as clamp_max(clamp_min(y, lo), hi) (either order)
        lo = hi = None
        y_n = x_n
        for _ in range(2):
            tt = str(getattr(y_n, "target", ""))
            if getattr(y_n, "op", None) != "call_function" or tt not in (
                    "aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default"):
                break
            if tt == "aten.clamp.default":
                lo2, hi2 = arg(y_n, 1, "min"), arg(y_n, 2, "max")
            elif tt == "aten.clamp_min.default":
                lo2, hi2 = arg(y_n, 1, "min"), None
            else:
                lo2, hi2 = None, arg(y_n, 1, "max")
            if lo2 is not None:
                lo2 = _int_const(lo2)
                if lo2 is None:
                    return Skip(why)
                lo = lo2 if lo is None else max(lo, lo2)
            if hi2 is not None:
                hi2 = _int_const(hi2)
                if hi2 is None:
                    return Skip(why)
                hi = hi2 if hi is None else min(hi, hi2)
            y_n = arg(y_n, 0, "self")
        if y_n is not x_n and lo is not None and hi is not None and 0 <= lo <= hi < m:
            return "clamp", y_n, lo, hi
        return Skip(why)

    # -- semantics -------------------------------------------------------------------------------
    def input_error(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> str | None:
        """Values the kernels were not verified for, so the runtime runs eager (which raises or sizes its
        output differently): a data-range histc over NaN/inf data (eager raises: the range is not finite),
        an unwrapped bincount with a negative value (eager raises) or one >= minlength (eager's output is
        longer than the static one)."""
        x = inputs[0]
        assert x is not None
        if x.numel() == 0:
            return None
        if spec.op == HISTC:
            if spec.const("data_range") and not bool(x.isfinite().all()):
                return "histc data range over NaN/inf data"
            return None
        if spec.const("wrap") == "none" and (int(x.min()) < 0 or int(x.max()) >= int(spec.const("minlength"))):
            return "bincount input negative or not below minlength"
        return None

    @staticmethod
    def _wrapped(spec: OpSpec, y: torch.Tensor) -> torch.Tensor:
        wrap = spec.const("wrap")
        if wrap == "mod":
            return torch.remainder(y, int(spec.const("wrap_a")))
        if wrap == "clamp":
            return torch.clamp(y, int(spec.const("wrap_a")), int(spec.const("wrap_b")))
        return y

    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        if spec.op == HISTC:
            (x,) = inputs
            assert x is not None
            return [torch.histc(x, int(spec.const("bins")), spec.const("min"), spec.const("max"))]
        y, w = inputs
        assert y is not None
        m = int(spec.const("minlength"))
        if spec.const("wrap") == "none":
            return [torch.bincount(y, w, m)]
        # The wrap bounds the values below minlength, so this is bincount's result with its size static:
        # torch.bincount's own size is an unbacked SymInt under FakeTensors, and the runtime's fake (and
        # the custom op's output) comes from here.
        b = self._wrapped(spec, y).long()
        dt = _acc_dtype(spec)
        vals = torch.ones_like(b) if w is None else w.to(dt)
        return [torch.zeros(m, dtype=dt, device=y.device).index_add_(0, b, vals)]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """Bins as ATen computes them (histc: in the input dtype, IEEE division), counts and weight sums
        in float64 / int64 with torch ops on CPU."""
        dev = next(t.device for t in inputs if t is not None)
        if spec.op == HISTC:
            (x,) = inputs
            assert x is not None
            xc = x.detach().cpu().reshape(-1)
            dt, n = xc.dtype, int(spec.const("bins"))
            if spec.const("data_range") and xc.numel():
                lo, hi = xc.min().item(), xc.max().item()
            else:
                lo, hi = _round(spec.const("min"), dt), _round(spec.const("max"), dt)
            if lo == hi:
                lo, hi = lo - 1, hi + 1
            lo_t, hi_t = torch.tensor(lo, dtype=dt), torch.tensor(hi, dtype=dt)
            keep = (xc >= lo_t) & (xc <= hi_t)
            v = xc[keep]
            b = ((v - lo_t) * torch.tensor(float(n), dtype=dt) / (hi_t - lo_t)).long()
            b = torch.where(b == n, n - 1, b)
            cnt = torch.zeros(n, dtype=torch.float64).index_add_(0, b, torch.ones(b.numel(), dtype=torch.float64))
            return [cnt.to(dt).to(dev)]
        y, w = inputs
        assert y is not None
        m = int(spec.const("minlength"))
        b = self._wrapped(spec, y.detach().cpu().long())
        if w is None:
            out = torch.zeros(m, dtype=torch.int64).index_add_(0, b, torch.ones_like(b))
        else:
            out = torch.zeros(m, dtype=torch.float64).index_add_(0, b, w.detach().cpu().double())
            out = out.to(_acc_dtype(spec))
        return [out.to(dev)]

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        return {torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-10)}.get(dtype, (0.0, 0.0))

    # -- inputs ----------------------------------------------------------------------------------
    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """histc: values over [min - 25%, max + 25%] with a tenth exactly on bin edges and min/max (seeds
        1 mod 3 add NaN and infinities unless the range is the data's); bincount: integers over twice
        the wrap's range, negatives included, float weights."""
        gen = torch.Generator().manual_seed(int(seed))
        dev = _device(spec)
        x_sig = spec.args[0]
        assert x_sig is not None
        n = x_sig.numel()
        if spec.op == HISTC:
            return [self._histc_values(spec, n, gen, nan=int(seed) % 3 == 1).reshape(x_sig.shape).to(dev)]
        wrap, m = spec.const("wrap"), int(spec.const("minlength"))
        span = int(spec.const("wrap_a")) if wrap == "mod" else m
        lo = -span if wrap != "none" else 0
        hi = 2 * span if wrap != "none" else m
        dt = x_sig.torch_dtype
        if dt != torch.int64:
            info = torch.iinfo(dt)
            lo, hi = max(lo, info.min), min(hi, info.max + 1)
        y = torch.randint(lo, hi, (n,), generator=gen).to(dt)
        w_sig = spec.args[1]
        w = None if w_sig is None else (torch.randn(n, generator=gen) * 2).to(w_sig.torch_dtype).to(dev)
        return [y.to(dev), w]

    def _histc_values(self, spec: OpSpec, n: int, gen: torch.Generator, nan: bool) -> torch.Tensor:
        dt = spec.args[0].torch_dtype  # type: ignore[union-attr]
        bins = int(spec.const("bins"))
        lo, hi = float(spec.const("min")), float(spec.const("max"))
        if spec.const("data_range"):
            lo, hi = -3.0, 5.0
        width = hi - lo
        x = (torch.rand(n, generator=gen, dtype=torch.float64) * 1.5 - 0.25) * width + lo
        edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
        on_edge = torch.rand(n, generator=gen) < 0.1
        x = torch.where(on_edge, edges[torch.randint(0, bins + 1, (n,), generator=gen)], x).to(dt)
        if nan and not spec.const("data_range") and n:
            r = torch.rand(n, generator=gen)
            x = torch.where(r < 0.01, torch.full_like(x, math.nan), x)
            x = torch.where((r >= 0.01) & (r < 0.02), torch.full_like(x, math.inf), x)
        return x

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        """histc: every bin edge and both bounds exactly (x == max in the last bin), values just outside,
        out of range, NaN/inf, empty, one element, all equal, 2-D input, long inputs crossing every
        block; data range: one value (range widened by 1), negative data. bincount: empty, every bin
        once, all in one bin, the wrap's extremes (negatives, dtype extremes), long inputs."""
        if spec.op == HISTC:
            return self._histc_edges(spec)
        return self._bincount_edges(spec)

    def _histc_edges(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        dt = spec.args[0].torch_dtype  # type: ignore[union-attr]
        dev = _device(spec)
        bins, mn, mx = int(spec.const("bins")), spec.const("min"), spec.const("max")
        gen = torch.Generator().manual_seed(99)

        def case(name: str, x: torch.Tensor) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
            x = x.to(dt).to(dev)
            return name, self.histc_spec(x, bins, mn, mx), [x]

        long_n = 4 * max(self._max_block(spec), 64) + 7
        if spec.const("data_range"):
            cases = [
                case("one_value", torch.full((9,), 2.5)),
                case("one_element", torch.tensor([-7.0])),
                case("negative_data", -1 - torch.rand(33, generator=gen, dtype=torch.float64) * 10),
                case("data_edges", torch.linspace(-2.0, 6.0, bins + 1, dtype=torch.float64).repeat(2)),
                case("empty", torch.empty(0)),
                case("two_d", torch.randn(5, 7, generator=gen, dtype=torch.float64)),
                case("long", torch.randn(long_n, generator=gen, dtype=torch.float64)),
            ]
            return cases
        lo, hi = _round(mn, dt), _round(mx, dt)
        edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64).to(dt)
        nxt_up = torch.nextafter(edges, torch.full_like(edges, math.inf))
        nxt_dn = torch.nextafter(edges, torch.full_like(edges, -math.inf))
        w = hi - lo
        cases = [
            case("bin_edges", torch.cat([edges, edges.flip(0)])),
            case("around_edges", torch.cat([nxt_up, nxt_dn])),
            case("bounds", torch.tensor([lo, hi, hi, lo, hi], dtype=torch.float64)),
            case("outside", torch.tensor([lo - w, hi + w, lo - 1e-3 * w, hi + 1e-3 * w, (lo + hi) / 2],
                                         dtype=torch.float64)),
            case("nan_inf", torch.tensor([math.nan, lo, math.inf, -math.inf, math.nan, hi], dtype=torch.float64)),
            case("empty", torch.empty(0)),
            case("one_element", torch.tensor([(3 * lo + hi) / 4])),
            case("all_equal", torch.full((17,), hi)),
            case("two_d", self._histc_values(spec, 35, gen, nan=True).reshape(5, 7)),
            case("long", self._histc_values(spec, long_n, gen, nan=True)),
        ]
        return cases

    def _bincount_edges(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        y_sig, w_sig = spec.args
        assert y_sig is not None
        dt = y_sig.torch_dtype
        dev = _device(spec)
        m = int(spec.const("minlength"))
        wrap, a, b = spec.const("wrap"), int(spec.const("wrap_a")), int(spec.const("wrap_b"))
        gen = torch.Generator().manual_seed(7)
        info = torch.iinfo(dt)

        def case(name: str, y: torch.Tensor) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
            y = y.clamp(info.min, info.max).to(dt).to(dev)
            w = None if w_sig is None else (torch.rand(y.numel(), generator=gen) - 0.25).to(w_sig.torch_dtype).to(dev)
            cs = self.bincount_spec(y, w, m, wrap, a, b)
            return name, cs, [y, w]

        top = a if wrap == "mod" else (b + 1 if wrap == "clamp" else m)
        long_n = 4 * max(self._max_block(spec), 64) + 7
        cases = [
            case("empty", torch.empty(0, dtype=torch.int64)),
            case("every_bin", torch.arange(top).flip(0)),
            case("one_bin", torch.full((23,), top - 1)),
            case("one_element", torch.tensor([0])),
            case("long", torch.randint(0, max(top, 1), (long_n,), generator=gen)),
        ]
        if wrap != "none":
            ext = [info.min, info.max, -1, 0, 1, -a - 1, a, a + 1, 2 * m, -2 * m, info.min + 1, info.max - 1]
            cases.append(case("wrap_extremes", torch.tensor(ext, dtype=torch.int64)))
        return cases

    # -- numerics / cost -------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        """Input (and weights) read once, the bins written once."""
        total = sum(a.numel() * _elem_size(a.dtype) for a in spec.args if a is not None)
        return total + self.nbins(spec) * torch.empty((), dtype=_acc_dtype(spec)).element_size()

    # -- kernels ---------------------------------------------------------------------------------
    def _max_block(self, spec: OpSpec) -> int:
        return max((int(c.cfg.get("BLOCK", 0)) for c in self.candidates(spec)), default=0)

    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """Privatized histograms first where the bins fit in registers (tl.histogram, or one-hot sums
        for weights and few bins), over a grid of tile sizes x programs (persistent: 1-8 per SM, or 0:
        one tile per program) x warps; the two-pass deterministic plan; global atomics (the only choice
        for many bins). Interpreter specs get a few programs with big tiles."""
        n, nbins = max(self.numel(spec), 1), self.nbins(spec)
        nb = _next_pow2(nbins)
        weighted = spec.op == BINCOUNT and spec.args[1] is not None
        gpu = spec.device.type == "cuda"
        out: list[tuple[str, dict[str, Any]]] = []

        def fits(block: int, onehot: bool) -> bool:
            if onehot or weighted:
                return nb <= _MAX_PRIVATE_BINS_W and block * nb <= _ONE_HOT
            return nb <= _MAX_PRIVATE_BINS

        def private(block: int, progs: int, nw: int = 4, onehot: bool = False) -> None:
            if fits(block, onehot):
                out.append(("private", dict(BLOCK=block, PROGRAMS=progs, ONEHOT=onehot, num_warps=nw, num_stages=1)))

        def twopass(block: int, progs: int, rb: int, pchunk: int, nw: int = 4, onehot: bool = False,
                    glob: bool = False) -> None:
            if (glob or fits(block, onehot)) and progs * nb <= 2**24:
                cfg = dict(BLOCK=block, PROGRAMS=progs, RB=min(rb, nb), PCHUNK=pchunk, ONEHOT=onehot,
                           num_warps=nw, num_stages=1)
                out.append(("twopass", dict(cfg, GLOBAL=True) if glob else cfg))

        def atomic(block: int, nw: int = 4) -> None:
            out.append(("atomic", dict(BLOCK=block, num_warps=nw, num_stages=1)))

        def shared(block: int, progs: int, nw: int) -> None:
            if _shared_bytes(spec) <= _MAX_SHARED_BYTES:
                out.append(("shared", dict(BLOCK=block, PROGRAMS=progs, num_warps=nw, num_stages=1)))

        oh = max(16, min(1024, _ONE_HOT // nb))  # the one-hot tile's BLOCK
        if gpu:
            sms = _H100_SMS
            # shared-memory bins first: one shared atomic per element, whatever the bins (up to 32 KB)
            # (H100, 16M values, 1000 bins: 16 warps over big tiles ran best, 33 us for histc vs 44-71 at 4-8)
            for blk, progs, nw in ((8192, 2 * sms, 16), (4096, 4 * sms, 16), (16384, 2 * sms, 16), (8192, 4 * sms, 16),
                                   (8192, sms, 32), (16384, sms, 32), (2048, 4 * sms, 8), (4096, 2 * sms, 8),
                                   (1024, 8 * sms, 4), (2048, 8 * sms, 8)):
                shared(blk, progs, nw)
            if not fits(oh, True) and not fits(4096, False):
                atomic(1024)
            if weighted:
                for blk, progs, nw in ((oh, 2 * sms, 4), (oh, 4 * sms, 4), (oh, 8 * sms, 4), (oh, 0, 4),
                                       (max(16, oh // 2), 4 * sms, 4), (oh, 2 * sms, 8)):
                    private(blk, progs, nw)
            else:
                private(4096, 2 * sms, 8)
                if nb <= 64:
                    private(oh, 4 * sms, 4, onehot=True)
                for blk in (1024, 2048, 4096, 8192):
                    for progs in (sms, 2 * sms, 4 * sms, 8 * sms, 0):
                        for nw in (4, 8, 16):
                            if blk // (32 * nw) >= 2:  # >= 2 elements per thread
                                private(blk, progs, nw)
                if nb <= 64:
                    for progs in (2 * sms, 8 * sms, 0):
                        private(oh, progs, 4, onehot=True)
                        private(max(16, oh // 2), progs, 4, onehot=True)
            tb = oh if weighted else 4096
            # per-program partials by atomics (no tl.histogram, whose per-element cost grows with the bins)
            for blk, progs, nw in ((1024, 2 * sms, 4), (2048, 4 * sms, 8), (1024, 8 * sms, 4)):
                twopass(blk, progs, 256, 32, nw, glob=True)
            twopass(tb, 2 * sms, 256, 32, 8)
            twopass(tb if weighted else 2048, 4 * sms, 128, 32, 4)
            twopass(tb, sms, 256, 64, 8)
            for blk, nw in ((1024, 4), (2048, 8), (512, 4), (4096, 8), (256, 2)):
                atomic(blk, nw)
        else:
            blk = min(_next_pow2(n), 1024)
            progs = min(4, _cdiv(n, blk))
            private(min(blk, oh) if weighted else blk, progs)
            atomic(blk)
            twopass(min(blk, oh) if weighted else blk, progs, 256, 4)
            twopass(blk, progs, 256, 4, glob=True)
            private(max(16, (min(blk, oh) if weighted else blk) // 4), 0)
            if not weighted and nb <= 64:
                private(min(blk, oh), progs, onehot=True)
        return unique_candidates(out, lambda t: TEMPLATES[t][1])

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "histogram")
        check_pow2(cfg, lambda k: k in ("BLOCK", "RB", "PCHUNK"))
        n, nbins = self.numel(spec), self.nbins(spec)
        nb = _next_pow2(nbins)
        acc = _acc_dtype(spec)
        acc_name = str(acc).replace("torch.", "")
        weighted = spec.op == BINCOUNT and spec.args[1] is not None
        nw, ns = int(cfg.get("num_warps", 4)), int(cfg.get("num_stages", 1))
        block = int(cfg["BLOCK"])
        onehot = bool(cfg.get("ONEHOT", False))
        glob = template == "twopass" and bool(cfg.get("GLOBAL", False))
        if glob and onehot:
            raise ValueError("GLOBAL partials take one atomic per element: no one-hot tile")
        if template == "shared":
            if spec.device.type != "cuda":
                raise ValueError("shared-memory bins are PTX: CUDA only (the interpreter cannot run them)")
            if _shared_bytes(spec) > _MAX_SHARED_BYTES:
                raise ValueError(f"{nbins} bins need {_shared_bytes(spec)} bytes of shared memory (> {_MAX_SHARED_BYTES})")
            if block < 64 * nw:
                # fewer elements than 2 per thread: Triton may replicate a tile across threads, and each
                # copy would add its element again
                raise ValueError(f"BLOCK={block} < 2 elements per thread of {nw} warps")
        elif template != "atomic" and not glob:
            if nb > (_MAX_PRIVATE_BINS_W if weighted or onehot else _MAX_PRIVATE_BINS):
                raise ValueError(f"{nbins} bins do not fit a private histogram")
            if (weighted or onehot) and block * nb > _ONE_HOT:
                raise ValueError(f"one-hot tile BLOCK={block} x {nb} bins exceeds {_ONE_HOT} (registers)")
        tiles = max(_cdiv(n, block), 1)
        progs = int(cfg.get("PROGRAMS", 0)) or tiles
        progs = max(1, min(progs, tiles))
        data_range = spec.op == HISTC and bool(spec.const("data_range"))
        x_dt = spec.args[0].torch_dtype  # type: ignore[union-attr]
        r_progs = max(1, min(128 if spec.device.type == "cuda" else 2, _cdiv(n, 1024)))
        workspace: list[OutBuf] = []
        pre: list[Step] = []
        if data_range:
            workspace.append(OutBuf((2 * r_progs,), str(x_dt).replace("torch.", "")))
            pre.append(Step("hist_minmax", (r_progs,), (
                ("x_ptr", In(0)), ("range_ptr", Ws(0)), ("n", n), ("n_parts", r_progs),
                ("KIND", 1 if x_dt == torch.float64 else 0), ("BLOCK", 1024)), 4, 1))
        if spec.op == HISTC:
            lo_bits, hi_bits = _bits(spec.const("min"), x_dt), _bits(spec.const("max"), x_dt)
            wrap, wa, wb = 0, 0, 0
        else:
            lo_bits = hi_bits = 0
            wrap, wa, wb = _WRAPS[spec.const("wrap")], int(spec.const("wrap_a")), int(spec.const("wrap_b"))
        common: list[tuple[str, Any]] = [
            ("x_ptr", In(0)), ("w_ptr", In(1) if weighted else In(0)), ("out_ptr", Out(0)),
            ("range_ptr", Ws(0) if data_range else In(0)),
            ("n", n), ("nbins", nbins), ("wrap_a", wa), ("wrap_b", wb), ("lo_bits", lo_bits), ("hi_bits", hi_bits),
            ("n_parts", r_progs if data_range else 1),
            ("OP", 0 if spec.op == HISTC else 1), ("KIND", 1 if x_dt == torch.float64 else 0), ("WRAP", wrap),
            ("WEIGHTED", weighted), ("ACC", _acc_code(acc)), ("DATA_RANGE", data_range),
            ("RPB", _next_pow2(r_progs) if data_range else 1),
        ]
        fill: float | int | None = 0
        if template == "private":
            main = Step("hist_private", (progs,), tuple(common + [("BLOCK", block), ("NB", nb), ("ONEHOT", onehot)]),
                        nw, ns)
        elif template == "shared":
            main = Step("hist_shared", (progs,), tuple(common + [
                ("BLOCK", block), ("NB", nb), ("SMEM", _shared_bytes(spec)), ("OFF32", n + block < 2**31)]), nw, ns)
        elif template == "atomic":
            main = Step("hist_atomic", (tiles,), tuple(common + [("BLOCK", block)]), nw, ns)
        else:
            ws_k = len(workspace)
            part_dt = acc_name if weighted else "int32"
            workspace.append(OutBuf((progs * nb,), part_dt, fill=0 if glob else None))
            pre.append(Step("hist_partial", (progs,), tuple(common + [("part_ptr", Ws(ws_k)), ("BLOCK", block),
                                                                      ("NB", nb), ("ONEHOT", onehot)]
                                                            + ([("GLOBAL", True)] if glob else [])), nw, ns))
            rb = min(int(cfg["RB"]), nb)
            main = Step("hist_reduce", (_cdiv(nbins, rb),), (
                ("part_ptr", Ws(ws_k)), ("out_ptr", Out(0)), ("nbins", nbins), ("n_progs", progs),
                ("NB", nb), ("RB", rb), ("PCHUNK", int(cfg["PCHUNK"])), ("ACC", _acc_code(acc))), 4, 1)
            fill = None
        return CallPlan(
            kernel=main.kernel, grid=main.grid, args=main.args,
            outputs=(OutBuf((nbins,), acc_name, fill=fill),),
            num_warps=main.num_warps, num_stages=main.num_stages, pre=tuple(pre), workspace=tuple(workspace),
        )


register(HistogramFamily())
