"""Harness throughput on the GPU: candidates/minute for a 64-candidate batch of embedding_bag configs
through the local worker pool with one worker per GPU and with several sharing it (compiles and
verification overlap, timings take turns through the GPU gate), cold (first batch: spawn + CUDA init
+ compiles) and warm (a second batch of the same size); and whether the timings of the two settings
agree. Also checks that a stored kernel works under CUDA graphs
(``mode="reduce-overhead"``) and measures its per-call cost there.

    PYTHONPATH=. python3 scripts/bench_harness.py      → $OUT/bench_harness.json
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402

os.environ.setdefault("KEVOLVE_CACHE_DIR", tempfile.mkdtemp(prefix="kevolve-harness-"))

import torch_kevolve  # noqa: E402,F401
from torch_kevolve.families import get_family  # noqa: E402
from torch_kevolve.harness import LocalExecutor  # noqa: E402
from torch_kevolve.harness.worker import make_jobs  # noqa: E402
from torch_kevolve.search.synth import TemplateSynthesizer  # noqa: E402

OUT = Path(os.environ.get("OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)
res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
             "date": time.strftime("%Y-%m-%d"), "gpus": torch.cuda.device_count()}
fam = get_family("embedding_bag")


def configs(spec, n):
    """n distinct candidates: the family's list, then the synthesizer's off-list neighbours."""
    cands = list(fam.candidates(spec))
    seen = {(c.source, c.config) for c in cands}
    import itertools
    import dataclasses

    base = cands[0]
    for bd, bl, nw, ns in itertools.product((16, 32, 64, 128), (8, 16, 32, 64), (1, 2, 4, 8), (1, 2, 3)):
        if len(cands) >= n:
            break
        cfg = dict(base.cfg, BLOCK_D=bd, BLOCK_L=bl, num_warps=nw, num_stages=ns)
        c = dataclasses.replace(base, config=tuple(sorted(cfg.items())), origin="bench")
        if (c.source, c.config) not in seen:
            seen.add((c.source, c.config))
            cands.append(c)
    return cands[:n]


V, D, B, L = 1_000_000, 128, 16384, 20
W = torch.randn(V, D, device="cuda")
idx = torch.randint(0, V, (B * L,), device="cuda")
offs = torch.arange(0, B * L, L, device="cuda")
spec = fam.spec_for(W, idx, offs)
SKIP_POOL = os.environ.get("KEVOLVE_BENCH_SKIP_POOL") == "1"  # only the CUDA-graphs part
WPG = [int(x) for x in os.environ.get("KEVOLVE_BENCH_WPG", "1,4").split(",")]  # workers per GPU to compare
for wpg in ([] if SKIP_POOL else WPG):
    # a fresh pool per setting: its workers start cold (own Triton caches), as a new search's would
    with LocalExecutor(timeout_s=120, workers_per_gpu=wpg) as ex:
        key = f"wpg{wpg}"
        res[key] = {"workers": ex.pool.n}
        for phase in ("cold", "warm"):
            cands = configs(spec, 64)
            t0 = time.time()
            results = ex.map(make_jobs(fam, spec, cands, seeds=3))
            dt = time.time() - t0
            ok = [r for r in results if r.ok]
            stage = [r.diagnostics.profile.get("stage_s", {}) for r in ok]
            res[key][phase] = {"candidates": len(cands), "verified": len(ok), "wall_s": dt,
                               "candidates_per_min": 60 * len(cands) / dt,
                               "best_ms": min(r.time_ms for r in ok) if ok else None,
                               "failures": sorted({r.diagnostics.stage for r in results if not r.ok}),
                               "mean_verify_s": sum(x.get("verify", 0) for x in stage) / max(1, len(stage)),
                               "mean_time_s": sum(x.get("time", 0) for x in stage) / max(1, len(stage)),
                               "mean_gate_wait_s": sum(x.get("gate_wait", 0) for x in stage) / max(1, len(stage)),
                               "times_ms": [r.time_ms for r in results]}
            print(key, phase, json.dumps({k: v for k, v in res[key][phase].items() if k != "times_ms"}), flush=True)
            (OUT / "bench_harness.json").write_text(json.dumps(res, indent=1, default=str))
# agreement between settings: the same 64 candidates timed with 1 worker and with several sharing the GPU
if not SKIP_POOL and len(WPG) > 1:
    a, b = res[f"wpg{WPG[0]}"]["warm"]["times_ms"], res[f"wpg{WPG[-1]}"]["warm"]["times_ms"]
    diffs = sorted(100 * abs(x - y) / x for x, y in zip(a, b) if x and y)
    res["shared_vs_alone_rel_diff_pct"] = {"median": diffs[len(diffs) // 2], "p90": diffs[int(0.9 * (len(diffs) - 1))],
                                           "max": diffs[-1]} if diffs else None
    print("timing agreement 1 worker vs shared GPU", res["shared_vs_alone_rel_diff_pct"], flush=True)

# CUDA graphs: a stored kernel through the Triton route under mode="reduce-overhead"
from triton.testing import do_bench  # noqa: E402

F = torch.nn.functional
Vs, Ds, Bs, Ls = 4096, 64, 256, 4
Ws = torch.randn(Vs, Ds, device="cuda")
ix = torch.randint(0, Vs, (Bs * Ls,), device="cuda")
of = torch.arange(0, Bs * Ls, Ls, device="cuda")
f = lambda i, o, w: F.embedding_bag(i, w, o, mode="sum") * 2.0  # noqa: E731
ref = f(ix, of, Ws)
rows = {}
for name, kw in (("inductor", {}), ("inductor_cudagraphs", {"mode": "reduce-overhead"}),
                 ("kevolve", {"backend": "kevolve"}), ("kevolve_cudagraphs", {"backend": "kevolve", "mode": "reduce-overhead"})):
    torch._dynamo.reset()
    c = torch.compile(f, **kw)
    for _ in range(3):
        out = c(ix, of, Ws)
    torch.cuda.synchronize()
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        c(ix, of, Ws)
    torch.cuda.synchronize()
    rows[name] = {"correct": bool(torch.allclose(out, ref, rtol=1e-4, atol=1e-4)),
                  "do_bench_us": 1e3 * do_bench(lambda: c(ix, of, Ws), return_mode="median"),
                  "wall_us": (time.perf_counter() - t0) / n * 1e6}
    print(name, rows[name], flush=True)
res["cudagraphs"] = rows
(OUT / "bench_harness.json").write_text(json.dumps(res, indent=1, default=str))
