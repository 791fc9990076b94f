"""The Triton route: insert Inductor's own user-defined-Triton-kernel node into the post-grad graph.

``triton_kernel_wrapper_functional`` is what a ``triton_op``/``wrap_triton`` call becomes when it is
traced before AOTAutograd; inserting it ourselves from the post-grad pass makes Inductor emit the launch
from its generated wrapper (no custom-op dispatch), and the reinplace pass then turns it into the
mutation form writing straight into the freshly allocated output. Only for devices with a real Triton
backend (CUDA): on CPU Inductor's C++ wrapper cannot launch Triton kernels.

A multi-step plan becomes one such node per step, chained through the buffers they share.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx

from ..families.base import CallPlan, In, Out, OutBuf, Step, Ws
from ..spec import OpSpec

aten = torch.ops.aten


def _autotuner(module: Any, step: CallPlan | Step) -> Any:
    """Wrap the jit function in a one-config Autotuner: the way Inductor learns num_warps/num_stages."""
    import triton

    fn = getattr(module, step.kernel)
    cache = module.__dict__.setdefault("_kevolve_autotuners", {})
    key = (step.kernel, step.num_warps, step.num_stages)
    if key not in cache:
        cfg = triton.Config({}, num_warps=step.num_warps, num_stages=step.num_stages)
        cache[key] = triton.autotune(configs=[cfg], key=[])(fn)
    return cache[key]


def _constexprs(module: Any, kernel: str) -> set[str]:
    fn = getattr(module, kernel)
    names = list(getattr(fn, "arg_names", []))
    return {names[i] for i in getattr(fn, "constexprs", []) if i < len(names)}


def _defaults(module: Any, kernel: str) -> dict[str, Any]:
    """The kernel's parameters that have defaults (knobs a plan binds only when on), with them."""
    import inspect

    fn = getattr(module, kernel)
    py = getattr(fn, "fn", fn)
    try:
        params = inspect.signature(py).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _fake_empty(like: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A fresh fake tensor (own storage) in ``like``'s fake mode, for a buffer the graph allocates."""
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode([like])
    if mode is None:
        return torch.empty(shape, dtype=dtype, device="meta")
    with mode:
        return torch.empty(shape, dtype=dtype, device=like.device)


def insert_call(
    graph: fx.Graph, before: fx.Node, spec: OpSpec, module: Any, plan: CallPlan,
    inputs: list[fx.Node | None], fake_outs: list[torch.Tensor],
) -> list[fx.Node]:
    """Insert the plan before ``before``: buffer allocations, then one functional HOP per step.

    Each HOP lists every output/workspace buffer it binds in ``tensors_to_clone`` (conservatively:
    any of them may be written), and the next step takes those buffers from the HOP's getitems, so
    step order is a data dependency in the graph. Inductor's reinplace pass then drops the clones
    (every buffer version has exactly one later reader) and launches all steps on the same buffers.
    Returns the nodes holding the outputs.
    """
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table, triton_kernel_wrapper_functional

    device = fake_outs[0].device
    with graph.inserting_before(before):

        def alloc(ob: OutBuf, fake: torch.Tensor) -> fx.Node:
            dt = getattr(torch, ob.dtype)
            if ob.fill is None:
                n = graph.call_function(aten.empty.memory_format, (list(ob.shape),), {"dtype": dt, "device": device})
            else:
                n = graph.call_function(aten.full.default, (list(ob.shape), ob.fill), {"dtype": dt, "device": device})
            n.meta["val"] = fake
            return n

        # Current node of each buffer: the allocation, then the getitem of the last HOP that bound it.
        cur: dict[tuple[str, int], fx.Node] = {}
        for j, (ob, fk) in enumerate(zip(plan.outputs, fake_outs)):
            cur["out", j] = alloc(ob, _fake_empty(fk, tuple(ob.shape), getattr(torch, ob.dtype)))
        for k, ob in enumerate(plan.workspace):
            cur["ws", k] = alloc(ob, _fake_empty(fake_outs[0], tuple(ob.shape), getattr(torch, ob.dtype)))

        steps = [st for st in plan.steps if all(g > 0 for g in st.grid)]  # as launch(): empty grids do nothing
        last_touch = {("out", v.j): i for i, st in enumerate(steps) for _, v in st.args if isinstance(v, Out)}

        for i, st in enumerate(steps):
            tensor_kwargs: dict[str, fx.Node] = {}
            consts: dict[str, Any] = {}
            bound: dict[tuple[str, int], str] = {}  # buffer -> the parameter whose clone carries it out
            for name, v in st.args:
                if isinstance(v, In):
                    node = inputs[v.i]
                    if node is None:
                        raise ValueError(f"kernel argument {name} is bound to a missing input {v.i}")
                    tensor_kwargs[name] = node
                elif isinstance(v, (Out, Ws)):
                    key = ("out", v.j) if isinstance(v, Out) else ("ws", v.k)
                    tensor_kwargs[name] = cur[key]
                    bound.setdefault(key, name)
                else:
                    consts[name] = v
                    if isinstance(v, float) and name not in _constexprs(module, st.kernel):
                        # Inductor's launcher types a Python float fp64 (Triton's own JIT: fp32), and
                        # fp64 then spreads through the kernel's math (measured 4-5x slower, HSTU)
                        from ..log import warn_once

                        warn_once("kevolve: %s.%s is a float runtime argument: Inductor passes it as fp64; "
                                  "declare it tl.constexpr (or pass its bits as an int)", st.kernel, name)
            # Inductor's launcher takes every parameter the kernel declares, defaulted ones included
            # (torch 2.11: ``launcher() missing ... '_grid_2'`` when one is left out): bind each left
            # out to its default, as Triton's own JIT would.
            named = {name for name, _ in st.args}
            for name, default in _defaults(module, st.kernel).items():
                if name not in named:
                    consts[name] = default
            kernel_idx = kernel_side_table.add_kernel(_autotuner(module, st))
            consts_idx = kernel_side_table.add_constant_args(consts)
            hop = graph.call_function(
                triton_kernel_wrapper_functional,
                (),
                {
                    "kernel_idx": kernel_idx,
                    "constant_args_idx": consts_idx,
                    # Inductor's launcher takes exactly three grid dims (Dynamo pads user grids too).
                    "grid": [tuple(st.grid) + (1,) * (3 - len(st.grid))],
                    "tma_descriptor_metadata": {},
                    "kwargs": tensor_kwargs,
                    "tensors_to_clone": list(bound.values()),
                },
            )
            vals: dict[str, torch.Tensor] = {}
            for key, name in bound.items():
                kind, idx = key
                if kind == "out" and last_touch[key] == i:
                    fake = fake_outs[idx]  # the op's result, as its users know it
                else:
                    prev = cur[key].meta["val"]
                    fake = _fake_empty(prev, tuple(prev.shape), prev.dtype)
                g = graph.call_function(operator.getitem, (hop, name))
                g.meta["val"] = vals[name] = fake
                cur[key] = g
            hop.meta["val"] = vals
    return [cur["out", j] for j in range(len(plan.outputs))]
