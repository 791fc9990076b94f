"""The cumextrema family: ``aten.cummax.default`` and ``aten.cummin.default`` (values and indices).

What reaches Inductor's post-grad graph (torch 2.13, checked by compiling small functions):
``torch.cummax(x, d)`` / ``torch.cummin`` / ``x.cummax(d)`` arrive as themselves, followed by ``getitem``
nodes for the outputs that are used: ``torch.cummax(x, 0).values`` leaves only ``getitem(_, 0)`` (the
indices getitem is dead code and gone). So a node may need values, indices or both: the spec records
which (``values`` / ``indices`` constants) and the plan has exactly those outputs, in that order.

How Inductor treats them (``torch/_inductor/lowering.py``, ``ir.Scan.create``): a scan over (value,
index) pairs with the ``argmax``/``argmin`` combine (ties to the later index) on devices with
``BackendFeature.SCAN`` and ``TUPLE_REDUCTION`` (Triton devices); a 0-D input or a scan of length <= 1
is a copy. Inductor falls back to ATen (``fallback_cummax``) on every other device (CPU), and on CUDA
whenever its heuristics want a *split* scan (``Scan.num_splits > 1``: long rows with few of them),
because its split scan takes one output only. Both ops are in ``lowered_ops``;
:meth:`CumExtremaFamily.inductor_fallback_reason` mirrors those rules (``inductor_scan_splits`` mirrors
``Reduction.num_splits`` and ``InductorChoices.reduction_split_factor`` for scans).

ATen semantics pinned here (tests compare against eager on CPU): walking the scan dim, the running
extremum is replaced when the new element is NaN, or when the running one is not NaN and
``new >= running`` (cummax; ``<=`` for cummin). So ties take the *later* index, ``-0.0`` and ``0.0``
tie (the value output keeps the sign of the later one), a NaN sticks (and a later NaN takes over the
index). Equivalently: the pair with the largest key, NaN above everything, ties to the larger index --
a commutative, associative combine, so any scan/reduction order (Triton's trees, carries across blocks
and programs) gives eager's answer bit for bit. Every dtype but complex works in eager; served:
float32/float16/bfloat16/float64, int8/16/32/64, uint8, bool. Outputs are contiguous (values in the
input dtype, indices int64); any input strides whose dims before and after the scan dim each collapse to
one strided dim. Static shapes; scans shorter than 2**31.

Canonical problem: ``[O, L, I]`` -- ``P = O * I`` independent *lanes*, each a scan of length ``L``; input
element (o, l, i) at ``o * stride_o + l * stride_l + i * stride_i``, output at ``(o * L + l) * I + i``.
Values are compared in fp32 for fp16/bf16 (exact), fp64, int32 (bool, uint8, int8..int32) or int64.

Templates (every plan writes every element of its outputs once):

* ``tile``: one program per ``BLOCK_P`` lanes walks L in ``[BLOCK_P, BLOCK_L]`` tiles:
  ``tl.associative_scan`` of (value, index) along the tile, combined with the lanes' running carry;
  the next carry is the scan's last column (``tl.gather``: a masked tail holds identities, which never
  win). Short rows (many lanes per program) and strided scan dims.
* ``rows``: one program per lane, 1-D ``BLOCK_L`` blocks with a scalar carry: long rows, many lanes.
* ``TWO_SCAN`` (tile, rows): two scans of one-op combines instead of the pair scan -- the running
  extremum (NaN absorbing; a tie returns the later operand, so the -0.0/0.0 sign is the later one's),
  then the index as the running max of the positions where the element equals the running extremum or
  is NaN (where the pair would have been replaced). Same answer bit for bit, fewer instructions.
* ``chunked`` (three launches, reduce-then-scan): long rows with too few lanes to fill the device (the
  case Inductor falls back on). ``(chunk, lane block)`` programs reduce their ``BLOCK_L`` chunk into a
  workspace; one program per lane block scans the chunk totals in place (``BLOCK_C`` at a time); then
  ``(chunk, lane block)`` programs rescan their chunk seeded with the previous chunk's running total.
  Input read twice, outputs written once.
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
from .util import meta_val, node_kwargs
from .util import strided as _strided
from .util import EXTREMUM_IDENT_SOURCE, NAN_ABSORB_SOURCE, RowGeom, norm_dim, split_at

log = logging.getLogger("torch_kevolve")

CUMMAX = "aten.cummax.default"
CUMMIN = "aten.cummin.default"
_OPS = (CUMMAX, CUMMIN)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16, torch.int32,
           torch.int64, torch.uint8, torch.bool)
# KIND constexpr: the dtype values are compared and carried in.
_KINDS = {torch.float32: 0, torch.float16: 0, torch.bfloat16: 0, torch.float64: 1, torch.int64: 3}  # else 2
_KIND_DTYPE = {0: "float32", 1: "float64", 2: "int32", 3: "int64"}
# (value, index) pairs of one register tile (32-bit values; half for 64-bit): 4096 fp64 pairs spilled
# on sm_90, 2048 int64 pairs used all 255 registers.
_MAX_TILE = 2048
_MAX_GRID_X = 2**31 - 1
_MAX_GRID_Y = 65535
_H100 = (132, 2048, 32, 9)  # SMs, threads per SM, warp, major: Inductor's split heuristic without a GPU

# ------------------------------------------------------------------------------------------------
# Kernel sources. Each template's source is a complete module; shared helpers are pasted into each
# so a template's text (and so its hash) depends only on what it runs.
# ------------------------------------------------------------------------------------------------

_HEADER = '''import triton
import triton.language as tl
'''

_COMMON = '''

@triton.jit
def _max_pair(av, ai, bv, bi):
    \"\"\"The pair with the larger value, NaN above everything, ties (NaN with NaN, -0.0 with 0.0) to the
    larger index: torch's sequential cummax rule, commutative and associative.\"\"\"
    a_nan = av != av
    b_nan = bv != bv
    tie = (bv == av) | (a_nan & b_nan)
    take = (bv > av) | (b_nan & ~a_nan) | (tie & (bi > ai))
    return tl.where(take, bv, av), tl.where(take, bi, ai)


@triton.jit
def _min_pair(av, ai, bv, bi):
    \"\"\"cummin's rule: the smaller value wins, but NaN still above everything (it sticks).\"\"\"
    a_nan = av != av
    b_nan = bv != bv
    tie = (bv == av) | (a_nan & b_nan)
    take = (bv < av) | (b_nan & ~a_nan) | (tie & (bi > ai))
    return tl.where(take, bv, av), tl.where(take, bi, ai)

''' + EXTREMUM_IDENT_SOURCE + '''

@triton.jit
def _widen(x, KIND: tl.constexpr):
    \"\"\"Loaded values in the dtype they are compared and carried in (exact).\"\"\"
    if KIND == 0:
        v = x.to(tl.float32)
    elif KIND == 1:
        v = x.to(tl.float64)
    elif KIND == 2:
        v = x.to(tl.int32)
    else:
        v = x.to(tl.int64)
    return v


@triton.jit
def _load(x_ptr, x_row, l, m, stride_l, MODE: tl.constexpr, KIND: tl.constexpr):
    \"\"\"(values, positions) of a tile; masked elements are (identity, -1).\"\"\"
    x = tl.load(x_ptr + x_row + l.to(tl.int64) * stride_l, mask=m, other=0)
    v = tl.where(m, _widen(x, KIND), _ident(m.shape, MODE, KIND))
    idx = tl.where(m, l, -1)
    return v, idx


@triton.jit
def _scan(v, idx, cv, ci, AXIS: tl.constexpr, MODE: tl.constexpr):
    \"\"\"Inclusive scan along AXIS seeded with the carry (cv, ci, broadcast along AXIS).\"\"\"
    if MODE == 0:
        sv, si = tl.associative_scan((v, idx), AXIS, _max_pair)
        sv, si = _max_pair(cv, ci, sv, si)
    else:
        sv, si = tl.associative_scan((v, idx), AXIS, _min_pair)
        sv, si = _min_pair(cv, ci, sv, si)
    return sv, si

''' + NAN_ABSORB_SOURCE + '''

@triton.jit
def _imax(a, b):
    return tl.maximum(a, b)


@triton.jit
def _scan_two(l, m, v, cv, ci, AXIS: tl.constexpr, MODE: tl.constexpr):
    """``_scan`` as two scans of one-op combines (``TWO_SCAN``) instead of one over (value, index)
    pairs: the running extremum (NaN absorbing; a tie returns the later operand, so -0.0 / 0.0 keep
    the later one's sign, as eager does), then the index as the running max of the positions where
    the pair was replaced -- where the element equals the running extremum (ties take the later
    index) or is NaN (a later NaN takes over)."""
    if MODE == 0:
        sv = _vmax(cv, tl.associative_scan(v, AXIS, _vmax))
    else:
        sv = _vmin(cv, tl.associative_scan(v, AXIS, _vmin))
    hit = m & ((v == sv) | (v != v))
    si = tl.maximum(ci, tl.associative_scan(tl.where(hit, l, -1), AXIS, _imax))
    return sv, si


@triton.jit
def _total(v, idx, AXIS: tl.constexpr, MODE: tl.constexpr):
    \"\"\"The winning pair along AXIS (what a scan would end with, in any reduction order).\"\"\"
    if MODE == 0:
        tv, ti = tl.reduce((v, idx), AXIS, _max_pair)
    else:
        tv, ti = tl.reduce((v, idx), AXIS, _min_pair)
    return tv, ti


@triton.jit
def _last(sv, si, last, AXIS: tl.constexpr):
    \"\"\"The scan's last column (``last`` = block - 1): the running total, also when the tile's tail is
    masked (identities never win), kept with a size-1 AXIS as the next tile's carry.\"\"\"
    return tl.gather(sv, last, AXIS), tl.gather(si, last, AXIS)


@triton.jit
def _store(v_ptr, i_ptr, off, sv, si, m, WRITE_V: tl.constexpr, WRITE_I: tl.constexpr):
    if WRITE_V:
        tl.store(v_ptr + off, sv.to(v_ptr.dtype.element_ty), mask=m)
    if WRITE_I:
        tl.store(i_ptr + off, si.to(tl.int64), mask=m)


@triton.jit
def _lanes(p, inner, n_len, stride_o, stride_i):
    \"\"\"Lane p -> (input offset, output offset) of its first element.\"\"\"
    o = p // inner
    i = p - o * inner
    return o * stride_o + i * stride_i, o * n_len * inner + i
'''

_SIGNATURE = '''
    x_ptr, v_ptr, i_ptr,
    n_lanes, n_len, inner, stride_o, stride_l, stride_i,
    MODE: tl.constexpr, KIND: tl.constexpr, WRITE_V: tl.constexpr, WRITE_I: tl.constexpr,'''

TILE_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def cum_tile(''' + _SIGNATURE + '''
    BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, TWO_SCAN: tl.constexpr,
):
    \"\"\"One program = BLOCK_P lanes, walking the scan in [BLOCK_P, BLOCK_L] tiles with a carry per lane.\"\"\"
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pm = p < n_lanes
    x_row, out_row = _lanes(p, inner, n_len, stride_o, stride_i)
    cv = _ident([BLOCK_P, 1], MODE, KIND)
    ci = tl.full([BLOCK_P, 1], -1, tl.int32)
    last = tl.full([BLOCK_P, 1], BLOCK_L - 1, tl.int32)
    ll = tl.arange(0, BLOCK_L)
    for l0 in range(0, n_len, BLOCK_L):
        l = l0 + ll
        m = pm[:, None] & (l < n_len)[None, :]
        v, idx = _load(x_ptr, x_row[:, None], l[None, :], m, stride_l, MODE, KIND)
        if TWO_SCAN:
            sv, si = _scan_two(l[None, :], m, v, cv, ci, 1, MODE)
        else:
            sv, si = _scan(v, idx, cv, ci, 1, MODE)
        cv, ci = _last(sv, si, last, 1)
        _store(v_ptr, i_ptr, out_row[:, None] + l.to(tl.int64)[None, :] * inner, sv, si, m, WRITE_V, WRITE_I)
'''

ROWS_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def cum_rows(''' + _SIGNATURE + '''
    BLOCK_L: tl.constexpr, TWO_SCAN: tl.constexpr,
):
    \"\"\"One program = one lane, walking the scan BLOCK_L at a time with a scalar carry.\"\"\"
    p = tl.program_id(0).to(tl.int64)
    x_row, out_row = _lanes(p, inner, n_len, stride_o, stride_i)
    cv = _ident([1], MODE, KIND)
    ci = tl.full([1], -1, tl.int32)
    last = tl.full([1], BLOCK_L - 1, tl.int32)
    ll = tl.arange(0, BLOCK_L)
    for l0 in range(0, n_len, BLOCK_L):
        l = l0 + ll
        m = l < n_len
        v, idx = _load(x_ptr, x_row, l, m, stride_l, MODE, KIND)
        if TWO_SCAN:
            sv, si = _scan_two(l, m, v, cv, ci, 0, MODE)
        else:
            sv, si = _scan(v, idx, cv, ci, 0, MODE)
        cv, ci = _last(sv, si, last, 0)
        _store(v_ptr, i_ptr, out_row + l.to(tl.int64) * inner, sv, si, m, WRITE_V, WRITE_I)
'''

CHUNKED_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def cum_chunk_reduce(''' + _SIGNATURE + '''
    wv_ptr, wi_ptr, n_chunks, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr,
):
    \"\"\"Program (chunk c, lane block): the winning pair of each lane's chunk c -> workspace [lane, c].\"\"\"
    c = tl.program_id(0)
    p = tl.program_id(1).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pm = p < n_lanes
    x_row, _ = _lanes(p, inner, n_len, stride_o, stride_i)
    l = c * BLOCK_L + tl.arange(0, BLOCK_L)
    m = pm[:, None] & (l < n_len)[None, :]
    v, idx = _load(x_ptr, x_row[:, None], l[None, :], m, stride_l, MODE, KIND)
    tv, ti = _total(v, idx, 1, MODE)
    tl.store(wv_ptr + p * n_chunks + c, tv, mask=pm)
    tl.store(wi_ptr + p * n_chunks + c, ti, mask=pm)


@triton.jit
def cum_chunk_carry(
    wv_ptr, wi_ptr, n_lanes, n_chunks,
    MODE: tl.constexpr, KIND: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    \"\"\"One program = BLOCK_P lanes: chunk totals -> running totals (inclusive scan over chunks), in place.\"\"\"
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pm = p < n_lanes
    cv = _ident([BLOCK_P, 1], MODE, KIND)
    ci = tl.full([BLOCK_P, 1], -1, tl.int32)
    last = tl.full([BLOCK_P, 1], BLOCK_C - 1, tl.int32)
    cc = tl.arange(0, BLOCK_C)
    for c0 in range(0, n_chunks, BLOCK_C):
        c = c0 + cc
        m = pm[:, None] & (c < n_chunks)[None, :]
        off = p[:, None] * n_chunks + c[None, :]
        v = tl.where(m, tl.load(wv_ptr + off, mask=m), _ident(m.shape, MODE, KIND))
        idx = tl.where(m, tl.load(wi_ptr + off, mask=m), -1)
        sv, si = _scan(v, idx, cv, ci, 1, MODE)
        cv, ci = _last(sv, si, last, 1)
        tl.store(wv_ptr + off, sv, mask=m)
        tl.store(wi_ptr + off, si, mask=m)


@triton.jit
def cum_chunk_scan(''' + _SIGNATURE + '''
    wv_ptr, wi_ptr, n_chunks, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr,
):
    \"\"\"Program (chunk c, lane block): scan chunk c seeded with the running total of chunks < c.\"\"\"
    c = tl.program_id(0)
    p = tl.program_id(1).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pm = p < n_lanes
    x_row, out_row = _lanes(p, inner, n_len, stride_o, stride_i)
    cm = pm & (c > 0)
    prev = p * n_chunks + c - 1
    cv = tl.where(cm, tl.load(wv_ptr + prev, mask=cm), _ident([BLOCK_P], MODE, KIND))
    ci = tl.where(cm, tl.load(wi_ptr + prev, mask=cm), -1)
    l = c * BLOCK_L + tl.arange(0, BLOCK_L)
    m = pm[:, None] & (l < n_len)[None, :]
    v, idx = _load(x_ptr, x_row[:, None], l[None, :], m, stride_l, MODE, KIND)
    sv, si = _scan(v, idx, cv[:, None], ci[:, None], 1, MODE)
    _store(v_ptr, i_ptr, out_row[:, None] + l.to(tl.int64)[None, :] * inner, sv, si, m, WRITE_V, WRITE_I)
'''

TEMPLATES: dict[str, tuple[str, str]] = {
    # template name -> (main kernel name, source)
    "tile": ("cum_tile", TILE_SOURCE),
    "rows": ("cum_rows", ROWS_SOURCE),
    "chunked": ("cum_chunk_scan", CHUNKED_SOURCE),
}


# ------------------------------------------------------------------------------------------------
# Geometry and Inductor's split rule
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geom(RowGeom):
    """``[outer, length, inner]``: lanes = outer * inner scans of ``length`` (see the module docstring),
    values compared as ``kind`` (_KINDS)."""

    kind: int


def geometry(x: TensorSig, dim: int) -> Geom:
    """The canonical problem; ValueError when it is not served."""
    kind = _KINDS.get(x.torch_dtype, 2)
    if not x.shape:
        return Geom(1, 1, 1, 0, 0, 0, kind)
    return Geom(*split_at(x, dim), kind)


def inductor_scan_splits(lanes: int, length: int, inner: bool, device: torch.device | None = None) -> int:
    """How many pieces Inductor splits a scan into (``Scan.num_splits`` -> ``Reduction.num_splits`` with
    ``reduction_type="scan"``); > 1 means cummax/cummin fall back to ATen. ``inner``: the input is
    contiguous along the scan dim. With a CUDA device present its properties are used (through
    ``InductorChoices.reduction_split_factor``), else an H100's."""
    num_sm, tps, warp, major = _H100
    real = device is not None and device.type == "cuda" and torch.cuda.is_available()
    if real:
        props = torch.cuda.get_device_properties(device)
        num_sm, major = props.multi_processor_count, props.major
    if lanes == 1:
        return _split_factor(length, 1, True, real, device, num_sm, tps, warp, major)
    if length <= 32 or lanes >= num_sm * 2 * 32:
        return 1
    return _split_factor(length, lanes, inner, real, device, num_sm, tps, warp, major)


def _split_factor(n: int, rows: int, inner: bool, real: bool, device: Any, num_sm: int, tps: int, warp: int,
                  major: int) -> int:
    """``InductorChoices.reduction_split_factor`` (the real one on a CUDA machine, else mirrored)."""
    if real:
        try:
            from torch._inductor.choices import InductorChoices

            return int(InductorChoices.reduction_split_factor(device, n, rows, inner))
        except Exception as e:  # noqa: BLE001 - other torch versions: use the mirror
            log.debug("kevolve: reduction_split_factor unavailable (%s); mirroring it", e)
    import sympy

    min_ept, max_ept = warp, 512
    min_dev, max_dev = min_ept * num_sm * tps, max_ept * num_sm * tps
    num_threads = warp * 8

    def closest(target: int) -> int:
        return int(min(sympy.divisors(n), key=lambda x: abs(x - target)))

    if inner:
        if rows >= 2 * num_sm or n <= (524288 if major >= 10 else 8192):
            return 1
        if n * rows <= min_dev:
            split = min_ept
        elif n * rows < max_dev:
            bpo = _cdiv(num_sm * tps // (2 * num_threads), rows)
            tmp = _cdiv(n, num_threads * bpo)
            c = closest(tmp)
            split = max(c, min_ept) if abs(c - tmp) < 30 else tmp
        else:
            c = closest(max_ept)
            split = c if abs(c - max_ept) < 50 else max_ept
        return _cdiv(n, split * num_threads)
    rvals, xvals = 4, 128
    xblocks = _cdiv(rows, xvals)
    if n * rows < min_dev:
        split = min_ept
    elif n * rows < max_dev:
        target = _cdiv(num_sm * tps // num_threads, xblocks)
        tmp = _cdiv(n, rvals * target)
        c = closest(tmp)
        split = max(c, min_ept) if abs(tmp - c) < 20 else tmp
    else:
        c = closest(max_ept)
        split = c if abs(c - max_ept) < 50 else max_ept
    return _cdiv(n, rvals * split)


def _device(spec: OpSpec) -> torch.device:
    return torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)


def _random(shape: Sequence[int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Values with many ties: floats on a 0.5 grid in [-4, 4), ints in [-20, 20) (uint8 [0, 40)),
    bool ~30% True."""
    shape = tuple(shape)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.3
    if dtype.is_floating_point:
        return (torch.randint(-8, 8, shape, generator=gen).double() / 2).to(dtype)
    lo = 0 if dtype == torch.uint8 else -20
    return torch.randint(lo, lo + 40, shape, generator=gen).to(dtype)


# ------------------------------------------------------------------------------------------------
# The family
# ------------------------------------------------------------------------------------------------


class CumExtremaFamily(OpFamily):
    """cummax / cummin along any dim: values, indices or both."""

    name = "cumextrema"
    ops = _OPS
    # Inductor lowers both (a tuple scan) on Triton devices unless it wants a split scan.
    lowered_ops = _OPS
    template_version = "1"

    # -- specs -----------------------------------------------------------------------------------
    @classmethod
    def spec_for(cls, op: str, x: torch.Tensor, dim: int, values: bool = True, indices: bool = True) -> OpSpec:
        """The spec of a call on a concrete (or fake) tensor; ValueError if not served."""
        if op not in _OPS:
            raise ValueError(f"{op} is not cummax/cummin")
        if not (values or indices):
            raise ValueError("neither output is used")
        if x.dtype not in _DTYPES:
            raise ValueError(f"dtype {x.dtype} not served")
        if not _all_int(x):
            raise ValueError("symbolic sizes/strides (dynamic shapes not served yet)")
        dim = norm_dim(dim, x.dim())
        sig = TensorSig.of(x)
        g = geometry(sig, dim)
        if g.length >= 2**31 - 1:
            raise ValueError("scan longer than int32 positions")
        return OpSpec(
            family=cls.name,
            op=op,
            args=(sig,),
            consts=(("dim", dim), ("indices", bool(indices)), ("values", bool(values))),
            device=DeviceSig.of(x.device),
            versions=software_versions(cls.template_version),
        )

    @staticmethod
    def geom(spec: OpSpec) -> Geom:
        x = spec.args[0]
        assert x is not None
        return geometry(x, int(spec.const("dim")))

    @staticmethod
    def wanted(spec: OpSpec) -> list[int]:
        """The op's outputs the plan produces, in plan order (0 values, 1 indices)."""
        return [j for j, k in ((0, "values"), (1, "indices")) if spec.const(k)]

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        import operator

        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op not in _OPS:
            return Skip(f"{op or node!s} is not cummax/cummin")
        kw = node_kwargs(node)
        if kw is None:
            return Skip(f"could not normalize {op} arguments")
        x_n = kw["self"] if "self" in kw else kw.get("input")
        dim = kw.get("dim")
        x, outs = meta_val(x_n), meta_val(node)
        if not isinstance(x, torch.Tensor) or not isinstance(outs, (tuple, list)) or len(outs) != 2:
            return Skip("input or results have no FakeTensor metadata")
        users: dict[int, list] = {0: [], 1: []}
        for u in node.users:
            if u.op != "call_function" or u.target is not operator.getitem or u.args[1] not in (0, 1):
                return Skip(f"{op} result used by {u.format_node() if hasattr(u, 'format_node') else u} (not a getitem)")
            users[u.args[1]].append(u)
        try:
            spec = self.spec_for(op, x, dim, values=bool(users[0]), indices=bool(users[1]))
        except ValueError as e:
            return Skip(str(e))
        for j, dt in ((0, x.dtype), (1, torch.int64)):
            o = outs[j]
            if not _all_int(o) or tuple(o.shape) != tuple(x.shape) or o.dtype != dt or not o.is_contiguous():
                return Skip(f"output {j} ({o.dtype}, strides {tuple(o.stride())}) is not a contiguous {dt} tensor "
                            "of the input's shape")
        return Match(spec=spec, inputs=[x_n], result_users={k: users[j] for k, j in enumerate(self.wanted(spec))})

    def inductor_fallback_reason(self, node: Any) -> str | None:
        """ATen on non-Triton devices, and on CUDA where Inductor would split the scan (its split scan
        takes one output). The inner/outer choice is approximated by the input's own stride along the
        scan dim (Inductor looks at the loads after fusion)."""
        kw = node_kwargs(node) or {}
        x = meta_val(kw.get("self", kw.get("input")))
        if not isinstance(x, torch.Tensor):
            return None
        if x.device.type not in ("cuda", "xpu"):
            return f"Inductor's scan lowering needs a Triton device: calls ATen on {x.device.type}"
        if x.dim() == 0 or not _all_int(x):
            return None
        dim = int(kw.get("dim", 0)) % x.dim()
        n = int(x.shape[dim])
        if n <= 1:
            return None  # a copy
        lanes = x.numel() // n
        inner = int(x.stride(dim)) == 1
        splits = inductor_scan_splits(lanes, n, inner, x.device if x.device.type == "cuda" else None)
        if splits > 1:
            return (f"Inductor wants a split scan ({splits} splits for {lanes} lanes of {n}) but splits only "
                    "one-output scans: calls ATen")
        return None

    # -- semantics -------------------------------------------------------------------------------
    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        (x,) = inputs
        assert x is not None
        fn = torch.ops.aten.cummax.default if spec.op == CUMMAX else torch.ops.aten.cummin.default
        res = fn(x, int(spec.const("dim")))
        return [res[j] for j in self.wanted(spec)]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """A doubling (Hillis-Steele) scan of (key, index) pairs in torch ops on CPU: keys in float64
        (NaN above everything) or int64, ties to the later index; values gathered from the input."""
        (x,) = inputs
        assert x is not None
        dim = int(spec.const("dim"))
        xc = x.cpu()
        if xc.dim() == 0:
            vals, idx = xc.clone(), torch.zeros((), dtype=torch.int64)
        else:
            xm = xc.movedim(dim, -1)
            n = xm.shape[-1]
            key = xm.double() if xm.is_floating_point() else xm.long()
            idx = torch.arange(n).expand(xm.shape).clone()
            key = key.clone()
            s = 1
            while s < n:
                av, ai, bv, bi = key[..., :-s], idx[..., :-s], key[..., s:], idx[..., s:]
                a_nan, b_nan = av.isnan(), bv.isnan()
                tie = (bv == av) | (a_nan & b_nan)
                better = (bv > av) if spec.op == CUMMAX else (bv < av)
                take = better | (b_nan & ~a_nan) | (tie & (bi > ai))
                key = torch.cat([key[..., :s], torch.where(take, bv, av)], dim=-1)
                idx = torch.cat([idx[..., :s], torch.where(take, bi, ai)], dim=-1)
                s *= 2
            vals = torch.gather(xm, -1, idx).movedim(-1, dim)
            idx = idx.movedim(-1, dim)
        full = [vals.contiguous().to(x.device), idx.contiguous().to(x.device)]
        return [full[j] for j in self.wanted(spec)]

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        return 0.0, 0.0  # values are copies of input elements, indices are positions

    # -- inputs ----------------------------------------------------------------------------------
    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """Tie-heavy values (a 0.5 grid / small ints); seeds 1 mod 3 add a few NaNs (floats)."""
        gen = torch.Generator().manual_seed(int(seed))
        (x_sig,) = spec.args
        assert x_sig is not None
        v = _random(x_sig.shape, x_sig.torch_dtype, gen)
        if x_sig.torch_dtype.is_floating_point and int(seed) % 3 == 1 and v.numel():
            v = torch.where(torch.rand(v.shape, generator=gen) < 0.002, torch.full_like(v, math.nan), v)
        return [_strided(x_sig, v, _device(spec))]

    def _case(self, spec: OpSpec, name: str, x: torch.Tensor, dim: int) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
        (x_sig,) = spec.args
        assert x_sig is not None
        dt = x_sig.torch_dtype
        if x.dtype == dt:
            pass
        elif dt == torch.bool:
            x = x != 0
        elif not dt.is_floating_point:
            info = torch.iinfo(dt)
            x = x.clamp(info.min, info.max)
        x = x.to(dt).to(_device(spec))
        case_spec = self.spec_for(spec.op, x, dim, bool(spec.const("values")), bool(spec.const("indices")))
        return name, case_spec, [x]

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        """Ties everywhere, one element, empty scans/lanes, 0-D, long rows crossing every block size,
        strided and middle-dim scans, dtype extremes; floats: NaN (first, middle, last, repeated),
        +-inf, -0.0 against 0.0."""
        (x_sig,) = spec.args
        assert x_sig is not None
        dt = x_sig.torch_dtype
        g = self.geom(spec)
        gen = torch.Generator().manual_seed(4321)
        nan, inf = math.nan, math.inf
        f = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        cases = [
            self._case(spec, "all_equal", torch.full((3, 9), 2.0), 1),
            self._case(spec, "ties_and_steps", f(1, 3, 3, 2, 3, 5, 5, 0, 5, 1).expand(2, -1).contiguous(), 1),
            self._case(spec, "descending", torch.arange(12, 0, -1).double().reshape(2, 6), 1),
            self._case(spec, "one_element", f(7), 0),
            self._case(spec, "zero_d", torch.tensor(3.0, dtype=torch.float64), 0),
            self._case(spec, "empty_scan", torch.empty(4, 0, dtype=torch.float64), 1),
            self._case(spec, "no_lanes", torch.empty(0, 5, dtype=torch.float64), 1),
            # longer than twice every block of the spec's candidates (<= max(2 * next_pow2(L), 16)):
            # carries across several blocks / chunks
            self._case(spec, "long_rows", _random((2, min(4 * max(_next_pow2(g.length), 16) + 1, 3001)),
                                                  torch.float64, gen), 1),
            self._case(spec, "dim0_strided", _random((7, 13), torch.float64, gen).T, 0),  # [13, 7], strides (1, 13)
            self._case(spec, "middle_dim", _random((3, 17, 5), torch.float64, gen), 1),
            self._case(spec, "padded_rows", _random((5, 20), torch.float64, gen)[:, 3:14], 1),
        ]
        if not dt.is_floating_point and dt != torch.bool:
            info = torch.iinfo(dt)
            ext = torch.tensor([0, info.max, info.min, info.max, info.min, 1, info.min], dtype=dt)
            cases.append(self._case(spec, "dtype_extremes", ext.expand(2, -1).contiguous(), 1))
        if dt.is_floating_point:
            cases += [
                self._case(spec, "nan_middle", f(1, 3, nan, 5, nan, 1, -inf).expand(2, -1).contiguous(), 1),
                self._case(spec, "nan_first_last", torch.stack([f(nan, 1, 2, 0), f(0, 1, 2, nan)]), 1),
                self._case(spec, "all_nan", torch.full((2, 5), nan), 1),
                self._case(spec, "infinities", f(-inf, -inf, 0, inf, 3, inf, -inf).expand(2, -1).contiguous(), 1),
                self._case(spec, "signed_zeros", f(-0.0, 0.0, -0.0, -1, 0.0, -0.0), 0),
            ]
        return cases

    # -- numerics / cost -------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        """The input read once, each wanted output written once (values: input dtype, indices: int64)."""
        (x,) = spec.args
        assert x is not None
        e = _elem_size(x.dtype)
        n = x.numel()
        return n * e + (n * e if spec.const("values") else 0) + (n * 8 if spec.const("indices") else 0)

    # -- kernels ---------------------------------------------------------------------------------
    @staticmethod
    def _warps(tile: int) -> int:
        """~8 pairs per thread, 1..8 warps (a knob the search varies)."""
        return max(1, min(8, _next_pow2(max(tile // 256, 1))))

    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """~12-25 proposals. Default first: tiles for short scans, the chunked plan for long scans over
        few lanes (fewer than ~2 per SM), one program per lane otherwise. Interpreter specs get small
        tiles (it runs a scan element by element, ~0.3 ms each)."""
        g = self.geom(spec)
        p, n = max(g.lanes, 1), max(g.length, 1)
        npow = _next_pow2(n)
        gpu = spec.device.type == "cuda"
        cap = (_MAX_TILE if g.kind in (0, 2) else _MAX_TILE // 2) if gpu else 256  # 64-bit pairs: half
        long_l = 2048 if gpu else 64  # a "long" scan; the chunk length of the chunked plan
        bl0 = min(npow, 1024 if gpu else 64)
        bp0 = max(1, min(_next_pow2(p), cap // bl0, 64))
        out: list[tuple[str, dict[str, Any]]] = []

        def add(t: str, tile: int, nw: int | None = None, **cfg: Any) -> None:
            if tile <= cap:
                out.append((t, dict(cfg, num_warps=nw or self._warps(tile), num_stages=1)))

        def tile(bp: int, bl: int, nw: int | None = None) -> None:
            add("tile", bp * bl, nw, BLOCK_P=bp, BLOCK_L=bl)

        def rows(bl: int, nw: int | None = None) -> None:
            add("rows", bl, nw, BLOCK_L=max(bl, 16))

        def chunked(bp: int, bl: int, bc: int = 256 if gpu else 16, nw: int | None = None) -> None:
            if _cdiv(p, bp) <= _MAX_GRID_Y:
                add("chunked", bp * max(bl, bc), nw, BLOCK_P=bp, BLOCK_L=max(bl, 16), BLOCK_C=bc)

        lb = min(long_l, cap)  # the default block of a long scan (64-bit pairs: half)
        if n > long_l and p < 256:
            chunked(1, lb)
        elif n > long_l:
            rows(lb)
        tile(bp0, bl0)
        for bl in (bl0 // 2, bl0 * 2, bl0 // 4):
            if 16 <= bl <= 2 * npow:
                tile(max(1, min(_next_pow2(p), cap // bl, 64)), bl)
        for bp in (bp0 * 2, bp0 // 2):
            if 1 <= bp <= 2 * _next_pow2(p):
                tile(bp, bl0)
        nw0 = self._warps(bp0 * bl0)
        for nw in (nw0 * 2, nw0 // 2):
            if 1 <= nw <= 8:
                tile(bp0, bl0, nw)
        for bl in (min(npow, lb), min(npow, 2 * lb), min(npow, lb // 4)):
            rows(bl)
        rows(min(npow, lb), nw=4)
        if n > long_l // 8:
            for bp, bl in ((1, lb), (1, lb // 2), (2, lb // 2), (1, 2 * lb), (4, lb // 4)):
                if bl < 2 * npow:
                    chunked(bp, bl)
            chunked(1, min(lb, npow), bc=64 if gpu else 8)

        # the two one-op scans beside the pair scan, for the first few tile / rows proposals
        two = [(t, dict(cfg, TWO_SCAN=1)) for t, cfg in out if t in ("tile", "rows")][:4]
        out = out[:1] + two + out[1:]
        return unique_candidates(out, lambda t: TEMPLATES[t][1])

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        (x_sig,) = spec.args
        assert x_sig is not None
        g = self.geom(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "cumextrema")
        check_pow2(cfg)
        wanted = self.wanted(spec)
        outputs = tuple(OutBuf(tuple(x_sig.shape), x_sig.dtype if j == 0 else "int64", fill=None) for j in wanted)
        # An output the plan does not produce is bound to the input (never written: WRITE_* is False),
        # so no output buffer is bound twice.
        v_arg = Out(wanted.index(0)) if 0 in wanted else In(0)
        i_arg = Out(wanted.index(1)) if 1 in wanted else In(0)
        nw, ns = int(cfg.get("num_warps", 4)), int(cfg.get("num_stages", 1))
        empty = g.lanes * g.length == 0
        common: list[tuple[str, Any]] = [
            ("x_ptr", In(0)), ("v_ptr", v_arg), ("i_ptr", i_arg),
            ("n_lanes", g.lanes), ("n_len", g.length), ("inner", max(g.inner, 1)),
            ("stride_o", g.stride_o), ("stride_l", g.stride_l), ("stride_i", g.stride_i),
            ("MODE", 0 if spec.op == CUMMAX else 1), ("KIND", g.kind),
            ("WRITE_V", 0 in wanted), ("WRITE_I", 1 in wanted),
        ]
        pre: tuple[Step, ...] = ()
        workspace: tuple[OutBuf, ...] = ()
        two = bool(cfg.get("TWO_SCAN", 0))
        if template == "tile":
            bp, bl = int(cfg["BLOCK_P"]), int(cfg["BLOCK_L"])
            main = Step("cum_tile", (0 if empty else _cdiv(g.lanes, bp),),
                        tuple(common + [("BLOCK_P", bp), ("BLOCK_L", bl), ("TWO_SCAN", two)]), nw, ns)
        elif template == "rows":
            main = Step("cum_rows", (0 if empty else g.lanes,),
                        tuple(common + [("BLOCK_L", int(cfg["BLOCK_L"])), ("TWO_SCAN", two)]), nw, ns)
        else:
            bp, bl, bc = int(cfg["BLOCK_P"]), int(cfg["BLOCK_L"]), int(cfg["BLOCK_C"])
            chunks = _cdiv(g.length, bl)
            lane_blocks = _cdiv(g.lanes, bp)
            if lane_blocks > _MAX_GRID_Y:
                raise ValueError(f"BLOCK_P={bp} needs {lane_blocks} lane blocks (> {_MAX_GRID_Y})")
            grid = (0, 0) if empty else (chunks, lane_blocks)
            ws_n = max(g.lanes * chunks, 1)
            workspace = (OutBuf((ws_n,), _KIND_DTYPE[g.kind]), OutBuf((ws_n,), "int32"))
            ws_args = [("wv_ptr", Ws(0)), ("wi_ptr", Ws(1)), ("n_chunks", chunks)]
            reduce = Step("cum_chunk_reduce", grid, tuple(common + ws_args + [("BLOCK_P", bp), ("BLOCK_L", bl)]), nw, ns)
            carry = Step("cum_chunk_carry", (0 if empty else lane_blocks,), (
                ("wv_ptr", Ws(0)), ("wi_ptr", Ws(1)), ("n_lanes", g.lanes), ("n_chunks", chunks),
                ("MODE", 0 if spec.op == CUMMAX else 1), ("KIND", g.kind), ("BLOCK_P", bp), ("BLOCK_C", bc),
            ), self._warps(bp * bc), 1)
            pre = (reduce, carry)
            main = Step("cum_chunk_scan", grid, tuple(common + ws_args + [("BLOCK_P", bp), ("BLOCK_L", bl)]), nw, ns)
        if main.grid and main.grid[0] > _MAX_GRID_X:
            raise ValueError(f"grid {main.grid} exceeds the launch limit")
        return CallPlan(
            kernel=main.kernel,
            grid=main.grid,
            args=main.args,
            outputs=outputs,
            num_warps=main.num_warps,
            num_stages=main.num_stages,
            pre=pre,
            workspace=workspace,
        )


register(CumExtremaFamily())
