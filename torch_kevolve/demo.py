"""``make demo``: compile a small recommendation model with ``backend="kevolve"`` twice, in two
processes sharing one store. The first detects the embedding bags, searches kernels and stores them;
the second finds them in the store and runs no search. Both are checked against eager."""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time


def _setup_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    os.environ.setdefault("TRITON_INTERPRET", "1")
    return "cpu"


def phase(name: str) -> dict:
    device = _setup_device()
    import torch

    from torch_kevolve import stats
    from torch_kevolve.explain import format_findings
    from torch_kevolve.lowering import REPORTS
    from torch_kevolve.zoo import make_embedding_bag_mlp

    size = os.environ.get("KEVOLVE_DEMO_SIZE", "small" if device == "cpu" else "large")
    model, inputs = make_embedding_bag_mlp(size, device=device)
    with torch.no_grad():
        ref = model(*inputs)
        t0 = time.time()
        compiled = torch.compile(model, backend="kevolve")
        out = compiled(*inputs)
        compile_s = time.time() - t0
        again = compiled(*inputs)
    err = float((out - ref).abs().max())
    findings = [f for rep in REPORTS for f in rep]
    res = {
        "phase": name, "device": device, "size": size, "compile_s": round(compile_s, 1),
        "max_abs_err_vs_eager": err, "match": bool(torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
                                                    and torch.allclose(again, ref, rtol=1e-4, atol=1e-5)),
        "stats": stats.snapshot(), "findings": format_findings(findings) if findings else
        "(graph loaded from Inductor's cache: the pass did not need to run)",
    }
    if device == "cuda":
        from triton.testing import do_bench

        with torch.no_grad():
            eager_ms = do_bench(lambda: model(*inputs), return_mode="median")
            # kevolve first: after dynamo.reset() the same module would be re-captured by Inductor.
            kev_ms = do_bench(lambda: compiled(*inputs), return_mode="median")
            torch._dynamo.reset()
            ind = torch.compile(model)
            ind(*inputs)
            ind_ms = do_bench(lambda: ind(*inputs), return_mode="median")
        res["timing_ms"] = {"eager": eager_ms, "inductor": ind_ms, "kevolve": kev_ms}
    return res


def show(res: dict) -> None:
    print(f"\n=== {res['phase']}: device={res['device']} size={res['size']} compile {res['compile_s']} s ===")
    print(res["findings"])
    st = res["stats"]
    print(f"searches run: {st.get('searches', 0)}   store hits: {st.get('store_hits', 0)}   "
          f"kernels called: {st.get('kernel_calls', 0)} (custom-op route) / rewritten on the Triton route: "
          f"{st.get('rewritten_triton', 0)}   runtime fallbacks: {st.get('runtime_fallbacks', 0)}")
    print(f"matches eager: {res['match']} (max abs err {res['max_abs_err_vs_eager']:.2e})")
    if "timing_ms" in res:
        t = res["timing_ms"]
        print("time per forward: " + ", ".join(f"{k} {v:.3f} ms" for k, v in t.items()))
    elif res["device"] == "cpu":
        print("(no GPU: kernels ran in Triton's CPU interpreter — timings there mean nothing, only correctness)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.phase:
        print("KEVOLVE_RESULT " + json.dumps(phase(args.phase)))
        return 0
    env = dict(os.environ)
    if "KEVOLVE_CACHE_DIR" not in env:
        env["KEVOLVE_CACHE_DIR"] = tempfile.mkdtemp(prefix="kevolve-demo-store-")
    print(f"kernel store for this demo: {env['KEVOLVE_CACHE_DIR']}")
    ok = True
    for name in ("first process: detect, search, store", "second process: reuse from the store"):
        p = subprocess.run([sys.executable, "-m", "torch_kevolve.demo", "--phase", name], env=env,
                           capture_output=True, text=True)
        line = next((l for l in p.stdout.splitlines() if l.startswith("KEVOLVE_RESULT ")), None)
        if p.returncode != 0 or line is None:
            print(p.stdout[-4000:], p.stderr[-4000:])
            return 1
        res = json.loads(line[len("KEVOLVE_RESULT "):])
        show(res)
        ok &= res["match"]
        if name.startswith("second") and res["stats"].get("searches", 0):
            print("ERROR: the second process searched again")
            ok = False
    print("\ndemo " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
