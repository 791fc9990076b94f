"""Search: a synthesizer proposes candidates, an evaluator scores them, a strategy drives both."""
from __future__ import annotations

from .evaluate import Diagnostics, Evaluator, ScoredResult, default_timer
from .strategies import (
    Budget, EvaluateBatch, SearchOutcome, finalize, get_strategy, register_strategy, strategy_names,
)
from .strategy import exhaustive_search, search_spec, sequential_batch, settings_budget
from .synth import Synthesizer, TemplateSynthesizer, TreeSynthesizer
from .tree import MEMORY_MODES, Node, SearchTree

__all__ = [
    "Diagnostics", "Evaluator", "ScoredResult", "default_timer",
    "Budget", "EvaluateBatch", "SearchOutcome", "finalize", "get_strategy", "register_strategy", "strategy_names",
    "exhaustive_search", "search_spec", "sequential_batch", "settings_budget",
    "Synthesizer", "TemplateSynthesizer", "TreeSynthesizer",
    "MEMORY_MODES", "Node", "SearchTree",
]
