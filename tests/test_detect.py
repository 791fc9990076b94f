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
    w = torch.randn(10, 3, dtype=torch.float64)  # a float64 table: the family skips it
    torch._dynamo.reset()
    with torch._functorch.config.patch(enable_autograd_cache=False):
        torch.compile(f, backend=be)(x, b, i, o, w)
    by_op = {f.op: f for f in grab.findings}
    assert "Triton devices only" in by_op["aten.cumsum.default"].reason
    assert "Triton devices only" in by_op["aten.bucketize.Tensor"].reason
    eb = by_op["aten._embedding_bag_forward_only.default"]  # no grad needed: forward-only variant
    assert "fallback" in eb.reason and eb.family == "embedding_bag" and eb.status == "skipped" and "float64" in eb.detail
    cpu = by_op["kevolve_test.cpu_only.default"]  # a custom op: the generic family (LLM-served) claims it
    assert cpu.family == "generic" and cpu.status == "candidate" and "cpu_only" in cpu.detail
    assert "opaque" in by_op["kevolve_test.everywhere.default"].reason
    assert not any(f.op.startswith("aten.relu") for f in grab.findings)


class GrabWith(Grab):
    def __init__(self, contest):
        super().__init__()
        self.contest = contest

    def __call__(self, graph):
        self.findings += detect(graph, self.contest)


def _findings(fn, args, contest):
    grab = GrabWith(contest)

    def be(gm, ex):
        return compile_fx(gm, ex, config_patches={"post_grad_custom_pre_pass": grab, "fx_graph_cache": False})

    torch._dynamo.reset()
    with torch._functorch.config.patch(enable_autograd_cache=False):
        torch.compile(fn, backend=be)(*args)
    return {f.op: f for f in grab.findings}


def test_contested_lowerings_follow_the_setting():
    """index_add reaches the graph as index_put(accumulate=True), which Inductor lowers: contested on
    CUDA by default, on every device with contest="all", never with "none". scatter_reduce(amax) is a
    fallback inside Inductor's lowering: found on any device whatever the setting."""
    from torch_kevolve.detect import CONTESTED, contests

    def f(x, i, s):
        return torch.index_add(x, 0, i, s) + x.scatter_reduce(0, i[:, None].expand(5, 4), s, "amax")

    args = (torch.randn(8, 4), torch.tensor([1, 1, 3, 7, 0]), torch.randn(5, 4))
    auto = _findings(f, args, "auto")
    assert "aten.index_put.default" not in auto  # CPU, auto: Inductor's lowering stands
    amax = auto["aten.scatter_reduce.two"]
    assert "falls back" in amax.reason and amax.family == "scatter" and amax.status == "candidate"
    every = _findings(f, args, "all")
    ip = every["aten.index_put.default"]
    assert ip.reason == CONTESTED and ip.family == "scatter" and ip.status == "candidate"
    assert "aten.index_put.default" not in _findings(f, args, "none")
    assert contests("auto", torch.device("cuda")) and not contests("auto", torch.device("cpu"))
    assert contests("all", torch.device("cpu")) and not contests("none", torch.device("cuda"))
