"""The kernels we ship in kernel_cache/ are valid entries: checksummed, statically clean, launchable."""
from __future__ import annotations

from pathlib import Path

from torch_kevolve.families import get_family
from torch_kevolve.harness.static_check import check_source
from torch_kevolve.store import KernelStore

SHIPPED = Path(__file__).resolve().parent.parent / "kernel_cache"


def test_shipped_entries_are_valid():
    files = list(SHIPPED.rglob("*.json"))
    store = KernelStore(SHIPPED / "unused-user-layer", shipped=SHIPPED, readonly=True)
    entries = list(store.entries())
    assert files and len(entries) == len(files)  # none skipped as corrupt
    for e in entries:
        assert e.layer == "shipped"
        assert check_source(e.candidate.source).ok
        plan = get_family(e.spec.family).call_plan(e.spec, e.candidate)
        assert plan.grid and all(g > 0 for g in plan.grid)
        assert e.meta["device"].startswith("NVIDIA H100")
