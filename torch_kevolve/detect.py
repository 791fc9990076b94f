"""Find the long-tail nodes of a post-grad FX graph.

A node is long-tail when Inductor will not generate code for it on this device:
* it is in Inductor's fallback set (``make_fallback``) or has no lowering at all;
* its lowering exists only for Triton devices and the graph runs on another device (conditional
  fallbacks inside the lowering functions, listed below by reading ``torch/_inductor/lowering.py``);
* it is a custom op with no kernel for the device's dispatch key;
* it is *contested*: Inductor lowers it, but a family lists it in ``lowered_ops`` because that
  lowering runs far from the hardware floor (by default on CUDA only: ``Settings.contest``). The
  search's baseline for such a node is Inductor's own kernel, not eager.
Each finding says why; the pass then asks the op's family (if any) whether it can serve the node.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from .families import Match, Skip, family_for_op

log = logging.getLogger("torch_kevolve")

# Lowerings that call ``fallback_handler`` unless the device is a Triton device.
_TRITON_ONLY = {
    "aten.sort.default", "aten.sort.stable", "aten.searchsorted.Tensor", "aten.searchsorted.Scalar",
    "aten.bucketize.Tensor", "aten.cumsum.default", "aten.cumprod.default", "aten.cummax.default",
    "aten.cummin.default", "aten.logcumsumexp.default",
}
_CORE_NAMESPACES = {"aten", "prims", "_c10d_functional", "c10d_functional", "kevolve", "higher_order", "quantized_decomposed"}


def op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def node_device(node: fx.Node) -> torch.device | None:
    def dev(v: Any) -> torch.device | None:
        if isinstance(v, torch.Tensor):
            return v.device
        if isinstance(v, (list, tuple)):
            for x in v:
                d = dev(x)
                if d is not None:
                    return d
        return None

    for a in node.all_input_nodes:
        d = dev(a.meta.get("val"))
        if d is not None:
            return d
    return dev(node.meta.get("val"))


CONTESTED = "Inductor lowers it; contested (the search's baseline is Inductor's kernel)"


def contests(contest: str, device: torch.device | None) -> bool:
    """Whether lowered ops are contested on ``device`` under the ``contest`` setting."""
    if contest == "all":
        return True
    if contest == "auto":
        return device is not None and device.type == "cuda"
    return False


def long_tail_reason(node: fx.Node, contest: str = "auto") -> str | None:
    """Why Inductor will not generate code for this node on its device (or contests it), or None."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return None
    from torch._inductor import lowering as L

    target = node.target
    name = op_name(target)
    device = node_device(node)
    if target.namespace not in _CORE_NAMESPACES:
        key = "CUDA" if device is not None and device.type == "cuda" else "CPU"
        qual = f"{target.namespace}::{target._opname}"
        has = torch._C._dispatch_has_kernel_for_dispatch_key(qual, key) or torch._C._dispatch_has_kernel_for_dispatch_key(
            qual, "CompositeExplicitAutograd"
        ) or torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CompositeImplicitAutograd")
        if not has:
            return f"custom op with no {key} kernel"
        return "custom op (opaque to Inductor: called as an ATen fallback)"
    if target.namespace != "aten":
        return None
    if name in _TRITON_ONLY:  # these also sit in ``fallbacks``: the lowering decides per device
        if device is not None and device.type not in ("cuda", "xpu"):
            return f"lowered for Triton devices only: falls back to ATen on {device.type}"
        # lowered on this device: contested below when a family serves it
    elif target in L.fallbacks or target.overloadpacket in L.fallbacks:
        return "Inductor fallback (make_fallback): calls the ATen kernel"
    elif target not in L.lowerings and target.overloadpacket not in L.lowerings:
        return "no Inductor lowering: calls the ATen kernel"
    fam = family_for_op(name)
    if fam is not None and name in fam.lowered_ops:
        why = fam.inductor_fallback_reason(node)
        if why:
            return why
        if contests(contest, device):
            return CONTESTED
    return None


def match_node(fam: Any, node: fx.Node) -> Match | Skip:
    """``fam.match(node)``; with symbolic sizes, the match of the size hints turned into a bucketed
    spec (``torch_kevolve.dynamic``) for families that allow it, else a Skip saying why."""
    from . import dynamic

    # symbolic *inputs* make a bucket; an output whose size only the data decides (bincount's) is the
    # family's own business (it may prove that size static)
    if not any(dynamic.symbolic(n.meta.get("val")) for n in node.all_input_nodes):
        return fam.match(node)
    if not getattr(fam, "dynamic_ok", False):
        return Skip("dynamic shapes: this family serves static shapes only")
    try:
        with dynamic.concrete_meta(node):
            m = fam.match(node)
    except ValueError as e:
        return Skip(f"dynamic shapes: {e}")
    if isinstance(m, Skip):
        return m
    dyn = dynamic.dynamic_of(m.inputs, m.spec)
    if isinstance(dyn, str):
        return Skip(f"dynamic shapes: {dyn}")
    import dataclasses

    m.spec = dataclasses.replace(m.spec, dynamic=dyn.entries)
    m.dynamic = dyn
    return m


@dataclass
class Finding:
    node: str
    op: str
    reason: str
    family: str | None
    status: str  # "candidate" | "skipped" | "no family"
    detail: str = ""
    key: str | None = None
    decision: str = ""  # filled by the pass: "stored kernel", "searched", "queued", ...
    match: Match | None = field(default=None, repr=False)


def detect(graph: fx.Graph, contest: str = "auto") -> list[Finding]:
    findings: list[Finding] = []
    for node in graph.nodes:
        reason = long_tail_reason(node, contest)
        if reason is None:
            continue
        name = op_name(node.target)
        fam = family_for_op(name)
        if fam is None:
            findings.append(Finding(node.name, name, reason, None, "no family", "no template family or synthesizer for this op yet"))
            continue
        try:
            m = match_node(fam, node)
        except Exception as e:  # noqa: BLE001 - a detection bug must not break the user's compile
            log.warning("kevolve: %s.match failed on %s: %s", fam.name, node.name, e)
            m = Skip(f"match error: {type(e).__name__}: {e}")
        if isinstance(m, Skip):
            findings.append(Finding(node.name, name, reason, fam.name, "skipped", m.reason))
        else:
            findings.append(Finding(node.name, name, reason, fam.name, "candidate", m.spec.describe(), m.spec.key, match=m))
    findings += detect_regions(graph, contest)
    for f in findings:
        log.info("kevolve detect: %s %s — %s; %s %s", f.node, f.op, f.reason, f.status, f.detail)
    return findings


REGION = "region: Inductor lowers it op by op (materialising intermediates); contested as one kernel"


def detect_regions(graph: fx.Graph, contest: str = "auto") -> list[Finding]:
    """Findings for *regions*: FX subgraphs a region family serves with one kernel, matched at the node
    producing the region's output (an op in the family's ``region_anchors``). Every op of a region is
    lowered by Inductor, so regions are contested: found only where ``contest`` contests lowered ops.
    A family's Skip starting with ``"no region: "`` means the pattern is absent (no finding)."""
    from .families import all_families

    fams = [f for f in all_families() if getattr(f, "region_anchors", ())]
    findings: list[Finding] = []
    if not fams:
        return findings
    for node in list(graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        name = op_name(node.target)
        if not any(name in f.region_anchors for f in fams) or not contests(contest, node_device(node)):
            continue
        for fam in fams:
            if name not in fam.region_anchors:
                continue
            try:
                m = fam.match(node)
            except Exception as e:  # noqa: BLE001 - a detection bug must not break the user's compile
                log.warning("kevolve: %s.match failed on %s: %s", fam.name, node.name, e)
                m = Skip(f"match error: {type(e).__name__}: {e}")
            if isinstance(m, Skip) and m.reason.startswith("no region: "):
                continue
            op = f"kevolve_region.{fam.name}"
            if isinstance(m, Skip):
                findings.append(Finding(node.name, op, REGION, fam.name, "skipped", m.reason))
            else:
                findings.append(Finding(node.name, m.spec.op, REGION, fam.name, "candidate",
                                        f"{m.spec.describe()} [{len(m.region)} nodes]", m.spec.key, match=m))
            break
    return findings
