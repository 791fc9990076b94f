"""Bring stored template kernels up to their family's current template source.

A store entry carries the source it was verified with. When a template changes (a fix, or the index
range asserts of issue 10), entries searched before keep the old text. This script finds, for each
entry whose candidate came from a template, the family's current source for the same template (from
``family.candidates(spec)``) and rewrites the entry with it: same config, same key, new checksum, and
``meta["source_refreshed"]`` recording the old checksum and date.

``--retime`` (on the entries' device) verifies and times each stale entry's old and new source with
the search's own Evaluator in one process, the new one also with Triton's device asserts off (what the
asserts cost), and prints a table. With ``--write`` an entry is then rewritten only when its new source
verified; ``meta.time_ms`` becomes the new time and ``use`` false where that is slower than the entry's
baseline. Without ``--retime`` the entry's timings stay those of the old source (meta says so).

    python scripts/refresh_sources.py                          # the shipped kernel_cache/, dry run
    python scripts/refresh_sources.py --write                  # rewrite them (timings not redone)
    PYTHONPATH=. python3 scripts/refresh_sources.py --retime --write --store DIR   # on the GPU
"""
from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torch_kevolve.families import get_family  # noqa: E402
from torch_kevolve.store import Entry, KernelStore  # noqa: E402


def current_source(entry: Entry) -> str | None:
    """The family's source today for the entry's template, or None when it proposes no such template
    (an LLM-written kernel, a renamed template) or several different sources for it and none proposed
    with the entry's exact config (then the variant nearest the stored text, when one clearly is)."""
    fam = get_family(entry.spec.family)
    tmpl = entry.candidate.template
    if not entry.candidate.origin.startswith("template") or not tmpl:
        return None
    same = [c for c in fam.candidates(entry.spec) if c.template == tmpl]
    exact = {c.source for c in same if c.config == entry.candidate.config}
    sources = exact or {c.source for c in same}
    if len(sources) <= 1:
        return sources.pop() if sources else None
    # the template renders several sources (variants by config) and a mutation reached a config no
    # proposal has: the variant closest to the stored text, when it is clearly that one
    ranked = sorted(((difflib.SequenceMatcher(None, entry.candidate.source, s, autojunk=False).ratio(), s)
                     for s in sources), reverse=True)
    (best, src), (second, _) = ranked[0], ranked[1]
    return src if best > 0.9 and best - second > 0.02 else None


def retime(entry: Entry, src: str) -> dict:
    """Old source, new source, new source without device asserts: verified? and ms, on this device."""
    from torch_kevolve import kernels
    from torch_kevolve.search.evaluate import Evaluator

    fam = get_family(entry.spec.family)
    ev = Evaluator(fam, entry.spec)
    out: dict = {}
    for name, cand, asserts in (("old", entry.candidate, True), ("new", replace(entry.candidate, source=src), True),
                                ("new_no_asserts", replace(entry.candidate, source=src), False)):
        saved = kernels.compile_options
        if not asserts:
            kernels.compile_options = lambda: {}  # launch() reads it per call
        try:
            r = ev.evaluate(cand)
        finally:
            kernels.compile_options = saved
        out[f"{name}_ok"] = bool(r.ok)
        out[f"{name}_ms"] = r.time_ms
        if not r.ok:
            out[f"{name}_why"] = r.diagnostics.summary()[:300]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=ROOT / "kernel_cache", help="store root (default: kernel_cache/)")
    ap.add_argument("--write", action="store_true", help="rewrite stale entries (default: only report)")
    ap.add_argument("--retime", action="store_true", help="verify and time old and new source here (GPU)")
    ap.add_argument("--json", type=Path, default=None, help="with --retime: write the measurements here")
    args = ap.parse_args(argv)
    rows: list[dict] = []
    store = KernelStore(args.store)
    stale = kept = unknown = 0
    for e in sorted(store.entries(layer="user"), key=lambda e: e.key):
        src = current_source(e)
        if src is None:
            unknown += 1
            print(f"?  {e.key}: no single current source for template {e.candidate.template!r}; left as is")
            continue
        if src == e.candidate.source:
            kept += 1
            continue
        stale += 1
        meta = dict(e.meta)
        note: dict = {"from_checksum": e.checksum,
                      "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if args.retime:
            t = retime(e, src)
            rows.append({"key": e.key, "template": e.candidate.template, "stored_ms": e.meta.get("time_ms"),
                         "baseline_ms": e.meta.get("baseline_ms"), **t})
            print(f"   {e.key} ({e.candidate.template}): stored {_ms(e.meta.get('time_ms'))}, old {_ms(t['old_ms'])}, "
                  f"new {_ms(t['new_ms'])}{'' if t['new_ok'] else ' FAILED ' + t.get('new_why', '')}, "
                  f"new without asserts {_ms(t['new_no_asserts_ms'])}, baseline {_ms(e.meta.get('baseline_ms'))}",
                  flush=True)
            if not t["new_ok"]:
                continue
            import torch

            note.update(old_ms=t["old_ms"], new_ms=t["new_ms"], new_no_asserts_ms=t["new_no_asserts_ms"],
                        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
            meta["time_ms"] = t["new_ms"]
            base = meta.get("baseline_ms")
            if base:
                meta["speedup"] = base / t["new_ms"]
                meta["use"] = bool(meta.get("use", True)) and t["new_ms"] <= base
        else:
            note["timings"] = "measured with the previous source"
        print(f"{'W ' if args.write else '- '} {e.key} ({e.candidate.template})")
        if args.write:
            meta["source_refreshed"] = note
            store.put(Entry(e.spec, replace(e.candidate, source=src), meta))
    if args.json is not None:
        import json

        args.json.write_text(json.dumps(rows, indent=1, default=str))
    print(f"{stale} stale ({'rewritten' if args.write else 'not written: --write'}), {kept} current, {unknown} unknown")
    return 0


def _ms(v: object) -> str:
    return "-" if v is None else f"{float(v):.4f} ms"


if __name__ == "__main__":
    sys.exit(main())
