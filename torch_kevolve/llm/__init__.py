"""The LLM synthesizer: transport (any OpenAI-compatible server), prompts built from context,
reply parsing and validation, diagnostics feedback, and the synthesizer the search drives.

Nothing here imports ``openai`` at module import time: a machine without it (or without an
endpoint) searches with the template synthesizer."""
from __future__ import annotations

from .feedback import Feedback, ResultLog, knowledge_query
from .parsing import Contract, ParsedReply, extract_contract, parse_reply, to_candidate
from .prompts import Prompt, PromptContext, build_prompt
from .synthesizer import LLMSynthesizer, Proposal, make_synthesizer
from .transport import ChatTransport, LLMConfig, ReplayTransport, Reply, Usage

__all__ = [
    "ChatTransport", "LLMConfig", "ReplayTransport", "Reply", "Usage",
    "Prompt", "PromptContext", "build_prompt",
    "Contract", "ParsedReply", "extract_contract", "parse_reply", "to_candidate",
    "Feedback", "ResultLog", "knowledge_query",
    "LLMSynthesizer", "Proposal", "make_synthesizer",
]
