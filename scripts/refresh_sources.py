"""Bring stored template kernels up to their family's current template source (``kevolve cache
refresh``, with the flags the device runs use; the logic is ``cache_tools.refresh_store``).

A store entry carries the source it was verified with. When a template changes (a fix, or the index
range asserts of issue 10), entries searched before keep the old text. Each stale entry gets the
current source for its template and config: same key, new checksum, ``meta["source_refreshed"]``.
``--retime`` (on the entries' device) verifies and times old source, new source, and new source with
Triton's device asserts off, and rewrites only what verified, with the new time.

    python scripts/refresh_sources.py                          # the shipped kernel_cache/, dry run
    python scripts/refresh_sources.py --write                  # rewrite them (timings not redone)
    PYTHONPATH=. python3 scripts/refresh_sources.py --retime --write --store DIR --json OUT.json   # GPU
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torch_kevolve.cache_tools import format_refresh, refresh_store  # noqa: E402
from torch_kevolve.store import KernelStore  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=ROOT / "kernel_cache", help="store root (default: kernel_cache/)")
    ap.add_argument("--write", action="store_true", help="rewrite stale entries (default: only report)")
    ap.add_argument("--retime", action="store_true", help="verify and time old and new source here (GPU)")
    ap.add_argument("--json", type=Path, default=None, help="write the results (with --retime: the timings) here")
    args = ap.parse_args(argv)
    results = refresh_store(KernelStore(args.store), write=args.write, retime=args.retime, progress=False)
    print(format_refresh(results, args.write, "--write"))
    if args.json is not None:
        args.json.write_text(json.dumps([vars(r) for r in results], indent=1, default=str))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
