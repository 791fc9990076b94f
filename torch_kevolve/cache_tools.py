"""``kevolve cache``: look into, check, clean, share and plot a kernel store.

Everything here is plain functions over :class:`~torch_kevolve.store.KernelStore` returning data
(dataclasses); ``cli.py`` only parses arguments and prints. User errors are :class:`CacheToolError`
with a message meant to be read, never a traceback.

Two rules hold throughout:

* the *shipped* layer (the repo's ``kernel_cache/``) is read, verified and reported, never written
  or deleted: it belongs to the checkout, and a local verdict must not edit a file others share;
* every write goes through the store's own atomic path (``put`` / ``put_bytes`` / ``update_meta``),
  so a reader in another process sees an old file, a new file or none, never a torn one.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import io
import json
import logging
import os
import re
import statistics
import tarfile
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .store import LAYOUT_DIR, Checked, Entry, KernelStore, split_key

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("torch_kevolve")

MANIFEST = "MANIFEST.json"
EXPORT_FORMAT = "kevolve-store-export"
MAX_MEMBER_BYTES = 64 << 20  # an entry is KBs; anything this big in a tarball is not one
_MEMBER_RE = re.compile(r"^v1/([A-Za-z0-9_][A-Za-z0-9_.\-]*)/([0-9a-f]{1,64})/([0-9a-f]{1,64})\.json$")
_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "int64": "i64",
           "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "b8"}


class CacheToolError(Exception):
    """A user error (bad key, bad date, read-only store...): the CLI prints the message, no traceback."""


# ------------------------------------------------------------------------------------------------
# Stores
# ------------------------------------------------------------------------------------------------
def open_store(directory: str | Path | None = None, settings: "Settings | None" = None) -> KernelStore:
    """``--dir D``: that one directory as a single-layer store; none: the user store + shipped layer
    from the settings. A ``--dir`` that is the shipped ``kernel_cache/`` opens read-only."""
    from .config import Settings

    settings = settings or Settings.from_env()
    if directory is None:
        return KernelStore.from_settings(settings)
    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise CacheToolError(f"{path} is not a directory (a kernel store is one)")
    shipped = settings.shipped_dir
    return KernelStore(path, readonly=shipped is not None and _same(path, Path(shipped)))


def writable(store: KernelStore, what: str) -> KernelStore:
    if store.readonly:
        raise CacheToolError(f"{store.root} is the shipped kernel_cache/ (read-only): cannot {what} there")
    return store


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# Rows, filters, dates
# ------------------------------------------------------------------------------------------------
def parse_date(text: str) -> _dt.datetime:
    """``2026-11-24``, ``2026-11-24T09:43`` or a full ISO timestamp; naive means UTC."""
    try:
        d = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CacheToolError(f"not a date: {text!r} (expected YYYY-MM-DD or an ISO timestamp)") from None
    return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)


def entry_date(entry: Entry) -> _dt.datetime | None:
    try:
        return parse_date(str(entry.meta["date"]))
    except (KeyError, CacheToolError):
        return None


def shape_summary(entry: Entry) -> str:
    """``f32[1000000,128] i64[328398] i64[16384] -``: the canonical inputs, compactly."""
    parts = []
    for a in entry.spec.args:
        parts.append("-" if a is None else f"{_DTYPES.get(a.dtype, a.dtype)}[{','.join(map(str, a.shape))}]")
    return " ".join(parts)


def short_op(op: str) -> str:
    return op.removeprefix("aten.").removesuffix(".default")


def short_device(name: str) -> str:
    return name.removeprefix("NVIDIA ")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass
class Row:
    """What ``ls`` shows of one entry (and ``--json`` prints)."""

    key: str
    layer: str
    family: str
    op: str
    shapes: str
    device: str
    device_type: str
    speedup: float | None
    pct_of_floor: float | None
    time_ms: float | None
    baseline_ms: float | None
    date: str
    verified: bool | None  # meta.verify.ok where `kevolve cache verify` marked it

    @staticmethod
    def of(e: Entry) -> "Row":
        v = e.meta.get("verify")
        return Row(e.key, e.layer, e.spec.family, e.spec.op, shape_summary(e), str(e.meta.get("device") or e.spec.device.name),
                   e.spec.device.type, _num(e.meta.get("speedup")), _num(e.meta.get("pct_of_floor")),
                   _num(e.meta.get("time_ms")), _num(e.meta.get("baseline_ms")), str(e.meta.get("date") or ""),
                   v.get("ok") if isinstance(v, dict) else None)

    @property
    def short_key(self) -> str:
        return self.key.rsplit("/", 1)[-1][:12]


@dataclass
class Filter:
    """``ls``/``stats``/``export``/``report`` selection. ``op`` matches the op name (substring) or the family."""

    op: str | None = None
    family: str | None = None
    device: str | None = None  # device type ("cpu", "cuda") or a substring of its name
    since: _dt.datetime | None = None
    before: _dt.datetime | None = None
    min_speedup: float | None = None

    def matches(self, e: Entry) -> bool:
        if self.op and self.op not in e.spec.op and self.op != e.spec.family:
            return False
        if self.family and self.family != e.spec.family:
            return False
        if self.device and not device_matches(e, self.device):
            return False
        if self.since or self.before:
            d = entry_date(e)
            if d is None or (self.since and d < self.since) or (self.before and d >= self.before):
                return False
        if self.min_speedup is not None:
            sp = _num(e.meta.get("speedup"))
            if sp is None or sp < self.min_speedup:
                return False
        return True


def device_matches(e: Entry, text: str) -> bool:
    t = text.lower()
    names = (e.spec.device.type, e.spec.device.name, e.spec.device.arch, str(e.meta.get("device") or ""))
    return e.spec.device.type == t or any(t in n.lower() for n in names[1:] if n)


def select(store: KernelStore, flt: Filter | None = None, layer: str | None = None) -> list[Entry]:
    """Valid entries matching ``flt``: the effective view (user hides shipped) unless ``layer``."""
    flt = flt or Filter()
    return [e for e in store.entries(layer) if flt.matches(e)]


def list_rows(store: KernelStore, flt: Filter | None = None, layer: str | None = None) -> list[Row]:
    rows = [Row.of(e) for e in select(store, flt, layer)]
    return sorted(rows, key=lambda r: (r.family, r.op, r.device, r.shapes, r.key))


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def format_rows(rows: Sequence[Row]) -> str:
    """A fixed-width table; a ``layer`` column only when both layers are in view."""
    head = ["family", "op", "shapes", "device", "speedup", "% floor", "date", "key"]
    layers = {r.layer for r in rows}
    if len(layers) > 1:
        head.append("layer")
    body = []
    for r in rows:
        cells = [r.family, short_op(r.op), r.shapes, short_device(r.device), _fmt(r.speedup, ".2f", "x"),
                 _fmt(r.pct_of_floor, ".1f", "%"), r.date[:16].replace("T", " "), r.short_key]
        if len(layers) > 1:
            cells.append(r.layer)
        body.append(cells)
    return _table(head, body)


def _table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# show
# ------------------------------------------------------------------------------------------------
def resolve_key(store: KernelStore, query: str) -> Entry:
    """A full key, or a prefix of one (``family/loose/strict``, ``loose/strict`` or the strict key
    ``ls`` prints). More than one match is an error naming them."""
    q = query.strip()
    if not q:
        raise CacheToolError("empty key")
    parts = split_key(q)
    if parts is not None:
        e = store.get_by_key(q)
        if e is not None:
            return e
    hits: dict[str, Entry] = {}
    for e in store.entries():
        _, loose, strict = e.key.split("/")
        if e.key.startswith(q) or strict.startswith(q) or f"{loose}/{strict}".startswith(q):
            hits.setdefault(e.key, e)
    if not hits:
        raise CacheToolError(f"no entry matches {q!r} in {store.root}" + (
            "" if store.shipped is None else f" (or {store.shipped})"))
    if len(hits) > 1:
        names = "\n  ".join(sorted(hits)[:20])
        raise CacheToolError(f"{q!r} is ambiguous: it matches {len(hits)} entries:\n  {names}\nGive more of the key.")
    return next(iter(hits.values()))


@dataclass
class SearchPoint:
    """One evaluation of a search, in evaluation order."""

    n: int
    ok: bool
    time_ms: float | None
    label: str
    diag: str = ""


def search_points(meta: dict) -> list[SearchPoint]:
    """The evaluations in order: from the stored search tree (it records the order) when there is
    one, else from ``meta.search.trials`` (stored in evaluation order)."""
    search = meta.get("search") or {}
    tree = search.get("tree")
    pts: list[SearchPoint] = []
    if isinstance(tree, dict) and tree.get("nodes"):
        knobs = tree.get("knobs") or []
        nodes = [n for n in tree["nodes"] if n.get("ord") is not None]
        for n in sorted(nodes, key=lambda n: n["ord"]):
            names = knobs[n["k"]] if isinstance(n.get("k"), int) and n["k"] < len(knobs) else []
            cfg = " ".join(f"{k}={v}" for k, v in zip(names, n.get("cfg") or []))
            pts.append(SearchPoint(int(n["ord"]), bool(n.get("ok")), _num(n.get("ms")), f"{n.get('tpl', '?')}[{cfg}]",
                                   str(n.get("diag") or "")))
        if pts:
            return pts
    for i, t in enumerate(search.get("trials") or [], 1):
        cfg = " ".join(f"{k}={v}" for k, v in (t.get("config") or {}).items())
        pts.append(SearchPoint(i, bool(t.get("ok")), _num(t.get("time_ms")), f"{t.get('template', '?')}[{cfg}]",
                               str(t.get("diag") or "")))
    return pts


def best_so_far(points: Sequence[SearchPoint]) -> list[tuple[int, float]]:
    """(evaluation number, best verified time so far) at each evaluation after the first success."""
    out, best = [], None
    for p in points:
        if p.ok and p.time_ms is not None and (best is None or p.time_ms < best):
            best = p.time_ms
        if best is not None:
            out.append((p.n, best))
    return out


def search_story(e: Entry) -> list[str]:
    """How the search found the kernel, in a few lines a person reads."""
    s = e.meta.get("search") or {}
    pts = search_points(e.meta)
    lines = [f"strategy {s.get('strategy', '?')}: {s.get('evaluated', len(pts))} candidates evaluated, "
             f"{s.get('verified', sum(p.ok for p in pts))} verified"
             + (f", {s['wall_s']:.1f} s" if _num(s.get("wall_s")) is not None else "")
             + (f"; stopped: {s['stop']}" if s.get("stop") else "")]
    if isinstance(s.get("budget"), dict):
        lines.append("budget: " + ", ".join(f"{k}={v}" for k, v in s["budget"].items()))
    curve = best_so_far(pts)
    if curve:
        final = curve[-1][1]
        first_at = next(n for n, t in curve if t == final)
        lines.append(f"the winner ({e.candidate.template}) was evaluation {first_at} of {len(pts)}; "
                     f"best verified time so far: " + " -> ".join(
                         f"{t:.4g} ms@{n}" for i, (n, t) in enumerate(curve) if i == 0 or t < curve[i - 1][1]))
    fails = Counter(p.diag.split(":")[0][:60] for p in pts if not p.ok)
    if fails:
        lines.append("failures: " + "; ".join(f"{n}x {why or '?'}" for why, n in fails.most_common(4)))
    ranked = sorted((p for p in pts if p.ok and p.time_ms is not None), key=lambda p: p.time_ms)[:5]
    for p in ranked:
        lines.append(f"  #{p.n:<3d} {p.time_ms:10.4f} ms  {p.label}")
    if s.get("tree"):
        lines.append("(the full search tree is stored: `kevolve cache show KEY --tree` replays it)")
    return lines


def format_show(e: Entry) -> str:
    """Summary, the search story, the remaining metadata as JSON, then the kernel source."""
    m = e.meta
    sp, pf = _num(m.get("speedup")), _num(m.get("pct_of_floor"))
    v = m.get("verify")
    out = [
        f"key       {e.key}   ({e.layer} layer)",
        f"op        {e.spec.describe()}",
        f"device    {e.spec.device.name} ({e.spec.device.type}, {e.spec.device.arch})",
        "versions  " + ", ".join(f"{k} {val}" for k, val in e.spec.versions),
        f"kernel    template {e.candidate.template or '?'}, proposed by {e.candidate.origin}; config "
        + " ".join(f"{k}={val}" for k, val in e.candidate.config),
        f"time      {_fmt(_num(m.get('time_ms')), '.4f', ' ms')} vs {m.get('baseline_kind') or 'baseline'} "
        f"{_fmt(_num(m.get('baseline_ms')), '.4f', ' ms')}: speedup {_fmt(sp, '.2f', 'x')}"
        + ("" if m.get("use", True) else "  (stored but not used: slower than the baseline)"),
        f"floor     {_fmt(_num(m.get('floor_ms')), '.4f', ' ms')} ({_fmt(pf, '.1f', '% of floor')})",
        f"timer     {m.get('timer', '?')}",
        f"date      {m.get('date', '?')}",
    ]
    if isinstance(v, dict):
        out.append(f"verify    {'ok' if v.get('ok') else 'FAILED'} on {v.get('device', '?')} at {v.get('date', '?')}"
                   + (f": {v.get('diag')}" if v.get("diag") and not v.get("ok") else ""))
    out += ["", "# how the search found it", *search_story(e), "", "# metadata"]
    meta = dict(m)
    if isinstance(meta.get("search"), dict):
        meta["search"] = {k: val for k, val in meta["search"].items() if k not in ("trials", "tree")}
    out += [f"{k}: {json.dumps(meta[k], default=str, sort_keys=True)}" for k in sorted(meta)]
    out += ["", "# kernel source", e.candidate.source.rstrip()]
    return "\n".join(out)


def entry_json(e: Entry) -> dict:
    return {"key": e.key, "layer": e.layer, "spec": e.spec.to_json(), "template": e.candidate.template,
            "config": e.candidate.cfg, "origin": e.candidate.origin, "meta": e.meta, "source": e.candidate.source,
            "checksum": e.checksum}


# ------------------------------------------------------------------------------------------------
# stats
# ------------------------------------------------------------------------------------------------
@dataclass
class Distribution:
    n: int = 0
    min: float | None = None
    median: float | None = None
    max: float | None = None

    @staticmethod
    def of(values: Iterable[float | None]) -> "Distribution":
        xs = sorted(v for v in values if v is not None)
        if not xs:
            return Distribution()
        return Distribution(len(xs), xs[0], statistics.median(xs), xs[-1])


@dataclass
class Stats:
    entries: int
    invalid: int
    by_layer: dict[str, int]
    by_family: dict[str, int]
    by_device: dict[str, int]
    by_versions: dict[str, int]
    speedup: dict[str, Distribution]  # per device: interpreter timings are not mixed with GPU ones
    pct_of_floor: dict[str, Distribution]
    search_s: float
    search_s_known: int  # entries whose meta records the search's wall time

    def to_json(self) -> dict:
        return asdict(self)


def compute_stats(store: KernelStore, flt: Filter | None = None) -> Stats:
    es = select(store, flt)
    invalid = sum(1 for c in store.audit() if c.problem)
    by_dev: dict[str, list[Entry]] = {}
    for e in es:
        by_dev.setdefault(str(e.meta.get("device") or e.spec.device.name), []).append(e)
    walls = [_num((e.meta.get("search") or {}).get("wall_s")) for e in es]
    return Stats(
        entries=len(es), invalid=invalid,
        by_layer=dict(Counter(e.layer for e in es)),
        by_family=dict(Counter(e.spec.family for e in es)),
        by_device={d: len(v) for d, v in by_dev.items()},
        by_versions=dict(Counter(", ".join(f"{k} {v}" for k, v in e.spec.versions) for e in es)),
        speedup={d: Distribution.of(_num(e.meta.get("speedup")) for e in v) for d, v in by_dev.items()},
        pct_of_floor={d: Distribution.of(_num(e.meta.get("pct_of_floor")) for e in v) for d, v in by_dev.items()},
        search_s=sum(w for w in walls if w is not None), search_s_known=sum(w is not None for w in walls),
    )


def format_stats(st: Stats) -> str:
    out = [f"{st.entries} entries" + (f", {st.invalid} invalid file(s) (see `kevolve cache verify`)" if st.invalid else "")]
    for title, d in (("layer", st.by_layer), ("family", st.by_family), ("device", st.by_device), ("versions", st.by_versions)):
        out.append(f"by {title}:")
        out += [f"  {n:5d}  {k}" for k, n in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))]
    rows = []
    for dev in sorted(st.speedup):
        s, p = st.speedup[dev], st.pct_of_floor[dev]
        rows.append([short_device(dev), str(s.n), _fmt(s.min, ".2f", "x"), _fmt(s.median, ".2f", "x"), _fmt(s.max, ".2f", "x"),
                     _fmt(p.min, ".1f", "%"), _fmt(p.median, ".1f", "%"), _fmt(p.max, ".1f", "%")])
    if rows:
        out += ["speedup and % of floor per device (interpreter timings are meaningless):",
                _table(["device", "n", "min", "median", "max", "floor min", "median", "max"], rows)]
    out.append(f"search time: {st.search_s:.1f} s in total over the {st.search_s_known} entries that record it")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# verify
# ------------------------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    key: str
    layer: str
    status: str  # "ok" | "failed" | "corrupt" | "skipped"
    detail: str = ""
    marked: bool = False  # meta.verify written (user layer only)


def local_devices() -> dict[str, str | None]:
    """Device type → the name entries must carry to run here (None: any name). CPU entries run
    under Triton's interpreter; CUDA entries only on a GPU with the name they were searched on."""
    import torch

    out: dict[str, str | None] = {"cpu": None}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_device_name(torch.cuda.current_device())
    return out


def _runnable_here(e: Entry, here: dict[str, str | None]) -> str | None:
    """None if ``e`` can be re-run on this machine, else why not."""
    dev = e.spec.device
    if dev.type not in here:
        return f"other device ({dev.type}: {dev.name})"
    want = here[dev.type]
    if want is not None and want != dev.name:
        return f"other device ({dev.name}; this machine has {want})"
    return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _progress(total: int, desc: str, enabled: bool | None) -> Any:
    """A tqdm bar on stderr; ``enabled=None``: only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="entry", disable=(None if enabled is None else not enabled), leave=False)


def verify_store(
    store: KernelStore,
    flt: Filter | None = None,
    executor: str = "local",
    seeds: int = 3,
    mark: bool = True,
    progress: bool | None = None,
    timeout_s: float = 120.0,
    layer: str | None = None,
) -> list[VerifyResult]:
    """Re-check every entry file: its checksum (all of them), and, for entries of this machine's
    devices, its kernel against the family's reference through the harness (timer "none": verdicts,
    not timings). Failures are marked in the user layer's meta (``verify: {ok, date, diag, device}``)
    so ``prune --failed-verify`` and people find them; a later pass clears the mark. Corrupt files are
    reported, not rewritten (rewriting would bless the damage with a fresh checksum)."""
    from .families import get_family
    from .harness.worker import make_jobs, mode_mismatch

    flt = flt or Filter()
    here = local_devices()
    results: list[VerifyResult] = []
    todo: dict[str, list[Entry]] = {}
    for c in store.audit(layer):
        if c.entry is None:
            results.append(VerifyResult(c.key, c.layer, "corrupt", c.problem or ""))
            continue
        e = c.entry
        if not flt.matches(e):
            continue
        why = _runnable_here(e, here)
        if why is None:
            try:
                get_family(e.spec.family)
            except KeyError:
                why = f"family {e.spec.family!r} is unknown to this kevolve"
        if why is not None:
            results.append(VerifyResult(e.key, e.layer, "skipped", why))
        else:
            todo.setdefault(e.spec.device.type, []).append(e)
    with _progress(sum(map(len, todo.values())), "verify", progress) as bar:
        for dtype, entries in todo.items():
            ex = _verify_executor(executor, dtype, timeout_s, len(entries))
            chunk = 1 if executor == "inprocess" else max(1, getattr(getattr(ex, "pool", None), "n", 4))
            try:
                for i in range(0, len(entries), chunk):
                    part = entries[i:i + chunk]
                    jobs = [make_jobs(e.spec.family, e.spec, [e.candidate], seeds=seeds, timer="none")[0] for e in part]
                    ready = []
                    for e, job in zip(part, jobs):
                        mm = mode_mismatch(job) if executor == "inprocess" else None
                        if mm:
                            results.append(VerifyResult(e.key, e.layer, "skipped", "in-process Triton mode: " + mm))
                        else:
                            ready.append((e, job))
                    scored = ex.map([j for _, j in ready]) if ready else []
                    for (e, _), r in zip(ready, scored):
                        results.append(_record(store, e, r.ok, r.diagnostics.summary(), mark))
                    bar.update(len(part))
            finally:
                ex.close()
    order = {c: i for i, c in enumerate(("failed", "corrupt", "ok", "skipped"))}
    return sorted(results, key=lambda r: (order[r.status], r.key, r.layer))


def _verify_executor(name: str, device_type: str, timeout_s: float, n_entries: int) -> Any:
    from .harness import make_executor

    if name == "local":
        kw: dict[str, Any] = {"timeout_s": timeout_s, "progress": False}
        if device_type != "cuda":
            kw.update(gpus=[], interpret=True, workers=max(1, min(os.cpu_count() or 1, 4, n_entries)))
        return make_executor("local", **kw)
    if name == "inprocess":
        return make_executor("inprocess")
    raise CacheToolError(f"verify runs on the 'local' pool or 'inprocess', not {name!r}")


def _record(store: KernelStore, e: Entry, ok: bool, diag: str, mark: bool) -> VerifyResult:
    prev = e.meta.get("verify")
    res = VerifyResult(e.key, e.layer, "ok" if ok else "failed", "" if ok else diag)
    if e.layer != "user":
        if not ok:
            res.detail += " (shipped layer: reported only, not marked)"
        return res
    if mark and (not ok or (isinstance(prev, dict) and not prev.get("ok", True))):
        stamp = {"ok": ok, "date": _now(), "diag": diag, "device": e.spec.device.name}
        res.marked = store.update_meta(e.key, {"verify": stamp}, expect_checksum=e.checksum)
        if not res.marked:
            res.detail += " (could not mark: entry changed, locked or unwritable)"
    return res


def format_verify(results: Sequence[VerifyResult]) -> str:
    body = [[r.status.upper() if r.status in ("failed", "corrupt") else r.status, r.layer, r.key,
             ("marked; " if r.marked else "") + r.detail] for r in results]
    counts = Counter(r.status for r in results)
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "failed", "corrupt", "skipped"))
    return (_table(["status", "layer", "key", "detail"], body) + "\n" if body else "") + summary


# ------------------------------------------------------------------------------------------------
# prune
# ------------------------------------------------------------------------------------------------
@dataclass
class PruneCriteria:
    """All given criteria must hold (AND). Corrupt files can't be judged on the others, so they go
    with ``failed_verify`` alone."""

    older_than_days: float | None = None
    other_versions: bool = False
    device: str | None = None
    failed_verify: bool = False

    def empty(self) -> bool:
        return self.older_than_days is None and not self.other_versions and self.device is None and not self.failed_verify


@dataclass
class PruneItem:
    key: str
    path: Path
    reasons: list[str]
    removed: bool = False


def running_versions(family: str) -> dict[str, str]:
    import torch
    import triton

    out = {"torch": torch.__version__.split("+")[0], "triton": triton.__version__}
    try:
        from .families import get_family

        out["template"] = str(get_family(family).template_version)
    except KeyError:
        pass
    return out


def _prune_reasons(c: Checked, crit: PruneCriteria, now: _dt.datetime) -> list[str] | None:
    """Why ``c`` goes, or None when it stays."""
    if c.entry is None:
        return [f"corrupt: {c.problem}"] if crit.failed_verify else None
    e, reasons = c.entry, []
    if crit.older_than_days is not None:
        d = entry_date(e)
        if d is None:
            try:
                d = _dt.datetime.fromtimestamp(c.path.stat().st_mtime, _dt.timezone.utc)
            except OSError:
                return None
        age = (now - d).total_seconds() / 86400
        if age <= crit.older_than_days:
            return None
        reasons.append(f"{age:.0f} days old")
    if crit.other_versions:
        run = running_versions(e.spec.family)
        stale = [f"{k} {v} (running {run[k]})" for k, v in e.spec.versions if k in run and run[k] != v]
        if not stale:
            return None
        reasons.append("versions " + ", ".join(stale))
    if crit.device is not None:
        if not device_matches(e, crit.device):
            return None
        reasons.append(f"device {e.spec.device.name}")
    if crit.failed_verify:
        v = e.meta.get("verify")
        if not (isinstance(v, dict) and v.get("ok") is False):
            return None
        reasons.append(f"failed verify on {v.get('date', '?')}: {str(v.get('diag', ''))[:80]}")
    return reasons


def prune(store: KernelStore, crit: PruneCriteria, yes: bool = False, now: _dt.datetime | None = None) -> list[PruneItem]:
    """What matches ``crit`` in the user layer; removed only with ``yes``. The shipped layer is
    never looked at (it is part of the checkout)."""
    if crit.empty():
        raise CacheToolError("prune needs a criterion: --older-than, --version, --device or --failed-verify")
    if yes:
        writable(store, "prune")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    items = []
    for c in store.audit("user"):
        reasons = _prune_reasons(c, crit, now)
        if reasons is not None:
            items.append(PruneItem(c.key, c.path, reasons))
    if yes:
        for it in items:
            it.removed = store.remove(it.key)
            _rmdir_empty(it.path.parent, store.root / LAYOUT_DIR)
    return items


def _rmdir_empty(d: Path, stop: Path) -> None:
    """Drop now-empty ``<family>/<loose>`` directories (never ``v1`` itself)."""
    while d != stop and stop in d.parents:
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


def format_prune(items: Sequence[PruneItem], yes: bool) -> str:
    lines = [f"{'removed' if it.removed else ('NOT removed' if yes else 'would remove')}  {it.key}  ({'; '.join(it.reasons)})"
             for it in items]
    n = sum(it.removed for it in items) if yes else len(items)
    lines.append(f"{n} entr{'y' if n == 1 else 'ies'} {'removed' if yes else 'would be removed (dry run: add --yes to delete)'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# export / import
# ------------------------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ExportReport:
    path: Path
    keys: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why): invalid files


def export_store(store: KernelStore, out: str | Path, flt: Filter | None = None, include_shipped: bool = False) -> ExportReport:
    """A ``.tar.gz`` of entry files (bytes as stored) + ``MANIFEST.json`` (per key: sha256 of the
    file, the entry's own checksum), written atomically. The user layer only, unless ``include_shipped``."""
    from . import __version__

    flt = flt or Filter()
    out = Path(out).expanduser()
    files: dict[str, bytes] = {}
    manifest: dict[str, Any] = {"format": EXPORT_FORMAT, "format_version": 1, "kevolve_version": __version__,
                                "store_schema": int(LAYOUT_DIR[1:]), "date": _now(), "entries": {}}
    rep = ExportReport(out, [])
    for c in store.audit(None if include_shipped else "user"):
        if c.key in files:
            continue  # the user layer's file shadows the shipped one
        if c.entry is None:
            rep.skipped.append((c.key, c.problem or "invalid"))
            continue
        if not flt.matches(c.entry):
            continue
        try:
            data = c.path.read_bytes()
        except OSError as e:
            rep.skipped.append((c.key, f"unreadable: {e}"))
            continue
        files[c.key] = data
        manifest["entries"][c.key] = {"sha256": _sha256(data), "checksum": c.entry.checksum, "layer": c.layer}
    rep.keys = sorted(files)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tf:
            _add(tf, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            for key in rep.keys:
                _add(tf, f"{LAYOUT_DIR}/{key}.json", files[key])
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return rep


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(_dt.datetime.now().timestamp())
    tf.addfile(info, io.BytesIO(data))


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # present already
    refused: list[tuple[str, str]] = field(default_factory=list)  # (member or key, why)


def _read_manifest(tf: tarfile.TarFile, members: list[tarfile.TarInfo]) -> dict:
    ms = [m for m in members if m.name == MANIFEST]
    if len(ms) != 1 or not ms[0].isfile() or ms[0].size > MAX_MEMBER_BYTES:
        raise CacheToolError(f"no usable {MANIFEST} in the tarball: not a `kevolve cache export` file")
    try:
        doc = json.loads(tf.extractfile(ms[0]).read())  # type: ignore[union-attr]
    except (ValueError, AttributeError) as e:
        raise CacheToolError(f"{MANIFEST} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or not isinstance(doc.get("entries"), dict):
        raise CacheToolError(f"{MANIFEST} is not a {EXPORT_FORMAT} manifest")
    return doc


def import_tarball(store: KernelStore, src: str | Path, overwrite: bool = False, progress: bool | None = None) -> ImportReport:
    """Import an export into the user layer. Every entry must match the manifest (sha256 of its
    bytes, its checksum) and pass the store's own checks (its checksum, key vs. path); bad ones are
    refused and named, good ones imported. Members are read, never extracted, and only names of the
    form ``v1/<family>/<loose>/<strict>.json`` are accepted, so no name can reach outside the store."""
    writable(store, "import")
    src = Path(src).expanduser()
    try:
        tf = tarfile.open(src, "r:*")
    except (OSError, tarfile.TarError) as e:
        raise CacheToolError(f"cannot read {src}: {e}") from None
    rep = ImportReport()
    with tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise CacheToolError(f"{src} is not a readable tarball: {e}") from None
        manifest = _read_manifest(tf, members)["entries"]
        seen: set[str] = set()
        wanted = [m for m in members if m.name != MANIFEST and not (m.isdir() and _safe_dir(m.name))]
        with _progress(len(wanted), "import", progress) as bar:
            for m in wanted:
                key, why = _member_key(m, seen)
                if why is None:
                    why = _import_one(store, tf, m, key, manifest.get(key), overwrite, rep)
                if why is not None:
                    rep.refused.append((key or m.name, why))
                bar.update(1)
        for key in sorted(set(manifest) - seen):
            rep.refused.append((key, "listed in the manifest but not in the tarball"))
    return rep


def _safe_dir(name: str) -> bool:
    parts = name.rstrip("/").split("/")
    return not name.startswith("/") and ".." not in parts and parts[0] == LAYOUT_DIR


def _member_key(m: tarfile.TarInfo, seen: set[str]) -> tuple[str | None, str | None]:
    mt = _MEMBER_RE.match(m.name)
    if mt is None or split_key("/".join(mt.groups())) is None:
        return None, "unsafe or unexpected name (only v1/<family>/<loose>/<strict>.json is accepted)"
    key = "/".join(mt.groups())
    if not m.isfile():
        return key, "not a regular file (links and devices are refused)"
    if key in seen:
        return key, "appears twice in the tarball"
    seen.add(key)
    if m.size > MAX_MEMBER_BYTES:
        return key, f"too large ({m.size} bytes)"
    return key, None


def _import_one(store: KernelStore, tf: tarfile.TarFile, m: tarfile.TarInfo, key: str | None, listed: Any,
                overwrite: bool, rep: ImportReport) -> str | None:
    """Import one member; a refusal reason, or None when imported or skipped (recorded in ``rep``)."""
    assert key is not None
    if not isinstance(listed, dict):
        return "not listed in the manifest"
    f = tf.extractfile(m)
    data = f.read() if f is not None else b""
    if _sha256(data) != listed.get("sha256"):
        return "sha256 does not match the manifest (file changed after export, or corrupted)"
    try:
        doc_sum = json.loads(data).get("checksum")
    except (ValueError, AttributeError):
        doc_sum = None
    if doc_sum != listed.get("checksum"):
        return "the entry's checksum does not match the manifest"
    existing = store.path_for(key, "user")
    if existing is not None and existing.exists() and not overwrite:
        try:
            same = existing.read_bytes() == data
        except OSError:
            same = False
        rep.skipped.append((key, "already there" if same else "exists with other content (--overwrite replaces it)"))
        return None
    try:
        store.put_bytes(key, data)
    except ValueError as e:
        return f"invalid entry: {e}"
    rep.imported.append(key)
    return None


def format_import(rep: ImportReport) -> str:
    lines = [f"imported  {k}" for k in rep.imported]
    lines += [f"skipped   {k}: {why}" for k, why in rep.skipped]
    lines += [f"REFUSED   {k}: {why}" for k, why in rep.refused]
    lines.append(f"{len(rep.imported)} imported, {len(rep.skipped)} skipped, {len(rep.refused)} refused")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# diff
# ------------------------------------------------------------------------------------------------
@dataclass
class StoreDiff:
    only_a: list[str]
    only_b: list[str]
    changed: dict[str, list[str]]  # key -> what differs
    same: int

    @property
    def identical(self) -> bool:
        return not (self.only_a or self.only_b or self.changed)

    def to_json(self) -> dict:
        return asdict(self)


def diff_stores(a: KernelStore, b: KernelStore) -> StoreDiff:
    """Keys only in A, only in B, and in both but with another kernel or speedup (other metadata
    is named as such)."""
    ea, eb = {e.key: e for e in a.entries()}, {e.key: e for e in b.entries()}
    changed: dict[str, list[str]] = {}
    same = 0
    for key in sorted(set(ea) & set(eb)):
        x, y = ea[key], eb[key]
        what = []
        if x.candidate.source != y.candidate.source:
            what.append("source")
        if x.candidate.config != y.candidate.config:
            what.append("config " + _cfg(x) + " -> " + _cfg(y))
        sx, sy = _num(x.meta.get("speedup")), _num(y.meta.get("speedup"))
        if sx != sy and not (sx is not None and sy is not None and abs(sx - sy) <= 1e-9 * max(abs(sx), abs(sy))):
            what.append(f"speedup {_fmt(sx, '.3f', 'x')} -> {_fmt(sy, '.3f', 'x')}")
        if not what and x.checksum != y.checksum:
            what.append("other metadata")
        if what:
            changed[key] = what
        else:
            same += 1
    return StoreDiff(sorted(set(ea) - set(eb)), sorted(set(eb) - set(ea)), changed, same)


def _cfg(e: Entry) -> str:
    return " ".join(f"{k}={v}" for k, v in e.candidate.config)


def format_diff(d: StoreDiff, a: str = "A", b: str = "B") -> str:
    lines = [f"only in {a}: {k}" for k in d.only_a] + [f"only in {b}: {k}" for k in d.only_b]
    lines += [f"different:  {k}: {'; '.join(w)}" for k, w in d.changed.items()]
    lines.append(f"{len(d.only_a)} only in {a}, {len(d.only_b)} only in {b}, {len(d.changed)} different, {d.same} identical")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
GPU_COLOR = "#1f77b4"
CPU_COLOR = "#9a9a9a"
FLOOR_COLOR = "#2ca02c"


def _mpl() -> Any:
    """matplotlib, imported only for ``report``; a clear message when it is missing."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise CacheToolError("`kevolve cache report` needs matplotlib: pip install 'torch_kevolve[report]' "
                             "(or pip install matplotlib)") from None
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, crisp
    return Figure


def _label(e: Entry) -> str:
    consts = {k: v for k, v in e.spec.consts}
    extra = f" mode={consts['mode']}" if "mode" in consts else ""
    return f"{short_op(e.spec.op)} {shape_summary(e)}{extra}"


def _svg(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_speedups(Figure: Any, es: Sequence[Entry]) -> str | None:
    pts = sorted(((e, _num(e.meta.get("speedup"))) for e in es), key=lambda t: t[1] or 0.0)
    pts = [(e, s) for e, s in pts if s is not None]
    if not pts:
        return None
    fig = Figure(figsize=(10, 0.8 + 0.42 * len(pts)))
    ax = fig.subplots()
    colors = [GPU_COLOR if e.spec.device.type == "cuda" else CPU_COLOR for e, _ in pts]
    bars = ax.barh(range(len(pts)), [s for _, s in pts], color=colors,
                   hatch=["" if e.spec.device.type == "cuda" else "//" for e, _ in pts])
    ax.set_yticks(range(len(pts)), [f"{_label(e)} [{short_device(e.spec.device.name)}]" for e, _ in pts], fontsize=8)
    ax.axvline(1.0, color="black", lw=1, ls="--")
    ax.bar_label(bars, [f"{s:.2f}x" for _, s in pts], padding=3, fontsize=8)
    ax.set_xlabel("speedup over the baseline (x; dashed: 1.0 = as fast)")
    ax.set_title("Speedup per op and shape (grey, hatched: CPU interpreter, timings meaningless)", fontsize=10)
    ax.set_xlim(0, max(s for _, s in pts) * 1.18 + 0.05)
    return _svg(fig)


def plot_floor(Figure: Any, es: Sequence[Entry]) -> str | None:
    pts = sorted(((e, _num(e.meta.get("pct_of_floor"))) for e in es), key=lambda t: t[1] or 0.0)
    pts = [(e, p) for e, p in pts if p is not None]
    if not pts:
        return None
    fig = Figure(figsize=(10, 0.8 + 0.42 * len(pts)))
    ax = fig.subplots()
    bars = ax.barh(range(len(pts)), [p for _, p in pts], color=FLOOR_COLOR)
    ax.set_yticks(range(len(pts)), [_label(e) for e, _ in pts], fontsize=8)
    ax.axvline(100.0, color="black", lw=1, ls="--")
    ax.bar_label(bars, [f"{p:.1f}%" for _, p in pts], padding=3, fontsize=8)
    ax.set_xlim(0, max(110.0, max(p for _, p in pts) * 1.1))
    ax.set_xlabel("% of the memory-bandwidth floor reached (100% = the copy-bandwidth bound)")
    ax.set_title("How close each kernel gets to the hardware floor", fontsize=10)
    return _svg(fig)


def plot_search_curves(Figure: Any, es: Sequence[Entry], limit: int = 24) -> str | None:
    """Small multiples: every trial's time (dots, failures as x on top), the best verified time so
    far (line) and the baseline (dashed), against evaluation number."""
    from matplotlib.ticker import MaxNLocator

    data = [(e, search_points(e.meta)) for e in es]
    data = sorted([(e, p) for e, p in data if best_so_far(p)], key=lambda t: -len(t[1]))[:limit]
    if not data:
        return None
    cols = min(3, len(data))
    rows = (len(data) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (e, pts) in zip(axes.flat, data):
        ok = [(p.n, p.time_ms) for p in pts if p.ok and p.time_ms is not None]
        curve = best_so_far(pts)
        ax.scatter([n for n, _ in ok], [t for _, t in ok], s=9, color=GPU_COLOR if e.spec.device.type == "cuda" else CPU_COLOR,
                   alpha=0.45, label="verified trial")
        ax.step([n for n, _ in curve], [t for _, t in curve], where="post", color="#d62728", lw=2, label="best so far")
        bad = [p.n for p in pts if not p.ok]
        if bad:
            top = max(t for _, t in ok) if ok else 1.0
            ax.scatter(bad, [top] * len(bad), marker="x", color="black", s=14, label="failed")
        base = _num(e.meta.get("baseline_ms"))
        if base is not None:
            ax.axhline(base, color="black", ls="--", lw=1, label="baseline")
        ax.set_title(f"{_label(e)}\n{short_device(e.spec.device.name)}, {(e.meta.get('search') or {}).get('strategy', '?')}", fontsize=7)
        ax.set_xlabel("evaluation", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("time (ms)", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(data):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle("Search curves: each trial, and the best verified kernel so far, per evaluation", fontsize=10)
    fig.tight_layout()
    return _svg(fig)


def _table_html(es: Sequence[Entry]) -> str:
    head = ["family", "op", "shapes", "device", "time (ms)", "baseline (ms)", "speedup", "% floor", "search",
            "evaluated", "date", "key"]
    rows = []
    for e in sorted(es, key=lambda e: (e.spec.family, e.spec.op, -(_num(e.meta.get("speedup")) or 0))):
        r, s = Row.of(e), e.meta.get("search") or {}
        cells = [r.family, short_op(r.op), r.shapes, short_device(r.device), _fmt(r.time_ms, ".4f"),
                 _fmt(r.baseline_ms, ".4f"), _fmt(r.speedup, ".2f", "x"), _fmt(r.pct_of_floor, ".1f", "%"),
                 str(s.get("strategy", "-")), str(s.get("evaluated", "-")), r.date[:10]]
        cls = "" if r.speedup is None or r.speedup >= 1.0 else ' class="slow"'
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                    + f"<td title='{html.escape(r.key)}'>{html.escape(r.short_key)}</td></tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "\n".join(rows) + "</tbody></table>")


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.sum{color:#555;margin-bottom:18px} .cards{display:flex;gap:14px;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:120px}
.card b{display:block;font-size:22px} img{max-width:100%;height:auto;display:block;margin:8px 0}
table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f3f3f3} tr.slow td{color:#a33} td:last-child{font-family:monospace;font-size:11px}
.none{color:#888;font-style:italic}"""


def build_report(store: KernelStore, flt: Filter | None = None, title: str = "kevolve kernel store") -> str:
    """One self-contained HTML page: summary cards, the three plots (inline base64 SVG), a table."""
    Figure = _mpl()
    es = select(store, flt)
    st = compute_stats(store, flt)
    gpu = [e for e in es if e.spec.device.type == "cuda"]
    sp = Distribution.of(_num(e.meta.get("speedup")) for e in gpu)
    cards = [("entries", str(len(es))), ("families", str(len(st.by_family))), ("devices", str(len(st.by_device))),
             ("median GPU speedup", _fmt(sp.median, ".2f", "x")), ("best GPU speedup", _fmt(sp.max, ".2f", "x")),
             ("search time", f"{st.search_s / 60:.1f} min")]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><div class='sum'>{html.escape(str(store.root))}"
             + ("" if store.shipped is None else f" + shipped {html.escape(str(store.shipped))}")
             + f" &middot; generated {html.escape(_now())}"
             + (f" &middot; <b>{st.invalid} invalid file(s)</b>: run <code>kevolve cache verify</code>" if st.invalid else "")
             + "</div>",
             "<div class='cards'>" + "".join(f"<div class='card'>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in cards) + "</div>"]
    for heading, img, empty in (
        ("Speedup per op", plot_speedups(Figure, es), "no entry records a speedup"),
        ("Percent of the hardware floor", plot_floor(Figure, es), "no entry records a floor (CPU-only store?)"),
        ("Search curves", plot_search_curves(Figure, es), "no entry records its search trials"),
    ):
        parts.append(f"<h2>{heading}</h2>")
        parts.append(f"<img alt='{heading}' src='{img}'>" if img else f"<p class='none'>{empty}</p>")
    parts += ["<h2>Entries</h2>", _table_html(es) if es else "<p class='none'>the store is empty</p>", "</body></html>"]
    return "\n".join(parts)


def write_report(store: KernelStore, out: str | Path, flt: Filter | None = None) -> Path:
    out = Path(out).expanduser()
    text = build_report(store, flt)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


__all__ = [
    "CacheToolError", "Filter", "Row", "Stats", "VerifyResult", "PruneCriteria", "PruneItem", "ExportReport",
    "ImportReport", "StoreDiff", "open_store", "parse_date", "list_rows", "format_rows", "resolve_key",
    "format_show", "search_points", "best_so_far", "compute_stats", "format_stats", "verify_store", "format_verify",
    "prune", "format_prune", "export_store", "import_tarball", "format_import", "diff_stores", "format_diff",
    "build_report", "write_report",
]


# ------------------------------------------------------------------------------------------------
# refresh: stored template kernels brought to the family's current template source
# ------------------------------------------------------------------------------------------------


@dataclass
class RefreshResult:
    """``status``: current | stale (dry run) | refreshed | unknown (no single current source) |
    failed (``--retime``: the new source did not verify; the entry is left as it was)."""

    key: str
    template: str
    status: str
    detail: str = ""
    timings: dict = field(default_factory=dict)


def current_source(entry: Entry) -> str | None:
    """The family's source today for the entry's template and config: the proposal with the entry's
    exact config, else the template's only source, else (a template rendering several variants, and a
    mutation that reached a config no proposal has) the variant clearly nearest the stored text. None
    for an LLM-written kernel, an unknown family or template, or no clear match."""
    import difflib

    from .families import get_family

    tmpl = entry.candidate.template
    if not entry.candidate.origin.startswith("template") or not tmpl:
        return None
    try:
        fam = get_family(entry.spec.family)
        same = [c for c in fam.candidates(entry.spec) if c.template == tmpl]
    except Exception as e:  # noqa: BLE001 - an entry this version cannot even propose for
        log.debug("kevolve: no candidates for %s: %s", entry.key, e)
        return None
    exact = {c.source for c in same if c.config == entry.candidate.config}
    sources = exact or {c.source for c in same}
    if len(sources) <= 1:
        return sources.pop() if sources else None
    ranked = sorted(((difflib.SequenceMatcher(None, entry.candidate.source, s, autojunk=False).ratio(), s)
                     for s in sources), reverse=True)
    (best, src), (second, _) = ranked[0], ranked[1]
    return src if best > 0.9 and best - second > 0.02 else None


def retime_sources(entry: Entry, src: str) -> dict:
    """On this machine, with the search's Evaluator in this process: old source, new source, and the new
    source with Triton's device asserts off (what they cost): ``{name}_ok`` and ``{name}_ms``."""
    from dataclasses import replace

    from . import kernels
    from .families import get_family
    from .search.evaluate import Evaluator

    ev = Evaluator(get_family(entry.spec.family), entry.spec)
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
        out[f"{name}_ok"], out[f"{name}_ms"] = bool(r.ok), r.time_ms
        if not r.ok:
            out[f"{name}_why"] = r.diagnostics.summary()[:300]
    return out


def refresh_store(store: KernelStore, flt: Filter | None = None, write: bool = False, retime: bool = False,
                  progress: bool | None = None) -> list[RefreshResult]:
    """Entries of the user layer whose template source changed since they were searched (a fix, the
    device asserts...) get the current source: same key and config, a new checksum, and
    ``meta.source_refreshed`` with the old checksum. Without ``retime`` the timings stay the old
    source's (the meta says so); with it (on the entries' device) an entry is rewritten only when the
    new source verifies, with ``time_ms`` the new time and ``use`` false where that is slower than
    its baseline. The shipped layer is never written (refresh the repo's ``kernel_cache/`` with
    ``--dir kernel_cache``, where it is the store's own layer)."""
    from dataclasses import replace

    flt = flt or Filter()
    if write:
        writable(store, "refresh")
    entries = sorted((e for e in store.entries(layer="user") if flt.matches(e)), key=lambda e: e.key)
    results: list[RefreshResult] = []
    with _progress(len(entries), "refresh", progress) as bar:
        for e in entries:
            bar.update(1)
            src = current_source(e)
            if src is None:
                results.append(RefreshResult(e.key, e.candidate.template, "unknown",
                                             "no single current source for its template (LLM-written, renamed...)"))
                continue
            if src == e.candidate.source:
                results.append(RefreshResult(e.key, e.candidate.template, "current"))
                continue
            meta = dict(e.meta)
            note: dict = {"from_checksum": e.checksum, "date": _now()}
            res = RefreshResult(e.key, e.candidate.template, "refreshed" if write else "stale")
            if retime:
                t = retime_sources(e, src)
                res.timings = t
                if not t["new_ok"]:
                    res.status, res.detail = "failed", t.get("new_why", "")
                    results.append(res)
                    continue
                import torch

                note.update(old_ms=t["old_ms"], new_ms=t["new_ms"], new_no_asserts_ms=t["new_no_asserts_ms"],
                            device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
                meta["time_ms"] = t["new_ms"]
                base = _num(meta.get("baseline_ms"))
                if base:
                    meta["speedup"] = base / t["new_ms"]
                    meta["use"] = bool(meta.get("use", True)) and t["new_ms"] <= base
            else:
                note["timings"] = "measured with the previous source"
            if write:
                meta["source_refreshed"] = note
                store.put(Entry(e.spec, replace(e.candidate, source=src), meta))
            results.append(res)
    return results


def format_refresh(results: Sequence[RefreshResult], write: bool, write_flag: str = "--yes") -> str:
    def ms(v: Any) -> str:
        return "-" if v is None else f"{float(v):.4f}"

    lines = []
    for r in results:
        if r.status == "current":
            continue
        t = r.timings
        extra = (f"  old {ms(t.get('old_ms'))} ms, new {ms(t.get('new_ms'))} ms, new without asserts "
                 f"{ms(t.get('new_no_asserts_ms'))} ms" if t else "")
        lines.append(f"{r.status:9s} {r.key} ({r.template}){extra}{'  ' + r.detail if r.detail else ''}")
    c = Counter(r.status for r in results)
    lines.append(f"{c['stale'] + c['refreshed']} stale ({'rewritten' if write else 'not written: ' + write_flag}), "
                 f"{c['current']} current, {c['unknown']} unknown, {c['failed']} failed")
    return "\n".join(lines)
