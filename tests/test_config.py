from __future__ import annotations

import pytest

from torch_kevolve.config import Settings


def test_env_and_options(monkeypatch, tmp_path):
    monkeypatch.setenv("KEVOLVE_MODE", "offline")
    monkeypatch.setenv("KEVOLVE_CACHE_DIR", str(tmp_path))
    s = Settings.from_env()
    assert s.mode == "offline" and s.cache_dir == tmp_path
    assert Settings.from_env({"mode": "cache"}).mode == "cache"  # options win over env


def test_bad_values(monkeypatch):
    monkeypatch.setenv("KEVOLVE_MODE", "fast")
    with pytest.raises(ValueError, match="KEVOLVE_MODE"):
        Settings.from_env()
    monkeypatch.delenv("KEVOLVE_MODE")
    with pytest.raises(ValueError, match="unknown kevolve option"):
        Settings.from_env({"moed": "jit"})


def test_contest_and_workers_per_gpu(monkeypatch):
    assert Settings.from_env().contest == "auto" and Settings.from_env().workers_per_gpu == 0
    monkeypatch.setenv("KEVOLVE_CONTEST", "ALL")
    monkeypatch.setenv("KEVOLVE_WORKERS_PER_GPU", "3")
    s = Settings.from_env()
    assert s.contest == "all" and s.workers_per_gpu == 3
    with pytest.raises(ValueError, match="KEVOLVE_CONTEST"):
        Settings.from_env({"contest": "sometimes"})
