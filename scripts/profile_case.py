"""Where a compiled bench case spends its GPU time: the CUDA kernels of one call, per variant.

    PYTHONPATH=. python3 scripts/profile_case.py CASE [--store DIR] [--routes triton,custom_op]

Runs ``scripts/bench.py``'s case with Inductor and with ``backend="kevolve"`` (cache mode: the store's
kernels only, per route), prints ``do_bench`` times and the torch profiler's kernel table of each."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("--store", default="")
    ap.add_argument("--routes", default="triton,custom_op")
    a = ap.parse_args()
    if a.store:
        os.environ["KEVOLVE_CACHE_DIR"] = a.store
    import torch_kevolve  # noqa: F401
    from scripts.bench import CASES, do_bench
    from torch_kevolve.lowering import REPORTS

    case = next(c for c in CASES if c.name == a.case)
    fn, args, _ = case.build("cuda")
    variants = [("inductor", {})] + [(f"kevolve-{r}", {"backend": "kevolve", "options": {"mode": "cache", "route": r}})
                                     for r in a.routes.split(",")]
    for name, kw in variants:
        torch._dynamo.reset()
        REPORTS.clear()
        c = torch.compile(fn, **kw)
        c(*args)
        torch.cuda.synchronize()
        ms = do_bench(lambda: c(*args))
        print(f"\n=== {name}: {ms:.4f} ms", [f.decision for rep in REPORTS for f in rep])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                c(*args)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
