"""What an op family provides to the rest of kevolve.

A family owns everything op-specific: matching FX nodes, the reference, the eager fallback, input
generators and edge cases, Triton templates and their configuration space, and the *call plan* that
says how a kernel is launched. The call plan is data (not code), so the same stored kernel can be
launched from Python (custom op route, CPU/interpreter) or inserted as Inductor's user-defined
Triton kernel node (GPU route) without the family knowing which.

A plan may launch several kernels of the candidate's one source module: ``pre`` steps run in order
before the main kernel (e.g. a prefix sum the reduction reads), communicating through ``workspace``
buffers that are allocated per call and never returned.
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
class Ws:
    """Kernel argument bound to workspace buffer ``k`` of the call plan (scratch, not returned)."""

    k: int


@dataclass(frozen=True)
class OutBuf:
    shape: tuple[int, ...]
    dtype: str
    # None: torch.empty; the plan's kernels must write every element (outputs are poisoned in
    # verification; workspace is not, so a step must not read workspace nobody wrote).
    fill: float | int | None = None


@dataclass(frozen=True)
class Step:
    """One kernel launch of a plan: arguments bind In / Out / Ws or python constants."""

    kernel: str  # name of the @triton.jit function in the candidate source
    grid: tuple[int, ...]
    args: tuple[tuple[str, Any], ...]  # (param name, In | Out | Ws | python constant)
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class CallPlan:
    """How a candidate is launched: ``pre`` steps in order, then the main kernel (these fields).

    Single-kernel plans leave ``pre`` and ``workspace`` empty and are exactly what they were before
    multi-step plans existed. Steps run on one stream in order, so a step sees everything earlier
    steps wrote; a grid with a zero dimension skips its step.
    """

    kernel: str  # name of the @triton.jit function in the candidate source
    grid: tuple[int, ...]
    args: tuple[tuple[str, Any], ...]  # (param name, In | Out | Ws | python constant)
    outputs: tuple[OutBuf, ...]
    num_warps: int = 4
    num_stages: int = 2
    pre: tuple[Step, ...] = ()
    workspace: tuple[OutBuf, ...] = ()

    def __post_init__(self) -> None:
        # A binding past the buffers is a family bug; catch it here, not as a launch-time IndexError.
        for st in self.steps:
            for name, v in st.args:
                if isinstance(v, Out) and not 0 <= v.j < len(self.outputs):
                    raise ValueError(f"{st.kernel}.{name} is bound to Out({v.j}) but the plan has {len(self.outputs)} outputs")
                if isinstance(v, Ws) and not 0 <= v.k < len(self.workspace):
                    raise ValueError(f"{st.kernel}.{name} is bound to Ws({v.k}) but the plan has "
                                     f"{len(self.workspace)} workspace buffers")

    @property
    def main(self) -> Step:
        return Step(self.kernel, self.grid, self.args, self.num_warps, self.num_stages)

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every launch in order: the pre steps, then the main kernel."""
        return (*self.pre, self.main)

    @property
    def kernels(self) -> tuple[str, ...]:
        """Distinct kernel names the plan launches, in first-launch order."""
        return tuple(dict.fromkeys(st.kernel for st in self.steps))


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
    # A region match (several FX nodes served by one kernel, anchored at the node producing its output):
    # names of the nodes the rewrite replaces; they become dead once the output is rewritten. () for one op.
    region: tuple[str, ...] = ()
    # A bucketed match (dynamic shapes): the SymInts to guard when a kernel is served (``dynamic.Dynamic``)
    dynamic: Any = None


@dataclass
class Skip:
    reason: str


class OpFamily(ABC):
    name: str = ""
    ops: tuple[str, ...] = ()  # op overload names, e.g. "aten._embedding_bag.default"
    #: ops among ``ops`` that Inductor *does* lower (no fallback). kevolve contests them (on CUDA by
    #: default, see ``Settings.contest``) with Inductor's own kernel as the search's baseline, and
    #: uses a stored kernel only where it was measured faster than that kernel on the device.
    lowered_ops: tuple[str, ...] = ()
    template_version: str = "1"
    #: symbolic sizes (``dynamic=True``) may be served in power-of-two buckets (``torch_kevolve.dynamic``):
    #: only for families whose constants and kernel configs never depend on those sizes
    dynamic_ok: bool = False

    def inductor_fallback_reason(self, node: Any) -> str | None:
        """For an op in ``lowered_ops``: why Inductor's lowering calls the ATen kernel for this node
        (lowerings call ``fallback_handler`` for some devices, ranks or arguments), or None when it
        generates its own kernel. A fallback node is served like any fallback, on every device."""
        return None

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

    def reference_source(self, spec: OpSpec) -> str:
        """The op as PyTorch code, for an LLM prompt. Families may override with a cleaner,
        self-contained version; the fallback is the spec's description plus the source of
        :meth:`eager` (what PyTorch runs) and :meth:`reference` (the ground truth)."""
        import inspect
        import textwrap

        parts = ["\n".join([
            f"# {self.name}: {spec.describe()}",
            "# inputs: " + ", ".join("None" if a is None else f"{a.dtype}{list(a.shape)}" for a in spec.args),
            "# constants: " + (", ".join(f"{k}={v!r}" for k, v in spec.consts) or "none"),
        ])]
        for meth in (type(self).eager, type(self).reference):
            try:
                parts.append(textwrap.dedent(inspect.getsource(meth)).rstrip())
            except (OSError, TypeError):  # no source on disk (frozen, REPL): the description must do
                pass
        return "\n\n".join(parts) + "\n"

    @abstractmethod
    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        """Random inputs for exactly this spec (device included)."""

    def timing_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None] | None:
        """Inputs to time candidates (and the baseline) on, where :meth:`make_inputs` is shaped for
        verification rather than speed (sort's are tie-heavy: a kernel whose work depends on the data
        would be timed on its worst case). Verified like any case. None (default): the first seed's."""
        return None

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

    def tolerance_slack(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None],
                        refs: Sequence[torch.Tensor]) -> list[torch.Tensor | None] | None:
        """Per-output, per-element absolute allowance on top of :meth:`tolerance`, for sums whose
        rounding grows with the number and size of their terms (an fp32 row of 65k atomic adds is
        off by ~1e-2 from float64 in *any* order, ATen's included). None: none."""
        return None

    def compare(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None], outs: Sequence[torch.Tensor],
                refs: Sequence[torch.Tensor]) -> str | None:
        """Semantic check of a kernel's outputs, for ops whose correct answer is not unique (indices
        of tied keys, unordered results): "" when correct, else why not. None (default): compare each
        output with the reference numerically under :meth:`tolerance`."""
        return None

    def floor_bytes(self, spec: OpSpec) -> int:
        """Bytes that must move (each input read once, each output written once)."""
        raise NotImplementedError

    def floor_flops(self, spec: OpSpec) -> int:
        """Arithmetic that must happen (FLOPs); 0 for data-movement ops. With it the profile reports
        FLOP/s against the measured matmul rate and a compute-bound verdict."""
        return 0

    # -- kernels ---------------------------------------------------------------------------------
    @abstractmethod
    def candidates(self, spec: OpSpec) -> list[Candidate]:
        """The template synthesizer's proposals for this spec."""

    def contract(self, spec: OpSpec) -> str:
        """Extra entry-point contract text for an LLM prompt. Default "": the contract is derived from
        the templates (their kernel signatures and call plans) as for every templated family."""
        return ""

    def skeleton(self, spec: OpSpec) -> Candidate | None:
        """For a family without templates: a module holding only the entry point (and the config
        keys the call plan reads) that an LLM rewrite must keep. Never evaluated itself."""
        return None

    @abstractmethod
    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        """How to launch ``cand`` for ``spec``: grid, argument binding, output buffers."""
