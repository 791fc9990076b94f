"""The offline queue: misses recorded in ``KEVOLVE_MODE=offline`` for a later ``kevolve prewarm``."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path

from filelock import FileLock, Timeout

from .spec import OpSpec

log = logging.getLogger("torch_kevolve")


def queue_path(cache_dir: Path) -> Path:
    return cache_dir / "queue.jsonl"


def record(cache_dir: Path, spec: OpSpec) -> bool:
    """Append ``spec`` unless already queued. Never raises into a compile."""
    path = queue_path(cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=10):
            if spec.key in {e["key"] for e in read(cache_dir)}:
                return False
            line = json.dumps({"key": spec.key, "spec": spec.to_json(),
                               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        return True
    except (OSError, Timeout) as e:
        log.warning("kevolve: could not record %s in the offline queue %s: %s", spec.key, path, e)
        return False


def read(cache_dir: Path) -> list[dict]:
    """Queued specs, deduplicated; a torn last line (crash mid-append) is ignored."""
    path = queue_path(cache_dir)
    out: dict[str, dict] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            e = json.loads(line)
            out.setdefault(e["key"], e)
        except (ValueError, KeyError, TypeError):
            continue
    return list(out.values())


def _rewrite(cache_dir: Path, edit) -> list[dict]:
    """Replace the queue with ``edit(entries)`` under the queue's lock: written to a temporary file,
    fsynced, then renamed over the queue, so a crash leaves the old queue or the new one, never a mix
    (and ``record`` waits on the same lock, so no append is lost)."""
    path = queue_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        entries = edit(read(cache_dir))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps(e) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:
            fd = os.open(str(path.parent), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        return entries


def remove(cache_dir: Path, keys) -> int:
    """Drop the items whose key is in ``keys`` (done: stored). Returns how many went."""
    keys = set(keys)
    n = 0

    def edit(entries: list[dict]) -> list[dict]:
        nonlocal n
        kept = [e for e in entries if e["key"] not in keys]
        n = len(entries) - len(kept)
        return kept

    if not queue_path(cache_dir).exists():
        return 0
    _rewrite(cache_dir, edit)
    return n


def mark(cache_dir: Path, key: str, **fields) -> bool:
    """Update one item in place (e.g. ``status="no_kernel"``); False when it is not queued."""
    found = False

    def edit(entries: list[dict]) -> list[dict]:
        nonlocal found
        for e in entries:
            if e["key"] == key:
                e.update(fields)
                found = True
        return entries

    if not queue_path(cache_dir).exists():
        return False
    _rewrite(cache_dir, edit)
    return found
