"""The ``kevolve`` command: explain a model, inspect the kernel store."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any


def _load_target(target: str) -> tuple[Any, tuple]:
    mod_name, _, fn_name = target.partition(":")
    if not fn_name:
        raise SystemExit(f"expected module:function returning (model, inputs), got {target!r}")
    fn = getattr(importlib.import_module(mod_name), fn_name)
    model, inputs = fn()
    return model, tuple(inputs)


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain, format_findings

    model, inputs = _load_target(args.target)
    print(format_findings(explain(model, inputs, mode=args.mode)))
    return 0


def _store(args: argparse.Namespace):
    from .config import Settings
    from .store import KernelStore

    opts = {"cache_dir": args.cache_dir} if getattr(args, "cache_dir", None) else {}
    return KernelStore.from_settings(Settings.from_env(opts))


def cmd_cache_ls(args: argparse.Namespace) -> int:
    store = _store(args)
    n = 0
    for e in store.entries():
        if args.op and args.op not in e.spec.op and args.op != e.spec.family:
            continue
        sp = e.meta.get("speedup")
        print(f"{e.key}  {e.layer:7s}  {e.spec.describe()}  "
              f"{'speedup %.2fx' % sp if isinstance(sp, (int, float)) else ''}  {e.meta.get('date', '')}")
        n += 1
    print(f"{n} entries", file=sys.stderr)
    return 0


def cmd_cache_show(args: argparse.Namespace) -> int:
    e = _store(args).get_by_key(args.key)
    if e is None:
        print(f"no entry {args.key}", file=sys.stderr)
        return 1
    if getattr(args, "tree", False):
        from .search.tree import SearchTree

        doc = (e.meta.get("search") or {}).get("tree")
        if not doc:
            print(f"entry {args.key} has no search tree (searched before trees were kept?)", file=sys.stderr)
            return 1
        print(SearchTree.from_json(doc).replay())
        return 0
    print(json.dumps({"key": e.key, "layer": e.layer, "spec": e.spec.to_json(),
                      "template": e.candidate.template, "config": e.candidate.cfg,
                      "origin": e.candidate.origin, "meta": e.meta}, indent=1, default=str))
    print("\n# --- kernel source ---\n" + e.candidate.source)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kevolve", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("explain", help="show the long-tail ops of a model and what kevolve does with them")
    ex.add_argument("target", help="module:function returning (model, inputs)")
    ex.add_argument("--mode", default="cache", choices=["jit", "offline", "cache", "off"])
    ex.set_defaults(fn=cmd_explain)
    cache = sub.add_parser("cache", help="inspect the kernel store")
    csub = cache.add_subparsers(dest="cache_cmd", required=True)
    ls = csub.add_parser("ls")
    ls.add_argument("--op", default=None)
    ls.add_argument("--cache-dir", default=None)
    ls.set_defaults(fn=cmd_cache_ls)
    show = csub.add_parser("show")
    show.add_argument("key")
    show.add_argument("--cache-dir", default=None)
    show.add_argument("--tree", action="store_true", help="replay the search tree stored with the kernel")
    show.set_defaults(fn=cmd_cache_show)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
