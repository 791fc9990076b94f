"""The custom-op route: ``kevolve::run(spec, args)`` launches a stored kernel from Python.

Works everywhere (CPU interpreter included) but is opaque to Inductor: on an H100 it costs ~100 µs per
call inside a compiled graph (shared/notes/gpu-call-overhead.md), so on CUDA the pass prefers the
Triton route (``triton_route.py``)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import runtime


@torch.library.custom_op("kevolve::run", mutates_args=())
def kevolve_run(spec: str, args: Sequence[Optional[torch.Tensor]]) -> list[torch.Tensor]:
    return runtime.call(spec, list(args))


@kevolve_run.register_fake
def _kevolve_run_fake(spec: str, args: Sequence[Optional[torch.Tensor]]) -> list[torch.Tensor]:
    return runtime.fake(spec, list(args))


OP = torch.ops.kevolve.run.default
