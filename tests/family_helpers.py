"""Candidate pickers the family test modules share (which proposals a test runs under the slow
interpreter: every template once, plus a rotating extra)."""
from __future__ import annotations

import contextlib
import dataclasses
import uuid
from typing import Any

import torch

from torch_kevolve.families.base import Candidate


def firsts(cands: list[Candidate]) -> dict[str, Candidate]:
    """Each template's first proposal (the family's default for it)."""
    out: dict[str, Candidate] = {}
    for c in cands:
        out.setdefault(c.template, c)
    return out


def pick(cands: list[Candidate], rotate: int) -> list[Candidate]:
    """Per template its first proposal plus one more chosen by ``rotate``."""
    out = list(firsts(cands).values())
    rest = [c for c in cands if c not in out]
    if rest:
        out.append(rest[rotate % len(rest)])
    return out


def with_cfg(cand: Candidate, **over: Any) -> Candidate:
    cfg = dict(cand.config)
    cfg.update(over)
    return dataclasses.replace(cand, config=tuple(sorted(cfg.items())))


def compile_and_record(fn: Any, *args: Any, no_grad: bool = True,
                       dynamic_outputs: bool = False) -> tuple[list[torch.fx.Graph], Any]:
    """Compile ``fn`` with Inductor and keep the post-grad graphs it hands to the custom pass: the
    real graphs a family's ``match`` sees. Graph and autograd caches are off (a hit skips the pass)."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.custom_graph_pass import CustomGraphPass

    graphs: list[torch.fx.Graph] = []
    token = uuid.uuid4().bytes  # fresh per compile

    class Record(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            graphs.append(graph)

        def uuid(self) -> bytes:
            return token

    def backend(gm: Any, example_inputs: Any) -> Any:
        return compile_fx(gm, example_inputs, config_patches={"post_grad_custom_pre_pass": Record(),
                                                              "fx_graph_cache": False})

    torch._dynamo.reset()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch._functorch.config.patch(enable_autograd_cache=False))
            stack.enter_context(torch._dynamo.config.patch(capture_dynamic_output_shape_ops=dynamic_outputs))
            if no_grad:
                stack.enter_context(torch.no_grad())
            out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    finally:
        torch._dynamo.reset()
    return graphs, out
