"""Is a compiled bench case host-bound? Per case: Inductor and kevolve (cache mode: the store's
kernels), each as do_bench's median, the wall time per call over N back-to-back calls, and the CUDA
time of the call's kernels (torch profiler). Where wall/call is above the kernels' time, the host
(Python wrapper + launches) sets the pace.

    KEVOLVE_CACHE_DIR=$(mktemp -d) PYTHONPATH=. python3 scripts/call_overhead.py CASE [CASE ...] [--calls 500]

Run it twice, once with TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1, to see what
Inductor's static CUDA launcher does for the kernels kevolve puts in the graph (user-defined Triton
kernels, which Inductor otherwise launches through Triton's own launcher)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    import torch_kevolve  # noqa: F401  (registers the backend)
    from scripts.bench import CASES, do_bench, kernel_times, wall_us_per_call

    static = os.environ.get("TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS", "0")
    rows = []
    for name in a.cases:
        case = next(c for c in CASES if c.name == name)
        fn, args, _ = case.build("cuda")
        for label, kw in (("inductor", {}), ("kevolve", {"backend": "kevolve", "options": {"mode": "cache"}})):
            torch._dynamo.reset()
            c = torch.compile(fn, **kw)
            c(*args)
            torch.cuda.synchronize()
            ms = do_bench(lambda: c(*args))
            wall_us = wall_us_per_call(lambda: c(*args), a.calls)
            kern = kernel_times(lambda: c(*args))
            gpu_us = sum(us for _, us in kern)
            row = {"case": name, "variant": label, "static_user_launch": static, "do_bench_ms": ms,
                   "wall_us_per_call": wall_us, "kernels_us": gpu_us, "kernels": [k[:40] for k, _ in kern]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
