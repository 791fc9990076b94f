"""Candidate pickers the family test modules share (which proposals a test runs under the slow
interpreter: every template once, plus a rotating extra)."""
from __future__ import annotations

import dataclasses
from typing import Any

from torch_kevolve.families.base import Candidate


def firsts(cands: list[Candidate]) -> dict[str, Candidate]:
    """Each template's first proposal (the family's default for it)."""
    out: dict[str, Candidate] = {}
    for c in cands:
        out.setdefault(c.template, c)
    return out


def pick(cands: list[Candidate], rotate: int) -> list[Candidate]:
    """Per template its first proposal plus one more chosen by ``rotate``."""
    out = list(firsts(cands).values())
    rest = [c for c in cands if c not in out]
    if rest:
        out.append(rest[rotate % len(rest)])
    return out


def with_cfg(cand: Candidate, **over: Any) -> Candidate:
    cfg = dict(cand.config)
    cfg.update(over)
    return dataclasses.replace(cand, config=tuple(sorted(cfg.items())))
