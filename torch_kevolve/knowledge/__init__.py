"""The knowledge base the LLM synthesizer retrieves from: passages in the team's own words
(``passages/*.md``) plus passages written back from verified winners (under the user's cache)."""
from __future__ import annotations

from .retrieval import KnowledgeBase, Passage, entry_passage, load_passages, tokenize, user_dir, write_back

__all__ = ["KnowledgeBase", "Passage", "entry_passage", "load_passages", "tokenize", "user_dir", "write_back"]
