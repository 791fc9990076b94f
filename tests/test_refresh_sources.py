"""``kevolve cache refresh`` (``cache_tools.refresh_store``) and its script form ``scripts/refresh_sources.py``:
stored template kernels brought to the family's current template source."""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

from torch_kevolve.cache_tools import current_source
from torch_kevolve.store import Entry, KernelStore

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("refresh_sources", ROOT / "scripts" / "refresh_sources.py")
refresh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refresh)


def _shipped(family: str) -> Entry:
    store = KernelStore(ROOT / "kernel_cache" / "unused-user-layer", shipped=ROOT / "kernel_cache", readonly=True)
    return next(e for e in store.entries() if e.spec.family == family)


def test_stale_entry_rewritten_with_current_source(tmp_path, capsys):
    cur = _shipped("embedding_bag")
    assert current_source(cur) == cur.candidate.source  # shipped entries are current
    old = replace(cur.candidate, source=cur.candidate.source.replace("tl.device_assert(", "0 and tl.device_assert("))
    assert old.source != cur.candidate.source
    store = KernelStore(tmp_path)
    assert store.put(Entry(cur.spec, old, dict(cur.meta)))
    other = _shipped("segment_reduce")  # a current entry: left untouched
    assert store.put(Entry(other.spec, other.candidate, dict(other.meta)))

    assert refresh.main(["--store", str(tmp_path)]) == 0  # dry run: reported, not written
    assert "1 stale (not written" in capsys.readouterr().out
    assert store.get(cur.spec).candidate.source == old.source

    assert refresh.main(["--store", str(tmp_path), "--write"]) == 0
    got = KernelStore(tmp_path).get(cur.spec)  # read back: checksum verified
    assert got is not None and got.candidate.source == cur.candidate.source
    assert got.candidate.config == cur.candidate.config and got.candidate.template == cur.candidate.template
    note = got.meta["source_refreshed"]
    assert note["timings"] == "measured with the previous source" and note["from_checksum"]
    assert got.meta["time_ms"] == cur.meta["time_ms"]
    assert KernelStore(tmp_path).get(other.spec).checksum == other.checksum


def test_unknown_template_left_alone(tmp_path, capsys):
    cur = _shipped("embedding_bag")
    llm = replace(cur.candidate, origin="llm:some-model", source=cur.candidate.source + "\n# rewritten\n")
    store = KernelStore(tmp_path)
    assert store.put(Entry(cur.spec, llm, dict(cur.meta)))
    assert refresh.main(["--store", str(tmp_path), "--write"]) == 0
    assert "1 unknown" in capsys.readouterr().out
    assert KernelStore(tmp_path).get(cur.spec).candidate.source == llm.source


def test_cli_refresh(tmp_path, capsys):
    """The ``kevolve cache refresh`` form: dry run by default, ``--yes`` writes, ``--json`` per entry."""
    import json

    from torch_kevolve.cli import main as cli

    cur = _shipped("embedding_bag")
    store = KernelStore(tmp_path)
    stale = replace(cur.candidate, source=cur.candidate.source + "\n# older\n")
    assert store.put(Entry(cur.spec, stale, dict(cur.meta)))
    assert cli(["cache", "refresh", "--dir", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["key"], r["status"]) for r in rows] == [(cur.key, "stale")]
    assert cli(["cache", "refresh", "--dir", str(tmp_path), "--family", "segment_reduce", "--yes"]) == 0
    assert KernelStore(tmp_path).get(cur.spec).candidate.source == stale.source  # filtered out
    assert cli(["cache", "refresh", "--dir", str(tmp_path), "--yes"]) == 0
    assert "1 stale (rewritten)" in capsys.readouterr().out
    assert KernelStore(tmp_path).get(cur.spec).candidate.source == cur.candidate.source


def test_stale_user_kernel_served_with_one_warning(tmp_path, caplog):
    """The graph pass still serves a verified user kernel from an older template source, and says once
    that ``kevolve cache refresh`` updates it (counted as ``stale_source``); current ones say nothing."""
    import logging

    from torch_kevolve import stats
    from torch_kevolve.config import Settings
    from torch_kevolve.detect import Finding
    from torch_kevolve.lowering.graph_pass import KevolvePass

    cur = _shipped("embedding_bag")
    other = _shipped("segment_reduce")
    store = KernelStore(tmp_path, shipped=None)
    stale = replace(cur.candidate, source=cur.candidate.source + "\n# older\n")
    assert store.put(Entry(cur.spec, stale, dict(cur.meta)))
    assert store.put(Entry(other.spec, other.candidate, dict(other.meta)))
    p = KevolvePass(Settings.from_env({"mode": "cache"}), store)
    stats.reset()
    with caplog.at_level(logging.WARNING, logger="torch_kevolve"):
        for spec in (cur.spec, cur.spec, other.spec):
            f = Finding.__new__(Finding)
            assert p._resolve(f, spec) is not None and f.decision == "stored kernel (user store)"
    warned = [r for r in caplog.records if "kevolve cache refresh" in r.getMessage()]
    assert len(warned) == 1 and cur.key in warned[0].getMessage()
    assert stats.snapshot().get("stale_source") == 1
