"""Test setup: Triton's interpreter on CPU (set before any kernel module is imported)."""
from __future__ import annotations

import os

if not os.environ.get("KEVOLVE_TEST_GPU"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    d = tmp_path / "kevolve store"
    monkeypatch.setenv("KEVOLVE_CACHE_DIR", str(d))
    monkeypatch.setenv("KEVOLVE_SHIPPED_DIR", str(tmp_path / "shipped"))
    return d
