"""Two processes sharing one store: one searches and stores, the next only loads. And two racing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = Path(__file__).with_name("e2e_child.py")


def _env(store: Path, tmp: Path) -> dict:
    env = dict(os.environ)
    env.update({"KEVOLVE_CACHE_DIR": str(store), "KEVOLVE_SHIPPED_DIR": str(tmp / "none"),
                "KEVOLVE_MAX_CANDIDATES": "1", "TRITON_INTERPRET": "1",
                "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")})
    return env


def _parse(p: subprocess.CompletedProcess) -> dict:
    line = next((l for l in p.stdout.splitlines() if l.startswith("E2E ")), None)
    assert p.returncode == 0 and line, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(line[4:])


def test_second_process_loads_without_search(tmp_path):
    store = tmp_path / "store"
    env = _env(store, tmp_path)
    first = _parse(subprocess.run([sys.executable, str(CHILD)], env=env, capture_output=True, text=True, timeout=900))
    assert first["match"], first
    assert first["stats"]["searches"] == 3  # three distinct embedding-bag specs in the model
    second = _parse(subprocess.run([sys.executable, str(CHILD)], env=env, capture_output=True, text=True, timeout=900))
    assert second["match"], second
    assert second["stats"].get("searches", 0) == 0
    assert second["stats"]["store_hits"] == 3 and second["stats"]["kernel_calls"] == 3


def test_two_processes_racing_search_each_key_once(tmp_path):
    store = tmp_path / "store"
    env = _env(store, tmp_path)
    procs = [subprocess.Popen([sys.executable, str(CHILD)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        results.append(_parse(subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    assert all(r["match"] for r in results)
    assert sum(r["stats"].get("searches", 0) for r in results) == 3
    assert sum(r["stats"].get("store_hits", 0) for r in results) == 3
