"""Where the host time of a compiled bench case's call goes (Python side), for calls whose GPU work is
shorter than their host work (see scripts/call_overhead.py).

    KEVOLVE_CACHE_DIR=$(mktemp -d) PYTHONPATH=. python3 scripts/host_profile.py CASE [--backend kevolve|inductor]
        [--calls 300] [--top 30]

Compiles the case (kevolve in cache mode: the store's kernels, no search), warms it, then runs the
calls under cProfile and prints the functions with the most cumulative and own time. cProfile slows
Python down, so read the shares, not the microseconds."""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("--backend", default="kevolve")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    import torch_kevolve  # noqa: F401  (registers the backend)
    from scripts.bench import CASES, wall_us_per_call

    case = next(c for c in CASES if c.name == a.case)
    fn, args, _ = case.build("cuda")
    kw = {"backend": "kevolve", "options": {"mode": "cache"}} if a.backend == "kevolve" else {}
    c = torch.compile(fn, **kw)
    print(f"{a.case} {a.backend}: {wall_us_per_call(lambda: c(*args), a.calls, warm=30):.1f} us/call wall (no profiler)")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(a.calls):
        c(*args)
    torch.cuda.synchronize()
    prof.disable()
    for key in ("cumulative", "tottime"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(a.top)
        print(f"--- by {key} ---")
        print("\n".join(ln[:180] for ln in s.getvalue().splitlines()[6:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
