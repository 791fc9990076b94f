"""The scan family: ``aten.cumsum.default``, ``aten.cumprod.default`` and ``aten.logcumsumexp.default``.

What reaches Inductor's post-grad graph (torch 2.13, checked by compiling small functions on CPU):
the ops arrive as themselves; the common variants are built around a plain scan node, which is what
this family serves -- a *reverse* scan is ``prims.rev -> cumsum -> prims.rev`` (the flips are left to
Inductor; serving the region as one reverse scan needs multi-node matching, not done here), an
*exclusive* scan ``cumsum(x) - x`` is a cumsum followed by a pointwise ``sub``, a *masked* scan is
``cumsum(x * mask)`` (the ``mul`` feeds the cumsum), and ``x.half().cumsum(1, dtype=torch.float32)``
keeps the ``dtype`` kwarg (``convert_element_type`` before it).

How Inductor treats them (``torch/_inductor/lowering.py``): a single-output ``ir.Scan`` on devices with
``BackendFeature.SCAN`` (Triton devices), with a split scan (``SplitScan``) for long rows over few lanes;
``fallback_cumsum`` etc. (ATen) everywhere else. A 0-D input or a scan of length <= 1 is a copy. All
three are in ``lowered_ops``: on CUDA the search's baseline is Inductor's own kernel.

ATen semantics pinned (tests compare against eager): the input is first converted to the output dtype
(``dtype`` kwarg; integer and bool inputs of cumsum/cumprod default to int64), then scanned. Float
outputs accumulate here in fp32 (fp16/bf16/fp32) or fp64; integer outputs in int64 (wrap-around
arithmetic is a ring, so any order gives eager's bits, and a narrower output truncates the same way).
logcumsumexp combines with Inductor's own ``log_add_exp`` rule (``max + log(1 + exp(min - max))``,
``-inf`` with ``-inf`` stays ``-inf``, ``+inf`` sticks, NaN propagates); floats only.

Canonical problem: the ``[O, L, I]`` lanes of :mod:`.cumextrema` (``P = O * I`` scans of length ``L``).

Templates (every plan writes every output element once):

* ``tile``: one program per ``BLOCK_P`` lanes walks L in ``[BLOCK_P, BLOCK_L]`` tiles carrying each
  lane's running total: short rows (several per program), strided scan dims.
* ``rows``: one program per lane, ``BLOCK_L`` chunks in series with a scalar carry: long rows, many
  lanes (the ``cumsum [1024, 16384]`` case).
* ``cols``: a scan over a non-last dim (``I > 1``): program (``BLOCK_P`` inner indices, outer index)
  walks ``[BLOCK_L, BLOCK_P]`` tiles with the lanes on the contiguous axis (coalesced rows).
* ``chunked`` (two launches, decoupled reduce-then-scan): ``(chunk, lane block)`` programs reduce
  their chunk into a workspace (``pre`` step); then ``(chunk, lane block)`` programs fold the totals of
  the chunks before theirs (``BLOCK_C`` at a time) and scan their chunk seeded with it. Spreads one
  long row over many programs (few lanes); input read twice.

Knobs beyond block shapes: ``LSE_FAST`` (logcumsumexp; every template): a chunk is computed against its
lane's max ``m`` and the carry ``c`` as ``top + log(exp(c - top) + cumsum(exp(v - m)) * exp(m - top))``
(``top = max(c, m)``) -- one exp and one log per element instead of per combine step; a chunk with NaN,
+inf, a spread over 64 below its max, or after a NaN/+inf carry takes the pairwise combine.
``REV`` (chunked): the reduce pass walks (lane block, chunk) backwards so the scan pass finds its first
chunks in L2; ``BLOCK_C`` up to 1024 folds every earlier chunk total in one load.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip, Step, Ws
from .cumextrema import Geom, geometry
from .util import all_int as _all_int, cdiv as _cdiv, elem_size as _elem_size, next_pow2 as _next_pow2, template_of, check_pow2
from .util import meta_val, node_kwargs, unique_candidates
from .util import norm_dim, strided as _strided

log = logging.getLogger("torch_kevolve")

CUMSUM = "aten.cumsum.default"
CUMPROD = "aten.cumprod.default"
LOGCUMSUMEXP = "aten.logcumsumexp.default"
_OPS = (CUMSUM, CUMPROD, LOGCUMSUMEXP)
_OP_CODE = {CUMSUM: 0, CUMPROD: 1, LOGCUMSUMEXP: 2}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_IN_DTYPES = _FLOATS + _INTS + (torch.bool,)
# KIND constexpr: the accumulation dtype (0 fp32, 1 fp64, 3 int64), from the output dtype
_ACC_DTYPE = {0: "float32", 1: "float64", 3: "int64"}
_MAX_TILE = 4096  # 32-bit accumulators in one register tile; 64-bit: half
_MAX_GRID_X = 2**31 - 1
_MAX_GRID_Y = 65535
_H100_SMS = 132

# ------------------------------------------------------------------------------------------------
# Kernel sources: each template a complete module (its hash depends only on what it runs).
# ------------------------------------------------------------------------------------------------

_HEADER = '''import triton
import triton.language as tl
'''

_COMMON = '''

@triton.jit
def _lse(a, b):
    \"\"\"log(exp(a) + exp(b)) as Inductor's logcumsumexp combines: -inf with -inf stays -inf, +inf
    sticks, NaN propagates (a NaN ``b`` becomes the max, a NaN ``a`` the min).\"\"\"
    gt = a > b
    mx = tl.where(gt, a, b)
    mn = tl.where(gt, b, a)
    ok = (mn != mx) | (tl.abs(mn) != float("inf"))
    return tl.where(ok, mx + tl.log(1.0 + tl.exp(mn - mx)), a)


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _full(shape, val: tl.constexpr, KIND: tl.constexpr):
    if KIND == 0:
        t = tl.full(shape, val, tl.float32)
    elif KIND == 1:
        t = tl.full(shape, val, tl.float64)
    else:
        t = tl.full(shape, val, tl.int64)
    return t


@triton.jit
def _ident(shape, OP: tl.constexpr, KIND: tl.constexpr):
    \"\"\"The combine's identity: 0 (sum), 1 (prod), -inf (logaddexp).\"\"\"
    if OP == 0:
        t = _full(shape, 0, KIND)
    elif OP == 1:
        t = _full(shape, 1, KIND)
    else:
        t = _full(shape, float("-inf"), KIND)
    return t


@triton.jit
def _load(x_ptr, y_ptr, off, m, OP: tl.constexpr, KIND: tl.constexpr):
    \"\"\"Elements converted to the output dtype (eager's ``dtype=`` conversion), then widened to the
    accumulator; masked elements are the identity.\"\"\"
    x = tl.load(x_ptr + off, mask=m, other=0).to(y_ptr.dtype.element_ty)
    if KIND == 0:
        v = x.to(tl.float32)
    elif KIND == 1:
        v = x.to(tl.float64)
    else:
        v = x.to(tl.int64)
    return tl.where(m, v, _ident(m.shape, OP, KIND))


@triton.jit
def _scan(v, AXIS: tl.constexpr, OP: tl.constexpr):
    if OP == 0:
        s = tl.cumsum(v, AXIS)
    elif OP == 1:
        s = tl.cumprod(v, AXIS)
    else:
        s = tl.associative_scan(v, AXIS, _lse)
    return s


@triton.jit
def _total(v, AXIS: tl.constexpr, OP: tl.constexpr):
    if OP == 0:
        t = tl.sum(v, AXIS)
    elif OP == 1:
        t = tl.reduce(v, AXIS, _mul)
    else:
        t = tl.reduce(v, AXIS, _lse)
    return t


@triton.jit
def _comb(a, b, OP: tl.constexpr):
    \"\"\"Carry ``a`` (everything before) combined with ``b``.\"\"\"
    if OP == 0:
        r = a + b
    elif OP == 1:
        r = a * b
    else:
        r = _lse(a, b)
    return r


@triton.jit
def _bc(t, AXIS: tl.constexpr, EXPAND: tl.constexpr):
    """A per-lane value broadcast against its chunk (rows: the carry is already [1])."""
    if EXPAND:
        r = tl.expand_dims(t, AXIS)
    else:
        r = t
    return r


@triton.jit
def _lse_guard(v, AXIS: tl.constexpr, EXPAND: tl.constexpr):
    """(lane max, number of reasons the fast logcumsumexp may not serve this chunk). It serves a chunk
    without NaN or +inf whose finite values lie within 64 of their lane's max: exp(v - max) then
    neither underflows nor loses a prefix to it (-inf elements are exact zeros)."""
    m = tl.max(v, AXIS)
    lo = tl.min(tl.where(v == float("-inf"), float("inf"), v), AXIS)
    bad = ((v != v) | (v == float("inf"))).to(tl.int32)
    wide = (m - lo > 64.0).to(tl.int32)
    if EXPAND:
        nbad = tl.sum(tl.sum(bad, 1), 0) + tl.sum(wide, 0)
    else:  # one lane: m is a scalar
        nbad = tl.sum(bad, 0) + wide
    return m, nbad


@triton.jit
def _pairwise(carry, v, AXIS: tl.constexpr, EXPAND: tl.constexpr, OP: tl.constexpr):
    """(the chunk's inclusive scan seeded with ``carry``, the new carry) by the op's own combine."""
    return _comb(_bc(carry, AXIS, EXPAND), _scan(v, AXIS, OP), OP), _comb(carry, _total(v, AXIS, OP), OP)


@triton.jit
def _step(carry, v, AXIS: tl.constexpr, EXPAND: tl.constexpr, OP: tl.constexpr, LSE_FAST: tl.constexpr):
    """One chunk: (its inclusive scan seeded with ``carry``, the new carry).

    logcumsumexp with LSE_FAST: against the lane's chunk max ``m`` and ``top = max(carry, m)``,
    ``out = top + log(exp(carry - top) + cumsum(exp(v - m)) * exp(m - top))`` -- one exp and one log
    per element instead of an exp and a log per combine step. Chunks the guard refuses (NaN, +inf,
    a spread over 64, a NaN or +inf carry) take the pairwise combine, as every other op does."""
    if OP == 2 and LSE_FAST:
        m, nbad = _lse_guard(v, AXIS, EXPAND)
        nbad += tl.sum(((carry != carry) | (carry == float("inf"))).to(tl.int32), 0)
        if nbad == 0:
            ms = tl.where(m == float("-inf"), 0.0, m)
            top = tl.maximum(carry, ms)
            a = tl.exp(carry - top)
            b = tl.exp(ms - top)
            e = tl.exp(v - _bc(ms, AXIS, EXPAND))
            s = _bc(top, AXIS, EXPAND) + tl.log(_bc(a, AXIS, EXPAND) + tl.cumsum(e, AXIS) * _bc(b, AXIS, EXPAND))
            new = top + tl.log(a + tl.sum(e, AXIS) * b)
        else:
            s, new = _pairwise(carry, v, AXIS, EXPAND, OP)
    else:
        s, new = _pairwise(carry, v, AXIS, EXPAND, OP)
    return s, new


@triton.jit
def _chunk_total(v, AXIS: tl.constexpr, EXPAND: tl.constexpr, OP: tl.constexpr, LSE_FAST: tl.constexpr):
    """A chunk's total per lane; logcumsumexp with LSE_FAST as ``_step`` (m + log(sum(exp(v - m))))."""
    if OP == 2 and LSE_FAST:
        m, nbad = _lse_guard(v, AXIS, EXPAND)
        if nbad == 0:
            ms = tl.where(m == float("-inf"), 0.0, m)
            t = ms + tl.log(tl.sum(tl.exp(v - _bc(ms, AXIS, EXPAND)), AXIS))
        else:
            t = _total(v, AXIS, OP)
    else:
        t = _total(v, AXIS, OP)
    return t


@triton.jit
def _lanes(p, inner, n_len, stride_o, stride_i):
    \"\"\"Lane p -> (input offset, output offset) of its first element.\"\"\"
    o = p // inner
    i = p - o * inner
    return o * stride_o + i * stride_i, o * n_len * inner + i
'''

_SIGNATURE = '''
    x_ptr, y_ptr,
    n_lanes, n_len, inner, stride_o, stride_l, stride_i,
    OP: tl.constexpr, KIND: tl.constexpr, LSE_FAST: tl.constexpr,'''

TILE_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def scan_tile(''' + _SIGNATURE + '''
    BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr,
):
    \"\"\"One program = BLOCK_P lanes, walking the scan in [BLOCK_P, BLOCK_L] tiles with a carry per lane.\"\"\"
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pm = p < n_lanes
    x_row, out_row = _lanes(p, inner, n_len, stride_o, stride_i)
    carry = _ident([BLOCK_P], OP, KIND)
    ll = tl.arange(0, BLOCK_L)
    for l0 in range(0, n_len, BLOCK_L):
        l = (l0 + ll).to(tl.int64)
        m = pm[:, None] & (l < n_len)[None, :]
        v = _load(x_ptr, y_ptr, x_row[:, None] + l[None, :] * stride_l, m, OP, KIND)
        s, carry = _step(carry, v, 1, True, OP, LSE_FAST)
        tl.store(y_ptr + out_row[:, None] + l[None, :] * inner, s.to(y_ptr.dtype.element_ty), mask=m)
'''

ROWS_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def scan_rows(''' + _SIGNATURE + '''
    BLOCK_L: tl.constexpr,
):
    \"\"\"One program = one lane, BLOCK_L chunks in series with a scalar carry.\"\"\"
    p = tl.program_id(0).to(tl.int64)
    x_row, out_row = _lanes(p, inner, n_len, stride_o, stride_i)
    carry = _ident([1], OP, KIND)
    ll = tl.arange(0, BLOCK_L)
    for l0 in range(0, n_len, BLOCK_L):
        l = (l0 + ll).to(tl.int64)
        m = l < n_len
        v = _load(x_ptr, y_ptr, x_row + l * stride_l, m, OP, KIND)
        s, carry = _step(carry, v, 0, False, OP, LSE_FAST)
        tl.store(y_ptr + out_row + l * inner, s.to(y_ptr.dtype.element_ty), mask=m)
'''

COLS_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def scan_cols(''' + _SIGNATURE + '''
    BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr,
):
    \"\"\"Program (block of BLOCK_P inner indices, outer index): [BLOCK_L, BLOCK_P] tiles with the lanes on
    the fast axis, so a scan over a non-last dim reads and writes whole contiguous rows.\"\"\"
    i = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    o = tl.program_id(1).to(tl.int64)
    im = i < inner
    x_base = o * stride_o + i * stride_i
    y_base = o * n_len * inner + i
    carry = _ident([BLOCK_P], OP, KIND)
    ll = tl.arange(0, BLOCK_L)
    for l0 in range(0, n_len, BLOCK_L):
        l = (l0 + ll).to(tl.int64)
        m = (l < n_len)[:, None] & im[None, :]
        v = _load(x_ptr, y_ptr, x_base[None, :] + l[:, None] * stride_l, m, OP, KIND)
        s, carry = _step(carry, v, 0, True, OP, LSE_FAST)
        tl.store(y_ptr + y_base[None, :] + l[:, None] * inner, s.to(y_ptr.dtype.element_ty), mask=m)
'''

CHUNKED_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def scan_chunk_reduce(''' + _SIGNATURE + '''
    w_ptr, n_chunks, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, REV: tl.constexpr,
):
    \"\"\"Program (chunk c, lane block): each lane's chunk-c total -> workspace [lane, c]. REV walks the
    (lane block, chunk) order backwards, so the chunks read last -- still in L2 -- are the ones the
    scan step (forward order) reads first.\"\"\"
    c = tl.program_id(0)
    pb = tl.program_id(1)
    if REV:
        c = n_chunks - 1 - c
        pb = tl.num_programs(1) - 1 - pb
    p = pb.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pm = p < n_lanes
    x_row, _ = _lanes(p, inner, n_len, stride_o, stride_i)
    l = (c * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    m = pm[:, None] & (l < n_len)[None, :]
    v = _load(x_ptr, y_ptr, x_row[:, None] + l[None, :] * stride_l, m, OP, KIND)
    tl.store(w_ptr + p * n_chunks + c, _chunk_total(v, 1, True, OP, LSE_FAST), mask=pm)


@triton.jit
def scan_chunk_scan(''' + _SIGNATURE + '''
    w_ptr, n_chunks, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    \"\"\"Program (chunk c, lane block): fold the totals of chunks < c, scan chunk c seeded with it.\"\"\"
    c = tl.program_id(0)
    p = tl.program_id(1).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pm = p < n_lanes
    x_row, out_row = _lanes(p, inner, n_len, stride_o, stride_i)
    carry = _ident([BLOCK_P], OP, KIND)
    cc = tl.arange(0, BLOCK_C)
    for c0 in range(0, c, BLOCK_C):
        k = c0 + cc
        km = pm[:, None] & (k < c)[None, :]
        w = tl.load(w_ptr + p[:, None] * n_chunks + k[None, :], mask=km, other=0)
        w = tl.where(km, w, _ident(km.shape, OP, KIND))
        carry = _comb(carry, _total(w, 1, OP), OP)
    l = (c * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    m = pm[:, None] & (l < n_len)[None, :]
    v = _load(x_ptr, y_ptr, x_row[:, None] + l[None, :] * stride_l, m, OP, KIND)
    s, _ = _step(carry, v, 1, True, OP, LSE_FAST)
    tl.store(y_ptr + out_row[:, None] + l[None, :] * inner, s.to(y_ptr.dtype.element_ty), mask=m)
'''

TEMPLATES: dict[str, tuple[str, str]] = {
    # template name -> (main kernel name, source)
    "tile": ("scan_tile", TILE_SOURCE),
    "rows": ("scan_rows", ROWS_SOURCE),
    "cols": ("scan_cols", COLS_SOURCE),
    "chunked": ("scan_chunk_scan", CHUNKED_SOURCE),
}


def _kind(out_dtype: torch.dtype) -> int:
    if out_dtype == torch.float64:
        return 1
    return 0 if out_dtype.is_floating_point else 3


def _device(spec: OpSpec) -> torch.device:
    return torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)


def out_dtype_of(op: str, x_dtype: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    """Eager's result dtype: ``dtype`` if given, int64 for integer/bool cumsum/cumprod, else the input's."""
    if dtype is not None:
        return dtype
    if op != LOGCUMSUMEXP and (x_dtype == torch.bool or not x_dtype.is_floating_point):
        return torch.int64
    return x_dtype


class ScanFamily(OpFamily):
    """cumsum / cumprod / logcumsumexp along any dim."""

    name = "scan"
    ops = _OPS
    # Inductor lowers all three (one-output scans, split for long rows) on Triton devices.
    lowered_ops = _OPS
    template_version = "1"

    # -- specs -----------------------------------------------------------------------------------
    @classmethod
    def spec_for(cls, op: str, x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> OpSpec:
        """The spec of a call on a concrete (or fake) tensor; ValueError if not served."""
        if op not in _OPS:
            raise ValueError(f"{op} is not cumsum/cumprod/logcumsumexp")
        if x.dtype not in _IN_DTYPES:
            raise ValueError(f"input dtype {x.dtype} not served")
        out = out_dtype_of(op, x.dtype, dtype)
        if out not in _FLOATS + _INTS:
            raise ValueError(f"output dtype {out} not served")
        if op == LOGCUMSUMEXP and not out.is_floating_point:
            raise ValueError(f"logcumsumexp of {out} (eager has no integer kernel)")
        if not _all_int(x):
            raise ValueError("symbolic sizes/strides (dynamic shapes not served yet)")
        dim = norm_dim(dim, x.dim())
        sig = TensorSig.of(x)
        geometry(sig, dim)  # raises when the layout does not collapse
        return OpSpec(
            family=cls.name,
            op=op,
            args=(sig,),
            consts=(("dim", dim), ("out_dtype", str(out).removeprefix("torch."))),
            device=DeviceSig.of(x.device),
            versions=software_versions(cls.template_version),
        )

    @staticmethod
    def geom(spec: OpSpec) -> Geom:
        x = spec.args[0]
        assert x is not None
        return geometry(x, int(spec.const("dim")))

    @staticmethod
    def out_dtype(spec: OpSpec) -> torch.dtype:
        return getattr(torch, str(spec.const("out_dtype")))

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op not in _OPS:
            return Skip(f"{op or node!s} is not a cumsum/cumprod/logcumsumexp")
        kw = node_kwargs(node)
        if kw is None:
            return Skip(f"could not normalize {op} arguments")
        x_n = kw["self"] if "self" in kw else kw.get("input")
        x, out = meta_val(x_n), meta_val(node)
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
            return Skip("input or result has no FakeTensor metadata")
        try:
            spec = self.spec_for(op, x, kw.get("dim"), kw.get("dtype"))
        except ValueError as e:
            return Skip(str(e))
        if not _all_int(out) or tuple(out.shape) != tuple(x.shape) or out.dtype != self.out_dtype(spec) \
                or not out.is_contiguous():
            return Skip(f"result ({out.dtype}, strides {tuple(out.stride())}) is not a contiguous "
                        f"{self.out_dtype(spec)} tensor of the input's shape")
        return Match(spec=spec, inputs=[x_n], result_users={0: [node]})

    def inductor_fallback_reason(self, node: Any) -> str | None:
        """ATen on devices without Triton scans; on CUDA a one-output scan is always lowered (split
        when Inductor wants), so never a fallback there."""
        kw = node_kwargs(node) or {}
        x = meta_val(kw.get("self", kw.get("input")))
        if not isinstance(x, torch.Tensor):
            return None
        if x.device.type not in ("cuda", "xpu"):
            return f"Inductor's scan lowering needs a Triton device: calls ATen on {x.device.type}"
        return None

    # -- semantics -------------------------------------------------------------------------------
    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        (x,) = inputs
        assert x is not None
        dim = int(spec.const("dim"))
        if spec.op == LOGCUMSUMEXP:
            return [torch.ops.aten.logcumsumexp.default(x.to(self.out_dtype(spec)), dim)]
        fn = torch.ops.aten.cumsum.default if spec.op == CUMSUM else torch.ops.aten.cumprod.default
        return [fn(x, dim, dtype=self.out_dtype(spec))]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """The scan on CPU in float64 (float outputs) or int64 (integer outputs: wrap-around exact),
        after eager's conversion to the output dtype."""
        (x,) = inputs
        assert x is not None
        od = self.out_dtype(spec)
        dim = int(spec.const("dim"))
        xw = x.cpu().to(od)
        xw = xw.double() if od.is_floating_point else xw.long()
        if spec.op == CUMSUM:
            r = torch.cumsum(xw, dim)
        elif spec.op == CUMPROD:
            r = torch.cumprod(xw, dim)
        else:
            r = torch.logcumsumexp(xw, dim)
        return [r.to(od).contiguous().to(x.device)]

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        """Integer outputs are exact; float sums are reassociated (fp32 accumulation everywhere)."""
        return {
            torch.float16: (1e-2, 1e-2),
            torch.bfloat16: (2e-2, 2e-2),
            torch.float32: (1e-4, 1e-4),
            torch.float64: (1e-9, 1e-9),
        }.get(dtype, (0.0, 0.0))

    # -- inputs ----------------------------------------------------------------------------------
    def _values(self, op: str, shape: Sequence[int], dtype: torch.dtype, gen: torch.Generator,
                dim: int = -1) -> torch.Tensor:
        """Values a reassociated scan gets (nearly) exactly: cumsum on a 1/8 grid in [-1, 1) (exact
        in fp32 up to 2**20); cumprod of +-1 with (2, 0.5) / (0.5, 2) pairs (powers of two that never
        drift: no overflow, exact) and a few zeros; logcumsumexp normal * 3. Ints small."""
        shape = tuple(shape)
        if shape and op == CUMPROD and dtype.is_floating_point:  # the pairs run along the scan dim
            d = dim % len(shape)
            moved = shape[:d] + shape[d + 1:] + (shape[d],)
            return self._values_last(op, moved, dtype, gen).movedim(-1, d).contiguous()
        return self._values_last(op, shape, dtype, gen)

    @staticmethod
    def _values_last(op: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
        if dtype == torch.bool:
            return torch.rand(shape, generator=gen) < 0.4
        n = math.prod(shape)
        if op == CUMPROD and dtype.is_floating_point:
            flat = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
            if n >= 2:
                starts = torch.nonzero(torch.rand(n - 1, generator=gen) < 0.15).flatten()
                starts = starts[torch.cat([torch.tensor([True]), starts[1:] - starts[:-1] >= 2])] if starts.numel() else starts
                up = torch.rand(starts.numel(), generator=gen) < 0.5
                flat[starts] = flat[starts].abs() * torch.where(up, 2.0, 0.5).double()
                flat[starts + 1] = flat[starts + 1].abs() * torch.where(up, 0.5, 2.0).double()
            flat = torch.where(torch.rand(n, generator=gen) < 0.002, 0.0, flat)
            return flat.reshape(shape).to(dtype)
        if not dtype.is_floating_point:
            if op == CUMPROD:  # wraps around in int64 (a ring: any order gives eager's bits)
                vals = torch.tensor([-1, 1, 1, -1, 2, 3, 1, 0 if dtype == torch.uint8 else -2])
                return vals[torch.randint(0, 8, shape, generator=gen)].to(dtype)
            lo = 0 if dtype == torch.uint8 else -20
            return torch.randint(lo, lo + 40, shape, generator=gen).to(dtype)
        if op == LOGCUMSUMEXP:
            return (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
        return (torch.randint(-8, 8, shape, generator=gen).double() / 8).to(dtype)

    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        gen = torch.Generator().manual_seed(int(seed))
        (x_sig,) = spec.args
        assert x_sig is not None
        vals = self._values(spec.op, x_sig.shape, x_sig.torch_dtype, gen, int(spec.const("dim")))
        return [_strided(x_sig, vals, _device(spec))]

    def _case(self, spec: OpSpec, name: str, x: torch.Tensor, dim: int) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
        (x_sig,) = spec.args
        assert x_sig is not None
        dt = x_sig.torch_dtype
        if x.dtype != dt:
            if dt == torch.bool:
                x = x != 0
            elif not dt.is_floating_point:
                info = torch.iinfo(dt)
                x = x.nan_to_num(0.0).clamp(info.min, info.max)
        x = x.to(dt).to(_device(spec))
        return name, self.spec_for(spec.op, x, dim, self.out_dtype(spec)), [x]

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        """One element, 0-D, empty scans and lanes, long rows crossing every block size, dim 0 on a
        transposed tensor, middle dim, padded rows; ints: dtype extremes (wrap-around); floats: NaN,
        +-inf (and both: NaN from inf - inf / inf * 0), -inf rows for logcumsumexp."""
        (x_sig,) = spec.args
        assert x_sig is not None
        dt = x_sig.torch_dtype
        g = self.geom(spec)
        gen = torch.Generator().manual_seed(4321)
        nan, inf = math.nan, math.inf
        f = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        val = lambda shape, d=-1: self._values(spec.op, shape, dt, gen, d)  # noqa: E731
        long_n = min(4 * max(_next_pow2(g.length), 16) + 1, 3001)
        cases = [
            self._case(spec, "one_element", f(3.0), 0),
            self._case(spec, "zero_d", torch.tensor(2.0, dtype=torch.float64), 0),
            self._case(spec, "empty_scan", torch.empty(4, 0, dtype=torch.float64), 1),
            self._case(spec, "no_lanes", torch.empty(0, 5, dtype=torch.float64), 1),
            self._case(spec, "length_two", val((3, 2)), 1),
            self._case(spec, "long_rows", val((2, long_n)), 1),
            self._case(spec, "dim0_strided", val((7, 13), 1).T, 0),  # [13, 7], strides (1, 13)
            self._case(spec, "middle_dim", val((3, 17, 5), 1), 1),
            self._case(spec, "padded_rows", val((5, 20))[:, 3:14], 1),
        ]
        if not dt.is_floating_point and dt != torch.bool:
            info = torch.iinfo(dt)
            ext = torch.tensor([info.max, info.max, 1, info.min, info.min, -1, 3], dtype=dt)
            cases.append(self._case(spec, "dtype_extremes", ext.expand(2, -1).contiguous(), 1))
        if dt.is_floating_point:
            cases += [
                self._case(spec, "nan_middle", f(1, 0.5, nan, 2, -1).expand(2, -1).contiguous(), 1),
                self._case(spec, "nan_first_last", torch.stack([f(nan, 1, 2, 0.5), f(0.5, 1, 2, nan)]), 1),
                self._case(spec, "infinities", torch.stack([f(1, inf, 2, -1, 0.5), f(-inf, 1, -inf, 2, 0.5),
                                                            f(2, inf, 0.5, -inf, 1)]), 1),
                self._case(spec, "zeros_and_inf", f(2, 0.0, -1, inf, 0.5), 0),
                self._case(spec, "all_neg_inf", torch.full((2, 6), -inf), 1),
            ]
        return cases

    # -- numerics / cost -------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        """The input read once, the output written once."""
        (x,) = spec.args
        assert x is not None
        n = x.numel()
        return n * _elem_size(x.dtype) + n * _elem_size(str(spec.const("out_dtype")))

    # -- kernels ---------------------------------------------------------------------------------
    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """~15-30 proposals. Default first: the chunked plan for long scans over too few lanes to fill
        the device (< 2 per SM), one program per lane for long scans, tiles of several lanes for short
        ones. Then block / warp / stage variants (the serial chunk loop of ``rows`` wants loads in
        flight: num_stages). Interpreter specs get small tiles."""
        g = self.geom(spec)
        p, n = max(g.lanes, 1), max(g.length, 1)
        npow = _next_pow2(n)
        gpu = spec.device.type == "cuda"
        kind = _kind(self.out_dtype(spec))
        cap = (_MAX_TILE if kind == 0 else _MAX_TILE // 2) if gpu else 256
        long_l = 2048 if gpu else 64
        lb = min(long_l, cap)
        out: list[tuple[str, dict[str, Any]]] = []

        def warps(tile: int) -> int:
            return max(1, min(16 if gpu else 8, _next_pow2(max(tile // 256, 1))))

        lse = spec.op == LOGCUMSUMEXP

        def add(t: str, tile: int, nw: int | None, ns: int, **cfg: Any) -> None:
            if tile <= cap:
                if lse:
                    cfg.setdefault("LSE_FAST", 1)
                out.append((t, dict(cfg, num_warps=nw or warps(tile), num_stages=ns)))

        def tile(bp: int, bl: int, nw: int | None = None, ns: int = 1) -> None:
            add("tile", bp * bl, nw, ns, BLOCK_P=bp, BLOCK_L=max(bl, 16))

        def rows(bl: int, nw: int | None = None, ns: int = 1) -> None:
            add("rows", bl, nw, ns, BLOCK_L=max(bl, 16))

        def chunked(bp: int, bl: int, bc: int = 64 if gpu else 8, nw: int | None = None, rev: int = 1) -> None:
            if _cdiv(p, bp) <= _MAX_GRID_Y:
                add("chunked", bp * max(bl, 16), nw, 1, BLOCK_P=bp, BLOCK_L=max(bl, 16), BLOCK_C=bc, REV=rev)

        bl0 = min(npow, 1024 if gpu else 64)
        bp0 = max(1, min(_next_pow2(p), cap // max(bl0, 16), 64))
        few = p < 2 * _H100_SMS

        def cols(bp: int, bl: int, nw: int | None = None, ns: int = 1) -> None:
            if g.outer <= _MAX_GRID_Y:
                add("cols", bp * bl, nw, ns, BLOCK_P=bp, BLOCK_L=bl)

        if g.inner > 1:  # scan over a non-last dim: lanes contiguous, whole rows per tile first
            ip = _next_pow2(g.inner)
            bpc = max(16, min(ip, 256 if gpu else 32))
            blc = max(4, min(npow, cap // bpc, 16 if gpu else 8))
            cols(bpc, blc)
            for bp, bl in ((bpc // 2, blc * 2), (bpc, blc * 2), (bpc * 2, max(blc // 2, 4)), (min(bpc, 64), 8)):
                if 16 <= bp <= max(2 * ip, 16):
                    cols(bp, bl)
            cols(bpc, blc, ns=2)
        if n > long_l and few:
            chunked(1, lb)
            chunked(1, lb, rev=0)
            chunked(1, 2 * lb, nw=8)
            if gpu:  # the scan step folds every earlier chunk total in one load (not 64 at a time)
                fold = lambda bl: min(max(_next_pow2(_cdiv(n, bl)), 16), 1024)  # noqa: E731
                chunked(1, lb, bc=fold(lb))
                chunked(1, 2 * lb, nw=8, bc=fold(2 * lb))
        if n > long_l:
            rows(lb)
            for bl, nw, ns in ((lb, None, 2), (lb // 2, None, 2), (lb, 16 if gpu else 8, 1), (lb // 2, None, 1),
                               (2 * lb, None, 1), (2 * lb, 8, 1), (2 * lb, 8, 2), (lb, 4, 1), (lb, 4, 3), (lb // 2, 4, 3)):
                rows(bl, nw, ns)
        tile(bp0, bl0)
        for bl in (bl0 // 2, bl0 * 2, bl0 // 4):
            if 16 <= bl <= 2 * npow:
                tile(max(1, min(_next_pow2(p), cap // bl, 64)), bl)
        for bp in (bp0 * 2, bp0 // 2):
            if 1 <= bp <= 2 * _next_pow2(p):
                tile(bp, bl0)
        tile(bp0, bl0, ns=2)
        if n <= long_l:
            rows(min(npow, lb))
        if n > long_l // 8:
            for bp, bl in ((1, lb), (1, lb // 2), (2, lb // 2), (4, lb // 4)):
                if bl < 2 * npow:
                    chunked(bp, bl)
        if lse:  # the pairwise combine everywhere, for the search to compare
            out += [(t, dict(cfg, LSE_FAST=0)) for t, cfg in out[:3]]
        return unique_candidates(out, lambda t: TEMPLATES[t][1])

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        (x_sig,) = spec.args
        assert x_sig is not None
        g = self.geom(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "scan")
        check_pow2(cfg)
        od = str(spec.const("out_dtype"))
        kind = _kind(self.out_dtype(spec))
        outputs = (OutBuf(tuple(x_sig.shape), od),)
        nw, ns = int(cfg.get("num_warps", 4)), int(cfg.get("num_stages", 1))
        empty = g.lanes * g.length == 0
        common: list[tuple[str, Any]] = [
            ("x_ptr", In(0)), ("y_ptr", Out(0)),
            ("n_lanes", g.lanes), ("n_len", g.length), ("inner", max(g.inner, 1)),
            ("stride_o", g.stride_o), ("stride_l", g.stride_l), ("stride_i", g.stride_i),
            ("OP", _OP_CODE[spec.op]), ("KIND", kind),
            ("LSE_FAST", int(spec.op == LOGCUMSUMEXP and bool(cfg.get("LSE_FAST", 1)))),
        ]
        pre: tuple[Step, ...] = ()
        workspace: tuple[OutBuf, ...] = ()
        if template == "tile":
            bp, bl = int(cfg["BLOCK_P"]), int(cfg["BLOCK_L"])
            main = Step("scan_tile", (0 if empty else _cdiv(g.lanes, bp),),
                        tuple(common + [("BLOCK_P", bp), ("BLOCK_L", bl)]), nw, ns)
        elif template == "cols":
            bp, bl = int(cfg["BLOCK_P"]), int(cfg["BLOCK_L"])
            if g.outer > _MAX_GRID_Y:
                raise ValueError(f"cols needs outer={g.outer} <= {_MAX_GRID_Y} programs along grid y")
            main = Step("scan_cols", (0, 0) if empty else (_cdiv(max(g.inner, 1), bp), g.outer),
                        tuple(common + [("BLOCK_P", bp), ("BLOCK_L", bl)]), nw, ns)
        elif template == "rows":
            main = Step("scan_rows", (0 if empty else g.lanes,), tuple(common + [("BLOCK_L", int(cfg["BLOCK_L"]))]), nw, ns)
        else:
            bp, bl, bc = int(cfg["BLOCK_P"]), int(cfg["BLOCK_L"]), int(cfg["BLOCK_C"])
            chunks = _cdiv(g.length, bl)
            lane_blocks = _cdiv(g.lanes, bp)
            if lane_blocks > _MAX_GRID_Y:
                raise ValueError(f"BLOCK_P={bp} needs {lane_blocks} lane blocks (> {_MAX_GRID_Y})")
            grid = (0, 0) if empty else (chunks, lane_blocks)
            workspace = (OutBuf((max(g.lanes * chunks, 1),), _ACC_DTYPE[kind]),)
            ws_args = [("w_ptr", Ws(0)), ("n_chunks", chunks)]
            pre = (Step("scan_chunk_reduce", grid,
                        tuple(common + ws_args + [("BLOCK_P", bp), ("BLOCK_L", bl), ("REV", int(cfg.get("REV", 1)))]),
                        nw, ns),)
            main = Step("scan_chunk_scan", grid,
                        tuple(common + ws_args + [("BLOCK_P", bp), ("BLOCK_L", bl), ("BLOCK_C", bc)]), nw, ns)
        if main.grid and main.grid[0] > _MAX_GRID_X:
            raise ValueError(f"grid {main.grid} exceeds the launch limit")
        return CallPlan(kernel=main.kernel, grid=main.grid, args=main.args, outputs=outputs,
                        num_warps=main.num_warps, num_stages=main.num_stages, pre=pre, workspace=workspace)


register(ScanFamily())
