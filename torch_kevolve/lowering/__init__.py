"""Lowering: the post-grad pass and the two ways a stored kernel is called from a compiled graph."""
from __future__ import annotations

from .graph_pass import REPORTS, KevolvePass

__all__ = ["KevolvePass", "REPORTS"]
