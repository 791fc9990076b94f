"""``kevolve prewarm``: compile models in offline mode to queue their misses, then search every
queued spec that is not stored yet and store the winners.

Resumable: each winner is durable as soon as ``store.put`` returns, and only then is its item
removed from the queue (under the queue's lock, atomically), so an interrupted run loses nothing
finished and a rerun skips what is stored. A spec whose search finds no verified kernel is kept
in the queue marked ``status: "no_kernel"`` and skipped by later runs unless ``retry_failed``; one for
which nothing could be proposed (a user's custom op with no LLM synthesizer configured) stays queued
unmarked, for a run that has an LLM."""
from __future__ import annotations

import importlib
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from . import queue
from .config import Settings
from .spec import OpSpec

log = logging.getLogger("torch_kevolve")


@dataclass
class Row:
    """One queued spec and what prewarm did with it."""

    key: str
    family: str
    op: str
    shape: str
    #: searched | stored (already) | no_kernel (kept queued, marked) | unserved (nothing proposed, e.g. a custom
    #: op without an LLM: kept queued) | skipped (no_kernel earlier) | error
    status: str
    baseline_ms: float | None = None
    best_ms: float | None = None
    speedup: float | None = None
    pct_of_floor: float | None = None
    time_s: float = 0.0
    evaluated: int = 0
    detail: str = ""


@dataclass
class Report:
    compiled: list[str] = field(default_factory=list)
    compile_errors: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    interrupted: bool = False
    wall_s: float = 0.0

    def to_json(self) -> dict:
        return {"compiled": self.compiled, "compile_errors": self.compile_errors, "interrupted": self.interrupted,
                "wall_s": self.wall_s, "rows": [asdict(r) for r in self.rows]}


def _shape(spec: OpSpec) -> str:
    return ", ".join("None" if a is None else f"{a.dtype.replace('torch.', '')}{list(a.shape)}" for a in spec.args)


def _short_op(op: str) -> str:
    return op.removeprefix("aten.").removesuffix(".default")


# -- collecting misses ------------------------------------------------------------------------------
def load_target(target: str) -> tuple[Any, tuple]:
    """``module:function`` returning ``(model, inputs)``."""
    mod_name, _, fn_name = target.partition(":")
    if not fn_name:
        raise ValueError(f"expected module:function returning (model, inputs), got {target!r}")
    model, inputs = getattr(importlib.import_module(mod_name), fn_name)()
    return model, tuple(inputs)


def zoo_targets(names: Sequence[str] | None, size: str = "small", device: str = "cpu") -> dict[str, Callable[[], tuple]]:
    from .zoo import MODELS

    names = list(MODELS) if names is None else list(names)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown zoo model(s) {unknown}; the zoo has {sorted(MODELS)}")
    return {n: (lambda n=n: MODELS[n](size=size, device=device)) for n in names}


def compile_offline(model: Any, inputs: tuple, settings: Settings) -> None:
    """One forward through ``torch.compile(backend="kevolve")`` in offline mode: the pass queues the
    misses. Inductor's FX graph cache and the AOT autograd cache are off, else a cached graph would
    skip the pass and queue nothing."""
    torch._dynamo.reset()
    opts = {"mode": "offline", "cache_dir": str(settings.cache_dir), "contest": settings.contest,
            "shipped_dir": None if settings.shipped_dir is None else str(settings.shipped_dir), "fx_graph_cache": False}
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
        torch.compile(model, backend="kevolve", options=opts)(*inputs)
    torch._dynamo.reset()


def collect(targets: dict[str, Callable[[], tuple]], settings: Settings, report: Report,
            progress: bool | None = None) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(targets), desc="compiling (offline)", unit="model", disable=_no_bar(progress))
    try:
        for name, build in targets.items():
            bar.set_postfix_str(name)
            try:
                model, inputs = build()
                compile_offline(model, inputs, settings)
                report.compiled.append(name)
            except Exception as e:  # noqa: BLE001 - one broken model does not stop the others
                log.warning("kevolve prewarm: compiling %s failed: %s: %s", name, type(e).__name__, e)
                report.compile_errors[name] = f"{type(e).__name__}: {e}"
            bar.update(1)
    finally:
        bar.close()


def _no_bar(progress: bool | None) -> bool | None:
    return None if progress is None else not progress  # None: tqdm decides (off when not a tty)


# -- searching the queue ----------------------------------------------------------------------------
def search_queue(settings: Settings, report: Report, timer: Any = None, retry_failed: bool = False,
                 progress: bool | None = None, on_done: Callable[[Row], None] | None = None,
                 store: Any = None) -> None:
    from tqdm.auto import tqdm

    from .families import get_family
    from .search import search_spec
    from .store import KernelStore

    store = store or KernelStore.from_settings(settings)
    items = queue.read(settings.cache_dir)
    todo: list[tuple[dict, OpSpec]] = []
    for it in items:
        try:
            spec = OpSpec.from_json(it["spec"])
        except Exception as e:  # noqa: BLE001
            report.rows.append(Row(it.get("key", "?"), "?", "?", "?", "error", detail=f"unreadable spec: {e}"))
            continue
        row = Row(spec.key, spec.family, _short_op(spec.op), _shape(spec), "")
        if store.get(spec) is not None:
            queue.remove(settings.cache_dir, [spec.key])  # stored by someone else (a JIT run, an import)
            row.status = "stored"
            report.rows.append(row)
        elif (why := _not_here(spec)) is not None:
            row.status, row.detail = "skipped", why  # stays queued for a run on the right machine
            report.rows.append(row)
        elif it.get("status") == "no_kernel" and not retry_failed:
            row.status, row.detail = "skipped", "no kernel found earlier (--retry-failed to search again)"
            report.rows.append(row)
        else:
            todo.append((it, spec))

    bar = tqdm(total=len(todo), desc="searching", unit="spec", disable=_no_bar(progress))
    try:
        for it, spec in todo:
            row = Row(spec.key, spec.family, _short_op(spec.op), _shape(spec), "")
            bar.set_postfix_str(f"{row.op} {row.shape}"[:60])
            t0 = time.perf_counter()
            try:
                with store.claim(spec, settings.lock_timeout_s) as got:
                    if not got:
                        row.status, row.detail = "error", "another process holds this key's search lock"
                    elif store.get(spec) is not None:
                        row.status = "stored"
                        queue.remove(settings.cache_dir, [spec.key])
                    else:
                        _search_one(get_family(spec.family), spec, settings, timer, store, row, search_spec)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - one failing spec does not stop the others
                log.warning("kevolve prewarm: searching %s failed: %s: %s", spec.describe(), type(e).__name__, e)
                row.status, row.detail = "error", f"{type(e).__name__}: {e}"
            row.time_s = time.perf_counter() - t0
            report.rows.append(row)
            bar.update(1)
            if on_done is not None:
                on_done(row)
    finally:
        bar.close()


def _not_here(spec: OpSpec) -> str | None:
    """Why ``spec`` cannot be searched on this machine (queued on another device), else None."""
    from .spec import DeviceSig

    if spec.device.type == "cuda" and not torch.cuda.is_available():
        return f"queued for {spec.device.name}: no GPU here"
    if spec.device.type == "cuda" and DeviceSig.of(torch.device("cuda")).name != spec.device.name:
        return f"queued for {spec.device.name}, this machine has another GPU"
    return None


def _search_one(family: Any, spec: OpSpec, settings: Settings, timer: Any, store: Any, row: Row, search_spec: Any) -> None:
    entry, outcome = search_spec(family, spec, settings, timer=timer)
    row.evaluated = len(outcome.results)
    row.baseline_ms = outcome.baseline_ms
    if entry is None and not outcome.results:
        # nothing could even be proposed (e.g. a custom op with no LLM configured): stays queued as it
        # was, so a later run with an LLM endpoint serves it; trying again costs nothing
        row.status, row.detail = "unserved", getattr(outcome, "stop_reason", "") or "no candidates proposed"
        return
    if entry is None:
        row.status, row.detail = "no_kernel", f"no verified kernel in {len(outcome.results)} candidates"
        queue.mark(settings.cache_dir, spec.key, status="no_kernel")
        return
    if not store.put(entry):
        row.status, row.detail = "error", "could not write the store"
        return
    queue.remove(settings.cache_dir, [spec.key])  # only after the winner is durable
    row.status = "searched"
    row.best_ms = entry.meta.get("time_ms")
    row.speedup = entry.meta.get("speedup")
    row.pct_of_floor = entry.meta.get("pct_of_floor")


def prewarm(
    models: Sequence[str] | None = None,
    targets: Sequence[str] = (),
    size: str = "small",
    settings: Settings | None = None,
    timer: Any = None,
    device: str | None = None,
    compile_models: bool = True,
    retry_failed: bool = False,
    progress: bool | None = None,
    on_done: Callable[[Row], None] | None = None,
    report: Report | None = None,
) -> Report:
    """Compile the zoo models ``models`` (all of them when None and no ``targets``) and the user's
    ``targets`` (``module:function``) in offline mode, then search what the queue holds.

    ``timer`` (tests, cost models) makes the searches run in this process with it. A
    ``KeyboardInterrupt`` (or one raised by ``on_done``) propagates; ``report`` (pass one in to keep
    it) holds what was done until then. ``device``: where the zoo models run (default: the GPU if
    there is one, else the CPU): kernels are searched for the device the model compiled on."""
    settings = settings or Settings.from_env()
    settings = replace(settings, mode="offline")
    report = report if report is not None else Report()
    t0 = time.perf_counter()
    try:
        if compile_models:
            tg: dict[str, Callable[[], tuple]] = {}
            if models is not None or not targets:
                dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
                tg.update(zoo_targets(models, size, dev))
            for t in targets:
                tg[t] = lambda t=t: load_target(t)
            collect(tg, settings, report, progress)
        search_queue(settings, report, timer=timer, retry_failed=retry_failed, progress=progress, on_done=on_done)
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    finally:
        report.wall_s = time.perf_counter() - t0
    return report


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_report(report: Report) -> str:
    head = ["op", "shape", "status", "baseline ms", "best ms", "speedup", "% floor", "time s", "note"]
    body = [[r.op, r.shape if len(r.shape) <= 48 else r.shape[:45] + "...", r.status, _f(r.baseline_ms, ".4f"),
             _f(r.best_ms, ".4f"), _f(r.speedup, ".2f"), _f(r.pct_of_floor, ".0f"), f"{r.time_s:.1f}",
             r.detail if len(r.detail) <= 60 else r.detail[:57] + "..."]
            for r in report.rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts: dict[str, int] = {}
    for r in report.rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    tail = (f"{len(report.compiled)} model(s) compiled"
            + (f", {len(report.compile_errors)} failed ({', '.join(report.compile_errors)})" if report.compile_errors else "")
            + "; " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "queue empty")
            + f"; {report.wall_s:.1f}s" + (" (interrupted: rerun to resume)" if report.interrupted else ""))
    if any(r.status == "searched" for r in report.rows) and not torch.cuda.is_available():
        tail += "\n(CPU: timings are the Triton interpreter's and mean nothing; only correctness does)"
    return "\n".join(lines if body else []) + ("\n" if body else "") + tail


__all__ = ["Report", "Row", "collect", "compile_offline", "format_report", "load_target", "prewarm", "search_queue",
           "zoo_targets"]
