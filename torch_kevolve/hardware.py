"""Device ceilings measured once per device and cached on disk (copy bandwidth today)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("torch_kevolve")
_mem: dict[str, float] = {}


def _cache_file() -> Path:
    from .config import default_cache_dir

    return default_cache_dir() / "hardware.json"


def measure_copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy of 1 GiB, bytes read + written per second (as the baseline does)."""
    from triton.testing import do_bench

    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=50, rep=200, return_mode="median")
    return 2 * n / (ms * 1e-3)


def copy_bandwidth(device: torch.device | str) -> float | None:
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if name in _mem:
        return _mem[name]
    f = _cache_file()
    data: dict = {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        data = {}
    if name not in data:
        data[name] = {"copy_bw": measure_copy_bandwidth(device)}
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, f)
        except OSError as e:
            log.warning("could not cache hardware figures in %s: %s", f, e)
    _mem[name] = float(data[name]["copy_bw"])
    return _mem[name]
