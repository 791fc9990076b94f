"""Search curves on the GPU: best speedup over the baseline vs evaluations, MCTS vs random search.

    PYTHONPATH=. python3 scripts/search_curves.py [--cases a,b,c] [--budget 16] [--seeds 40]

For each case (the bench suite's cases, by name) the op's spec is taken from a real compile
(``KEVOLVE_MODE=offline`` records it), the baseline is timed in a harness worker (eager for a
fallback op, Inductor's kernel for a contested one), and each strategy runs ``--seeds`` times with
``--budget`` evaluations. Every distinct candidate is compiled, verified and timed on the GPU once,
through the harness, the first time any run asks for it; later runs that propose it again get that
measurement (a memo, so 2 x seeds searches cost one pass over the space, and both strategies are
judged on identical timings). Writes $OUT/curves.json and $OUT/curves.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402


def spec_of(case: Any, dev: str, cache_dir: Path) -> Any:
    """The OpSpec kevolve builds for the case's op, from an offline-mode compile (the queue)."""
    from torch_kevolve import queue
    from torch_kevolve.spec import OpSpec

    fn, args, _ = case.build(dev)
    torch._dynamo.reset()
    before = {e["key"] for e in queue.read(cache_dir)}
    torch.compile(fn, backend="kevolve", options={"mode": "offline", "cache_dir": str(cache_dir)})(*args)
    new = [e for e in queue.read(cache_dir) if e["key"] not in before]
    if len(new) != 1:
        raise RuntimeError(f"{case.name}: expected one long-tail op, the queue got {len(new)}")
    return OpSpec.from_json(new[0]["spec"])


class Memo:
    """evaluate_batch with a memo: each distinct candidate is evaluated live once."""

    def __init__(self, family: Any, spec: Any, executor: Any, seeds: int) -> None:
        self.family, self.spec, self.executor, self.seeds = family, spec, executor, seeds
        self.table: dict[str, Any] = {}
        self.live_s = 0.0

    @staticmethod
    def key(c: Any) -> str:
        return hashlib.sha256((c.source + repr(sorted(c.config))).encode()).hexdigest()

    def __call__(self, cands: Sequence[Any]) -> list[Any]:
        from torch_kevolve.harness.worker import make_jobs

        todo = {self.key(c): c for c in cands if self.key(c) not in self.table}
        if todo:
            t0 = time.monotonic()
            res = self.executor.map(make_jobs(self.family, self.spec, list(todo.values()), seeds=self.seeds))
            self.live_s += time.monotonic() - t0
            self.table.update(zip(todo, res))
        return [self.table[self.key(c)] for c in cands]


def curve(outcome: Any, baseline: float, budget: int) -> list[float]:
    """Best verified speedup after each evaluation (0 until one verifies), padded to ``budget``."""
    best, out = None, []
    for r in outcome.results[:budget]:
        if r.ok and r.time_ms and (best is None or r.time_ms < best):
            best = r.time_ms
        out.append(baseline / best if best else 0.0)
    while len(out) < budget:
        out.append(out[-1] if out else 0.0)
    return out


def reach(c: list[float], frac: float) -> int | None:
    """Evaluations needed to reach ``frac`` of the run's own final best (1-based)."""
    if not c or c[-1] <= 0:
        return None
    return next(i + 1 for i, v in enumerate(c) if v >= frac * c[-1])


def main() -> int:
    import bench

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="embedding_bag_sum,segment_reduce_mean_offsets,index_add_rows,jagged_to_padded_fp32")
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--workers-per-gpu", type=int, default=0)
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="kevolve-curves-"))
    os.environ["KEVOLVE_CACHE_DIR"] = str(cache_dir)
    os.environ["KEVOLVE_SHIPPED_DIR"] = str(cache_dir / "no-shipped")  # a shipped hit would queue nothing
    import torch_kevolve  # noqa: F401  (first: it picks the interpreter when there is no GPU)
    import triton
    from torch_kevolve.families import get_family
    from torch_kevolve.harness import make_executor
    from torch_kevolve.search.strategies import Budget, get_strategy
    from torch_kevolve.search.strategy import baseline_kind
    from torch_kevolve.search.synth import TemplateSynthesizer
    from torch_kevolve.harness.worker import baseline_job

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    meta = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
            "triton": triton.__version__, "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
            "budget": args.budget, "seeds": args.seeds}
    print(json.dumps(meta), flush=True)
    by_name = {c.name: c for c in bench.CASES}
    by_name["tiny_embedding_bag"] = bench.eb_case("tiny_embedding_bag", 100, 16, 8, 3)  # CPU smoke run
    rows = []
    kw: dict = {"timeout_s": 120}
    if args.workers_per_gpu:
        kw["workers_per_gpu"] = args.workers_per_gpu
    with make_executor("local", **kw) as ex:
        for name in filter(None, args.cases.split(",")):
            case = by_name[name]
            spec = spec_of(case, dev, cache_dir)
            fam = get_family(spec.family)
            kind = baseline_kind(fam, spec)
            (b,) = ex.map([baseline_job(fam, spec, kind, seeds=2)])
            if not b.ok:
                print(f"{name}: baseline failed: {b.diagnostics.summary()}", flush=True)
                continue
            memo = Memo(fam, spec, ex, seeds=2)
            row: dict = {"case": name, "family": spec.family, "spec": spec.describe(), "baseline": kind,
                         "baseline_ms": b.time_ms, "space": len(fam.candidates(spec)), "curves": {}}
            t0 = time.monotonic()
            for strat in ("mcts", "random"):
                runs = []
                for seed in range(args.seeds):
                    o = get_strategy(strat)(fam, spec, TemplateSynthesizer(), memo, Budget(max_evals=args.budget), seed,
                                            baseline_ms=b.time_ms)
                    runs.append(curve(o, b.time_ms, args.budget))
                row["curves"][strat] = runs
            row["distinct_evaluated"] = len(memo.table)
            row["verified"] = sum(r.ok for r in memo.table.values())
            row["live_eval_s"] = memo.live_s
            row["cand_per_min"] = 60 * len(memo.table) / memo.live_s if memo.live_s else None
            best_ms = min((r.time_ms for r in memo.table.values() if r.ok and r.time_ms), default=None)
            row["space_best_speedup"] = b.time_ms / best_ms if best_ms else None
            for strat, runs in row["curves"].items():
                finals = [c[-1] for c in runs]
                q = [reach(c, 0.9) for c in runs]
                row[f"{strat}_final_median"] = statistics.median(finals)
                row[f"{strat}_reach90_median"] = statistics.median([x for x in q if x] or [0])
                row[f"{strat}_reach90_within_25pct"] = sum(1 for x in q if x and x <= 0.25 * args.budget) / len(q)
                opt = row["space_best_speedup"] or 0
                hit = [next((i + 1 for i, v in enumerate(c) if opt and v >= 0.999 * opt), None) for c in runs]
                row[f"{strat}_found_best"] = sum(1 for h in hit if h) / len(hit)
                row[f"{strat}_evals_to_best_mean"] = statistics.mean([h or args.budget + 1 for h in hit])
            print(json.dumps({k: v for k, v in row.items() if k != "curves"}, default=str),
                  f"({time.monotonic() - t0:.0f}s)", flush=True)
            rows.append(row)
            (out / "curves.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    plot(rows, out / "curves.png", args.budget)
    return 0


def plot(rows: list[dict], path: Path, budget: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    if not rows:
        return
    fig, axes = plt.subplots(1, len(rows), figsize=(4.6 * len(rows), 3.8), squeeze=False)
    xs = list(range(1, budget + 1))
    for ax, row in zip(axes[0], rows):
        for strat, color in (("mcts", "C0"), ("random", "C1")):
            runs = row["curves"][strat]
            cols = list(zip(*runs))
            med = [statistics.median(c) for c in cols]
            lo = [sorted(c)[len(c) // 4] for c in cols]
            hi = [sorted(c)[(3 * len(c)) // 4] for c in cols]
            ax.plot(xs, med, color=color, label=f"{strat} (median of {len(runs)})")
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2)
        if row.get("space_best_speedup"):
            ax.axhline(row["space_best_speedup"], color="k", ls=":", lw=0.8, label="best in space")
        ax.axvline(0.25 * budget, color="gray", ls="--", lw=0.8)
        ax.set_title(f"{row['case']}\n(vs {row['baseline']})", fontsize=9)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("best speedup so far")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
