"""How much of a small op's ``do_bench`` time is the L2 flush's doing.

    PYTHONPATH=. python3 scripts/flush_effect.py [--sizes-mb 16,32,...] [--cases a,b] [--json OUT.json]

``do_bench`` zeroes a 256 MB buffer before every call, which leaves L2 (50 MB on H100) full of dirty
lines: the timed call then pays for writing them back. This times (1) a device-to-device copy of S
bytes (S/2 read, S/2 written) and (2) the compiled calls of bench cases (``backend=kevolve``, cache
mode: the stored kernels) three ways each, median of 100 calls with CUDA events around the call only:

* ``zero``: after ``buf.zero_()`` of 256 MB, as ``do_bench`` does;
* ``read``: after ``buf.sum()`` of the same 256 MB: L2 is evicted as well but left clean;
* ``none``: back to back (small inputs may then be L2-resident: a bound, not a floor).

Every time is also given as % of the case's floor (bytes over the 1 GiB copy bandwidth). Also printed:
each flush's own GPU time, and each compiled call's wall time per call back to back (the host's pace):
where that exceeds flush + kernels, the GPU waits for the host inside the timed window."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr, EVICT: tl.constexpr, CS: tl.constexpr):
    off = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = off < n
    if EVICT:
        x = tl.load(x_ptr + off, mask=m, eviction_policy="evict_first")
    else:
        x = tl.load(x_ptr + off, mask=m)
    if CS:
        tl.store(y_ptr + off, x, mask=m, cache_modifier=".cs")
    else:
        tl.store(y_ptr + off, x, mask=m)


def triton_copies(src: torch.Tensor, dst: torch.Tensor) -> list:
    """A Triton copy of ``src`` (uint8, viewed as int32) into ``dst``, once per L2 hint: does a streaming
    load (``evict_first``) or store (``.cs``) leave do_bench's dirty lines in L2 instead of paying for
    their write-back inside the timed call?"""
    x, y = src.view(torch.int32), dst.view(torch.int32)
    n, block = x.numel(), 4096
    grid = (triton.cdiv(n, block),)
    out = []
    for name, ev, cs in (("plain", 0, 0), ("evict_first", 1, 0), ("store .cs", 0, 1), ("evict_first + .cs", 1, 1)):
        out.append((name, lambda ev=ev, cs=cs: _copy[grid](x, y, n, BLOCK=block, EVICT=ev, CS=cs, num_warps=8)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mb", default="16,32,64,128,256,512,1024")
    ap.add_argument("--cases", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--triton-copy", action="store_true",
                    help="also a Triton copy kernel per size with each L2 hint: the load's eviction policy "
                         "and the store's cache modifier")
    a = ap.parse_args()
    os.environ.setdefault("KEVOLVE_MODE", "cache")
    os.environ.setdefault("KEVOLVE_CACHE_DIR", tempfile.mkdtemp(prefix="kevolve-flush-"))
    import torch_kevolve  # noqa: F401
    from torch_kevolve.hardware import copy_bandwidth

    from scripts.bench import CASES, do_bench, timed_after, wall_us_per_call

    bw = copy_bandwidth("cuda")
    buf = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    flushes = {"zero": buf.zero_, "read": lambda: buf.sum(dtype=torch.int32), "none": None}
    rows = []

    # the flushes' own GPU time: a call whose host time exceeds flush + kernels leaves the GPU idle
    # between the start event and its first launch, and that gap lands in the row
    for k in ("zero", "read"):
        ms = timed_after(flushes[k], None)
        print(f"flush {k}: {ms * 1e3:.1f} us of GPU time", flush=True)
        rows.append({"what": f"flush {k}", "gpu_ms": ms})

    def row(name: str, nbytes: int, fn) -> None:
        r = {"what": name, "bytes": nbytes, "floor_ms": nbytes / bw * 1e3, "do_bench_ms": do_bench(fn)}
        if name.endswith(("kevolve", "inductor")):
            r["host_us_per_call"] = wall_us_per_call(fn)  # back to back: the host's pace when it is the slower
        for k, fl in flushes.items():
            r[f"{k}_ms"] = timed_after(fn, fl)
        for k in ("do_bench", "zero", "read", "none"):
            r[f"{k}_pct_floor"] = 100 * r["floor_ms"] / r[f"{k}_ms"]
        rows.append(r)
        host = f" | back to back {r['host_us_per_call']:.1f} us/call" if "host_us_per_call" in r else ""
        print(f"{name:34s} floor {r['floor_ms'] * 1e3:8.1f} us | " + "  ".join(
            f"{k} {r[f'{k}_ms'] * 1e3:8.1f} ({r[f'{k}_pct_floor']:5.1f}%)" for k in ("do_bench", "zero", "read", "none"))
            + host, flush=True)

    for mb in filter(None, a.sizes_mb.split(",")):
        n = int(float(mb) * (1 << 20)) // 2
        src = torch.empty(n, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        row(f"copy {mb} MB moved", 2 * n, lambda: dst.copy_(src))
        if a.triton_copy:
            for name, fn in triton_copies(src, dst):
                row(f"triton copy {mb} MB {name}", 2 * n, fn)
        del src, dst
    wanted = set(filter(None, a.cases.split(",")))
    for case in CASES:
        if case.name not in wanted:
            continue
        fn, args, nbytes = case.build("cuda")
        torch._dynamo.reset()
        c = torch.compile(fn, backend="kevolve")
        c(*args)
        row(f"{case.name} kevolve", nbytes, lambda: c(*args))
        torch._dynamo.reset()
        c = torch.compile(fn)
        c(*args)
        row(f"{case.name} inductor", nbytes, lambda: c(*args))
    if a.json:
        Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                            "copy_bw_TBps": bw / 1e12, "command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
