"""Synthesizers propose candidate kernels. The template synthesizer needs no LLM."""
from __future__ import annotations

from typing import Protocol, Sequence

from ..families.base import Candidate, OpFamily
from ..spec import OpSpec


class Synthesizer(Protocol):
    name: str

    def propose(self, family: OpFamily, spec: OpSpec, history: Sequence[object], k: int) -> list[Candidate]:
        """Up to ``k`` new candidates for ``spec``, given the scored results so far."""
        ...


class TemplateSynthesizer:
    """Walks the family's template configuration space in its preferred order, never repeating."""

    name = "template"

    def __init__(self, seeds: Sequence[Candidate] = ()) -> None:
        self._seeds = list(seeds)

    def propose(self, family: OpFamily, spec: OpSpec, history: Sequence[object], k: int) -> list[Candidate]:
        seen = {(getattr(r, "candidate", r).source, getattr(r, "candidate", r).config) for r in history}
        out: list[Candidate] = []
        for cand in [*self._seeds, *family.candidates(spec)]:
            ident = (cand.source, cand.config)
            if ident in seen:
                continue
            seen.add(ident)
            out.append(cand)
            if len(out) >= k:
                break
        return out
