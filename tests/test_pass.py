"""The pass's contract with Inductor: uuid tracks every input of its decisions; user passes chain."""
from __future__ import annotations

import torch

from torch_kevolve.config import Settings
from torch_kevolve.families import get_family
from torch_kevolve.lowering import KevolvePass
from torch_kevolve.search import search_spec
from torch_kevolve.store import KernelStore


class UserPass:
    def __init__(self, tag: bytes) -> None:
        self.tag, self.seen = tag, 0

    def __call__(self, graph) -> None:
        self.seen += 1

    def uuid(self) -> bytes:
        return self.tag


def test_uuid_changes_with_store_generation_mode_and_user_pass(store_dir):
    s = Settings.from_env()
    store = KernelStore.from_settings(s)
    p = KevolvePass(s, store)
    u0 = p.uuid()
    assert u0 == KevolvePass(s, store).uuid()  # stable
    fam = get_family("embedding_bag")
    spec = fam.spec_for(torch.randn(10, 4), torch.tensor([1, 2, 3]), torch.tensor([0, 1]))
    entry, _ = search_spec(fam, spec, Settings(max_candidates=1, seeds=1), timer=lambda fn: 1.0)
    assert store.put(entry)
    u1 = p.uuid()
    assert u1 != u0
    assert KevolvePass(Settings.from_env({"mode": "cache"}), store).uuid() != u1
    assert KevolvePass(s, store, user_pass=UserPass(b"a")).uuid() != KevolvePass(s, store, user_pass=UserPass(b"b")).uuid()
    store.remove(entry.key)
    assert p.uuid() == u0


def test_user_pass_is_chained(store_dir):
    up = UserPass(b"x")
    torch._dynamo.reset()
    f = torch.compile(lambda x: torch.relu(x) + 1, backend="kevolve",
                      options={"post_grad_custom_pre_pass": up, "fx_graph_cache": False})
    with torch._functorch.config.patch(enable_autograd_cache=False):
        torch.testing.assert_close(f(torch.randn(8)).shape, torch.Size([8]))
    assert up.seen == 1
