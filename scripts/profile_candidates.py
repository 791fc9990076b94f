"""Where the template candidates of one bench case spend their GPU time, kernel by kernel.

    PYTHONPATH=. python3 scripts/profile_candidates.py CASE [--templates csr,copy_atomic] [--max 8]
        [--where EARLY=True] [--case-inputs] [--json OUT.json]

Finds the case's long-tail node with ``kevolve explain`` (no search, an empty store), then for each of
the family's candidates (filtered by template and config) verifies it with the search's Evaluator,
times the whole plan (``do_bench`` median, as the search does) and lists the CUDA time of each kernel
of the plan from the torch profiler. A search only reports the plan's total; this says which step of
a multi-launch plan to work on, and how far the plan's total is above the sum of its kernels."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _value(text: str) -> object:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        return text


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("--templates", default="", help="comma-separated template names (default: all)")
    ap.add_argument("--where", action="append", default=[], help="KEY=VALUE a candidate's config must have")
    ap.add_argument("--max", type=int, default=12, help="candidates to profile at most")
    ap.add_argument("--json", default="")
    ap.add_argument("--case-inputs", action="store_true",
                    help="time on the bench case's own inputs (the node's inputs must be the case's args), not the "
                         "Evaluator's timing inputs: data-dependent kernels (segment lengths, ties) rank differently")
    a = ap.parse_args()
    os.environ.setdefault("KEVOLVE_CACHE_DIR", tempfile.mkdtemp(prefix="kevolve-prof-"))
    import torch_kevolve  # noqa: F401  (registers the backend)
    from scripts.bench import CASES, do_bench, kernel_times
    from torch_kevolve.explain import explain
    from torch_kevolve.families import get_family
    from torch_kevolve.kernels import launch, load_module
    from torch_kevolve.search.evaluate import Evaluator

    case = next(c for c in CASES if c.name == a.case)
    fn, args, _ = case.build("cuda")
    found = [f for f in explain(fn, args) if f.match is not None]
    if not found:
        print("no served long-tail node in", a.case)
        return 1
    f = found[0]
    fam = get_family(f.family)
    spec = f.match.spec
    print(f"{a.case}: {f.op} -> {fam.name}, {spec.describe()}", flush=True)
    ev = Evaluator(fam, spec)
    base = ev.baseline_ms("inductor")
    floor = fam.floor_bytes(spec) / ev.floor_bw * 1e3 if ev.floor_bw else None
    print(f"Inductor kernel baseline {base} ms, floor {floor} ms", flush=True)
    ind = kernel_times(ev.baseline_fn("inductor")) if base is not None else []
    print("Inductor kernels (µs):", ind, flush=True)
    case_inputs = None
    if a.case_inputs:
        sigs = [x for x in spec.args]
        if len(sigs) != len(args) or any(sig is not None and not sig.matches(t) for sig, t in zip(sigs, args)):
            print("the node's inputs are not the case's args: --case-inputs cannot be used for", a.case)
            return 1
        case_inputs = list(args)
        eager_ms = do_bench(lambda: fn(*args))
        print(f"on the case's inputs: eager {eager_ms} ms; kernels (µs):", kernel_times(lambda: fn(*args)), flush=True)
    want = {t for t in a.templates.split(",") if t}
    where = dict((kv.split("=", 1)[0], _value(kv.split("=", 1)[1])) for kv in a.where)
    cands = [c for c in fam.candidates(spec)
             if (not want or c.template in want) and all(c.cfg.get(k) == v for k, v in where.items())][: a.max]
    out = {"case": a.case, "spec": spec.describe(), "inductor_ms": base, "floor_ms": floor, "timed_on": "case" if a.case_inputs else "evaluator",
           "inductor_kernels_us": ind, "candidates": []}
    for c in cands:
        r = ev.evaluate(c)
        row = {"template": c.template, "config": dict(c.cfg), "ok": r.ok, "ms": r.time_ms,
               "diag": r.diagnostics.summary()}
        if r.ok:
            mod = load_module(c.source, interpret=False)
            plan = fam.call_plan(spec, c)
            inputs = case_inputs if case_inputs is not None else ev.cases()[0][2]
            outs = launch(mod, plan, inputs, device=ev.device)
            row["bench_ms"] = do_bench(lambda: launch(mod, plan, inputs, device=ev.device, outs=outs))
            row["kernels_us"] = kernel_times(lambda: launch(mod, plan, inputs, device=ev.device, outs=outs))
            row["kernels_sum_us"] = sum(us for _, us in row["kernels_us"])
        out["candidates"].append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
