"""The detector on real post-grad graphs: fallbacks, Triton-only lowerings on CPU, custom ops."""
from __future__ import annotations

import torch
from torch._inductor.compile_fx import compile_fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from torch_kevolve.detect import detect


@torch.library.custom_op("kevolve_test::cpu_only", mutates_args=(), device_types="cpu")
def cpu_only(x: torch.Tensor) -> torch.Tensor:
    return x * 3


@cpu_only.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("kevolve_test::everywhere", mutates_args=())
def everywhere(x: torch.Tensor) -> torch.Tensor:
    return x + 1


@everywhere.register_fake
def _(x):
    return torch.empty_like(x)


class Grab(CustomGraphPass):
    def __init__(self):
        self.findings = []

    def __call__(self, graph):
        self.findings += detect(graph)

    def uuid(self):
        return None


def test_detect_on_a_cpu_graph():
    grab = Grab()

    def be(gm, ex):
        return compile_fx(gm, ex, config_patches={"post_grad_custom_pre_pass": grab, "fx_graph_cache": False})

    def f(x, b, i, o, w):
        y = torch.cumsum(x, 1) + torch.bucketize(x, b)
        e = torch.nn.functional.embedding_bag(i, w, o, mode="max")
        return y.sum() + e.sum() + cpu_only(x).sum() + everywhere(x).sum() + torch.relu(x).sum()

    x = torch.randn(4, 8)
    b = torch.linspace(-1, 1, 5)
    i = torch.randint(0, 10, (6,))
    o = torch.tensor([0, 2])
    w = torch.randn(10, 3)
    torch._dynamo.reset()
    with torch._functorch.config.patch(enable_autograd_cache=False):
        torch.compile(f, backend=be)(x, b, i, o, w)
    by_op = {f.op: f for f in grab.findings}
    assert "Triton devices only" in by_op["aten.cumsum.default"].reason
    assert "Triton devices only" in by_op["aten.bucketize.Tensor"].reason
    eb = by_op["aten._embedding_bag_forward_only.default"]  # no grad needed: forward-only variant
    assert "fallback" in eb.reason and eb.family == "embedding_bag" and eb.status == "skipped" and "max" in eb.detail
    assert by_op["kevolve_test.cpu_only.default"].status == "no family"
    assert "opaque" in by_op["kevolve_test.everywhere.default"].reason
    assert not any(f.op.startswith("aten.relu") for f in grab.findings)
