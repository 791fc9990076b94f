"""On a GPU: what eager and our kernels do with an index eager rejects (issue 10, part 3).

    PYTHONPATH=. python3 scripts/gpu_asserts.py [--json PATH]

Each scenario runs in its own process (a device-side assert leaves the CUDA context unusable): first the
valid call (must equal eager: no false assert), then one index made invalid, then a synchronize. It
reports whether that raised and the error's first line. Scenarios: eager, our kernel launched as the
runtime does (``kernels.launch``, the custom-op route), and for embedding_bag the compiled graph with the
shipped kernel through both routes (Triton route: Inductor's own launch of the kernel)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

F_SCEN = ("eager", "launch")


def _embedding_bag(dev):
    import torch

    w = torch.randn(1_000_000, 128, device=dev)
    idx = torch.randint(0, 1_000_000, (327_680,), device=dev)
    off = torch.arange(0, 327_680, 20, device=dev)

    def fn(w, i, o):
        return torch.nn.functional.embedding_bag(i, w, o, mode="sum")

    def spec_inputs():
        from torch_kevolve.families import get_family

        fam = get_family("embedding_bag")
        return fam, fam.spec_for(w, idx, off, None, 0, False, -1), [w, idx, off, None], 1
    return fn, (w, idx, off), 1, spec_inputs


def _index_add(dev):
    import torch

    x = torch.randn(4096, 64, device=dev)
    idx = torch.randint(0, 4096, (8192,), device=dev)
    src = torch.randn(8192, 64, device=dev)

    def fn(x, i, s):
        return x.index_add(0, i, s)

    def spec_inputs():
        from torch_kevolve.families import get_family
        from torch_kevolve.families.scatter import INDEX_PUT

        fam = get_family("scatter")
        return fam, fam.spec_for(INDEX_PUT, x, idx, src, 0, "sum", True), [x, idx, src], 1
    return fn, (x, idx, src), 1, spec_inputs


def _scatter_add(dev):
    import torch

    x = torch.randn(4096, 64, device=dev)
    idx = torch.randint(0, 4096, (8192, 64), device=dev)
    src = torch.randn(8192, 64, device=dev)

    def fn(x, i, s):
        return x.scatter_add(0, i, s)

    def spec_inputs():
        from torch_kevolve.families import get_family
        from torch_kevolve.families.scatter import SCATTER_ADD

        fam = get_family("scatter")
        return fam, fam.spec_for(SCATTER_ADD, x, idx, src, 0, "sum", True), [x, idx, src], 1
    return fn, (x, idx, src), 1, spec_inputs


def _searchsorted(dev):
    import torch

    seq = torch.randn(1024, device=dev)
    sorter = torch.argsort(seq)
    v = torch.randn(1 << 20, device=dev)

    def fn(s, v, so):
        return torch.searchsorted(s, v, sorter=so)

    def spec_inputs():
        from torch_kevolve.families import get_family
        from torch_kevolve.families.bucketize import SEARCHSORTED

        fam = get_family("bucketize")
        return fam, fam.spec_for(SEARCHSORTED, v, seq, sorter, False, False), [v, seq, sorter], 2
    return fn, (seq, v, sorter), 2, spec_inputs


OPS = {"embedding_bag": _embedding_bag, "index_add": _index_add, "scatter_add": _scatter_add,
       "searchsorted": _searchsorted}


def child(op: str, how: str) -> dict:
    import torch

    fn, args, bad_arg, spec_inputs = OPS[op]("cuda")
    res: dict = {"op": op, "how": how}
    if how == "eager":
        run = fn
    elif how == "launch":
        from torch_kevolve.kernels import launch, load_module

        fam, spec, inputs, bad_in = spec_inputs()
        cands = fam.candidates(spec)
        res["templates"] = sorted({c.template for c in cands})
        firsts = {}
        for c in cands:
            firsts.setdefault(c.template, c)
        res["good_ok"] = {}
        for t, c in firsts.items():  # every template agrees with eager on the valid call
            got = launch(load_module(c.source), fam.call_plan(spec, c), inputs)
            ref = fam.eager(spec, inputs)
            res["good_ok"][t] = all(torch.allclose(g.float(), r.float(), rtol=1e-4, atol=1e-3) for g, r in zip(got, ref))
        cand = next(iter(firsts.values()))
        res["template"] = cand.template
        mod, plan = load_module(cand.source), fam.call_plan(spec, cand)

        def run(*a):
            ins = list(inputs)
            ins[bad_in] = a[bad_arg]
            return launch(mod, plan, ins)
    else:  # compiled with the kevolve backend, store kernels only, on one route
        route = how.split(":")[1]
        from torch_kevolve import stats

        run = torch.compile(fn, backend="kevolve", options={"mode": "cache", "route": route})
        ok = run(*args)
        ref = fn(*args)
        torch.cuda.synchronize()
        res["good_ok"] = bool(torch.allclose(ok.float() if torch.is_tensor(ok) else ok[0].float(),
                                             ref.float() if torch.is_tensor(ref) else ref[0].float(),
                                             rtol=1e-4, atol=1e-3))
        res["served"] = stats.snapshot()
    bad = list(args)
    b = bad[bad_arg].clone()
    b.view(-1)[b.numel() // 2] = (b.max() + 10_000_000) if op != "searchsorted" else 5000
    bad[bad_arg] = b
    try:
        run(*bad)
        torch.cuda.synchronize()
        res["raised"] = False
    except Exception as e:  # noqa: BLE001
        res["raised"] = True
        res["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    ap.add_argument("--child", nargs=2, default=None)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(*a.child), default=str), flush=True)
        return 0
    rows = []
    plans = [(op, how) for op in OPS for how in F_SCEN]
    plans += [("embedding_bag", "compiled:triton"), ("embedding_bag", "compiled:custom_op")]
    for op, how in plans:
        p = subprocess.run([sys.executable, __file__, "--child", op, how], capture_output=True, text=True, timeout=300)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        row = json.loads(line[7:]) if line else {"op": op, "how": how, "child_failed": p.returncode,
                                                  "tail": (p.stdout + p.stderr)[-600:]}
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
