"""``kevolve explain`` and ``kevolve cache ls/show`` on a real model and store."""
from __future__ import annotations

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
    assert entry.key in capsys.readouterr().out
    assert cli.main(["cache", "show", entry.key]) == 0
    out = capsys.readouterr().out
    assert "@triton.jit" in out and '"trials"' in out
    assert cli.main(["cache", "show", "embedding_bag/00/00"]) == 1
