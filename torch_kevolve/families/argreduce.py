"""The argreduce family: ``aten.argmax.default`` and ``aten.argmin.default`` (over a dim, or flat).

What reaches Inductor's post-grad graph (torch 2.13): ``torch.argmax(x, d, keepdim)`` / ``x.argmin()``
arrive as themselves (``argmax(x)`` with no dim: the flat index). Inductor lowers both everywhere (an
``argmax``/``argmin`` reduction), so both are in ``lowered_ops`` and contested on CUDA only: the
search's baseline is Inductor's kernel.

ATen semantics pinned (tests compare against eager): the *first* index of the extremum; NaN counts as
the extremum for both argmax and argmin (the first NaN wins); ``-0.0`` ties ``0.0``. As a combine: the
pair with the better key (NaN above all), ties to the smaller index -- commutative and associative, so
any reduction order gives eager's index. An empty reduction is an error in eager (refused here); no
lanes is an empty result. bool is refused by eager; served: float32/float16/bfloat16/float64,
int8/16/32/64, uint8. Output int64, contiguous, of the reduced shape (keepdim or not: same order).

Canonical problem: the ``[O, L, I]`` lanes of :mod:`.cumextrema`; ``dim=None`` is one lane over all
elements (the input's dims must collapse to one strided dim).

Templates:

* ``tile``: one program per ``BLOCK_P`` lanes walks L in ``[BLOCK_P, BLOCK_L]`` tiles, reducing each
  tile to a (value, index) pair per lane and folding it into the lane's carry. ``BLOCK_L >= L`` is a
  one-shot (persistent) reduction.
* ``cols``: a reduction over a non-last dim (``I > 1``): program (``BLOCK_P`` inner indices, outer
  index) walks ``[BLOCK_L, BLOCK_P]`` tiles with the lanes on the contiguous axis (coalesced rows).
* all reduce a tile one of three ways (``TWO_PASS``, a structural knob): 2 -- a NaN-absorbing max/min
  (``max.NaN``; fp64 by compare and select), then the smallest index holding it or a NaN (two one-op
  reductions); 1 -- plain max/min with NaN set aside, a NaN flag, then the smallest index; 0 -- one
  tuple reduction with the pair combine.
* ``split`` (two launches): ``(chunk, lane block)`` programs reduce their ``BLOCK_L`` chunk into a
  workspace (``pre`` step), then one program per lane block folds the chunk winners ``BLOCK_C`` at a
  time. For long rows over few lanes and the flat (``dim=None``) reduction.
* ``tile_persist``: one-shot rows (``BLOCK_L >= L``) with ``min(lane blocks, PERSIST * 132)``
  programs, each looping over lane blocks ``pid, pid + G, ...`` (the pipeliner prefetches the next).
* ``cols_split`` (two launches): ``cols`` with L cut into ``CHUNK_L`` chunks for a non-last dim whose
  lane blocks cannot fill the device: program (``BLOCK_P`` inner indices, chunk, outer index) folds its
  chunk's ``[BLOCK_L, BLOCK_P]`` tiles into workspace ``[outer, chunk, inner]`` (``pre`` step), then
  program (``BLOCK_P`` inner indices, outer index) folds the chunk winners ``[BLOCK_C, BLOCK_P]`` at a
  time (coalesced on the lanes both ways).
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
from .util import strided as _strided
from .util import EXTREMUM_IDENT_SOURCE, NAN_ABSORB_SOURCE, NAN_PROPAGATE_SOURCE, norm_dim, one_dim

log = logging.getLogger("torch_kevolve")

ARGMAX = "aten.argmax.default"
ARGMIN = "aten.argmin.default"
_OPS = (ARGMAX, ARGMIN)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16, torch.int32,
           torch.int64, torch.uint8)
# KIND constexpr: the dtype values are compared in (exact): 0 fp32, 1 fp64, 2 int32, 3 int64
_KINDS = {torch.float32: 0, torch.float16: 0, torch.bfloat16: 0, torch.float64: 1, torch.int64: 3}  # else 2
_KIND_DTYPE = {0: "float32", 1: "float64", 2: "int32", 3: "int64"}
_MAX_TILE = 4096  # (value, index) pairs of 32 bits in one register tile; 64-bit values: half
_MAX_GRID_X = 2**31 - 1
_MAX_GRID_Y = 65535
_H100_SMS = 132

_HEADER = '''import triton
import triton.language as tl
'''

_COMMON = '''

@triton.jit
def _pick(av, ai, bv, bi, MODE: tl.constexpr):
    \"\"\"The pair eager's argmax (MODE 0) / argmin (MODE 1) keeps: the better value, NaN above all,
    ties (equal, NaN with NaN, -0.0 with 0.0) to the smaller index.\"\"\"
    a_nan = av != av
    b_nan = bv != bv
    tie = (bv == av) | (a_nan & b_nan)
    if MODE == 0:
        better = bv > av
    else:
        better = bv < av
    take = better | (b_nan & ~a_nan) | (tie & (bi < ai))
    return tl.where(take, bv, av), tl.where(take, bi, ai)


@triton.jit
def _pick_max(av, ai, bv, bi):
    return _pick(av, ai, bv, bi, 0)


@triton.jit
def _pick_min(av, ai, bv, bi):
    return _pick(av, ai, bv, bi, 1)

''' + NAN_PROPAGATE_SOURCE + '''
''' + NAN_ABSORB_SOURCE + '''

@triton.jit
def _best(v, idx, n_len, AXIS: tl.constexpr, MODE: tl.constexpr, KIND: tl.constexpr, TWO_PASS: tl.constexpr):
    """The winning (value, index) along AXIS. TWO_PASS=2: the extremum with NaN absorbing (one
    NaN-propagating max/min: any NaN makes it NaN), then the smallest index holding it or holding a NaN
    -- two reductions of one-op combines. TWO_PASS=1: plain max/min with NaN set aside, a NaN flag,
    then the smallest index (three reductions); 0: one tuple reduction with the pair combine."""
    if TWO_PASS == 2:
        if KIND == 0:
            if MODE == 0:
                b = tl.reduce(v, AXIS, _max_nan)
            else:
                b = tl.reduce(v, AXIS, _min_nan)
        elif KIND == 1:
            if MODE == 0:
                b = tl.reduce(v, AXIS, _vmax)
            else:
                b = tl.reduce(v, AXIS, _vmin)
        elif MODE == 0:
            b = tl.max(v, AXIS)
        else:
            b = tl.min(v, AXIS)
        hit = (v == tl.expand_dims(b, AXIS)) | (v != v)
        tv = b
        ti = tl.min(tl.where(hit, idx, n_len), AXIS)
    elif TWO_PASS:
        if KIND < 2:
            nan = v != v
            vv = tl.where(nan, _ident(v.shape, MODE, KIND), v)
        else:
            vv = v
        if MODE == 0:
            b = tl.max(vv, AXIS)
        else:
            b = tl.min(vv, AXIS)
        hit = vv == tl.expand_dims(b, AXIS)
        if KIND < 2:
            any_nan = tl.max(nan.to(tl.int32), AXIS) > 0
            hit = tl.where(tl.expand_dims(any_nan, AXIS), nan, hit)
            tv = tl.where(any_nan, float("nan"), b)
        else:
            tv = b
        ti = tl.min(tl.where(hit, idx, n_len), AXIS)
    else:
        if MODE == 0:
            tv, ti = tl.reduce((v, idx), AXIS, _pick_max)
        else:
            tv, ti = tl.reduce((v, idx), AXIS, _pick_min)
    return tv, ti

''' + EXTREMUM_IDENT_SOURCE + '''

@triton.jit
def _load(x_ptr, off, l, m, n_len, MODE: tl.constexpr, KIND: tl.constexpr):
    \"\"\"(values, positions) of a tile; masked elements are (identity, n_len).\"\"\"
    x = tl.load(x_ptr + off, mask=m, other=0)
    if KIND == 0:
        v = x.to(tl.float32)
    elif KIND == 1:
        v = x.to(tl.float64)
    elif KIND == 2:
        v = x.to(tl.int32)
    else:
        v = x.to(tl.int64)
    v = tl.where(m, v, _ident(m.shape, MODE, KIND))
    idx = tl.where(m, l, n_len)
    return v, idx


@triton.jit
def _lanes(p, inner, stride_o, stride_i):
    o = p // inner
    i = p - o * inner
    return o * stride_o + i * stride_i
'''

_SIGNATURE = '''
    x_ptr, y_ptr,
    n_lanes, n_len, inner, stride_o, stride_l, stride_i,
    MODE: tl.constexpr, KIND: tl.constexpr,'''

TILE_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def arg_tile(''' + _SIGNATURE + '''
    BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, TWO_PASS: tl.constexpr,
):
    \"\"\"One program = BLOCK_P lanes: fold [BLOCK_P, BLOCK_L] tiles into a (value, index) carry per lane.\"\"\"
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pm = p < n_lanes
    x_row = _lanes(p, inner, stride_o, stride_i)
    cv = _ident([BLOCK_P], MODE, KIND)
    ci = tl.full([BLOCK_P], 0, tl.int32) + n_len
    ll = tl.arange(0, BLOCK_L)
    for l0 in range(0, n_len, BLOCK_L):
        l = l0 + ll
        m = pm[:, None] & (l < n_len)[None, :]
        v, idx = _load(x_ptr, x_row[:, None] + l.to(tl.int64)[None, :] * stride_l, l[None, :], m, n_len, MODE, KIND)
        tv, ti = _best(v, idx, n_len, 1, MODE, KIND, TWO_PASS)
        cv, ci = _pick(cv, ci, tv, ti, MODE)
    tl.store(y_ptr + p, ci.to(tl.int64), mask=pm)
'''

COLS_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def arg_cols(''' + _SIGNATURE + '''
    BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, TWO_PASS: tl.constexpr,
):
    \"\"\"Program (block of BLOCK_P inner indices, outer index): [BLOCK_L, BLOCK_P] tiles with the lanes on
    the fast axis (a reduction over a non-last dim reads whole contiguous rows).\"\"\"
    i = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    o = tl.program_id(1).to(tl.int64)
    im = i < inner
    x_base = o * stride_o + i * stride_i
    cv = _ident([BLOCK_P], MODE, KIND)
    ci = tl.full([BLOCK_P], 0, tl.int32) + n_len
    ll = tl.arange(0, BLOCK_L)
    for l0 in range(0, n_len, BLOCK_L):
        l = l0 + ll
        m = (l < n_len)[:, None] & im[None, :]
        v, idx = _load(x_ptr, x_base[None, :] + l.to(tl.int64)[:, None] * stride_l, l[:, None], m, n_len, MODE, KIND)
        tv, ti = _best(v, idx, n_len, 0, MODE, KIND, TWO_PASS)
        cv, ci = _pick(cv, ci, tv, ti, MODE)
    tl.store(y_ptr + o * inner + i, ci.to(tl.int64), mask=im)
'''

SPLIT_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def arg_split_reduce(''' + _SIGNATURE + '''
    wv_ptr, wi_ptr, n_chunks, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, TWO_PASS: tl.constexpr,
):
    \"\"\"Program (chunk c, lane block): the winning pair of each lane's chunk c -> workspace [lane, c].\"\"\"
    c = tl.program_id(0)
    p = tl.program_id(1).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pm = p < n_lanes
    x_row = _lanes(p, inner, stride_o, stride_i)
    l = c * BLOCK_L + tl.arange(0, BLOCK_L)
    m = pm[:, None] & (l < n_len)[None, :]
    v, idx = _load(x_ptr, x_row[:, None] + l.to(tl.int64)[None, :] * stride_l, l[None, :], m, n_len, MODE, KIND)
    tv, ti = _best(v, idx, n_len, 1, MODE, KIND, TWO_PASS)
    tl.store(wv_ptr + p * n_chunks + c, tv, mask=pm)
    tl.store(wi_ptr + p * n_chunks + c, ti, mask=pm)


@triton.jit
def arg_split_finish(
    wv_ptr, wi_ptr, y_ptr, n_lanes, n_len, n_chunks,
    MODE: tl.constexpr, KIND: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, TWO_PASS: tl.constexpr,
):
    \"\"\"One program = BLOCK_P lanes: fold the chunk winners BLOCK_C at a time -> the index.\"\"\"
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pm = p < n_lanes
    cv = _ident([BLOCK_P], MODE, KIND)
    ci = tl.full([BLOCK_P], 0, tl.int32) + n_len
    cc = tl.arange(0, BLOCK_C)
    for c0 in range(0, n_chunks, BLOCK_C):
        c = c0 + cc
        m = pm[:, None] & (c < n_chunks)[None, :]
        off = p[:, None] * n_chunks + c[None, :]
        v = tl.where(m, tl.load(wv_ptr + off, mask=m), _ident(m.shape, MODE, KIND))
        idx = tl.where(m, tl.load(wi_ptr + off, mask=m), n_len)
        tv, ti = _best(v, idx, n_len, 1, MODE, KIND, TWO_PASS)
        cv, ci = _pick(cv, ci, tv, ti, MODE)
    tl.store(y_ptr + p, ci.to(tl.int64), mask=pm)
'''

COLS_SPLIT_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def arg_cols_split_reduce(''' + _SIGNATURE + '''
    wv_ptr, wi_ptr, n_chunks, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, CHUNK_L: tl.constexpr,
    TWO_PASS: tl.constexpr,
):
    \"\"\"Program (block of BLOCK_P inner indices, chunk c of CHUNK_L positions, outer index): fold the
    chunk's [BLOCK_L, BLOCK_P] tiles (lanes on the fast axis) -> workspace [outer, c, inner].\"\"\"
    i = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    c = tl.program_id(1)
    o = tl.program_id(2).to(tl.int64)
    im = i < inner
    x_base = o * stride_o + i * stride_i
    cv = _ident([BLOCK_P], MODE, KIND)
    ci = tl.full([BLOCK_P], 0, tl.int32) + n_len
    ll = tl.arange(0, BLOCK_L)
    for l0 in range(0, CHUNK_L, BLOCK_L):
        l = c * CHUNK_L + l0 + ll
        m = (l < n_len)[:, None] & im[None, :]
        v, idx = _load(x_ptr, x_base[None, :] + l.to(tl.int64)[:, None] * stride_l, l[:, None], m, n_len, MODE, KIND)
        tv, ti = _best(v, idx, n_len, 0, MODE, KIND, TWO_PASS)
        cv, ci = _pick(cv, ci, tv, ti, MODE)
    w = (o * n_chunks + c) * inner + i
    tl.store(wv_ptr + w, cv, mask=im)
    tl.store(wi_ptr + w, ci, mask=im)


@triton.jit
def arg_cols_split_finish(
    wv_ptr, wi_ptr, y_ptr, inner, n_len, n_chunks,
    MODE: tl.constexpr, KIND: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, TWO_PASS: tl.constexpr,
):
    \"\"\"Program (block of BLOCK_P inner indices, outer index): fold the chunk winners [BLOCK_C, BLOCK_P]
    at a time, in chunk order -> the index.\"\"\"
    i = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    o = tl.program_id(1).to(tl.int64)
    im = i < inner
    cv = _ident([BLOCK_P], MODE, KIND)
    ci = tl.full([BLOCK_P], 0, tl.int32) + n_len
    cc = tl.arange(0, BLOCK_C)
    for c0 in range(0, n_chunks, BLOCK_C):
        c = c0 + cc
        m = (c < n_chunks)[:, None] & im[None, :]
        off = (o * n_chunks + c.to(tl.int64))[:, None] * inner + i[None, :]
        v = tl.where(m, tl.load(wv_ptr + off, mask=m), _ident(m.shape, MODE, KIND))
        idx = tl.where(m, tl.load(wi_ptr + off, mask=m), n_len)
        tv, ti = _best(v, idx, n_len, 0, MODE, KIND, TWO_PASS)
        cv, ci = _pick(cv, ci, tv, ti, MODE)
    tl.store(y_ptr + o * inner + i, ci.to(tl.int64), mask=im)
'''

TILE_PERSIST_SOURCE = _HEADER + _COMMON + '''

@triton.jit
def arg_tile_persist(''' + _SIGNATURE + '''
    BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, TWO_PASS: tl.constexpr,
):
    \"\"\"Persistent one-shot rows (BLOCK_L >= n_len): program g takes lane blocks g, g + G, ... (G programs),
    one [BLOCK_P, BLOCK_L] tile each, so the pipeliner can prefetch the next block while this one reduces.\"\"\"
    ll = tl.arange(0, BLOCK_L)
    lm = ll < n_len
    pp = tl.arange(0, BLOCK_P).to(tl.int64)
    n_blocks = tl.cdiv(n_lanes, BLOCK_P)
    for b in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        p = pp + b * BLOCK_P  # (int32 b: call_plan keeps the lanes under 2**31)
        pm = p < n_lanes
        x_row = _lanes(p, inner, stride_o, stride_i)
        m = pm[:, None] & lm[None, :]
        v, idx = _load(x_ptr, x_row[:, None] + ll.to(tl.int64)[None, :] * stride_l, ll[None, :], m, n_len, MODE, KIND)
        tv, ti = _best(v, idx, n_len, 1, MODE, KIND, TWO_PASS)
        tl.store(y_ptr + p, ti.to(tl.int64), mask=pm)
'''

TEMPLATES: dict[str, tuple[str, str]] = {
    "tile": ("arg_tile", TILE_SOURCE),
    "cols": ("arg_cols", COLS_SOURCE),
    "split": ("arg_split_finish", SPLIT_SOURCE),
    "cols_split": ("arg_cols_split_finish", COLS_SPLIT_SOURCE),
    "tile_persist": ("arg_tile_persist", TILE_PERSIST_SOURCE),
}


def _device(spec: OpSpec) -> torch.device:
    return torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)


def reduced_shape(shape: Sequence[int], dim: int | None, keepdim: bool) -> tuple[int, ...]:
    """Eager's result shape."""
    shape = tuple(int(s) for s in shape)
    if dim is None:
        return (1,) * len(shape) if keepdim else ()
    if not shape:
        return ()
    return shape[:dim] + ((1,) if keepdim else ()) + shape[dim + 1:]


class ArgReduceFamily(OpFamily):
    """argmax / argmin over one dim or all elements."""

    name = "argreduce"
    ops = _OPS
    lowered_ops = _OPS  # Inductor lowers both on every device
    template_version = "1"

    # -- specs -----------------------------------------------------------------------------------
    @classmethod
    def spec_for(cls, op: str, x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> OpSpec:
        """The spec of a call on a concrete (or fake) tensor; ValueError if not served."""
        if op not in _OPS:
            raise ValueError(f"{op} is not argmax/argmin")
        if x.dtype not in _DTYPES:
            raise ValueError(f"dtype {x.dtype} not served")
        if not _all_int(x):
            raise ValueError("symbolic sizes/strides (dynamic shapes not served yet)")
        if dim is not None:
            dim = norm_dim(dim, x.dim())
        sig = TensorSig.of(x)
        g = _geometry(sig, dim)
        if g.length == 0:
            raise ValueError("empty reduction (an error in eager)")
        if g.length >= 2**31 - 1:
            raise ValueError("reduction longer than int32 positions")
        return OpSpec(
            family=cls.name,
            op=op,
            args=(sig,),
            consts=(("dim", -1 if dim is None else dim), ("flat", dim is None), ("keepdim", bool(keepdim))),
            device=DeviceSig.of(x.device),
            versions=software_versions(cls.template_version),
        )

    @staticmethod
    def dim(spec: OpSpec) -> int | None:
        return None if spec.const("flat") else int(spec.const("dim"))

    @classmethod
    def geom(cls, spec: OpSpec) -> Geom:
        x = spec.args[0]
        assert x is not None
        return _geometry(x, cls.dim(spec))

    @classmethod
    def out_shape(cls, spec: OpSpec) -> tuple[int, ...]:
        x = spec.args[0]
        assert x is not None
        return reduced_shape(x.shape, cls.dim(spec), bool(spec.const("keepdim")))

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op not in _OPS:
            return Skip(f"{op or node!s} is not argmax/argmin")
        kw = node_kwargs(node)
        if kw is None:
            return Skip(f"could not normalize {op} arguments")
        x_n = kw["self"] if "self" in kw else kw.get("input")
        x, out = meta_val(x_n), meta_val(node)
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
            return Skip("input or result has no FakeTensor metadata")
        try:
            spec = self.spec_for(op, x, kw.get("dim"), bool(kw.get("keepdim", False)))
        except ValueError as e:
            return Skip(str(e))
        if not _all_int(out) or tuple(out.shape) != self.out_shape(spec) or out.dtype != torch.int64 \
                or not out.is_contiguous():
            return Skip(f"result ({out.dtype}{list(out.shape)}, strides {tuple(out.stride())}) is not a contiguous "
                        f"int64 tensor of shape {list(self.out_shape(spec))}")
        return Match(spec=spec, inputs=[x_n], result_users={0: [node]})

    # -- semantics -------------------------------------------------------------------------------
    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        (x,) = inputs
        assert x is not None
        fn = torch.ops.aten.argmax.default if spec.op == ARGMAX else torch.ops.aten.argmin.default
        return [fn(x, self.dim(spec), bool(spec.const("keepdim")))]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """First index of the extremum from a float64/int64 key on CPU (NaN above everything): the
        positions holding the lane's best key (or a NaN), the smallest of them."""
        (x,) = inputs
        assert x is not None
        dim = self.dim(spec)
        xc = x.cpu()
        xm = xc.reshape(1, -1) if dim is None else (xc.reshape(1, 1) if xc.dim() == 0 else xc.movedim(dim, -1))
        key = xm.double() if xm.is_floating_point() else xm.long()
        n = key.shape[-1]
        nan = key.isnan() if key.is_floating_point() else torch.zeros_like(key, dtype=torch.bool)
        best = key.amax(-1, keepdim=True) if spec.op == ARGMAX else key.amin(-1, keepdim=True)
        hit = torch.where(nan.any(-1, keepdim=True), nan, key == best)
        pos = torch.where(hit, torch.arange(n), torch.full_like(key, n, dtype=torch.int64)).amin(-1)
        return [pos.reshape(self.out_shape(spec)).contiguous().to(x.device)]

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        return 0.0, 0.0  # positions

    # -- inputs ----------------------------------------------------------------------------------
    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """Tie-heavy values (a 0.5 grid in [-4, 4) / small ints: the first-index rule matters); seeds 1
        mod 3 add a few NaNs (floats)."""
        gen = torch.Generator().manual_seed(int(seed))
        (x_sig,) = spec.args
        assert x_sig is not None
        v = _random(x_sig.shape, x_sig.torch_dtype, gen)
        if x_sig.torch_dtype.is_floating_point and int(seed) % 3 == 1 and v.numel():
            v = torch.where(torch.rand(v.shape, generator=gen) < 0.002, torch.full_like(v, math.nan), v)
        return [_strided(x_sig, v, _device(spec))]

    def _case(self, spec: OpSpec, name: str, x: torch.Tensor, dim: int | None) -> tuple[str, OpSpec, list]:
        (x_sig,) = spec.args
        assert x_sig is not None
        dt = x_sig.torch_dtype
        if x.dtype != dt and not dt.is_floating_point:
            info = torch.iinfo(dt)
            x = x.nan_to_num(0.0, posinf=info.max, neginf=info.min).clamp(info.min, info.max)
        x = x.to(dt).to(_device(spec))
        return name, self.spec_for(spec.op, x, dim, bool(spec.const("keepdim"))), [x]

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        """Ties everywhere (first index wins), one element, 0-D, no lanes, long rows crossing every
        block, dim 0 / middle dim / strided, flat over a matrix; floats: NaN (first, middle, last,
        repeated, all), +-inf, -0.0 against 0.0; ints: dtype extremes. The spec's own dim mode (a dim
        or flat) and keepdim are kept."""
        (x_sig,) = spec.args
        assert x_sig is not None
        dt = x_sig.torch_dtype
        flat = bool(spec.const("flat"))
        g = self.geom(spec)
        gen = torch.Generator().manual_seed(4321)
        nan, inf = math.nan, math.inf
        f = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        d = lambda k: None if flat else k  # noqa: E731
        lay = lambda t: t.contiguous() if flat else t  # noqa: E731  (flat: the dims must collapse)
        long_n = min(4 * max(_next_pow2(g.length), 16) + 1, 3001)
        cases = [
            self._case(spec, "all_equal", torch.full((3, 9), 2.0), d(1)),
            self._case(spec, "ties_and_steps", torch.stack([f(1, 3, 3, 2, 3, 5, 5, 0, 5, 1), f(5, 1, 5, 5, 0, 0, 1, 2, 3, 0)]), d(1)),
            self._case(spec, "one_element", f(7), d(0)),
            self._case(spec, "zero_d", torch.tensor(3.0, dtype=torch.float64), d(0)),
            self._case(spec, "long_rows", _random((2, long_n), torch.float64, gen), d(1)),
            self._case(spec, "dim0_strided", lay(_random((7, 13), torch.float64, gen).T), d(0)),
            self._case(spec, "middle_dim", _random((3, 17, 5), torch.float64, gen), d(1)),
            self._case(spec, "padded_rows", lay(_random((5, 20), torch.float64, gen)[:, 3:14]), d(1)),
        ]
        if not flat:
            cases.append(self._case(spec, "no_lanes", torch.empty(0, 5, dtype=torch.float64), 1))
        if not dt.is_floating_point:
            info = torch.iinfo(dt)
            ext = torch.tensor([0, info.min, info.max, 1, info.max, info.min, info.min], dtype=torch.float64)
            cases.append(self._case(spec, "dtype_extremes", ext.expand(2, -1).contiguous(), d(1)))
        else:
            cases += [
                self._case(spec, "nan_middle", f(1, 3, nan, 5, nan, 1, -inf).expand(2, -1).contiguous(), d(1)),
                self._case(spec, "nan_first_last", torch.stack([f(nan, 1, 2, 0), f(0, 1, 2, nan)]), d(1)),
                self._case(spec, "all_nan", torch.full((2, 5), nan), d(1)),
                self._case(spec, "infinities", torch.stack([f(-inf, -inf, 0, inf, 3, inf, -inf),
                                                            f(inf, -inf, -inf, inf, 3, 0, -inf)]), d(1)),
                self._case(spec, "all_neg_inf", torch.full((2, 5), -inf), d(1)),
                self._case(spec, "signed_zeros", f(-0.0, 0.0, -0.0, -1, 0.0, -0.0, -1), d(0)),
            ]
        return cases

    # -- numerics / cost -------------------------------------------------------------------------
    def floor_bytes(self, spec: OpSpec) -> int:
        """The input read once, the indices written once."""
        (x,) = spec.args
        assert x is not None
        return x.numel() * _elem_size(x.dtype) + math.prod(self.out_shape(spec)) * 8

    # -- kernels ---------------------------------------------------------------------------------
    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """~10-20 proposals. Default first: the split plan when the lanes cannot fill the device (fewer
        than ~2 per SM) and the rows are long (flat reductions included), else tiles: one-shot rows
        (``BLOCK_L >= L``) where they fit, several lanes per program for short rows."""
        g = self.geom(spec)
        p, n = max(g.lanes, 1), max(g.length, 1)
        npow = _next_pow2(n)
        gpu = spec.device.type == "cuda"
        cap = (_MAX_TILE if g.kind in (0, 2) else _MAX_TILE // 2) if gpu else 256
        long_l = 4096 if gpu else 64
        out: list[tuple[str, dict[str, Any]]] = []

        def done() -> list[Candidate]:
            # the two one-op reductions (TWO_PASS=2) of the first four proposals, right after the default
            twos = [(t, dict(cfg, TWO_PASS=2)) for t, cfg in out if "TWO_PASS" in cfg][:4]
            return unique_candidates(out[:1] + twos + out[1:], lambda t: TEMPLATES[t][1])

        def warps(tile: int) -> int:
            return max(1, min(16 if gpu else 8, _next_pow2(max(tile // 512, 1))))

        def add(t: str, tile: int, nw: int | None, ns: int, **cfg: Any) -> None:
            if tile <= cap:
                out.append((t, dict(cfg, num_warps=nw or warps(tile), num_stages=ns)))

        def tile(bp: int, bl: int, nw: int | None = None, ns: int = 1, two: bool = True) -> None:
            add("tile", bp * bl, nw, ns, BLOCK_P=bp, BLOCK_L=max(bl, 16), TWO_PASS=two)

        def split(bp: int, bl: int, bc: int = 256 if gpu else 16, nw: int | None = None, two: bool = True) -> None:
            if bp <= _next_pow2(p) and _cdiv(p, bp) <= _MAX_GRID_Y:
                add("split", bp * max(bl, bc), nw, 1, BLOCK_P=bp, BLOCK_L=max(bl, 16), BLOCK_C=bc, TWO_PASS=two)

        few = p < 2 * _H100_SMS
        lb = min(npow, cap, 2048 if gpu else 64)

        def cols(bp: int, bl: int, nw: int | None = None, two: bool = True) -> None:
            if g.outer <= _MAX_GRID_Y:
                add("cols", bp * bl, nw, 1, BLOCK_P=bp, BLOCK_L=bl, TWO_PASS=two)

        if g.inner > 1:  # reduction over a non-last dim: lanes contiguous, whole rows per tile first
            ip = _next_pow2(g.inner)
            bpc = max(16, min(ip, 256 if gpu else 32))
            blc = max(4, min(npow, cap // bpc, 16 if gpu else 8))
            # cols_split first where the lane blocks cannot fill the device: chunks of L too (two launches).
            # (H100, argmin dim 0 of [4096, 8192] fp32: 0.054 ms for the first vs 0.38+ for cols, 0.078 Inductor)
            if _cdiv(g.inner, 64) * g.outer < 4 * _H100_SMS and g.outer <= _MAX_GRID_Y:
                for bp, cl, bl, nw, ns, two in (((64, 256, 64, 4, 2, False), (64, 128, 64, 4, 2, False),
                                                 (32, 128, 64, 4, 2, False), (32, 128, 64, 4, 2, True),
                                                 (64, 64, 64, 4, 2, True), (128, 256, 32, 4, 2, False),
                                                 (64, 256, 16, 4, 2, True)) if gpu else
                                                ((16, 16, 4, 4, 1, True), (32, 32, 8, 4, 1, False))):
                    bp = max(16, min(bp, ip))
                    chunks = _cdiv(n, cl)
                    bc = max(2, min(_next_pow2(chunks), cap // bp, 64))
                    if 2 <= chunks <= _MAX_GRID_Y and bl <= cl:
                        add("cols_split", bp * max(bl, bc), nw, ns, BLOCK_P=bp, BLOCK_L=bl, CHUNK_L=cl, BLOCK_C=bc,
                            TWO_PASS=two)
            cols(bpc, blc)
            cols(bpc, blc, two=False)
            for bp, bl in ((bpc // 2, blc * 2), (bpc, blc * 2), (bpc * 2, max(blc // 2, 4)), (min(bpc, 64), 8)):
                if 16 <= bp <= max(2 * ip, 16):
                    cols(bp, bl)
        if few and n > long_l // 4:
            split(1, lb)
            split(1, min(npow, cap))
            split(1, lb, bc=min(4 * cap, 4096) if gpu else 16, two=False)
        bl0 = min(npow, cap)
        bp0 = max(1, min(_next_pow2(p), cap // max(bl0, 16), 64))
        tile(bp0, bl0)
        tile(bp0, bl0, two=False)  # the other combine structure: one tuple reduction
        if few and n > 16 * long_l:  # one huge row: tiles are one program; only the split plan scales
            return done()
        tile(bp0, bl0, ns=2)
        if g.inner <= 1 and npow <= cap and _cdiv(p, bp0) >= 4 * _H100_SMS:  # many one-shot rows: persistent
            for nw, ns, per_sm in (((16, 2, 2), (8, 3, 4), (16, 3, 1)) if gpu else ((4, 1, 2),)):
                add("tile_persist", bp0 * bl0, nw, ns, BLOCK_P=bp0, BLOCK_L=max(bl0, 16), TWO_PASS=True, PERSIST=per_sm)
        for bl in (bl0 // 2, bl0 // 4):
            if bl >= 16:
                tile(max(1, min(_next_pow2(p), cap // bl, 64)), bl)
                tile(1, bl, ns=2)
        for bp in (bp0 * 2, bp0 // 2):
            if 1 <= bp <= 2 * _next_pow2(p):
                tile(bp, max(16, min(bl0, cap // bp)))
        nw0 = warps(bp0 * bl0)
        for nw in (nw0 * 2, nw0 // 2):
            if 1 <= nw <= (16 if gpu else 8):
                tile(bp0, bl0, nw)
        if n > long_l // 8:
            for bp, bl in ((1, lb // 2), (2, lb // 2), (1, lb // 4)):
                if bl >= 16:
                    split(bp, bl)
            split(1, lb, two=False)
        return done()

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        g = self.geom(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "argreduce")
        check_pow2(cfg)
        outputs = (OutBuf(self.out_shape(spec), "int64"),)
        nw, ns = int(cfg.get("num_warps", 4)), int(cfg.get("num_stages", 1))
        two = int(cfg.get("TWO_PASS", True))
        mode = 0 if spec.op == ARGMAX else 1
        empty = g.lanes == 0
        common: list[tuple[str, Any]] = [
            ("x_ptr", In(0)), ("y_ptr", Out(0)),
            ("n_lanes", g.lanes), ("n_len", g.length), ("inner", max(g.inner, 1)),
            ("stride_o", g.stride_o), ("stride_l", g.stride_l), ("stride_i", g.stride_i),
            ("MODE", mode), ("KIND", g.kind),
        ]
        pre: tuple[Step, ...] = ()
        workspace: tuple[OutBuf, ...] = ()
        if template == "tile":
            bp, bl = int(cfg["BLOCK_P"]), int(cfg["BLOCK_L"])
            main = Step("arg_tile", (0 if empty else _cdiv(g.lanes, bp),),
                        tuple(common + [("BLOCK_P", bp), ("BLOCK_L", bl), ("TWO_PASS", two)]), nw, ns)
        elif template == "cols":
            bp, bl = int(cfg["BLOCK_P"]), int(cfg["BLOCK_L"])
            if g.outer > _MAX_GRID_Y:
                raise ValueError(f"cols needs outer={g.outer} <= {_MAX_GRID_Y} programs along grid y")
            main = Step("arg_cols", (0, 0) if empty else (_cdiv(max(g.inner, 1), bp), g.outer),
                        tuple(common + [("BLOCK_P", bp), ("BLOCK_L", bl), ("TWO_PASS", two)]), nw, ns)
        elif template == "tile_persist":
            bp, bl, per_sm = int(cfg["BLOCK_P"]), int(cfg["BLOCK_L"]), int(cfg.get("PERSIST", 2))
            if bl < g.length:
                raise ValueError(f"tile_persist is one-shot: BLOCK_L={bl} < L={g.length}")
            if g.lanes + bp >= 2**31:
                raise ValueError(f"tile_persist needs n_lanes={g.lanes} + BLOCK_P < 2**31 (int32 lane blocks)")
            if per_sm < 1:
                raise ValueError(f"PERSIST={per_sm} programs per SM")
            sms = _H100_SMS if spec.device.type == "cuda" else 1  # (the interpreter: PERSIST programs)
            main = Step("arg_tile_persist", (0 if empty else min(_cdiv(g.lanes, bp), per_sm * sms),),
                        tuple(common + [("BLOCK_P", bp), ("BLOCK_L", bl), ("TWO_PASS", two)]), nw, ns)
        elif template == "cols_split":
            bp, bl, cl, bc = int(cfg["BLOCK_P"]), int(cfg["BLOCK_L"]), int(cfg["CHUNK_L"]), int(cfg["BLOCK_C"])
            check_pow2(cfg, lambda k: k == "CHUNK_L")
            if bl > cl:
                raise ValueError(f"cols_split needs BLOCK_L={bl} <= CHUNK_L={cl}")
            inner = max(g.inner, 1)
            chunks = _cdiv(g.length, cl)
            lane_blocks = _cdiv(inner, bp)
            if g.outer > _MAX_GRID_Y or chunks > _MAX_GRID_Y:
                raise ValueError(f"cols_split needs outer={g.outer} and chunks={chunks} <= {_MAX_GRID_Y} (grid y/z)")
            if chunks * cl >= 2**31:
                raise ValueError(f"cols_split positions up to {chunks * cl} overflow int32")
            ws_n = max(g.lanes * chunks, 1)
            workspace = (OutBuf((ws_n,), _KIND_DTYPE[g.kind]), OutBuf((ws_n,), "int32"))
            pre = (Step("arg_cols_split_reduce", (0, 0, 0) if empty else (lane_blocks, chunks, g.outer),
                        tuple(common + [("wv_ptr", Ws(0)), ("wi_ptr", Ws(1)), ("n_chunks", chunks), ("BLOCK_P", bp),
                                        ("BLOCK_L", bl), ("CHUNK_L", cl), ("TWO_PASS", two)]), nw, ns),)
            main = Step("arg_cols_split_finish", (0, 0) if empty else (lane_blocks, g.outer), (
                ("wv_ptr", Ws(0)), ("wi_ptr", Ws(1)), ("y_ptr", Out(0)), ("inner", inner), ("n_len", g.length),
                ("n_chunks", chunks), ("MODE", mode), ("KIND", g.kind), ("BLOCK_P", bp), ("BLOCK_C", bc),
                ("TWO_PASS", two),
            ), max(1, min(8, _next_pow2(max(bp * bc // 256, 1)))), 1)
        else:
            bp, bl, bc = int(cfg["BLOCK_P"]), int(cfg["BLOCK_L"]), int(cfg["BLOCK_C"])
            chunks = _cdiv(g.length, bl)
            lane_blocks = _cdiv(g.lanes, bp)
            if lane_blocks > _MAX_GRID_Y:
                raise ValueError(f"BLOCK_P={bp} needs {lane_blocks} lane blocks (> {_MAX_GRID_Y})")
            ws_n = max(g.lanes * chunks, 1)
            workspace = (OutBuf((ws_n,), _KIND_DTYPE[g.kind]), OutBuf((ws_n,), "int32"))
            grid = (0, 0) if empty else (chunks, lane_blocks)
            pre = (Step("arg_split_reduce", grid, tuple(common + [("wv_ptr", Ws(0)), ("wi_ptr", Ws(1)),
                                                                  ("n_chunks", chunks), ("BLOCK_P", bp),
                                                                  ("BLOCK_L", bl), ("TWO_PASS", two)]), nw, ns),)
            main = Step("arg_split_finish", (0 if empty else lane_blocks,), (
                ("wv_ptr", Ws(0)), ("wi_ptr", Ws(1)), ("y_ptr", Out(0)), ("n_lanes", g.lanes), ("n_len", g.length),
                ("n_chunks", chunks), ("MODE", mode), ("KIND", g.kind), ("BLOCK_P", bp), ("BLOCK_C", bc),
                ("TWO_PASS", two),
            ), max(1, min(8, _next_pow2(max(bp * bc // 256, 1)))), 1)
        if main.grid and main.grid[0] > _MAX_GRID_X:
            raise ValueError(f"grid {main.grid} exceeds the launch limit")
        return CallPlan(kernel=main.kernel, grid=main.grid, args=main.args, outputs=outputs,
                        num_warps=main.num_warps, num_stages=main.num_stages, pre=pre, workspace=workspace)


def _geometry(x: TensorSig, dim: int | None) -> Geom:
    """``[O, L, I]`` for a dim; ``[1, numel, 1]`` (one strided dim) for the flat reduction."""
    if dim is not None:
        return geometry(x, dim)
    kind = _KINDS.get(x.torch_dtype, 2)
    if not x.shape:
        return Geom(1, 1, 1, 0, 0, 0, kind)
    one = one_dim(x.shape, x.stride)
    if one is None:
        raise ValueError(f"input strides {x.stride} (shape {x.shape}) do not collapse to one dim (flat reduction)")
    return Geom(1, one[0], 1, 0, one[1], 0, kind)


def _random(shape: Sequence[int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Tie-heavy values: floats on a 0.5 grid in [-4, 4), ints in [-20, 20) (uint8 [0, 40))."""
    shape = tuple(shape)
    if dtype.is_floating_point:
        return (torch.randint(-8, 8, shape, generator=gen).double() / 2).to(dtype)
    lo = 0 if dtype == torch.uint8 else -20
    return torch.randint(lo, lo + 40, shape, generator=gen).to(dtype)


register(ArgReduceFamily())
