"""A real ``torch.compile(backend="kevolve")`` of a small model against a store whose entry for the
model's op was damaged (issue 10): a bit flip, a truncation, a wrong schema. The compile must not
crash, must warn once per damaged file, must keep Inductor's path in cache mode or search again (and
repair the file) in JIT mode, and the model must give eager's result."""
from __future__ import annotations

import json
import logging
import random

import pytest
import torch
from torch import nn

from torch_kevolve import stats
from torch_kevolve.config import Settings
from torch_kevolve.families import get_family
from torch_kevolve.lowering import REPORTS
from torch_kevolve.store import Entry, KernelStore

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SR = get_family("segment_reduce")


class Pool(nn.Module):
    """A linear layer over segment-mean-pooled rows: the segment_reduce node is the long-tail op."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.segment_reduce(x, "mean", lengths=lengths))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return torch.randn(19, 4, generator=g), torch.tensor([5, 0, 9, 5])


def _damage(path, how: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if how == "bitflip":
        doc = json.loads(data)
        src = doc["candidate"]["source"].encode()
        i = rng.randrange(len(src))
        doc["candidate"]["source"] = (src[:i] + bytes([src[i] ^ 0x04]) + src[i + 1:]).decode("utf-8", "replace")
        path.write_text(json.dumps(doc))  # a valid document whose checksum no longer matches
    elif how == "truncate":
        path.write_bytes(data[: rng.randrange(1, len(data) - 1)])
    elif how == "schema":
        doc = json.loads(data)
        doc["schema"] = doc["schema"] + 1
        path.write_text(json.dumps(doc))
    else:
        raise ValueError(how)


def _compile_and_run(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    torch.manual_seed(0)
    m = Pool().eval()
    x, lengths = _inputs()
    opts = {"fx_graph_cache": False, "mode": mode, "max_candidates": 1, "executor": "inprocess", "seeds": 1}
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
        out = torch.compile(m, backend="kevolve", options=opts)(x, lengths)
        return out, m(x, lengths)


def _decisions() -> list[str]:
    return [f.decision for rep in REPORTS for f in rep if f.family == "segment_reduce"]


def _seed_store() -> KernelStore:
    """The entry the model's compile looks up: its exact spec, a verified template candidate."""
    x, lengths = _inputs()
    spec = SR.spec_for(x, "mean", lengths=lengths)
    store = KernelStore.from_settings(Settings.from_env())
    assert store.put(Entry(spec, SR.candidates(spec)[0], {"test": True}))
    return store


@pytest.mark.parametrize("how", ["bitflip", "truncate", "schema"])
def test_damaged_entry_cache_mode_keeps_inductor(store_dir, caplog, how):
    _seed_store()
    out, ref = _compile_and_run("cache")  # intact: served
    torch.testing.assert_close(out, ref, equal_nan=True)  # the empty segment: NaN
    assert stats.snapshot()["kernel_calls"] == 1 and _decisions()[0].startswith("stored kernel")

    (path,) = list(store_dir.rglob("*.json"))
    _damage(path, how, random.Random(how))
    with caplog.at_level(logging.WARNING, logger="torch_kevolve"):
        for _ in range(2):  # a second compile reads the same bad file: still one warning
            out, ref = _compile_and_run("cache")
            torch.testing.assert_close(out, ref, equal_nan=True)  # the empty segment: NaN
            assert stats.snapshot().get("kernel_calls", 0) == 0
            assert _decisions() == ["Inductor (cache mode, not stored)"]
    warned = [r.getMessage() for r in caplog.records if str(path.name) in r.getMessage() or "corrupt" in r.getMessage()
              or "checksum" in r.getMessage() or "schema" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("how", ["bitflip", "truncate", "schema"])
def test_damaged_entry_jit_mode_researches_and_repairs(store_dir, caplog, how):
    store = _seed_store()
    (path,) = list(store_dir.rglob("*.json"))
    _damage(path, how, random.Random(how + "jit"))
    with caplog.at_level(logging.WARNING, logger="torch_kevolve"):
        out, ref = _compile_and_run("jit")
    torch.testing.assert_close(out, ref, equal_nan=True)  # the empty segment: NaN
    snap = stats.snapshot()
    assert snap["searches"] == 1 and snap["kernel_calls"] == 1, snap
    assert _decisions()[0].startswith("searched now"), _decisions()
    bad = [r.getMessage() for r in caplog.records if "kernel store entry" in r.getMessage()]
    assert len(bad) == 1 and path.name in bad[0], [r.getMessage() for r in caplog.records]
    # the search's winner was written over the bad file: the next compile is a plain store hit
    assert len(list(store.entries())) == 1
    out, ref = _compile_and_run("cache")
    torch.testing.assert_close(out, ref, equal_nan=True)  # the empty segment: NaN
    assert stats.snapshot()["store_hits"] == 1 and stats.snapshot()["kernel_calls"] == 1
