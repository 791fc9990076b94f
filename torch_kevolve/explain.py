"""``kevolve explain``: what the pass finds in a model and what it would do, without searching."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .detect import Finding


def explain(model: Any, inputs: Sequence[Any], mode: str = "cache") -> list[Finding]:
    """Compile ``model`` with kevolve in ``mode`` (default: only stored kernels, no search) and
    return the findings of every graph compiled."""
    from .lowering import REPORTS

    torch._dynamo.reset()
    REPORTS.clear()
    # Cached graphs skip the pass: compile afresh so every graph is looked at.
    compiled = torch.compile(model, backend="kevolve", options={"mode": mode, "fx_graph_cache": False})
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
        compiled(*inputs)
    found = [f for rep in REPORTS for f in rep]
    torch._dynamo.reset()
    return found


def format_findings(findings: Sequence[Finding]) -> str:
    if not findings:
        return "no long-tail ops found"
    rows = [("node", "op", "why long-tail", "family", "status / decision")]
    for f in findings:
        rows.append((f.node, f.op, f.reason, f.family or "-", f"{f.status}: {f.decision or f.detail}"))
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(5)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c[:60].ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
