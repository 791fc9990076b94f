"""The ``kevolve`` command: explain a model; inspect, check, clean, share and plot the kernel store
(``kevolve cache ...``: the logic is in :mod:`torch_kevolve.cache_tools`)."""
from __future__ import annotations

import argparse
import importlib
import json
import os
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
    from .cache_tools import open_store

    return open_store(getattr(args, "dir", None))


def _filter(args: argparse.Namespace):
    from .cache_tools import Filter, parse_date

    return Filter(
        op=getattr(args, "op", None), family=getattr(args, "family", None), device=getattr(args, "device", None),
        since=parse_date(args.since) if getattr(args, "since", None) else None,
        before=parse_date(args.before) if getattr(args, "before", None) else None,
        min_speedup=getattr(args, "min_speedup", None),
    )


def cmd_cache_ls(args: argparse.Namespace) -> int:
    from .cache_tools import format_rows, list_rows

    rows = list_rows(_store(args), _filter(args))
    if args.json:
        print(json.dumps([{**vars(r), "short_key": r.short_key} for r in rows], indent=1))
    elif rows:
        print(format_rows(rows))
    print(f"{len(rows)} entries", file=sys.stderr)
    return 0


def cmd_cache_show(args: argparse.Namespace) -> int:
    from .cache_tools import entry_json, format_show, resolve_key

    e = resolve_key(_store(args), args.key)
    if args.tree:
        from .search.tree import SearchTree

        doc = (e.meta.get("search") or {}).get("tree")
        if not doc:
            print(f"entry {e.key} has no search tree (searched before trees were kept?)", file=sys.stderr)
            return 1
        print(SearchTree.from_json(doc).replay())
        return 0
    print(json.dumps(entry_json(e), indent=1, default=str) if args.json else format_show(e))
    return 0


def cmd_cache_stats(args: argparse.Namespace) -> int:
    from .cache_tools import compute_stats, format_stats

    st = compute_stats(_store(args), _filter(args))
    print(json.dumps(st.to_json(), indent=1) if args.json else format_stats(st))
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from .cache_tools import format_verify, verify_store
    from .config import Settings

    settings = Settings.from_env()
    results = verify_store(_store(args), _filter(args), executor=args.executor or settings.executor,
                           seeds=args.seeds or settings.seeds, mark=not args.no_mark, progress=args.progress,
                           timeout_s=settings.eval_timeout_s)
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=1))
    else:
        print(format_verify(results))
    return 1 if any(r.status in ("failed", "corrupt") for r in results) else 0


def cmd_cache_refresh(args: argparse.Namespace) -> int:
    from .cache_tools import format_refresh, refresh_store

    results = refresh_store(_store(args), _filter(args), write=args.yes, retime=args.retime, progress=args.progress)
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=1, default=str))
    else:
        print(format_refresh(results, args.yes))
    return 1 if any(r.status == "failed" for r in results) else 0


def cmd_cache_prune(args: argparse.Namespace) -> int:
    from .cache_tools import PruneCriteria, format_prune, prune

    crit = PruneCriteria(older_than_days=args.older_than, other_versions=args.version, device=args.device,
                         failed_verify=args.failed_verify)
    print(format_prune(prune(_store(args), crit, yes=args.yes), args.yes))
    return 0


def cmd_cache_export(args: argparse.Namespace) -> int:
    from .cache_tools import export_store

    rep = export_store(_store(args), args.out, _filter(args), include_shipped=args.include_shipped)
    for key, why in rep.skipped:
        print(f"skipped {key}: {why}", file=sys.stderr)
    print(f"exported {len(rep.keys)} entries to {rep.path}")
    return 0


def cmd_cache_import(args: argparse.Namespace) -> int:
    from .cache_tools import format_import, import_tarball

    rep = import_tarball(_store(args), args.src, overwrite=args.overwrite, progress=args.progress)
    print(format_import(rep))
    return 1 if rep.refused else 0


def cmd_cache_diff(args: argparse.Namespace) -> int:
    from .cache_tools import CacheToolError, diff_stores, format_diff, open_store

    for d in (args.store_a, args.store_b):
        if not os.path.isdir(d):
            raise CacheToolError(f"{d} is not a directory")
    res = diff_stores(open_store(args.store_a), open_store(args.store_b))
    print(json.dumps(res.to_json(), indent=1) if args.json else format_diff(res, args.store_a, args.store_b))
    return 0 if res.identical else 1


def cmd_cache_report(args: argparse.Namespace) -> int:
    from .cache_tools import write_report

    print(f"wrote {write_report(_store(args), args.out, _filter(args))}")
    return 0


def cmd_prewarm(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .config import Settings
    from .prewarm import Report, format_report, prewarm

    over: dict[str, Any] = {}
    if args.cache_dir:
        over["cache_dir"] = args.cache_dir
    if args.budget:
        over["budget"] = args.budget
    if args.executor:
        over["executor"] = args.executor
    if args.contest:
        over["contest"] = args.contest
    settings = Settings.from_env(over)
    settings = replace(settings, mode="offline")
    models = [m for m in args.models.split(",") if m] if args.models else None
    report = Report()
    rc = 0
    try:
        prewarm(models=models, targets=args.targets, size=args.size, settings=settings, device=args.device,
                compile_models=not args.queue_only, retry_failed=args.retry_failed, progress=args.progress,
                report=report)
    except KeyboardInterrupt:
        rc = 130
    except ValueError as e:
        print(f"kevolve prewarm: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=1) if args.json else format_report(report))
    if rc == 0 and (report.compile_errors or any(r.status == "error" for r in report.rows)):
        rc = 1
    return rc


def _add_prewarm_parser(sub: Any) -> None:
    p = sub.add_parser(
        "prewarm", help="compile models in offline mode, then search and store every queued miss",
        description="Compile the zoo models (or the given module:function targets) with backend kevolve in offline "
        "mode to queue their misses, then search every queued spec not yet stored (including those queued by "
        "KEVOLVE_MODE=offline runs) and store the winners. Resumable: rerun after an interruption.")
    p.add_argument("targets", nargs="*", metavar="MODULE:FUNCTION",
                   help="user models: functions returning (model, inputs); given alone, the zoo is not compiled")
    p.add_argument("--models", default=None, help="zoo models, comma-separated (default: all, unless targets given)")
    p.add_argument("--size", choices=["small", "large"], default="small", help="zoo model size (large: GPU-sized)")
    p.add_argument("--device", default=None, help="where zoo models run and kernels are searched for "
                   "(default: cuda if available, else cpu)")
    p.add_argument("--budget", default=None, help="per search: '64' evaluations, '120s' wall, '64,120s' (KEVOLVE_BUDGET)")
    p.add_argument("--executor", choices=["local", "inprocess", "ray"], default=None,
                   help="where candidates run: the parallel harness (local, default), this process, or ray")
    p.add_argument("--contest", choices=["auto", "all", "none"], default=None,
                   help="contest ops Inductor lowers itself (KEVOLVE_CONTEST)")
    p.add_argument("--cache-dir", "--dir", dest="cache_dir", default=None, help="the user store and queue (KEVOLVE_CACHE_DIR)")
    p.add_argument("--queue-only", action="store_true", help="compile nothing: only search what is queued")
    p.add_argument("--retry-failed", action="store_true", help="search again specs where no kernel was found before")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    p.set_defaults(fn=cmd_prewarm)


def _add_cache_parsers(sub: Any) -> None:
    cache = sub.add_parser("cache", help="inspect, check, clean, share and plot the kernel store")
    csub = cache.add_subparsers(dest="cache_cmd", required=True)

    def parser(name: str, fn: Any, help: str, filters: bool = False, store: bool = True) -> argparse.ArgumentParser:
        p = csub.add_parser(name, help=help, description=help)
        if store:
            p.add_argument("--dir", "--cache-dir", dest="dir", default=None,
                           help="the store directory (default: the user store + the shipped kernel_cache/)")
        if filters:
            p.add_argument("--op", default=None, help="op name (substring) or family")
            p.add_argument("--family", default=None)
            p.add_argument("--device", default=None, help="device type (cpu, cuda) or part of its name (H100)")
            p.add_argument("--since", default=None, metavar="DATE", help="searched on or after DATE (YYYY-MM-DD)")
            p.add_argument("--before", default=None, metavar="DATE", help="searched before DATE")
            p.add_argument("--min-speedup", type=float, default=None, metavar="X")
        p.set_defaults(fn=fn)
        return p

    ls = parser("ls", cmd_cache_ls, "list entries", filters=True)
    ls.add_argument("--json", action="store_true")
    show = parser("show", cmd_cache_show, "one entry: source, metadata, how the search found it")
    show.add_argument("key", help="a key or a unique prefix of it (the short key `ls` prints will do)")
    show.add_argument("--tree", action="store_true", help="replay the search tree stored with the kernel")
    show.add_argument("--json", action="store_true")
    st = parser("stats", cmd_cache_stats, "counts, speedup and percent-of-floor distributions, search time", filters=True)
    st.add_argument("--json", action="store_true")
    ve = parser("verify", cmd_cache_verify, "re-check checksums, and re-run this device's kernels against the "
                "reference; failures are marked in the user layer (exit 1 if any)", filters=True)
    ve.add_argument("--executor", choices=["local", "inprocess"], default=None,
                    help="worker pool (default, isolated) or this process (KEVOLVE_EXECUTOR)")
    ve.add_argument("--seeds", type=int, default=None, help="random input sets per entry (KEVOLVE_SEEDS)")
    ve.add_argument("--no-mark", action="store_true", help="report only; write nothing")
    ve.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    ve.add_argument("--json", action="store_true")
    rf = parser("refresh", cmd_cache_refresh, "bring user-layer kernels searched from an older template source "
                "to the current one (template fixes, device asserts): a dry run unless --yes (exit 1 if a "
                "--retime verification failed)", filters=True)
    rf.add_argument("--retime", action="store_true", help="verify and time old and new source on this machine's "
                    "device first; rewrite only what verifies, with the new time")
    rmode = rf.add_mutually_exclusive_group()
    rmode.add_argument("--dry-run", dest="yes", action="store_false", help="list what is stale (the default)")
    rmode.add_argument("--yes", dest="yes", action="store_true", help="rewrite the stale entries")
    rf.set_defaults(yes=False)
    rf.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    rf.add_argument("--json", action="store_true")
    pr = parser("prune", cmd_cache_prune, "remove user-layer entries matching ALL the criteria given "
                "(a dry run unless --yes); the shipped layer is never touched")
    pr.add_argument("--older-than", type=float, default=None, metavar="DAYS")
    pr.add_argument("--version", action="store_true", help="torch/triton/template versions other than the running ones")
    pr.add_argument("--device", default=None, help="device type or part of its name")
    pr.add_argument("--failed-verify", action="store_true", help="marked failed by `verify`, or corrupt files")
    mode = pr.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="yes", action="store_false", help="list what would go (the default)")
    mode.add_argument("--yes", dest="yes", action="store_true", help="delete")
    pr.set_defaults(yes=False)
    ex = parser("export", cmd_cache_export, "write a .tar.gz of entries with a MANIFEST.json of checksums", filters=True)
    ex.add_argument("out", metavar="OUT.tar.gz")
    ex.add_argument("--include-shipped", action="store_true", help="also the shipped kernel_cache/ entries")
    im = parser("import", cmd_cache_import, "import an export into the user store; bad entries are refused "
                "and named, good ones imported (exit 1 if any refused)")
    im.add_argument("src", metavar="IN.tar.gz")
    im.add_argument("--overwrite", action="store_true", help="replace entries that exist with other content")
    im.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    di = parser("diff", cmd_cache_diff, "compare two store directories (exit 1 if they differ)", store=False)
    di.add_argument("store_a", metavar="STORE_A")
    di.add_argument("store_b", metavar="STORE_B")
    di.add_argument("--json", action="store_true")
    rp = parser("report", cmd_cache_report, "write one self-contained HTML page with plots and a table", filters=True)
    rp.add_argument("out", metavar="OUT.html")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kevolve", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("explain", help="show the long-tail ops of a model and what kevolve does with them")
    ex.add_argument("target", help="module:function returning (model, inputs)")
    ex.add_argument("--mode", default="cache", choices=["jit", "offline", "cache", "off"])
    ex.set_defaults(fn=cmd_explain)
    _add_prewarm_parser(sub)
    _add_cache_parsers(sub)
    args = p.parse_args(argv)
    from .cache_tools import CacheToolError

    try:
        return int(args.fn(args))
    except CacheToolError as e:
        print(f"kevolve {args.cmd}{' ' + args.cache_cmd if args.cmd == 'cache' else ''}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
