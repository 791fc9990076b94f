"""What an op family provides to the rest of kevolve.

A family owns everything op-specific: matching FX nodes, the reference, the eager fallback, input
generators and edge cases, Triton templates and their configuration space, and the *call plan* that
says how a kernel is launched. The call plan is data (not code), so the same stored kernel can be
launched from Python (custom op route, CPU/interpreter) or inserted as Inductor's user-defined
Triton kernel node (GPU route) without the family knowing which.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..spec import OpSpec


@dataclass(frozen=True)
class In:
    """Kernel argument bound to input tensor ``i`` of the family's canonical input list."""

    i: int


@dataclass(frozen=True)
class Out:
    """Kernel argument bound to output buffer ``j`` of the call plan."""

    j: int


@dataclass(frozen=True)
class OutBuf:
    shape: tuple[int, ...]
    dtype: str
    fill: float | int | None = None  # None: torch.empty; the kernel must write every element


@dataclass(frozen=True)
class CallPlan:
    kernel: str  # name of the @triton.jit function in the candidate source
    grid: tuple[int, ...]
    args: tuple[tuple[str, Any], ...]  # (param name, In | Out | python constant)
    outputs: tuple[OutBuf, ...]
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class Candidate:
    """A kernel proposal: source text + config. ``origin`` says who proposed it and how."""

    source: str
    config: tuple[tuple[str, Any], ...]
    origin: str = "template"
    template: str = ""

    @property
    def cfg(self) -> dict[str, Any]:
        return dict(self.config)


@dataclass
class Match:
    """A node the family can serve: its spec and the FX nodes feeding its canonical inputs."""

    spec: OpSpec
    inputs: list  # fx.Node | None, in canonical order
    result_users: dict[int, list] = field(default_factory=dict)  # output index -> getitem nodes


@dataclass
class Skip:
    reason: str


class OpFamily(ABC):
    name: str = ""
    ops: tuple[str, ...] = ()  # op overload names, e.g. "aten._embedding_bag.default"
    template_version: str = "1"

    # -- detection -------------------------------------------------------------------------------
    @abstractmethod
    def match(self, node: Any) -> Match | Skip:
        """Build the spec for an FX node (with FakeTensor metadata) or say why not."""

    # -- semantics -------------------------------------------------------------------------------
    @abstractmethod
    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """The op as PyTorch runs it; also the runtime fallback. Returns the plan's outputs."""

    @abstractmethod
    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """Ground truth, float64 where the op allows."""

    @abstractmethod
    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """Random inputs for exactly this spec (device included)."""

    @abstractmethod
    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        """Small named cases with the spec's dtypes and constants: (name, spec for them, inputs)."""

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        return {
            torch.float16: (1e-2, 1e-2),
            torch.bfloat16: (2e-2, 2e-2),
            torch.float32: (1e-4, 1e-4),
            torch.float64: (1e-9, 1e-9),
        }.get(dtype, (0.0, 0.0))

    def floor_bytes(self, spec: OpSpec) -> int:
        """Bytes that must move (each input read once, each output written once)."""
        raise NotImplementedError

    # -- kernels ---------------------------------------------------------------------------------
    @abstractmethod
    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """The template synthesizer's proposals for this spec."""

    @abstractmethod
    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        """How to launch ``cand`` for ``spec``: grid, argument binding, output buffers."""
