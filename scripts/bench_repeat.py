"""Is a bench row stable? ``scripts/bench.py``'s ``run_case`` for one case N times in one process (eager,
Inductor, max-autotune, then kevolve, as bench.py orders them), then a bare kevolve and a bare Inductor
compile timed with ``do_bench`` three times each.

    KEVOLVE_CACHE_DIR=STORE PYTHONPATH=. python3 scripts/bench_repeat.py CASE [--repeat 2]

Written for the HSTU dense row, which read 0.053-0.065 ms between runs with the same stored kernel
(BENCHMARKS.md, session 4)."""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    import torch_kevolve  # noqa: F401  (registers the backend)
    from scripts.bench import CASES, do_bench, run_case
    from torch_kevolve.hardware import copy_bandwidth

    case = next(c for c in CASES if c.name == a.case)
    bw = copy_bandwidth("cuda")
    keys = ("eager_ms", "inductor_ms", "max_autotune_ms", "kevolve_ms", "kevolve_vs_inductor")
    for i in range(a.repeat):
        r = run_case(case, "cuda", bw)
        print("run_case", i, {k: round(r[k], 4) for k in keys if k in r}, r.get("kevolve_decisions"), flush=True)
    fn, args, _ = case.build("cuda")
    for name, kw in (("kevolve", {"backend": "kevolve"}), ("inductor", {})):
        torch._dynamo.reset()
        c = torch.compile(fn, **kw)
        c(*args)
        torch.cuda.synchronize()
        print("bare", name, [round(do_bench(lambda: c(*args)), 4) for _ in range(3)], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
