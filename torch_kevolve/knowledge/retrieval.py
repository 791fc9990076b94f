"""Knowledge passages and BM25 retrieval over them.

Why BM25 and not embeddings: the queries are built from diagnostics (error words, "memory-bound",
op names), which share vocabulary with the passages; BM25 needs no model, indexes a few hundred
passages in milliseconds and gives the same answer on every machine. ``bm25s`` is imported lazily;
without it a small built-in BM25 gives the same ranking idea (the GPU machine may lack the package).

Passages are markdown files with a tiny front matter (``title:`` and comma-separated ``tags:``): the
team's own in ``torch_kevolve/knowledge/passages/`` and, under the user's cache directory, the ones
written back from verified winners (:func:`write_back`), so later searches retrieve what worked.
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from ..store import Entry

log = logging.getLogger("torch_kevolve")

PACKAGE_DIR = Path(__file__).resolve().parent / "passages"

_STOP = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were will with "
    "not no but if then than so can into out one two per each use used uses when which while".split()
)


def user_dir() -> Path:
    """Written-back passages live with the user's kernel store, not in the package."""
    from ..config import default_cache_dir

    return default_cache_dir() / "knowledge"


def tokenize(text: str) -> list[str]:
    """Lower-case words; ``snake_case`` and ``dotted.names`` also give their parts, so
    ``num_warps`` matches "warps" and ``tl.cumsum`` matches "cumsum"."""
    out: list[str] = []
    for w in re.findall(r"[a-z0-9_]+", text.lower()):
        if len(w) < 2 or w in _STOP:
            continue
        out.append(w)
        if "_" in w:
            out += [p for p in w.split("_") if len(p) > 1 and p not in _STOP]
    return out


@dataclass(frozen=True)
class Passage:
    id: str  # file stem (unique within a knowledge base)
    title: str
    tags: tuple[str, ...]
    text: str
    origin: str = "package"  # "package" | "user" (written back from a winner)

    def document(self) -> str:
        """What is indexed: title and tags count twice, they name the topic."""
        head = f"{self.title} {' '.join(self.tags)}"
        return f"{head} {head} {self.text}"

    def render(self, max_chars: int = 1400) -> str:
        body = self.text if len(self.text) <= max_chars else self.text[: max_chars - 15].rstrip() + "\n[...truncated]"
        return f"### {self.title}\n{body}"


def parse_passage(text: str, pid: str, origin: str = "package") -> Passage:
    """``---\\ntitle: ...\\ntags: a, b\\n---\\nbody``; without front matter the first line is the title."""
    title, tags, body = "", (), text.strip()
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n(.*)$", text, re.S)
    if m:
        body = m.group(2).strip()
        for line in m.group(1).splitlines():
            key, _, val = line.partition(":")
            key, val = key.strip().lower(), val.strip()
            if key == "title":
                title = val
            elif key == "tags":
                tags = tuple(t.strip().lower() for t in val.strip("[]").split(",") if t.strip())
    if not title:
        first, _, rest = body.partition("\n")
        title, body = first.lstrip("# ").strip(), rest.strip() or first
    return Passage(pid, title, tags, body, origin)


def load_passages(dirs: Iterable[Path] | None = None) -> list[Passage]:
    """Package passages, then the user's (a user file with a package file's id replaces it)."""
    if dirs is None:
        dirs = [PACKAGE_DIR, user_dir()]
    by_id: dict[str, Passage] = {}
    for i, d in enumerate(dirs):
        d = Path(d)
        if not d.is_dir():
            continue
        for f in sorted(d.rglob("*.md")):
            try:
                by_id[f.stem] = parse_passage(f.read_text(encoding="utf-8"), f.stem, "package" if i == 0 else "user")
            except (OSError, UnicodeDecodeError) as e:
                log.warning("kevolve: skipping knowledge passage %s: %s", f, e)
    return list(by_id.values())


class _MiniBM25:
    """Okapi BM25 in plain Python: the fallback when ``bm25s`` is not installed."""

    def __init__(self, docs: Sequence[list[str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.tf = [Counter(d) for d in docs]
        self.len = [len(d) for d in docs]
        self.avg = sum(self.len) / max(1, len(docs))
        df = Counter(t for d in docs for t in set(d))
        n = len(docs)
        self.idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}

    def scores(self, query: list[str]) -> list[float]:
        out = []
        for tf, ln in zip(self.tf, self.len):
            s = 0.0
            for t in query:
                f = tf.get(t, 0)
                if f:
                    s += self.idf[t] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * ln / (self.avg or 1)))
            out.append(s)
        return out


@dataclass
class KnowledgeBase:
    """Passages and a BM25 index over them, built on first search."""

    passages: list[Passage]
    _index: object = field(default=None, repr=False)
    _mini: bool = field(default=False, repr=False)

    @staticmethod
    def load(dirs: Iterable[Path] | None = None) -> "KnowledgeBase":
        return KnowledgeBase(load_passages(dirs))

    def _build(self) -> None:
        docs = [tokenize(p.document()) for p in self.passages]
        try:
            import bm25s

            idx = bm25s.BM25()
            idx.index(docs, show_progress=False)
            self._index, self._mini = idx, False
        except Exception as e:  # noqa: BLE001 - ImportError, or an empty corpus bm25s refuses
            log.debug("kevolve: bm25s unavailable (%s); using the built-in BM25", e)
            self._index, self._mini = _MiniBM25(docs), True

    def search(self, query: str, k: int = 4, exclude: Iterable[str] = ()) -> list[Passage]:
        """The ``k`` best passages for ``query`` (only those sharing a word with it), best first."""
        toks = tokenize(query)
        if not self.passages or not toks or k <= 0:
            return []
        if self._index is None:
            self._build()
        skip = set(exclude)
        if self._mini:
            scores = self._index.scores(toks)  # type: ignore[attr-defined]
            ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
            pairs = [(i, scores[i]) for i in ranked]
        else:
            n = len(self.passages)
            docs, scores = self._index.retrieve([toks], k=n, show_progress=False)  # type: ignore[attr-defined]
            pairs = [(int(i), float(s)) for i, s in zip(docs[0], scores[0])]
        out = [self.passages[i] for i, s in pairs if s > 0 and self.passages[i].id not in skip]
        return out[:k]


# -- winners write back -----------------------------------------------------------------------------
def _strategy_notes(source: str, limit: int = 12) -> list[str]:
    """Docstrings and comments of a kernel module: where a kernel says what it does and why."""
    import ast

    notes: list[str] = []
    try:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.Module)):
                doc = ast.get_docstring(node)
                if doc:
                    name = getattr(node, "name", "module")
                    notes.append(f"{name}: {' '.join(doc.split())}")
    except SyntaxError:
        pass
    for line in source.splitlines():
        s = line.strip()
        if s.startswith("#") and len(s) > 12:
            notes.append(s.lstrip("# "))
    return list(dict.fromkeys(notes))[:limit]


def entry_passage(entry: "Entry") -> tuple[str, str]:
    """(id, markdown) of a passage describing a verified stored kernel: what op and shapes it
    serves, how it was found, its measured figures, config and the strategy its source documents."""
    from ..search.tree import source_hash

    spec, cand, meta = entry.spec, entry.candidate, entry.meta or {}
    pid = f"kernel-{spec.family}-{source_hash(cand.source)[:10]}-{spec.strict_key[:8]}"
    dtypes = sorted({a.dtype for a in spec.args if a is not None})
    prof = meta.get("profile") or {}
    tags = [spec.family, spec.op.replace("aten.", "").split(".")[0], cand.template or "kernel",
            (cand.origin or "template").split(":")[0], "stored kernel", "example", *dtypes]
    if prof.get("bound"):
        tags.append(f"{prof['bound']}-bound")
    figures = []
    for key, fmt in (("speedup", "{:.2f}x over the baseline"), ("pct_of_floor", "{:.0f}% of the memory floor"),
                     ("time_ms", "{:.4g} ms")):
        v = meta.get(key)
        if isinstance(v, (int, float)):
            figures.append(fmt.format(v))
    if isinstance(prof.get("achieved_GBps"), (int, float)):
        figures.append(f"{prof['achieved_GBps']:.0f} GB/s")
    lines = [
        f"A verified kernel for `{spec.describe()}` (family {spec.family}, template "
        f"{cand.template or '?'}, proposed by {cand.origin}).",
        f"Config: {', '.join(f'{k}={v}' for k, v in cand.config) or 'none'}.",
    ]
    if figures:
        lines.append(f"Measured on {spec.device.name}: {', '.join(figures)}"
                     + (" (interpreter timings: not a speed claim)." if spec.device.type != "cuda" else "."))
    notes = _strategy_notes(cand.source)
    if notes:
        lines.append("Strategy, from its source:")
        lines += [f"- {n}" for n in notes]
    lines.append(f"Store key: {spec.key}")
    body = "\n".join(lines)
    title = f"Stored kernel: {spec.family} {cand.template or ''} ({', '.join(dtypes)})".replace("  ", " ")
    return pid, f"---\ntitle: {title}\ntags: {', '.join(dict.fromkeys(tags))}\n---\n{body}\n"


def write_back(entry: "Entry", root: Path | None = None) -> Path | None:
    """Turn a verified stored kernel into a retrievable passage under the user's knowledge
    directory (``<cache_dir>/knowledge/kernels``). Returns the file, or None when it cannot be
    written (a read-only cache is not an error)."""
    import os

    base = (root if root is not None else user_dir()) / "kernels"
    pid, text = entry_passage(entry)
    path = base / f"{pid}.md"
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("kevolve: could not write the knowledge passage %s: %s", path, e)
        return None
    return path


__all__ = ["Passage", "KnowledgeBase", "load_passages", "parse_passage", "tokenize", "write_back", "entry_passage",
           "user_dir", "PACKAGE_DIR"]
