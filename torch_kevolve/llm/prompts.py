"""Prompts built from context, one small function per section.

Why sections: each part (reference, inputs, contract, hardware, parent and its diagnostics, search
so far, examples, knowledge, reply format) comes from a different place and is useful alone; a
section that has nothing to say is left out, and tests can check each one by its heading.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from ..families.base import Candidate, OpFamily
    from ..knowledge.retrieval import Passage
    from ..spec import OpSpec
    from .feedback import Feedback
    from .parsing import Contract
    from .transport import Messages

log = logging.getLogger("torch_kevolve")

SYSTEM = (
    "You are an expert GPU kernel engineer writing Triton kernels for PyTorch ops. You rewrite an "
    "existing kernel module so that it stays exactly correct (it is verified against a float64 reference "
    "on random inputs and edge cases) and becomes faster. The host code that launches the kernel is fixed: "
    "keep the entry-point contract exactly. The module may import only triton, triton.language, math and "
    "torch; no file, process, network or introspection access (a static check rejects it)."
)

TASKS = {
    "restart": ("Write a new kernel module for this op with a strategy different from the kernels already "
                "tried (see 'Search so far'). The starting point shows the contract's reference kernel; "
                "you may restructure everything inside it."),
    "inherit": ("Improve the parent kernel: make it faster while keeping it correct. 'Search so far' shows the "
                "line of kernels that led to it and what was already tried from it: do not repeat those."),
    "siblings": ("The parent is the best of several alternatives tried at the same point of the search "
                 "(see 'Search so far'). Learn from what the alternatives did, good and bad, and improve on it."),
    "combine": ("Combine the strengths of the two parent kernels below into one kernel that is faster than "
                "both. Keep the first parent's entry point."),
    "repair": ("The parent kernel fails (see its diagnostics). Fix the cause, keeping the idea that made it "
               "promising, and keep the entry point."),
    "propose": ("Write a kernel module for this op that is faster than the kernels already tried "
                "(see 'Search so far'), starting from the best one."),
}


@dataclass
class PromptContext:
    family: "OpFamily"
    spec: "OpSpec"
    mode: str  # a memory mode, "repair" or "propose"
    contract: "Contract"
    parent: "Candidate | None" = None
    parent_fb: "Feedback | None" = None
    second: "Candidate | None" = None  # combine: the other parent
    second_fb: "Feedback | None" = None
    start: "Candidate | None" = None  # restart: the template whose contract is kept
    history: list[tuple[str, "Feedback"]] = field(default_factory=list)  # (label, result) lines
    history_title: str = ""
    examples: list[tuple[str, "Candidate"]] = field(default_factory=list)  # (description, stored kernel)
    passages: list["Passage"] = field(default_factory=list)
    variant: tuple[int, int] = (0, 1)  # this ask is number i of k asked from the same context
    max_source_chars: int = 14000


@dataclass
class Prompt:
    sections: list[tuple[str, str]]  # (heading, body) in order
    system: str = SYSTEM

    @property
    def text(self) -> str:
        return "\n\n".join(f"## {h}\n{b}" for h, b in self.sections)

    def section(self, heading: str) -> str:
        return next((b for h, b in self.sections if h == heading), "")

    def messages(self) -> "Messages":
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.text}]


# -- sections ---------------------------------------------------------------------------------------------
def _code(src: str, limit: int, lang: str = "python") -> str:
    if len(src) > limit:
        src = src[:limit] + "\n# [... truncated ...]\n"
    return f"```{lang}\n{src.rstrip()}\n```"


def section_task(ctx: PromptContext) -> str:
    text = TASKS.get(ctx.mode, TASKS["inherit"])
    i, k = ctx.variant
    if k > 1:
        text += (f"\nThis is proposal {i + 1} of {k} written from the same context: take a different idea from "
                 "the other proposals (e.g. another work decomposition, tile shape, loop order, or number of "
                 "items per program), not only different constants.")
    return text


def section_reference(ctx: PromptContext) -> str:
    fn = getattr(ctx.family, "reference_source", None)
    try:
        src = fn(ctx.spec) if callable(fn) else ""
    except Exception as e:  # noqa: BLE001 - the prompt still has the description
        log.debug("kevolve: reference_source failed for %s: %s", ctx.family.name, e)
        src = ""
    if not src:
        src = f"# {ctx.spec.describe()}\n"
    return "The op's semantics as PyTorch code (the kernel must match it on every input):\n" + _code(src, 8000)


def section_inputs(ctx: PromptContext) -> str:
    spec = ctx.spec
    lines = [f"Op `{spec.op}` (family {spec.family}) on {spec.device.name} ({spec.device.arch})."]
    for i, a in enumerate(spec.args):
        if a is None:
            lines.append(f"- input {i}: None (absent)")
        else:
            lines.append(f"- input {i}: {a.dtype}{list(a.shape)}, strides {list(a.stride)}"
                         + ("" if a.contiguous else " (non-contiguous)"))
    if spec.consts:
        lines.append("- constants: " + ", ".join(f"{k}={v!r}" for k, v in spec.consts))
    if getattr(ctx.family, "fixed_shapes", False):
        lines.append("Shapes are those of this call and of every verification input (edge cases keep them and "
                     "change the values: zeros, large magnitudes, NaN).")
    else:
        lines.append("Shapes are those of this call; the kernel is also verified on small edge cases (empty, single "
                     "element, odd sizes) with the same dtypes and constants, so do not hard-code sizes.")
    return "\n".join(lines)


def section_contract(ctx: PromptContext) -> str:
    c = ctx.contract
    lines = ["The host launches the module through a fixed call plan. Keep these kernels' names and parameters "
             "exactly (same order, same `tl.constexpr` annotations); helper `@triton.jit` functions are yours "
             "to change, add or remove."]
    for k in c.kernels:
        lines.append(f"```python\n@triton.jit\n{k.text}\n```")
    if c.bindings:
        lines.append("What the host passes for this call:")
        cur = None
        for kernel, name, what in c.bindings:
            if kernel != cur and len(c.kernels) > 1:
                lines.append(f"- `{kernel}`:")
                cur = kernel
            lines.append(f"  - `{name}` {what}" if len(c.kernels) > 1 else f"- `{name}` {what}")
    for kernel, grid in c.grids:
        warps = next(((w, s) for kk, w, s in c.launch if kk == kernel), None)
        opts = f", num_warps={warps[0]}, num_stages={warps[1]}" if warps else ""
        lines.append(f"Launch of `{kernel}`: grid {grid}{opts}")
    lines += [f"- {o}" for o in (*c.outputs, *c.workspace)]
    if c.config:
        lines.append("The grid and the launch options above are computed from the config "
                     + ", ".join(f"`{k}`={v!r}" for k, v in c.config)
                     + ". You may change these values (JSON block, see 'Reply format'), not add keys: the host reads "
                       "only these.")
    if c.problem:
        lines.append(f"(The call plan could not be built for this kernel: {c.problem})")
    extra = getattr(ctx.family, "contract", None)
    try:
        text = extra(ctx.spec) if callable(extra) else ""
    except Exception as e:  # noqa: BLE001 - the derived contract still stands
        log.debug("kevolve: %s.contract failed: %s", ctx.family.name, e)
        text = ""
    if text:
        lines.append(text)
    return "\n".join(lines)


@functools.lru_cache(maxsize=8)
def _device_facts(device_type: str, name: str, arch: str) -> str:
    if device_type != "cuda":
        return ("Target: the Triton interpreter on CPU (TRITON_INTERPRET=1). Only correctness is judged here; "
                "timings are meaningless. Programs run one after another (~0.5 ms each): prefer few, large "
                "programs. Compute in fp32 (bf16 arithmetic is wrong under the interpreter), no libdevice math "
                "(tanh etc.), integer literals must fit in signed int64. The same source is later compiled for "
                "the GPU, so keep it valid GPU Triton.")
    import torch

    from .. import hardware

    lines = [f"Target: {name} ({arch})."]
    try:
        idx = torch.cuda.current_device()
        p = torch.cuda.get_device_properties(idx)
        for attr, label, scale, unit in (
            ("multi_processor_count", "SMs", 1, ""),
            ("warp_size", "warp size", 1, ""),
            ("max_threads_per_multi_processor", "max threads per SM", 1, ""),
            ("regs_per_multiprocessor", "32-bit registers per SM", 1, ""),
            ("shared_memory_per_multiprocessor", "shared memory per SM", 1024, " KiB"),
            ("shared_memory_per_block_optin", "shared memory per block (opt-in)", 1024, " KiB"),
            ("L2_cache_size", "L2 cache", 1 << 20, " MiB"),
            ("total_memory", "device memory", 1 << 30, " GiB"),
        ):
            v = getattr(p, attr, None)
            if isinstance(v, int) and v > 0:
                val = v / scale if scale > 1 else v
                lines.append(f"- {label}: {val:.4g}{unit}" if scale > 1 else f"- {label}: {val}")
    except Exception as e:  # noqa: BLE001 - facts are optional
        log.debug("kevolve: device properties unavailable: %s", e)
    try:
        dev = torch.device("cuda")
        bw = hardware.copy_bandwidth(dev)
        bf16 = hardware.matmul_rate(dev, torch.bfloat16)
        fp32 = hardware.matmul_rate(dev, torch.float32)
        if bw:
            lines.append(f"- measured copy bandwidth: {bw / 1e9:.0f} GB/s (the memory floor uses it)")
        if bf16:
            lines.append(f"- measured bf16 matmul rate: {bf16 / 1e12:.0f} TFLOP/s")
        if fp32:
            lines.append(f"- measured fp32 matmul rate: {fp32 / 1e12:.0f} TFLOP/s")
    except Exception as e:  # noqa: BLE001
        log.debug("kevolve: hardware ceilings unavailable: %s", e)
    lines.append("Registers per thread above ~128 or any spills cut occupancy; num_warps x 32 threads per program.")
    return "\n".join(lines)


def section_hardware(ctx: PromptContext) -> str:
    d = ctx.spec.device
    return _device_facts(d.type, d.name, d.arch)


def _candidate_block(title: str, cand: "Candidate", fb: "Feedback | None", limit: int) -> str:
    cfg = ", ".join(f"{k}={v!r}" for k, v in cand.config) or "none"
    parts = [f"{title}: template `{cand.template or '?'}`, proposed by {cand.origin}, config {cfg}",
             _code(cand.source, limit)]
    if fb is not None:
        parts.append("Diagnostics:\n" + fb.render())
    return "\n".join(parts)


def section_parent(ctx: PromptContext) -> str:
    if ctx.parent is None:
        if ctx.start is None:
            return ""
        return _candidate_block("Starting point (keep its entry point)", ctx.start, None, ctx.max_source_chars)
    out = _candidate_block("Parent kernel", ctx.parent, ctx.parent_fb, ctx.max_source_chars)
    if ctx.second is not None:
        out += "\n\n" + _candidate_block("Second parent", ctx.second, ctx.second_fb, ctx.max_source_chars)
    return out


def section_history(ctx: PromptContext) -> str:
    if not ctx.history:
        return ""
    lines = [ctx.history_title or "Kernels tried so far and their results:"]
    lines += [f"- {label}: {fb.headline()}" for label, fb in ctx.history]
    return "\n".join(lines)


def section_examples(ctx: PromptContext) -> str:
    if not ctx.examples:
        return ""
    parts = ["Verified kernels from the store for similar ops (same family); ideas may carry over, their "
             "entry points may differ from yours:"]
    for desc, cand in ctx.examples:
        parts.append(f"{desc}\n{_code(cand.source, min(ctx.max_source_chars, 6000))}")
    return "\n\n".join(parts)


def section_knowledge(ctx: PromptContext) -> str:
    if not ctx.passages:
        return ""
    return "\n\n".join(p.render() for p in ctx.passages)


def section_reply_format(ctx: PromptContext) -> str:
    keys = ", ".join(f"`{k}`" for k in ctx.contract.config_keys) or "none"
    return ("Reply with a short rationale (at most 3 sentences), then exactly one ```python block holding the "
            "complete module (imports included, every helper it calls), then optionally one ```json block "
            f"with config values to launch it with (keys: {keys}); without it the parent's config is used. "
            "Nothing after the blocks.")


SECTIONS: tuple[tuple[str, Any], ...] = (
    ("Task", section_task),
    ("Reference (PyTorch)", section_reference),
    ("Inputs", section_inputs),
    ("Entry-point contract", section_contract),
    ("Hardware", section_hardware),
    ("Parent", section_parent),
    ("Search so far", section_history),
    ("Examples", section_examples),
    ("Knowledge", section_knowledge),
    ("Reply format", section_reply_format),
)


def build_prompt(ctx: PromptContext, skip: Sequence[str] = ()) -> Prompt:
    sections = []
    for heading, fn in SECTIONS:
        if heading in skip:
            continue
        body = fn(ctx)
        if body:
            sections.append((heading, body))
    return Prompt(sections)


def retry_message(reason: str) -> str:
    """The follow-up after an unusable reply: the reason, once, and the format again."""
    return ("Your reply could not be used: " + reason.strip() + "\nReply again with the complete corrected module "
            "in one ```python block (and the optional ```json config block).")


__all__ = ["SYSTEM", "TASKS", "PromptContext", "Prompt", "build_prompt", "retry_message", "SECTIONS",
           "section_task", "section_reference", "section_inputs", "section_contract", "section_hardware",
           "section_parent", "section_history", "section_examples", "section_knowledge", "section_reply_format"]
