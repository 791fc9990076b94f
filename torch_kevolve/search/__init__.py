"""Search: a synthesizer proposes candidates, an evaluator scores them, a strategy drives both."""
from __future__ import annotations

from .evaluate import Diagnostics, Evaluator, ScoredResult, default_timer
from .strategy import SearchOutcome, exhaustive_search, search_spec
from .synth import Synthesizer, TemplateSynthesizer

__all__ = [
    "Diagnostics", "Evaluator", "ScoredResult", "default_timer",
    "SearchOutcome", "exhaustive_search", "search_spec",
    "Synthesizer", "TemplateSynthesizer",
]
