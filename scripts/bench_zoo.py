"""Zoo models end to end on the GPU: eager vs Inductor vs kevolve (warm store), one forward each.

    PYTHONPATH=. python3 scripts/bench_zoo.py [--models dlrm,hstu] [--size large] [--budget 24,90s]
                                              [--store DIR] [--no-prewarm] [--train [--opt-step]]

For each model: the eager forward, ``torch.compile`` (Inductor), and ``backend="kevolve"`` after a
prewarm of the model's misses into the store (``kevolve prewarm`` on that model, with ``--budget`` per
search), then compiled in cache mode (stored kernels only, no search at compile time). Timed with
``triton.testing.do_bench`` (median) under ``torch.no_grad()``; each compiled output checked against
eager. Writes $OUT/bench_zoo.json, $OUT/bench_zoo.png and $OUT/zoo_cache.tar (the store's entries).

``--train`` times a training step instead (forward + loss + backward, ``--opt-step`` adds SGD), see
``run_model_train``; results go to $OUT/bench_zoo_train.json / .png."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def do_bench(fn) -> float:
    from triton.testing import do_bench as db

    return float(db(fn, warmup=10, rep=60, return_mode="median"))


def close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    return bool(torch.allclose(a.float(), b.float(), rtol=tol, atol=tol))


def err(a: Any, b: Any) -> float:
    if isinstance(a, (tuple, list)):
        return max(err(x, y) for x, y in zip(a, b))
    return float((a.float() - b.float()).abs().max())


def run_model(name: str, size: str, store: Path, budget: str, prewarm: bool) -> dict:
    from torch_kevolve import stats
    from torch_kevolve.config import Settings
    from torch_kevolve.lowering import REPORTS
    from torch_kevolve.prewarm import format_report
    from torch_kevolve.prewarm import prewarm as run_prewarm
    from torch_kevolve.zoo import MODELS

    row: dict = {"model": name, "size": size}
    torch.manual_seed(0)
    model, inputs = MODELS[name](size=size, device="cuda")
    with torch.no_grad():
        ref = model(*inputs)
        torch.cuda.synchronize()
        row["eager_ms"] = do_bench(lambda: model(*inputs))
    tol = 2e-2 if any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()) else 1e-3
    if prewarm:
        t0 = time.time()
        try:
            settings = Settings.from_env({"cache_dir": str(store), "budget": budget})
            rep = run_prewarm(models=[name], size=size, device="cuda", settings=settings, progress=False)
            row["prewarm_s"] = time.time() - t0
            row["prewarm"] = [asdict(r) for r in rep.rows]
            print(format_report(rep), flush=True)
        except Exception as e:  # noqa: BLE001
            row["prewarm_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc()
    variants = [("inductor", dict()), ("kevolve", dict(backend="kevolve", options={"mode": "cache"}))]
    for vname, kw in variants:
        try:
            torch._dynamo.reset()
            REPORTS.clear()
            stats.reset()
            t0 = time.time()
            with torch.no_grad():
                c = torch.compile(model, **kw)
                out = c(*inputs)
                torch.cuda.synchronize()
                row[f"{vname}_compile_s"] = time.time() - t0
                row[f"{vname}_ok"] = close(out, ref, tol)
                row[f"{vname}_max_err"] = err(out, ref)
                row[f"{vname}_ms"] = do_bench(lambda: c(*inputs))
            if vname == "kevolve":
                row["kevolve_decisions"] = sorted({f"{f.op}: {f.decision}" for rep in REPORTS for f in rep})
                row["kevolve_stats"] = stats.snapshot()
        except Exception as e:  # noqa: BLE001
            row[f"{vname}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc()
    if "kevolve_ms" in row and "inductor_ms" in row:
        row["kevolve_vs_inductor"] = row["inductor_ms"] / row["kevolve_ms"]
        row["kevolve_vs_eager"] = row["eager_ms"] / row["kevolve_ms"]
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return row


def _train_step(model: Any, inputs: tuple, opt: Any = None) -> torch.Tensor:
    """One training step: forward, loss, backward (and ``opt.step()``). Gradients are set, not summed."""
    for p in model.parameters():
        p.grad = None
    loss = (model(*inputs).float() - 0.25).square().mean()
    loss.backward()
    if opt is not None:
        opt.step()
    return loss.detach()


def _progress(msg: str) -> None:
    """A phase line with the time: a run cut by the device's per-call limit still shows where it was."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_model_train(name: str, size: str, store: Path, budget: str, prewarm: bool, opt_step: bool) -> dict:
    """``--train``: a training step (forward + loss + backward, ``--opt-step`` adds an SGD step) eager vs
    Inductor vs kevolve. The kevolve store is filled by one JIT-mode step (forward and backward misses,
    ``--budget`` per search; prewarm compiles forward graphs only), then timed in cache mode. The first
    step of each variant (no optimizer step) is checked against eager: loss and every parameter's grad."""
    from torch_kevolve import stats
    from torch_kevolve.lowering import REPORTS
    from torch_kevolve.zoo import MODELS

    row: dict = {"model": name, "size": size, "train": True, "opt_step": opt_step}
    torch.manual_seed(0)
    model, inputs = MODELS[name](size=size, device="cuda")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4) if opt_step else None
    ref_loss = _train_step(model, inputs)
    ref_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    # optimizer steps move the weights: each variant's checked first step starts from the same ones
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()} if opt_step else None
    torch.cuda.synchronize()
    row["eager_ms"] = do_bench(lambda: _train_step(model, inputs, opt))
    _progress(f"{name} train: eager {row['eager_ms']:.3f} ms")
    tol = 2e-2 if any(p.dtype in (torch.bfloat16, torch.float16) for p in params) else 1e-3
    if prewarm:
        t0 = time.time()
        try:
            torch._dynamo.reset()
            c = torch.compile(model, backend="kevolve", options={"mode": "jit", "budget": budget})
            _train_step(c, inputs)
            torch.cuda.synchronize()
            row["prewarm_s"] = time.time() - t0
            row["prewarm_decisions"] = sorted({f"{f.op}: {f.decision}" for rep in REPORTS for f in rep})
            _progress(f"{name} train: JIT step (searches) {row['prewarm_s']:.0f} s: {row['prewarm_decisions']}")
        except Exception as e:  # noqa: BLE001
            row["prewarm_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc()
    variants = [("inductor", dict()), ("kevolve", dict(backend="kevolve", options={"mode": "cache"}))]
    for vname, kw in variants:
        try:
            torch._dynamo.reset()
            REPORTS.clear()
            stats.reset()
            t0 = time.time()
            if saved is not None:
                model.load_state_dict(saved)
            c = torch.compile(model, **kw)
            loss = _train_step(c, inputs)
            torch.cuda.synchronize()
            row[f"{vname}_compile_s"] = time.time() - t0
            _progress(f"{name} train: {vname} compiled + first step {row[f'{vname}_compile_s']:.0f} s")
            gerr = max((err(p.grad, g) / max(float(g.abs().max()), 1e-12) for p, g in zip(params, ref_grads)
                        if g is not None and p.grad is not None), default=0.0)
            row[f"{vname}_ok"] = close(loss, ref_loss, tol) and gerr <= tol and all(
                (p.grad is None) == (g is None) for p, g in zip(params, ref_grads))
            row[f"{vname}_max_err"] = err(loss, ref_loss)
            row[f"{vname}_grad_rel_err"] = gerr
            row[f"{vname}_ms"] = do_bench(lambda: _train_step(c, inputs, opt))
            if vname == "kevolve":
                row["kevolve_decisions"] = sorted({f"{f.op}: {f.decision}" for rep in REPORTS for f in rep})
                row["kevolve_stats"] = stats.snapshot()
        except Exception as e:  # noqa: BLE001
            row[f"{vname}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc()
    if "kevolve_ms" in row and "inductor_ms" in row:
        row["kevolve_vs_inductor"] = row["inductor_ms"] / row["kevolve_ms"]
        row["kevolve_vs_eager"] = row["eager_ms"] / row["kevolve_ms"]
    del ref_grads, saved
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return row


def plot(rows: list[dict], path: Path, what: str = "forward") -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(rows)), 4))
    w = 0.27
    for i, (k, label) in enumerate([("eager", "eager"), ("inductor", "Inductor"), ("kevolve", "kevolve")]):
        ax.bar([j + (i - 1) * w for j in range(len(rows))],
               [r["eager_ms"] / r[f"{k}_ms"] if r.get(f"{k}_ms") else 0 for r in rows], w, label=label)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows])
    ax.set_ylabel("speedup over eager (higher is better)")
    ax.set_title(f"zoo {what}, {torch.cuda.get_device_name()} — torch {torch.__version__}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dlrm,seqrec,hstu,transformer,custom_op")
    ap.add_argument("--size", default="large")
    ap.add_argument("--budget", default="24,90s", help="per search: evaluations and/or wall time")
    ap.add_argument("--store", default="")
    ap.add_argument("--no-prewarm", action="store_true")
    ap.add_argument("--train", action="store_true", help="time a training step (forward+loss+backward), not a forward")
    ap.add_argument("--opt-step", action="store_true", help="--train: add an SGD optimizer step to each timed step")
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    store = Path(args.store or tempfile.mkdtemp(prefix="kevolve-zoo-"))
    os.environ["KEVOLVE_CACHE_DIR"] = str(store)
    import triton

    import torch_kevolve  # noqa: F401  (registers the backend)

    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    print(json.dumps(meta), flush=True)
    rows = []
    for name in filter(None, args.models.split(",")):
        t0 = time.time()
        try:
            if args.train:
                row = run_model_train(name, args.size, store, args.budget, not args.no_prewarm, args.opt_step)
            else:
                row = run_model(name, args.size, store, args.budget, not args.no_prewarm)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory building one model: the others still run
            row = {"model": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            traceback.print_exc()
        print(json.dumps({k: v for k, v in row.items() if k not in ("kevolve_decisions", "prewarm", "prewarm_decisions")},
                         default=str),
              f"({time.time() - t0:.0f}s)", flush=True)
        for d in row.get("kevolve_decisions", []):
            print("   ", d)
        rows.append(row)
        (out / ("bench_zoo_train.json" if args.train else "bench_zoo.json")).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    rows_ok = [r for r in rows if r.get("eager_ms")]
    plot(rows_ok, out / ("bench_zoo_train.png" if args.train else "bench_zoo.png"),
         "training step" + (" + SGD" if args.opt_step else "") if args.train else "forward")
    print(f"\n{'model':12s} {'eager':>8s} {'induct':>8s} {'kevolve':>8s} {'vs ind':>7s} {'vs eag':>7s} ok")
    for r in rows:
        f = lambda k: f"{r[k]:8.3f}" if isinstance(r.get(k), float) else f"{'-':>8s}"  # noqa: E731
        print(f"{r['model']:12s} {f('eager_ms')} {f('inductor_ms')} {f('kevolve_ms')} "
              f"{r.get('kevolve_vs_inductor', 0):6.2f}x {r.get('kevolve_vs_eager', 0):6.2f}x {r.get('kevolve_ok')}")
    with tarfile.open(out / "zoo_cache.tar", "w") as tf:
        if (store / "v1").exists():
            tf.add(store / "v1", arcname="v1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
