"""How fast the H100 moves rows in a random order: the rate a scatter's "random rows" side can reach.

    PYTHONPATH=. python3 scripts/gather_rate.py [--mb 128] [--row-bytes 128,256,512,1024,2048] [--json OUT.json]

The scatter rows of the bench (index_add, scatter_add, scatter_reduce on 262,144 x 128 fp32 rows with a
random index) are charged the copy-bandwidth floor: self read, src read and out written once each. One
side of any plan is random, by rows: a pull plan (csr: sort by destination, then per output row
gather its src rows) reads src in a random row order; a push plan (Inductor's: copy self, then atomics)
writes out in one. This times, for rows of R bytes, S MB per tensor, after a read flush (L2 evicted
and clean; GPU time):

* ``copy``: dst = src, sequential (the floor's rate);
* ``gather perm``: dst = src[perm] for a random permutation (every row read once, random order);
* ``gather randint``: dst = src[idx] for a random index with repeats (the bench's index);
* ``scatter perm``: dst[perm] = src (random-order row writes, no atomics);
* ``pull add``: out = x + src[perm] in one Triton kernel (self read in order, src gathered, out
  written in order): the csr plan's best case -- one src row per output row, no sort, no lockstep;

each as % of the copy floor of the same bytes (the rate a plan with that access pattern can reach
at best)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _pull_add(x_ptr, src_ptr, perm_ptr, out_ptr, n_rows, D: tl.constexpr, BLOCK_N: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < n_rows
    d = tl.arange(0, D)
    p = tl.load(perm_ptr + n, mask=nm, other=0).to(tl.int64)
    x = tl.load(x_ptr + n[:, None] * D + d[None, :], mask=nm[:, None])
    s = tl.load(src_ptr + p[:, None] * D + d[None, :], mask=nm[:, None])
    tl.store(out_ptr + n[:, None] * D + d[None, :], x + s, mask=nm[:, None])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=128.0, help="bytes of each tensor, MB")
    ap.add_argument("--row-bytes", default="128,256,512,1024,2048")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    from torch_kevolve.hardware import copy_bandwidth

    from scripts.bench import do_bench, do_bench_clean

    bw = copy_bandwidth("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s; times in us after a read flush (do_bench's in brackets)")
    for rb in (int(v) for v in a.row_bytes.split(",") if v):
        d = rb // 4
        n = int(a.mb * (1 << 20)) // rb
        src = torch.randn(n, d, device="cuda", generator=g)
        x = torch.randn(n, d, device="cuda", generator=g)
        dst = torch.empty_like(src)
        perm = torch.randperm(n, device="cuda", generator=g)
        perm32 = perm.to(torch.int32)
        idx = torch.randint(0, n, (n,), device="cuda", generator=g)
        tb = n * rb
        block_n = max(1, min(64, 8192 // d))
        grid = (triton.cdiv(n, block_n),)

        def pull():
            _pull_add[grid](x, src, perm32, dst, n, D=d, BLOCK_N=block_n, num_warps=4)

        pull()
        torch.testing.assert_close(dst, x + src[perm])
        ops = [
            ("copy", 2 * tb, lambda: dst.copy_(src)),
            ("gather perm", 2 * tb + n * 8, lambda: torch.index_select(src, 0, perm, out=dst)),
            ("gather randint", 2 * tb + n * 8, lambda: torch.index_select(src, 0, idx, out=dst)),
            ("scatter perm", 2 * tb + n * 8, lambda: dst.index_copy_(0, perm, src)),
            ("pull add", 3 * tb + n * 4, pull),
        ]
        for name, nbytes, fn in ops:
            clean, db = do_bench_clean(fn), do_bench(fn)
            floor = nbytes / bw * 1e3
            r = {"row_bytes": rb, "rows": n, "what": name, "bytes": nbytes, "floor_ms": floor,
                 "clean_ms": clean, "do_bench_ms": db, "clean_pct_floor": 100 * floor / clean,
                 "do_bench_pct_floor": 100 * floor / db}
            rows.append(r)
            print(f"rows of {rb:5d} B  {name:15s} floor {floor * 1e3:7.1f}  clean {clean * 1e3:7.1f} "
                  f"({r['clean_pct_floor']:5.1f}%)  [{db * 1e3:7.1f} ({r['do_bench_pct_floor']:5.1f}%)]", flush=True)
        del src, x, dst
    if a.json:
        Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                            "triton": triton.__version__, "copy_bw": bw, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
