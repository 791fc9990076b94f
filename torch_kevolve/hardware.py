"""Device ceilings measured once per device and cached on disk: copy bandwidth (bytes/s) and the
dense matmul rate (FLOP/s, bf16 tensor cores and fp32). They turn times into % of the floor and a
memory- vs compute-bound verdict; prompts quote them too."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger("torch_kevolve")
_mem: dict[tuple[str, str], float] = {}


def _cache_file() -> Path:
    from .config import default_cache_dir

    return default_cache_dir() / "hardware.json"


def _bench(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=50, rep=200, return_mode="median"))


def measure_copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy of 1 GiB, bytes read + written per second (as the baseline does)."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    return 2 * n / (_bench(lambda: b.copy_(a)) * 1e-3)


def measure_matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of an 8192³ cuBLAS matmul (bf16: tensor cores; fp32: as torch runs it by default)."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / (_bench(lambda: a @ b) * 1e-3)


_MEASURES: dict[str, Callable[[torch.device], float]] = {
    "copy_bw": measure_copy_bandwidth,
    "matmul_bf16": lambda d: measure_matmul_rate(d, torch.bfloat16),
    "matmul_fp32": lambda d: measure_matmul_rate(d, torch.float32),
}


def ceiling(device: torch.device | str, what: str) -> float | None:
    """One ceiling (``copy_bw``, ``matmul_bf16``, ``matmul_fp32``) for a CUDA device; None elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if (name, what) in _mem:
        return _mem[(name, what)]
    f = _cache_file()
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        data = {}
    row = data.setdefault(name, {})
    if what not in row:
        row[what] = _MEASURES[what](device)
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, f)
        except OSError as e:
            log.warning("could not cache hardware figures in %s: %s", f, e)
    _mem[(name, what)] = float(row[what])
    return _mem[(name, what)]


def copy_bandwidth(device: torch.device | str) -> float | None:
    return ceiling(device, "copy_bw")


def matmul_rate(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> float | None:
    return ceiling(device, "matmul_fp32" if dtype == torch.float32 else "matmul_bf16")


def roofline(nbytes: int, flops: int, ms: float | None, bw: float | None, rate: float | None) -> dict:
    """Achieved rates, the floor (the larger of the memory and compute times) and which bounds."""
    out: dict = {"bytes_moved": nbytes}
    if flops:
        out["flops"] = flops
    if not ms:
        return out
    out["achieved_GBps"] = nbytes / (ms * 1e-3) / 1e9
    if flops:
        out["achieved_TFLOPs"] = flops / (ms * 1e-3) / 1e12
    mem_ms = nbytes / bw * 1e3 if bw else None
    cmp_ms = flops / rate * 1e3 if (flops and rate) else None
    floors = [(t, k) for t, k in ((mem_ms, "memory"), (cmp_ms, "compute")) if t is not None]
    if floors:
        floor_ms, bound = max(floors)
        out.update(floor_ms=floor_ms, pct_of_floor=100.0 * floor_ms / ms, bound=bound)
        if mem_ms is not None:
            out["pct_of_bandwidth"] = 100.0 * mem_ms / ms
        if cmp_ms is not None:
            out["pct_of_matmul_rate"] = 100.0 * cmp_ms / ms
    return out
