"""Foundation benchmark on the GPU (one run, one call of the device tool).

1. embedding_bag sum, 1M x 128 fp32 table, 16384 bags x 20 indices: eager, Inductor, kevolve
   (JIT search through backend="kevolve" with a fresh store), against the memory floor.
2. Per-call overhead of a stored kernel in a compiled graph: kevolve's Triton route, kevolve's
   custom-op route, and Inductor calling the same kernel through ``triton_op`` (its own path).
3. The demo model compiled with backend="kevolve" on the GPU matches eager.
Writes $OUT/bench_foundation.json and $OUT/kernel_cache.tar (the searched entries, for kernel_cache/).

    PYTHONPATH=. python3 scripts/bench_foundation.py
"""
from __future__ import annotations

import json
import os
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

OUT = Path(os.environ.get("OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)
STORE = Path(tempfile.mkdtemp(prefix="kevolve-bench-store-"))
os.environ["KEVOLVE_CACHE_DIR"] = str(STORE)
os.environ.setdefault("KEVOLVE_SEARCH_BUDGET_S", "300")

import torch_kevolve  # noqa: E402,F401
from torch_kevolve import stats  # noqa: E402
from torch_kevolve.families import get_family  # noqa: E402
from torch_kevolve.hardware import copy_bandwidth  # noqa: E402
from torch_kevolve.lowering import REPORTS  # noqa: E402
from torch_kevolve.store import KernelStore  # noqa: E402

F = torch.nn.functional
dev = "cuda"
res: dict = {"torch": torch.__version__, "triton": triton.__version__, "device": torch.cuda.get_device_name(),
             "date": time.strftime("%Y-%m-%d")}
BW = copy_bandwidth(dev)
res["copy_bw_TBps"] = BW / 1e12
print(json.dumps(res), flush=True)


def bench(fn) -> float:
    return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def wall_us(fn, n=2000) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def section(name):
    def deco(fn):
        try:
            t0 = time.time()
            fn()
            print(f"[{name}] done in {time.time() - t0:.1f}s", flush=True)
        except Exception:
            res.setdefault("errors", {})[name] = traceback.format_exc()
            print(f"[{name}] FAILED\n{traceback.format_exc()}", flush=True)
        return fn
    return deco


@section("embedding_bag_1M")
def _():
    V, D, B, L = 1_000_000, 128, 16384, 20
    torch.manual_seed(0)
    W = torch.randn(V, D, device=dev)
    idx = torch.randint(0, V, (B * L,), device=dev)
    offs = torch.arange(0, B * L, L, device=dev)
    f = lambda i, o, w: F.embedding_bag(i, w, o, mode="sum")  # noqa: E731
    floor_ms = (B * L * (D * 4 + 8) + B * D * 4 + offs.numel() * 8) / BW * 1e3
    ref = f(idx, offs, W)
    eager = bench(lambda: f(idx, offs, W))
    torch._dynamo.reset()
    ind = torch.compile(f)
    ind(idx, offs, W)
    ind_ms = bench(lambda: ind(idx, offs, W))
    torch._dynamo.reset()
    stats.reset()
    t0 = time.time()
    kev = torch.compile(f, backend="kevolve")
    out = kev(idx, offs, W)
    compile_s = time.time() - t0
    ok = bool(torch.allclose(out, ref, rtol=1e-4, atol=1e-4))
    kev_ms = bench(lambda: kev(idx, offs, W))
    decisions = [f.decision for rep in REPORTS for f in rep]
    entries = list(KernelStore(STORE).entries())
    e = entries[0] if entries else None
    res["embedding_bag_1M"] = {
        "floor_ms": floor_ms, "eager_ms": eager, "inductor_ms": ind_ms, "kevolve_ms": kev_ms,
        "kevolve_kernel_ms": e.meta.get("time_ms") if e else None,
        "pct_floor": {"eager": 100 * floor_ms / eager, "inductor": 100 * floor_ms / ind_ms, "kevolve": 100 * floor_ms / kev_ms},
        "correct": ok, "compile_and_search_s": compile_s, "decisions": decisions, "stats": stats.snapshot(),
        "winner": None if e is None else {"template": e.candidate.template, "config": e.candidate.cfg},
        "trials": None if e is None else e.meta["search"]["trials"],
    }
    print(json.dumps({k: v for k, v in res["embedding_bag_1M"].items() if k != "trials"}, default=str), flush=True)


@section("call_overhead")
def _():
    """Tiny embedding bag so the kernel itself costs a few µs: what remains is the call."""
    from torch_kevolve.config import Settings
    from torch_kevolve.kernels import bind_args, load_module
    from torch_kevolve.search import search_spec

    fam = get_family("embedding_bag")
    V, D, B, L = 4096, 64, 256, 4
    W = torch.randn(V, D, device=dev)
    idx = torch.randint(0, V, (B * L,), device=dev)
    offs = torch.arange(0, B * L, L, device=dev)
    f = lambda i, o, w: F.embedding_bag(i, w, o, mode="sum") * 2.0  # noqa: E731
    ref = f(idx, offs, W)
    rows = {}
    for route in ("triton", "custom_op"):
        torch._dynamo.reset()
        stats.reset()
        c = torch.compile(f, backend="kevolve", options={"route": route})
        out = c(idx, offs, W)
        rows[f"kevolve_{route}"] = {"do_bench_us": 1e3 * bench(lambda: c(idx, offs, W)), "wall_us": wall_us(lambda: c(idx, offs, W)),
                                    "correct": bool(torch.allclose(out, ref, rtol=1e-4, atol=1e-4)), "stats": stats.snapshot()}
    # Inductor's own call of the same kernel: a triton_op traced before AOTAutograd.
    spec = fam.spec_for(W, idx, offs)
    entry = KernelStore(STORE).get(spec)
    if entry is None:
        entry, _ = search_spec(fam, spec, Settings.from_env())
    mod = load_module(entry.candidate.source, interpret=False)
    plan = fam.call_plan(spec, entry.candidate)
    kern = getattr(mod, plan.kernel)

    @torch.library.triton_op("kevolve_bench::ebag", mutates_args={})
    def ebag(w: torch.Tensor, i: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        out = torch.empty(plan.outputs[0].shape, device=w.device, dtype=w.dtype)
        kw = bind_args(plan, [w, i, o, None], [out])
        torch.library.wrap_triton(kern)[plan.grid](**kw, num_warps=plan.num_warps, num_stages=plan.num_stages)
        return out

    g = lambda i, o, w: ebag(w, i, o) * 2.0  # noqa: E731
    torch._dynamo.reset()
    cg = torch.compile(g)
    out = cg(idx, offs, W)
    rows["inductor_triton_op"] = {"do_bench_us": 1e3 * bench(lambda: cg(idx, offs, W)), "wall_us": wall_us(lambda: cg(idx, offs, W)),
                                  "correct": bool(torch.allclose(out, ref, rtol=1e-4, atol=1e-4))}
    torch._dynamo.reset()
    ci = torch.compile(f)
    ci(idx, offs, W)
    rows["inductor_aten_fallback"] = {"do_bench_us": 1e3 * bench(lambda: ci(idx, offs, W)), "wall_us": wall_us(lambda: ci(idx, offs, W))}
    rows["eager"] = {"do_bench_us": 1e3 * bench(lambda: f(idx, offs, W)), "wall_us": wall_us(lambda: f(idx, offs, W))}
    res["call_overhead"] = rows
    print(json.dumps(rows, default=str), flush=True)


@section("demo_model")
def _():
    from torch_kevolve.zoo import make_embedding_bag_mlp

    model, inputs = make_embedding_bag_mlp("large", device=dev)
    torch._dynamo.reset()
    stats.reset()
    with torch.no_grad():
        ref = model(*inputs)
        c = torch.compile(model, backend="kevolve")
        out = c(*inputs)
        eager = bench(lambda: model(*inputs))
        kev = bench(lambda: c(*inputs))
        torch._dynamo.reset()
        ci = torch.compile(model)
        ci(*inputs)
        ind = bench(lambda: ci(*inputs))
    res["demo_model"] = {"correct": bool(torch.allclose(out, ref, rtol=1e-4, atol=1e-5)), "eager_ms": eager,
                         "inductor_ms": ind, "kevolve_ms": kev, "stats": stats.snapshot()}
    print(json.dumps(res["demo_model"], default=str), flush=True)


(OUT / "bench_foundation.json").write_text(json.dumps(res, indent=1, default=str))
with tarfile.open(OUT / "kernel_cache.tar", "w") as tf:
    tf.add(STORE / "v1", arcname="v1") if (STORE / "v1").exists() else None
print("wrote", OUT / "bench_foundation.json")
sys.exit(1 if res.get("errors") else 0)
