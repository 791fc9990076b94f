"""The Triton route: insert Inductor's own user-defined-Triton-kernel node into the post-grad graph.

``triton_kernel_wrapper_functional`` is what a ``triton_op``/``wrap_triton`` call becomes when it is
traced before AOTAutograd; inserting it ourselves from the post-grad pass makes Inductor emit the launch
from its generated wrapper (no custom-op dispatch), and the reinplace pass then turns it into the
mutation form writing straight into the freshly allocated output. Only for devices with a real Triton
backend (CUDA): on CPU Inductor's C++ wrapper cannot launch Triton kernels.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx

from ..families.base import CallPlan, In, Out
from ..spec import OpSpec

aten = torch.ops.aten


def _autotuner(module: Any, plan: CallPlan) -> Any:
    """Wrap the jit function in a one-config Autotuner: the way Inductor learns num_warps/num_stages."""
    import triton

    fn = getattr(module, plan.kernel)
    cache = module.__dict__.setdefault("_kevolve_autotuners", {})
    key = (plan.kernel, plan.num_warps, plan.num_stages)
    if key not in cache:
        cfg = triton.Config({}, num_warps=plan.num_warps, num_stages=plan.num_stages)
        cache[key] = triton.autotune(configs=[cfg], key=[])(fn)
    return cache[key]


def insert_call(
    graph: fx.Graph, before: fx.Node, spec: OpSpec, module: Any, plan: CallPlan,
    inputs: list[fx.Node | None], fake_outs: list[torch.Tensor],
) -> list[fx.Node]:
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table, triton_kernel_wrapper_functional

    device = fake_outs[0].device
    out_nodes: list[fx.Node] = []
    with graph.inserting_before(before):
        for ob, fk in zip(plan.outputs, fake_outs):
            dt = getattr(torch, ob.dtype)
            if ob.fill is None:
                n = graph.call_function(aten.empty.memory_format, (list(ob.shape),), {"dtype": dt, "device": device})
            else:
                n = graph.call_function(aten.full.default, (list(ob.shape), ob.fill), {"dtype": dt, "device": device})
            n.meta["val"] = fk
            out_nodes.append(n)
        tensor_kwargs: dict[str, fx.Node] = {}
        consts: dict[str, Any] = {}
        out_param: dict[int, str] = {}
        for name, v in plan.args:
            if isinstance(v, In):
                node = inputs[v.i]
                if node is None:
                    raise ValueError(f"kernel argument {name} is bound to a missing input {v.i}")
                tensor_kwargs[name] = node
            elif isinstance(v, Out):
                tensor_kwargs[name] = out_nodes[v.j]
                out_param.setdefault(v.j, name)
            else:
                consts[name] = v
        kernel_idx = kernel_side_table.add_kernel(_autotuner(module, plan))
        consts_idx = kernel_side_table.add_constant_args(consts)
        clone = [out_param[j] for j in sorted(out_param)]
        hop = graph.call_function(
            triton_kernel_wrapper_functional,
            (),
            {
                "kernel_idx": kernel_idx,
                "constant_args_idx": consts_idx,
                # Inductor's launcher takes exactly three grid dims (Dynamo pads user grids too).
                "grid": [tuple(plan.grid) + (1,) * (3 - len(plan.grid))],
                "tma_descriptor_metadata": {},
                "kwargs": tensor_kwargs,
                "tensors_to_clone": clone,
            },
        )
        hop.meta["val"] = {out_param[j]: fake_outs[j] for j in out_param}
        results = []
        for j in range(len(plan.outputs)):
            g = graph.call_function(operator.getitem, (hop, out_param[j]))
            g.meta["val"] = fake_outs[j]
            results.append(g)
    return results
