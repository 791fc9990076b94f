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
