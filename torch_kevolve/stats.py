"""Process-wide counters (searches run, store hits, misses queued...) that tests and the demo read."""
from __future__ import annotations

from collections import Counter

counters: Counter[str] = Counter()


def bump(name: str, n: int = 1) -> None:
    counters[name] += n


def snapshot() -> dict[str, int]:
    return dict(counters)


def reset() -> None:
    counters.clear()
