"""The segment_reduce_backward family: ``aten._segment_reduce_backward.default`` (axis 0), the gradient of
``torch.segment_reduce`` that a sequence model's training step (the zoo's seqrec) calls.

Why a family of its own: Inductor falls back to ATen for it on every device. ATen's CUDA kernel turns
lengths into offsets with a cumsum launch and then runs one thread per (segment, column) walking the
segment's rows: long segments serialize and short ones leave warps idle. The op is pure data movement
(for sum and mean every data row gets its segment's gradient row, scaled), so it should run at copy
bandwidth.

Served: reduce sum and mean; ``lengths`` or ``offsets`` (1-D int32/int64, any stride); grad
``[S, *trailing]`` in fp32/fp16/bf16 with contiguous trailing dims (any row stride), contiguous data
``[N, *trailing]``; ``initial`` is irrelevant to these gradients. Skipped: max / min (ties share the
gradient, with ATen's quirks) and prod (zeros), axis != 0.

Canonical inputs: ``(grad, lengths | offsets, data)``; ``data`` only gives the result its shape and dtype
(read by no kernel for sum/mean). ATen semantics pinned here (tests compare with eager autograd):

* segment ``j`` is rows ``[starts[j], starts[j] + len[j])`` with ``starts`` the exclusive prefix sum of
  lengths, or ``[offsets[j], offsets[j+1])``; rows in no segment (past the lengths' total) get 0.
* sum: ``grad_data[r] = grad[j]``; mean: ``grad[j] / len[j]`` (an empty segment owns no rows).

Templates (the lengths plans first write ``starts[0..S]`` (int64 workspace) with a one-program scan step):

* ``seg_fill``: the result is zero-filled (``OutBuf(fill=0)``) and grid (S, cdiv(D, BLOCK_D)) programs
  each broadcast their segment's gradient slice over its rows, BLOCK_N rows per store. One grad read per
  segment; skewed segment lengths unbalance programs.
* ``row_gather``: a pre step writes ``seg_of[r]`` (int32; -1 for rows in no segment) per segment, then
  grid (cdiv(N, BLOCK_N), cdiv(D, BLOCK_D)) programs gather ``grad[seg_of[r]]`` and store every element
  of their tile (zeros included): balanced, coalesced full-tile stores, no pre-fill.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip, Step, Ws
from .util import cdiv as _cdiv, elem_size as _elem_size, meta_val, next_pow2 as _next_pow2, node_kwargs, template_of, check_pow2
from .util import strided as _strided

log = logging.getLogger("torch_kevolve")

_OP = "aten._segment_reduce_backward.default"
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int32, torch.int64)
_REDUCES = {"sum": 0, "mean": 1}
_MAX_GRID_Y = 65535

_HEADER = '''import triton
import triton.language as tl


@triton.jit
def srb_scan(len_ptr, starts_ptr, num_segs, stride_seg, BLOCK: tl.constexpr):
    """starts[0..S] = exclusive prefix sum of lengths (one program, BLOCK lengths per step)."""
    total = tl.zeros([1], dtype=tl.int64)
    o = tl.arange(0, BLOCK)
    tl.store(starts_ptr + tl.zeros([1], dtype=tl.int64), total)
    for s0 in range(0, num_segs, BLOCK):
        s = s0 + o
        x = tl.load(len_ptr + s * stride_seg, mask=s < num_segs, other=0).to(tl.int64)
        c = tl.cumsum(x, axis=0) + tl.sum(total, axis=0)
        tl.store(starts_ptr + s + 1, c, mask=s < num_segs)
        total = total + tl.sum(x, axis=0)


@triton.jit
def _seg_bounds(seg_ptr, j, num_rows, stride_seg):
    """Rows [start, end) of segment j, clamped to [0, num_rows] (seg_ptr: offsets or scanned starts)."""
    start = tl.load(seg_ptr + j * stride_seg).to(tl.int64)
    end = tl.load(seg_ptr + (j + 1) * stride_seg).to(tl.int64)
    count = end - start
    start = tl.minimum(tl.maximum(start, 0), num_rows)
    end = tl.maximum(tl.minimum(end, num_rows), start)
    return start, end, count
'''

SEG_FILL_SOURCE = _HEADER + '''

@triton.jit
def srb_seg_fill(
    grad_ptr, seg_ptr, out_ptr, num_rows, num_segs, dim, stride_grad, stride_seg,
    REDUCE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One segment x one BLOCK_D slice: its (scaled) gradient slice stored over its rows."""
    j = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < dim
    start, end, count = _seg_bounds(seg_ptr, j, num_rows, stride_seg)
    g = tl.load(grad_ptr + j * stride_grad + d, mask=dm, other=0.0).to(tl.float32)
    if REDUCE == 1:
        g = g / tl.maximum(count, 1).to(tl.float32)
    tile = (tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32) + g[None, :]).to(out_ptr.dtype.element_ty)
    n = tl.arange(0, BLOCK_N)
    for r0 in range(start, end, BLOCK_N):
        r = r0 + n
        tl.store(out_ptr + r[:, None] * dim + d[None, :], tile, mask=(r < end)[:, None] & dm[None, :])
'''

ROW_GATHER_SOURCE = _HEADER + '''

@triton.jit
def srb_mark_rows(seg_ptr, rows_ptr, num_rows, num_segs, stride_seg, SEGS: tl.constexpr, BLOCK: tl.constexpr):
    """seg_of[r] = j over segment j's rows, for SEGS segments; program 0 also marks the rows past the
    last segment (in no segment) -1."""
    o = tl.arange(0, BLOCK)
    for k in range(SEGS):
        j = tl.program_id(0).to(tl.int64) * SEGS + k
        if j < num_segs:
            start, end, count = _seg_bounds(seg_ptr, j, num_rows, stride_seg)
            for r0 in range(start, end, BLOCK):
                r = r0 + o
                tl.store(rows_ptr + r, tl.zeros([BLOCK], dtype=tl.int32) + j.to(tl.int32), mask=r < end)
    if tl.program_id(0) == 0:
        last = tl.load(seg_ptr + num_segs * stride_seg).to(tl.int64)
        first = tl.load(seg_ptr).to(tl.int64)
        lo = tl.minimum(tl.maximum(last, 0), num_rows)
        for r0 in range(lo, num_rows, BLOCK):
            r = r0 + o
            tl.store(rows_ptr + r, tl.full([BLOCK], -1, tl.int32), mask=r < num_rows)
        hi = tl.minimum(tl.maximum(first, 0), num_rows)
        for r0 in range(0, hi, BLOCK):
            r = r0 + o
            tl.store(rows_ptr + r, tl.full([BLOCK], -1, tl.int32), mask=r < hi)


@triton.jit
def srb_row_gather(
    grad_ptr, seg_ptr, rows_ptr, out_ptr, num_rows, dim, stride_grad, stride_seg,
    REDUCE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """BLOCK_N rows x one BLOCK_D slice: grad[seg_of[r]] (scaled), 0 for rows in no segment."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < dim
    rm = r < num_rows
    j = tl.load(rows_ptr + r, mask=rm, other=-1).to(tl.int64)
    ok = rm & (j >= 0)
    g = tl.load(grad_ptr + j[:, None] * stride_grad + d[None, :], mask=ok[:, None] & dm[None, :],
                other=0.0).to(tl.float32)
    if REDUCE == 1:
        lo = tl.load(seg_ptr + j * stride_seg, mask=ok, other=0).to(tl.int64)
        hi = tl.load(seg_ptr + (j + 1) * stride_seg, mask=ok, other=1).to(tl.int64)
        g = g / tl.maximum(hi - lo, 1).to(tl.float32)[:, None]
    tl.store(out_ptr + r[:, None] * dim + d[None, :], g.to(out_ptr.dtype.element_ty), mask=rm[:, None] & dm[None, :])
'''

#: template -> (main kernel, source)
TEMPLATES: dict[str, tuple[str, str]] = {
    "seg_fill": ("srb_seg_fill", SEG_FILL_SOURCE),
    "row_gather": ("srb_row_gather", ROW_GATHER_SOURCE),
}


def _flat_dim(t: Any) -> int | None:
    """D when ``t``'s trailing dims flatten to one contiguous dim (any stride on dim 0), else None."""
    d, expect = 1, 1
    for size, stride in reversed(list(zip(t.shape[1:], t.stride()[1:]))):
        if size != 1 and stride != expect:
            return None
        expect *= size
        d *= size
    return d


class SegmentReduceBackwardFamily(OpFamily):
    name = "segment_reduce_backward"
    ops = (_OP,)
    template_version = "1"

    @staticmethod
    def _unsupported(grad: Any, segs: Any, data: Any, reduce: str, axis: int) -> str | None:
        if reduce not in _REDUCES:
            return f"reduce {reduce!r} is not served (sum and mean are)"
        if axis != 0:
            return f"axis {axis} is not served (0 is)"
        if grad.dtype not in _FLOAT_DTYPES or data.dtype != grad.dtype:
            return f"dtypes {grad.dtype}/{data.dtype} not served"
        if grad.dim() < 1 or data.dim() != grad.dim() or tuple(grad.shape[1:]) != tuple(data.shape[1:]):
            return "grad and data shapes disagree"
        if _flat_dim(grad) is None or not data.is_contiguous():
            return "grad's trailing dims must be contiguous and data contiguous"
        if segs.dim() != 1 or segs.dtype not in _INDEX_DTYPES:
            return "lengths/offsets must be 1-D int32/int64"
        return None

    @classmethod
    def spec_for(cls, grad: torch.Tensor, segs: torch.Tensor, data: torch.Tensor, reduce: str = "sum",
                 use_offsets: bool = False, axis: int = 0) -> OpSpec:
        why = cls._unsupported(grad, segs, data, str(reduce), int(axis))
        if why is not None:
            raise ValueError(why)
        s = grad.shape[0]
        if segs.numel() != s + (1 if use_offsets else 0):
            raise ValueError(f"{segs.numel()} {'offsets' if use_offsets else 'lengths'} for {s} segments")
        consts = tuple(sorted({"reduce": str(reduce), "use_offsets": bool(use_offsets)}.items()))
        return OpSpec(family=cls.name, op=_OP, args=(TensorSig.of(grad), TensorSig.of(segs), TensorSig.of(data)),
                      consts=consts, device=DeviceSig.of(grad.device), versions=software_versions(cls.template_version))

    @staticmethod
    def _dims(spec: OpSpec) -> tuple[int, int, int]:
        """(N, D, S): data rows, flattened trailing size, segments."""
        g, _, data = spec.args
        assert g is not None and data is not None
        return data.shape[0], math.prod(data.shape[1:]), g.shape[0]

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        op = str(getattr(node, "target", ""))
        if getattr(node, "op", None) != "call_function" or op != _OP:
            return Skip(f"{op or node!s} is not _segment_reduce_backward")
        kw = node_kwargs(node)
        if kw is None:
            return Skip("could not normalize _segment_reduce_backward arguments")
        reduce, axis = kw.get("reduce"), kw.get("axis", 0)
        if not isinstance(reduce, str) or not isinstance(axis, int):
            return Skip("reduce/axis are not constants")
        l_node, o_node = kw.get("lengths"), kw.get("offsets")
        if l_node is None and o_node is None:
            return Skip("neither lengths nor offsets given")
        use_off = l_node is None
        g_node, d_node = kw["grad"], kw["data"]
        s_node = o_node if use_off else l_node
        grad, segs, data = (meta_val(x) for x in (g_node, s_node, d_node))
        if not all(isinstance(t, torch.Tensor) for t in (grad, segs, data)):
            return Skip("input tensors have no FakeTensor metadata")
        try:
            spec = self.spec_for(grad, segs, data, reduce, use_off, axis)
        except ValueError as e:
            return Skip(str(e))
        return Match(spec=spec, inputs=[g_node, s_node, d_node], result_users={0: [node]})

    # -- semantics -------------------------------------------------------------------------------
    def input_error(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> str | None:
        """Negative lengths, offsets decreasing or outside the data: eager's business (it validates)."""
        _, segs, data = inputs
        assert segs is not None and data is not None
        n = data.shape[0]
        if spec.const("use_offsets"):
            if segs.numel() and (int(segs.min()) < 0 or int(segs.max()) > n
                                 or (segs.numel() > 1 and bool((segs[1:] < segs[:-1]).any()))):
                return "segment_reduce offsets out of order or range"
        elif segs.numel() and (int(segs.min()) < 0 or int(segs.sum()) > n):
            return "segment_reduce lengths negative or past the data"
        return None

    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """ATen's backward itself (``output`` is read only by max/min/prod, so data stands in for it)."""
        grad, segs, data = inputs
        assert grad is not None and segs is not None and data is not None
        if isinstance(grad, FakeTensor) or grad.device.type == "meta":
            return [torch.zeros_like(data, memory_format=torch.contiguous_format)]
        if segs.device.type == "cpu":
            # ATen's CPU backward trusts the forward's checks: negative lengths or offsets outside the data
            # make it write out of bounds (segfault / heap corruption). Raise as the forward does instead.
            why = self.input_error(spec, inputs)
            if why is not None:
                raise RuntimeError(f"_segment_reduce_backward: {why}")
        key = "offsets" if spec.const("use_offsets") else "lengths"
        out = torch.ops.aten._segment_reduce_backward.default(
            grad, grad, data, str(spec.const("reduce")), **{key: segs.contiguous()}, axis=0)
        return [out.contiguous()]

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """float64: segment id per row by searchsorted over the starts; rows in no segment are 0."""
        grad, segs, data = inputs
        assert grad is not None and segs is not None and data is not None
        n, d, s = self._dims(spec)
        g = grad.to(torch.float64).reshape(s, d)
        sg = segs.reshape(-1).to(torch.int64)
        if spec.const("use_offsets"):
            starts, ends = sg[:-1], sg[1:]
        else:
            ends = torch.cumsum(sg, 0)
            starts = ends - sg
        rows = torch.arange(n)
        out = torch.zeros(n, d, dtype=torch.float64)
        cnt = (ends - starts).to(torch.float64)
        scale = 1.0 / cnt.clamp(min=1) if spec.const("reduce") == "mean" else torch.ones(s, dtype=torch.float64)
        for j in range(s):  # small shapes only (tests, verification): clarity over speed
            m = (rows >= starts[j]) & (rows < ends[j])
            out[m] = g[j] * scale[j]
        return [out.reshape(data.shape).to(data.dtype)]

    # -- inputs ----------------------------------------------------------------------------------
    def _build(self, spec: OpSpec, grad: torch.Tensor, sizes: Sequence[int], n: int,
               sigs: Sequence[TensorSig | None] | None = None) -> list[torch.Tensor | None]:
        device = torch.device("cuda" if spec.device.type == "cuda" else spec.device.type)
        g_sig, s_sig, d_sig = spec.args if sigs is None else sigs
        assert g_sig is not None and s_sig is not None and d_sig is not None
        if spec.const("use_offsets"):
            segs = torch.tensor([0, *sizes], dtype=torch.int64).cumsum(0)
        else:
            segs = torch.tensor(list(sizes), dtype=torch.int64)
        data = torch.randn(d_sig.shape)
        assert sum(sizes) <= n
        return [_strided(g_sig, grad, device), _strided(s_sig, segs, device), _strided(d_sig, data, device)]

    @staticmethod
    def _sizes(n: int, s: int, gen: torch.Generator) -> list[int]:
        if s == 0:
            return []
        cuts = torch.sort(torch.randint(0, n + 1, (s - 1,), generator=gen)).values.tolist()
        b = [0, *cuts, n]
        return [b[i + 1] - b[i] for i in range(s)]

    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        gen = torch.Generator().manual_seed(int(seed))
        n, d, s = self._dims(spec)
        g_sig = spec.args[0]
        assert g_sig is not None
        return self._build(spec, torch.randn(g_sig.shape, generator=gen), self._sizes(n, s, gen), n)

    def _case(self, spec: OpSpec, name: str, sizes: Sequence[int], n: int, d: int,
              gen: torch.Generator) -> tuple[str, OpSpec, list[torch.Tensor | None]]:
        g_sig, s_sig, d_sig = spec.args
        assert g_sig is not None and s_sig is not None and d_sig is not None
        s = len(sizes)
        use_off = bool(spec.const("use_offsets"))
        sigs = (TensorSig(g_sig.dtype, (s, d), (d, 1)), TensorSig(s_sig.dtype, (s + use_off,), (1,)),
                TensorSig(d_sig.dtype, (n, d), (d, 1)))
        inputs = self._build(spec, torch.randn(s, d, generator=gen), sizes, n, sigs)
        g, sg, data = inputs
        assert g is not None and sg is not None and data is not None
        return name, self.spec_for(g, sg, data, str(spec.const("reduce")), use_off), inputs

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        gen = torch.Generator().manual_seed(77)
        _, d_spec, _ = self._dims(spec)
        d = max(1, min(d_spec, 24))
        return [
            self._case(spec, "all_empty", [0, 0, 0], 0, d, gen),
            self._case(spec, "first_and_last_empty", [0, 3, 1, 5, 0], 9, d, gen),
            self._case(spec, "one_segment", [7], 7, d, gen),
            self._case(spec, "one_long_segment", [1, 600, 2], 603, min(d, 8), gen),
            self._case(spec, "rows_past_the_segments", [2, 3], 9, d, gen),
            self._case(spec, "odd_dim_33", [4, 0, 1, 6], 11, 33, gen),
        ]

    def floor_bytes(self, spec: OpSpec) -> int:
        g, sg, data = spec.args
        assert g is not None and sg is not None and data is not None
        n, d, s = self._dims(spec)
        return s * d * _elem_size(g.dtype) + sg.numel() * _elem_size(sg.dtype) + n * d * _elem_size(data.dtype)

    # -- kernels ---------------------------------------------------------------------------------
    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """seg_fill for long segments, row_gather for short (balanced); BLOCK_D x BLOCK_N variants."""
        n, d, s = self._dims(spec)
        avg = n / max(s, 1)
        bd_max = min(_next_pow2(max(d, 1)), 256)
        bds = list(dict.fromkeys([min(bd_max, 128), bd_max, max(16, min(bd_max, 32))]))
        out: list[tuple[str, dict[str, Any]]] = []
        bn0 = max(4, min(_next_pow2(max(1, int(avg))), 64))
        for bd in bds:
            for bn in dict.fromkeys((bn0, max(4, bn0 // 2), min(128, bn0 * 2))):
                if bd * bn <= 8192:
                    out.append(("seg_fill", dict(BLOCK_D=bd, BLOCK_N=bn, num_warps=max(1, min(8, bd * bn // 512)))))
            for bn in (32, 64, 128):
                if bd * bn <= 8192:
                    out.append(("row_gather", dict(BLOCK_D=bd, BLOCK_N=bn, SEGS=16,
                                                   num_warps=max(1, min(8, bd * bn // 512)))))
        first = "seg_fill" if avg >= 32 else "row_gather"
        a = [x for x in out if x[0] == first]
        z = [x for x in out if x[0] != first]
        mixed = [x for i in range(max(len(a), len(z))) for x in ((a[i:i + 1]) + (z[i:i + 1]))]
        seen, cands = set(), []
        for t, cfg in mixed:
            key = (t, tuple(sorted(cfg.items())))
            if key not in seen:
                seen.add(key)
                cands.append(Candidate(source=TEMPLATES[t][1], config=key[1], origin="template", template=t))
        return cands[:24]

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        g, sg, data = spec.args
        assert g is not None and sg is not None and data is not None
        n, d, s = self._dims(spec)
        cfg = cand.cfg
        template = template_of(cand, TEMPLATES, "segment_reduce_backward")
        check_pow2(cfg, lambda k: k.startswith("BLOCK_"))
        bd, bn = int(cfg["BLOCK_D"]), int(cfg["BLOCK_N"])
        nd = _cdiv(d, bd) if d > 0 else 0
        if nd > _MAX_GRID_Y:
            raise ValueError(f"BLOCK_D={bd} needs {nd} programs along D")
        reduce = _REDUCES[str(spec.const("reduce"))]
        stride_grad = g.stride[0] if s > 1 else d
        stride_in = sg.stride[0] if sg.shape[0] > 1 else 1
        workspace: list[OutBuf] = []
        pre: list[Step] = []
        if spec.const("use_offsets"):
            seg_arg: Any = In(1)
            stride_seg = stride_in
        else:  # scanned starts, read as offsets
            workspace.append(OutBuf((s + 1,), "int64"))
            blk = min(max(_next_pow2(max(s, 1)), 64), 4096)
            pre.append(Step("srb_scan", (1,), (("len_ptr", In(1)), ("starts_ptr", Ws(0)), ("num_segs", s),
                                                ("stride_seg", stride_in), ("BLOCK", blk))))
            seg_arg, stride_seg = Ws(0), 1
        nw = int(cfg.get("num_warps", 4))
        out_shape = tuple(data.shape)
        if template == "seg_fill":
            return CallPlan(kernel="srb_seg_fill", grid=(s, nd), args=(
                ("grad_ptr", In(0)), ("seg_ptr", seg_arg), ("out_ptr", Out(0)), ("num_rows", n), ("num_segs", s),
                ("dim", d), ("stride_grad", stride_grad), ("stride_seg", stride_seg), ("REDUCE", reduce),
                ("BLOCK_N", bn), ("BLOCK_D", bd)), outputs=(OutBuf(out_shape, data.dtype, fill=0.0),),
                num_warps=nw, pre=tuple(pre), workspace=tuple(workspace))
        segs_per = int(cfg.get("SEGS", 16))
        k = len(workspace)
        workspace.append(OutBuf((max(n, 1),), "int32"))
        pre.append(Step("srb_mark_rows", (max(1, _cdiv(s, segs_per)),), (
            ("seg_ptr", seg_arg), ("rows_ptr", Ws(k)), ("num_rows", n), ("num_segs", s), ("stride_seg", stride_seg),
            ("SEGS", segs_per), ("BLOCK", 128))))
        return CallPlan(kernel="srb_row_gather", grid=(_cdiv(n, bn), nd), args=(
            ("grad_ptr", In(0)), ("seg_ptr", seg_arg), ("rows_ptr", Ws(k)), ("out_ptr", Out(0)), ("num_rows", n),
            ("dim", d), ("stride_grad", stride_grad), ("stride_seg", stride_seg), ("REDUCE", reduce),
            ("BLOCK_N", bn), ("BLOCK_D", bd)), outputs=(OutBuf(out_shape, data.dtype, fill=None),),
            num_warps=nw, pre=tuple(pre), workspace=tuple(workspace))


register(SegmentReduceBackwardFamily())
