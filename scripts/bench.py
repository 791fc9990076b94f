"""The long-tail suite on the GPU: eager, Inductor, Inductor max-autotune (no CUDA graphs), kevolve,
against the memory floor, with correctness — one run, one table, a plot, JSON. Each row also times a
plain copy of the floor's bytes the same way (``copy%``: the share of the floor a copy reaches at
that size, flush included), and Inductor, kevolve and the copy once more after a read-only L2 flush
(``*_clean``): do_bench's zero_() flush leaves L2 dirty and the timed call pays its write-back.

    PYTHONPATH=. python3 scripts/bench.py [--cases a,b] [--store DIR] [--fresh]

Writes $OUT/bench.json, $OUT/bench.png and $OUT/kernel_cache.tar (the store's entries, to ship in
kernel_cache/). ``--fresh`` searches into an empty store (ignoring the shipped layer)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

F = torch.nn.functional


@dataclass
class Case:
    name: str
    family: str
    build: Callable[[str], tuple[Callable, tuple, int]]  # device -> (fn, args, bytes that must move)
    # the reference the compiled variants are checked against: None -> fn(*args) itself (eager); else
    # ref(fn, args), e.g. fn on float32 copies where eager's bf16 rounding between ops is the larger error
    ref: Callable | None = None
    flops: int = 0  # arithmetic that must happen: the row also reports TFLOP/s and % of the bf16 matmul rate
    # check by max |error| / max |ref| <= this (long scans: any summation order differs from eager's by
    # more than an elementwise 1e-4 near zero crossings, Inductor's included); None: elementwise allclose
    norm_tol: float | None = None


def _offsets(B: int, L: int, dev: str, jitter: bool = False, last: bool = False, g: Any = None):
    if jitter:
        lengths = torch.randint(0, 2 * L + 1, (B,), device=dev, generator=g)
    else:
        lengths = torch.full((B,), L, device=dev)
    offs = torch.zeros(B + (1 if last else 0), dtype=torch.int64, device=dev)
    offs[1:B + (1 if last else 0)] = torch.cumsum(lengths, 0)[: B - (0 if last else 1)]
    return offs, int(lengths.sum())


def eb_case(name, V, D, B, L, dtype=torch.float32, mode="sum", psw=False, jitter=False, last=False, idx_dtype=torch.int64):
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        W = torch.randn(V, D, device=dev, generator=g).to(dtype)
        offs, n = _offsets(B, L, dev, jitter, last, g)
        idx = torch.randint(0, V, (n,), device=dev, generator=g).to(idx_dtype)
        offs = offs.to(idx_dtype)
        w = torch.rand(n, device=dev, generator=g).to(dtype) if psw else None
        es = W.element_size()
        nbytes = n * (D * es + idx.element_size() + (es if psw else 0)) + offs.numel() * offs.element_size() + B * D * es
        if psw:
            return (lambda i, o, t, w: F.embedding_bag(i, t, o, mode=mode, per_sample_weights=w, include_last_offset=last)), (idx, offs, W, w), nbytes
        return (lambda i, o, t: F.embedding_bag(i, t, o, mode=mode, include_last_offset=last)), (idx, offs, W), nbytes
    return Case(name, "embedding_bag", build)


def seg_case(name, N_segs, D, reduce="sum", dtype=torch.float32, use_offsets=False, max_len=64):
    """The shared baseline's shape: ~4M rows x 64 in 125k segments of 1..63 rows."""
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        lengths = torch.randint(1, max_len, (N_segs,), device=dev, generator=g)
        tot = int(lengths.sum())
        vals = torch.randn(tot, D, device=dev, generator=g).to(dtype)
        nbytes = vals.numel() * vals.element_size() + lengths.numel() * (8 + D * vals.element_size())
        if use_offsets:
            offs = torch.zeros(N_segs + 1, dtype=torch.int64, device=dev)
            offs[1:] = torch.cumsum(lengths, 0)
            return (lambda v, o: torch.segment_reduce(v, reduce, offsets=o)), (vals, offs), nbytes
        return (lambda v, l: torch.segment_reduce(v, reduce, lengths=l)), (vals, lengths), nbytes
    return Case(name, "segment_reduce", build)


def jagged_case(name, B, max_len, inner, dtype=torch.float32, direction="j2p"):
    """Jagged <-> padded dense, one jagged dim; ``inner`` the value dims after it ((D,): Inductor
    lowers it on CUDA, (D1, D2): it falls back). Lengths uniform in [0, max_len]."""
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        lengths = torch.randint(0, max_len + 1, (B,), device=dev, generator=g)
        offs = torch.zeros(B + 1, dtype=torch.int64, device=dev)
        offs[1:] = torch.cumsum(lengths, 0)
        total = int(offs[-1])
        es = torch.empty((), dtype=dtype).element_size()
        d = 1
        for x in inner:
            d *= x
        if direction == "j2p":
            vals = torch.randn((total, *inner), device=dev, generator=g).to(dtype)
            nbytes = total * d * es + B * max_len * d * es + offs.numel() * 8
            return (lambda v, o: torch.ops.aten._jagged_to_padded_dense_forward(v, [o], [max_len], 0.0)), (vals, offs), nbytes
        dense = torch.randn((B, max_len, *inner), device=dev, generator=g).to(dtype)
        nbytes = 2 * total * d * es + offs.numel() * 8
        return (lambda x, o: torch.ops.aten._padded_dense_to_jagged_forward(x, [o], total)), (dense, offs), nbytes
    return Case(name, "jagged", build)


def scatter_case(name, N, D, M, op="index_add", reduce="sum", dtype=torch.float32, sorted_idx=False):
    """Rows of src added (reduced) into a copy of x at idx: index_add (Inductor lowers it: index_put
    accumulate), scatter_add / scatter_reduce with the index expanded along D (the recsys pattern)."""
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(N, D, device=dev, generator=g).to(dtype)
        src = torch.randn(M, D, device=dev, generator=g).to(dtype)
        idx = torch.randint(0, N, (M,), device=dev, generator=g)
        if sorted_idx:
            idx = torch.sort(idx).values
        es = x.element_size()
        nbytes = 2 * N * D * es + M * D * es + M * 8
        if op == "index_add":
            return (lambda x, i, s: torch.index_add(x, 0, i, s)), (x, idx, src), nbytes
        if op == "scatter_add":
            return (lambda x, i, s: x.scatter_add(0, i[:, None].expand(M, D), s)), (x, idx, src), nbytes
        return (lambda x, i, s: x.scatter_reduce(0, i[:, None].expand(M, D), s, reduce)), (x, idx, src), nbytes
    return Case(name, "scatter", build)


def bucketize_case(name, n, nb, dtype=torch.float32, right=False):
    """``torch.bucketize`` of n values into nb sorted boundaries (int64 out)."""
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(n, device=dev, generator=g).to(dtype)
        b = torch.sort(torch.randn(nb, device=dev, generator=g)).values.to(dtype)
        nbytes = n * (x.element_size() + 8) + nb * b.element_size()
        return (lambda x, b: torch.bucketize(x, b, right=right)), (x, b), nbytes
    return Case(name, "bucketize", build)


def cummax_case(name, rows, cols, dtype=torch.float32, dim=1):
    """``torch.cummax`` values and indices along a dim."""
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(rows, cols, device=dev, generator=g).to(dtype)
        nbytes = x.numel() * (2 * x.element_size() + 8)
        return (lambda x: tuple(torch.cummax(x, dim))), (x,), nbytes
    return Case(name, "cumextrema", build)


def scan_case(name, op, rows, cols, dtype=torch.float32, dim=1):
    """``torch.cumsum`` / ``cumprod`` / ``logcumsumexp`` along a dim (family ``scan``): read + write."""
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(rows, cols, device=dev, generator=g)
        if op == "cumprod":
            x = 1 + x / 1000  # stays finite along 16k elements
        x = x.to(dtype)
        fn = {"cumsum": torch.cumsum, "cumprod": torch.cumprod, "logcumsumexp": torch.logcumsumexp}[op]
        return (lambda x: fn(x, dim)), (x,), 2 * x.numel() * x.element_size()
    # checked against float64 (cast back), by the error relative to the largest value: see Case.norm_tol
    return Case(name, "scan", build, ref=lambda fn, args: fn(args[0].double()).to(args[0].dtype),
                norm_tol=1e-5 if dtype == torch.float32 else 1e-2)


def argreduce_case(name, op, shape, dim=1, dtype=torch.float32):
    """``torch.argmax`` / ``argmin`` over a dim or flat (dim=None) (family ``argreduce``)."""
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(*shape, device=dev, generator=g).to(dtype)
        fn = torch.argmax if op == "argmax" else torch.argmin
        n_out = x.numel() // shape[dim] if dim is not None else 1
        return (lambda x: fn(x, dim)), (x,), x.numel() * x.element_size() + n_out * 8
    return Case(name, "argreduce", build)


def sort_case(name, op, rows, cols, k=0, dtype=torch.float32):
    """Row-wise sort / argsort (stable) / topk (k largest) / median, values and indices (argsort:
    indices). Rows are permutations of 0..cols-1: no ties, so every correct kernel matches eager bit
    for bit (torch leaves the order of tied indices unspecified)."""
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.rand(rows, cols, device=dev, generator=g).argsort(dim=1).to(dtype)
        e = x.element_size()
        fns = {
            "sort": (lambda x: tuple(torch.sort(x, dim=1)), cols * (e + 8)),
            "argsort": (lambda x: torch.argsort(x, dim=1, stable=True), cols * 8),
            "topk": (lambda x: tuple(torch.topk(x, k, dim=1)), k * (e + 8)),
            "median": (lambda x: tuple(torch.median(x, dim=1)), e + 8),
        }
        fn, out_bytes = fns[op]
        return fn, (x,), rows * (cols * e + out_bytes)
    return Case(name, "sort", build)


def _hstu_ref_f32(fn, args):
    """fn on float32 copies of the floating args, cast back: eager bf16 rounds the scores between ops."""
    out = fn(*[a.float() if a.is_floating_point() else a for a in args])
    return out.to(args[0].dtype)


def hstu_case(name, B, H, N, D, dtype=torch.bfloat16, jagged=False):
    """HSTU pointwise attention (the shared baseline's case 12): silu(q kᵀ + rel_bias) / N, causal, @ v,
    q/k/v [B, H, N, D], rel_bias [H, N, N]; served as one region (hstu_attention). ``jagged``: padded
    sequences with lengths uniform in [1, N], keys and queries past each length masked out (the
    family docstring's form). Checked against fp32 (eager bf16 fails 2e-2 itself: gpu_baseline)."""
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(B, H, N, D, device=dev, generator=g).to(dtype) for _ in range(3))
        rb = torch.randn(H, N, N, device=dev, generator=g).to(dtype)
        es = q.element_size()
        if not jagged:
            def fn(q, k, v, rb):
                a = F.silu(torch.matmul(q, k.transpose(-1, -2)) + rb) / N
                return torch.matmul(torch.tril(a), v)
            return fn, (q, k, v, rb), 4 * q.numel() * es + rb.numel() * es
        lengths = torch.randint(1, N + 1, (B,), device=dev, generator=g)
        live = int(lengths.sum())

        def fn(q, k, v, rb, lengths):
            valid = torch.arange(N, device=q.device) < lengths[:, None]
            keep = valid[:, None, :, None] & valid[:, None, None, :]
            a = torch.tril(F.silu(torch.matmul(q, k.transpose(-1, -2)) + rb) / N).masked_fill(~keep, 0.0)
            return torch.matmul(a, v)
        # q, k, v read for live tokens only, the padded output written whole
        return fn, (q, k, v, rb, lengths), 3 * live * H * D * es + q.numel() * es + rb.numel() * es + B * 8
    # two matmuls of 2·N²·D each per (b, h), halved by causality (as family.floor_flops); jagged: the
    # live work depends on the drawn lengths, so no FLOP figure
    return Case(name, "hstu_attention", build, ref=_hstu_ref_f32, flops=0 if jagged else 2 * B * H * N * N * D)


def histogram_case(name, op, n, bins):
    """``torch.histc`` of n fp32 values (bins, min/max given), or ``torch.bincount(t % bins,
    minlength=bins)`` of n int64 values in [0, bins): the remainder proves the output size is ``bins``
    (kevolve serves no bincount whose size is data-dependent; for in-range values it is the identity).
    bincount needs ``capture_dynamic_output_shape_ops`` to reach a graph at all: set globally here."""
    def build(dev):
        g = torch.Generator(device=dev).manual_seed(0)
        if op == "histc":
            x = torch.rand(n, device=dev, generator=g) * 1.2 - 0.1  # some outside [0, 1]
            return (lambda x: torch.histc(x, bins, 0.0, 1.0)), (x,), n * 4 + bins * 4
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
        t = torch.randint(0, bins, (n,), device=dev, generator=g)
        return (lambda t: torch.bincount(t % bins, minlength=bins)), (t,), n * 8 + bins * 8
    return Case(name, "histogram", build)


CASES = [
    eb_case("embedding_bag_sum", 1_000_000, 128, 16384, 20),  # the shared baseline's shape
    eb_case("embedding_bag_mean_fp16", 1_000_000, 128, 16384, 20, dtype=torch.float16, mode="mean", jitter=True),
    eb_case("embedding_bag_wsum_bf16_last", 500_000, 64, 32768, 10, dtype=torch.bfloat16, psw=True, last=True, jitter=True),
    eb_case("embedding_bag_sum_d256_int32", 200_000, 256, 8192, 50, idx_dtype=torch.int32),
    eb_case("embedding_bag_sum_pool1", 1_000_000, 64, 131072, 1),
    seg_case("segment_reduce_sum", 125_000, 64),  # the shared baseline's shape
    seg_case("segment_reduce_mean_offsets", 125_000, 64, reduce="mean", use_offsets=True),
    seg_case("segment_reduce_max_bf16", 125_000, 64, reduce="max", dtype=torch.bfloat16),
    scatter_case("index_add_rows", 262_144, 128, 262_144),  # Inductor lowers it (contested)
    scatter_case("index_add_sorted", 262_144, 128, 262_144, sorted_idx=True),
    scatter_case("scatter_add_rows_fp16", 262_144, 128, 262_144, op="scatter_add", dtype=torch.float16),
    scatter_case("scatter_reduce_amax", 262_144, 128, 262_144, op="scatter_reduce", reduce="amax"),  # Inductor falls back
    bucketize_case("bucketize_16M_1024", 1 << 24, 1024),
    cummax_case("cummax_rows_4096x4096", 4096, 4096),
    scan_case("cumsum_rows_1024x16384", "cumsum", 1024, 16384),  # issue 7: Inductor 0.0582 ms, floor 0.0447
    scan_case("cumsum_rows_bf16", "cumsum", 1024, 16384, dtype=torch.bfloat16),
    scan_case("cumsum_few_long_rows", "cumsum", 8, 1 << 20),  # few lanes: the two-pass plan
    scan_case("logcumsumexp_rows", "logcumsumexp", 1024, 16384),
    scan_case("cumprod_dim0", "cumprod", 4096, 1024, dim=0),  # strided scan dim
    argreduce_case("argmax_rows_8192x4096", "argmax", (8192, 4096)),
    argreduce_case("argmin_dim0_4096x8192", "argmin", (4096, 8192), dim=0),
    argreduce_case("argmax_flat_16M", "argmax", (1 << 24,), dim=None),  # two-stage flat reduction
    hstu_case("hstu_dense_causal_bias", 16, 4, 1024, 64),  # gpu_baseline case 12: Inductor 0.227 ms, eager 0.642
    hstu_case("hstu_jagged_causal_bias", 16, 4, 1024, 64, jagged=True),  # lengths in [1, 1024]: skipped blocks
    sort_case("topk_rows_k64", "topk", 8192, 4096, k=64),  # issue 7: Inductor (ATen) 0.645 ms, floor 0.0447
    sort_case("sort_rows_4096", "sort", 1024, 4096),  # issue 7: Inductor (ATen) 0.165 ms
    sort_case("median_rows_4096", "median", 8192, 4096),  # ATen fallback: kthvalue-style selection
    sort_case("argsort_rows_256_stable", "argsort", 65536, 256),  # Inductor lowers it (ir.Sort): contested
    jagged_case("jagged_to_padded_fp32", 4096, 256, (128,)),  # Inductor lowers it (contested)
    jagged_case("jagged_to_padded_bf16", 4096, 256, (64,), dtype=torch.bfloat16),  # (ATen's CUDA kernel takes 2-D values only)
    jagged_case("padded_to_jagged_fp32", 4096, 256, (128,), direction="p2j"),  # Inductor lowers it
    histogram_case("histc_16M_1000", "histc", 1 << 24, 1000),  # ATen fallback (make_fallback) everywhere
    histogram_case("bincount_16M_1000", "bincount", 1 << 24, 1000),  # issue 7: ATen 0.256 ms, floor 0.0426
]


def do_bench(fn) -> float:
    from triton.testing import do_bench as db

    return float(db(fn, warmup=25, rep=100, return_mode="median"))


_FLUSH_BUF: list = []


def timed_after(fn, flush, reps: int = 100, warm: int = 10) -> float:
    """Median ms of ``fn`` over ``reps`` calls with ``flush`` (or nothing) run before each, outside the
    CUDA events that time the call."""
    import statistics

    for _ in range(warm):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        if flush is not None:
            flush()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def read_flush() -> None:
    """Evicts L2 by reading 256 MB (a sum), leaving it clean: do_bench's zero_() leaves it full of dirty
    lines whose write-back the next call pays (5-6 us on H100: scripts/flush_effect.py). The uint8 ->
    int32 sum takes ~835 us, so the host is always ahead: these timings are GPU time."""
    if not _FLUSH_BUF:
        _FLUSH_BUF.append(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
    _FLUSH_BUF[0].sum(dtype=torch.int32)


def do_bench_clean(fn) -> float:
    """Like do_bench (median ms, cold L2) but after a read flush: the call's own traffic only."""
    return timed_after(fn, read_flush)


def wall_us_per_call(fn, calls: int = 500, warm: int = 20) -> float:
    """Wall time per call over ``calls`` back-to-back calls, one sync at the end: the pace of the host
    or of the GPU, whichever is slower (do_bench hides neither when the host is the slower)."""
    import time

    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def kernel_times(fn, calls: int = 5) -> list[tuple[str, float]]:
    """(kernel name, mean CUDA µs per call) of ``fn``, from the torch profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None)
        if us is None:
            us = ev.cuda_time_total
        if us > 0:
            rows.append((ev.key, us / calls))
    return sorted(rows, key=lambda r: -r[1])


def close(a: Any, b: Any, norm_tol: float | None = None) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(close(x, y, norm_tol) for x, y in zip(a, b))
    if norm_tol is not None and a.is_floating_point():
        a64, b64 = a.double(), b.double()
        return bool((a64 - b64).abs().max() <= norm_tol * b64.abs().max().clamp_min(1e-30))
    tol = 1e-4 if a.dtype == torch.float32 else 2e-2
    return bool(torch.allclose(a.float(), b.float(), rtol=tol, atol=tol))


def run_case(case: Case, dev: str, bw: float, cudagraphs: bool = False) -> dict:
    from torch_kevolve import stats
    from torch_kevolve.lowering import REPORTS

    fn, args, nbytes = case.build(dev)
    row: dict = {"op": case.name, "family": case.family, "floor_ms": nbytes / bw * 1e3, "bytes": nbytes}
    ref = case.ref(fn, args) if case.ref is not None else fn(*args)
    if case.ref is not None:
        row["eager_ok"] = close(fn(*args), ref, case.norm_tol)
    row["eager_ms"] = do_bench(lambda: fn(*args))
    # the same bytes moved by a plain copy (half read, half written), timed the same way: what the flush
    # before every do_bench call costs at this size (scripts/flush_effect.py), the reach of any kernel
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    row["copy_ms"] = do_bench(lambda: dst.copy_(src))
    row["copy_clean_ms"] = do_bench_clean(lambda: dst.copy_(src))
    del src, dst
    variants = [("inductor", dict()), ("max_autotune", dict(mode="max-autotune-no-cudagraphs")),
                ("kevolve", dict(backend="kevolve"))]
    if cudagraphs:  # the same graphs replayed from CUDA graphs: the GPU's pace, without the host's
        variants += [("inductor_cg", dict(mode="reduce-overhead")), ("kevolve_cg", dict(backend="kevolve", mode="reduce-overhead"))]
    for name, kw in variants:
        try:
            if name.endswith("_cg"):  # static inputs: replays read them in place (else every call copies them in)
                for t in args:
                    if isinstance(t, torch.Tensor):
                        torch._dynamo.mark_static_address(t)
            torch._dynamo.reset()
            REPORTS.clear()
            stats.reset()
            t0 = time.time()
            c = torch.compile(fn, **kw)
            out = c(*args)
            torch.cuda.synchronize()
            row[f"{name}_compile_s"] = time.time() - t0
            row[f"{name}_ok"] = close(out, ref, case.norm_tol)
            row[f"{name}_ms"] = do_bench(lambda: c(*args))
            if name in ("inductor", "kevolve"):
                row[f"{name}_clean_ms"] = do_bench_clean(lambda: c(*args))
            if name == "kevolve":
                row["kevolve_decisions"] = [f.decision for rep in REPORTS for f in rep]
                row["kevolve_stats"] = stats.snapshot()
        except Exception as e:  # noqa: BLE001
            row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc()
    for k in ("copy", "eager", "inductor", "max_autotune", "kevolve", "inductor_cg", "kevolve_cg",
              "copy_clean", "inductor_clean", "kevolve_clean"):
        if f"{k}_ms" in row:
            row[f"{k}_pct_floor"] = 100 * row["floor_ms"] / row[f"{k}_ms"]
    if "kevolve_ms" in row and "inductor_ms" in row:
        row["kevolve_vs_inductor"] = row["inductor_ms"] / row["kevolve_ms"]
    if "kevolve_clean_ms" in row and "inductor_clean_ms" in row:
        row["kevolve_clean_vs_inductor_clean"] = row["inductor_clean_ms"] / row["kevolve_clean_ms"]
    if "kevolve_cg_ms" in row and "inductor_cg_ms" in row:
        row["kevolve_cg_vs_inductor_cg"] = row["inductor_cg_ms"] / row["kevolve_cg_ms"]
    if case.flops:
        from torch_kevolve.hardware import ceiling

        rate = ceiling(dev, "matmul_bf16")
        row["flops"], row["matmul_bf16_TFLOPs"] = case.flops, rate and rate / 1e12
        for k in ("eager", "inductor", "max_autotune", "kevolve"):
            if f"{k}_ms" in row:
                row[f"{k}_TFLOPs"] = case.flops / row[f"{k}_ms"] / 1e9
                if rate:
                    row[f"{k}_pct_matmul"] = 100 * row[f"{k}_TFLOPs"] * 1e12 / rate
    return row


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    keys = [("eager", "eager"), ("inductor", "Inductor"), ("max_autotune", "Inductor max-autotune"), ("kevolve", "kevolve")]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
    w = 0.2
    for i, (k, label) in enumerate(keys):
        ax.bar([j + (i - 1.5) * w for j in range(len(rows))], [r.get(f"{k}_pct_floor", 0) for r in rows], w, label=label)
    ax.axhline(85, color="k", ls="--", lw=0.8)
    ax.set_xticks(range(len(rows)), [r["op"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("% of memory floor (higher is better)")
    ax.set_title(f"{torch.cuda.get_device_name()} — torch {torch.__version__}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_table(rows: list[dict], title: str, cols: list[tuple[str, tuple[str, str]]]) -> None:
    """One text table: a row per case, columns (header, (row key, "ms" | "%" | "x" | "str"))."""
    def cell(r: dict, key: str, kind: str) -> str:
        v = r.get(key)
        if kind == "str":
            return f"{str(v):>7s}"
        if not isinstance(v, (int, float)):
            return f"{'-':>7s}"
        return {"ms": f"{v:7.3f}", "%": f"{v:6.1f}%", "x": f"{v:6.2f}x"}[kind]

    print(("\n" + title if title else "") + "\n" + f"{'op':32s} " + " ".join(f"{h:>7s}" for h, _ in cols))
    for r in rows:
        print(f"{r['op']:32s} " + " ".join(cell(r, key, kind) for _, (key, kind) in cols))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="")
    ap.add_argument("--store", default="")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--cudagraphs", action="store_true",
                    help="also Inductor and kevolve under mode='reduce-overhead' (CUDA graphs): GPU time without host overhead")
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    store = Path(args.store or tempfile.mkdtemp(prefix="kevolve-bench-"))
    os.environ["KEVOLVE_CACHE_DIR"] = str(store)
    if args.fresh:
        os.environ["KEVOLVE_SHIPPED_DIR"] = str(store / "no-shipped")
    import triton

    import torch_kevolve  # noqa: F401  (registers the backend)
    from torch_kevolve.hardware import copy_bandwidth

    dev = "cuda"
    bw = copy_bandwidth(dev)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d"), "copy_bw_TBps": bw / 1e12, "command": " ".join(sys.argv)}
    print(json.dumps(meta), flush=True)
    wanted = set(filter(None, args.cases.split(",")))
    rows = []
    for case in CASES:
        if wanted and case.name not in wanted:
            continue
        t0 = time.time()
        row = run_case(case, dev, bw, args.cudagraphs)
        print(json.dumps({k: v for k, v in row.items() if k != "kevolve_decisions"}, default=str), f"({time.time() - t0:.0f}s)", flush=True)
        rows.append(row)
        # after every case: a run cut short by a time limit still leaves its rows behind
        (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    plot(rows, out / "bench.png")
    ms = lambda k: (k, "ms")  # noqa: E731
    print_table(rows, "", [("floor", ms("floor_ms")), ("eager", ms("eager_ms")), ("induct", ms("inductor_ms")),
                           ("max-at", ms("max_autotune_ms")), ("kevolve", ms("kevolve_ms")),
                           ("%floor", ("kevolve_pct_floor", "%")), ("vs ind", ("kevolve_vs_inductor", "x")),
                           ("copy%", ("copy_pct_floor", "%")), ("ok", ("kevolve_ok", "str"))])
    print_table(rows, "After a read flush (L2 evicted and clean; scripts/flush_effect.py)",
                [("floor", ms("floor_ms")), ("copy", ms("copy_clean_ms")), ("induct", ms("inductor_clean_ms")),
                 ("kevolve", ms("kevolve_clean_ms")), ("%floor", ("kevolve_clean_pct_floor", "%")),
                 ("vs ind", ("kevolve_clean_vs_inductor_clean", "x")), ("copy%", ("copy_clean_pct_floor", "%"))])
    if args.cudagraphs:
        print_table(rows, "CUDA graphs (mode='reduce-overhead')",
                    [("floor", ms("floor_ms")), ("induct", ms("inductor_cg_ms")), ("kevolve", ms("kevolve_cg_ms")),
                     ("%floor", ("kevolve_cg_pct_floor", "%")), ("vs ind", ("kevolve_cg_vs_inductor_cg", "x")),
                     ("ok", ("kevolve_cg_ok", "str"))])
    with tarfile.open(out / "kernel_cache.tar", "w") as tf:
        if (store / "v1").exists():
            tf.add(store / "v1", arcname="v1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
