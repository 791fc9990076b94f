"""``kevolve explain`` and the ``kevolve cache`` subcommands on a real model and store."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from torch_kevolve import cli
from torch_kevolve.config import Settings
from torch_kevolve.families import get_family
from torch_kevolve.search import search_spec
from torch_kevolve.store import KernelStore


def tiny_model():
    from torch_kevolve.zoo import make_embedding_bag_mlp

    return make_embedding_bag_mlp("small")


def test_explain(store_dir, capsys):
    assert cli.main(["explain", "tests.test_cli:tiny_model"]) == 0
    out = capsys.readouterr().out
    assert out.count("aten._embedding_bag.default") == 3
    assert "Inductor fallback" in out and "cache mode" in out


def test_cache_ls_show(store_dir, capsys):
    fam = get_family("embedding_bag")
    spec = fam.spec_for(torch.randn(10, 4), torch.tensor([1, 2, 3]), torch.tensor([0, 1]))
    entry, _ = search_spec(fam, spec, Settings(max_candidates=1, seeds=1), timer=lambda fn: 1.0)
    assert KernelStore.from_settings(Settings.from_env()).put(entry)
    assert cli.main(["cache", "ls"]) == 0
    assert entry.spec.strict_key[:12] in capsys.readouterr().out  # the short key column
    assert cli.main(["cache", "ls", "--json"]) == 0
    assert [r["key"] for r in json.loads(capsys.readouterr().out)] == [entry.key]
    assert cli.main(["cache", "show", entry.key]) == 0
    out = capsys.readouterr().out
    assert "@triton.jit" in out and "# how the search found it" in out
    assert cli.main(["cache", "show", entry.key, "--json"]) == 0
    assert '"trials"' in capsys.readouterr().out
    assert cli.main(["cache", "show", "embedding_bag/00/00"]) == 2
    err = capsys.readouterr().err
    assert "kevolve cache show: error: no entry matches" in err and "Traceback" not in err


def _shipped_copy(tmp_path: Path) -> Path:
    d = tmp_path / "team store"
    shutil.copytree(Path(__file__).resolve().parent.parent / "kernel_cache" / "v1", d / "v1")
    return d


def test_cache_subcommands_wiring(store_dir, tmp_path, capsys):
    """Each ``kevolve cache`` subcommand parses, runs on real (H100) entries and exits as documented."""
    d = _shipped_copy(tmp_path)
    keys = sorted(e.key for e in KernelStore(d).entries())
    run = lambda *a: (cli.main(["cache", *a]), capsys.readouterr())  # noqa: E731

    rc, cap = run("ls", "--dir", str(d), "--device", "H100", "--min-speedup", "2.5", "--json")
    rows = json.loads(cap.out)
    assert rc == 0 and rows and all(r["speedup"] >= 2.5 and r["device_type"] == "cuda" for r in rows)
    rc, cap = run("ls", "--dir", str(d), "--since", "not-a-date")
    assert rc == 2 and "not a date" in cap.err
    rc, cap = run("show", keys[0].split("/")[2][:8], "--dir", str(d))
    assert rc == 0 and keys[0] in cap.out and ("strategy exhaustive" in cap.out or "strategy mcts" in cap.out)
    rc, cap = run("show", "embedding_bag", "--dir", str(d))
    assert rc == 2 and "ambiguous" in cap.err and "Traceback" not in cap.err
    rc, cap = run("stats", "--dir", str(d), "--json")
    assert rc == 0 and json.loads(cap.out)["entries"] == len(keys)

    rc, cap = run("verify", "--dir", str(d), "--executor", "inprocess")
    assert rc == 0 and f"0 ok, 0 failed, 0 corrupt, {len(keys)} skipped" in cap.out and "other device" in cap.out
    path = KernelStore(d).path_for(keys[0])
    path.write_bytes(path.read_bytes().replace(b'"speedup": ', b'"speedup": 1', 1))
    rc, cap = run("verify", "--dir", str(d), "--executor", "inprocess")
    assert rc == 1 and "CORRUPT" in cap.out and keys[0] in cap.out

    rc, cap = run("prune", "--dir", str(d), "--failed-verify")
    assert rc == 0 and "would remove" in cap.out and path.exists()
    rc, cap = run("prune", "--dir", str(d))
    assert rc == 2 and "needs a criterion" in cap.err
    rc, cap = run("prune", "--dir", str(d), "--failed-verify", "--yes")
    assert rc == 0 and "1 entry removed" in cap.out and not path.exists()

    tar = tmp_path / "team.tar.gz"
    rc, cap = run("export", str(tar), "--dir", str(d))
    assert rc == 0 and f"exported {len(keys) - 1} entries" in cap.out
    rc, cap = run("import", str(tar))  # into the user store (KEVOLVE_CACHE_DIR)
    assert rc == 0 and f"{len(keys) - 1} imported" in cap.out
    assert sorted(e.key for e in KernelStore(store_dir).entries()) == keys[1:]

    rc, cap = run("diff", str(d), str(store_dir))
    assert rc == 0 and f"0 different, {len(keys) - 1} identical" in cap.out
    rc, cap = run("diff", str(_shipped_copy(tmp_path / "b")), str(store_dir), "--json")
    assert rc == 1 and json.loads(cap.out)["only_a"] == [keys[0]]

    pytest.importorskip("matplotlib")
    rc, cap = run("report", str(tmp_path / "r.html"), "--dir", str(d))
    assert rc == 0 and (tmp_path / "r.html").read_text().count("data:image/svg+xml;base64,") == 3
