"""Registry of op families: one module per family, registered by name and by op overload."""
from __future__ import annotations

from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip, Step, Ws

_FAMILIES: dict[str, OpFamily] = {}
_BY_OP: dict[str, OpFamily] = {}


def register(family: OpFamily) -> OpFamily:
    _FAMILIES[family.name] = family
    for op in family.ops:
        _BY_OP[op] = family
    return family


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import bucketize, cumextrema, embedding_bag, jagged, scatter, segment_reduce  # noqa: F401  (each registers itself)


def get_family(name: str) -> OpFamily:
    _load_builtin()
    return _FAMILIES[name]


def family_for_op(op_name: str) -> OpFamily | None:
    _load_builtin()
    return _BY_OP.get(op_name)


def all_families() -> list[OpFamily]:
    _load_builtin()
    return list(_FAMILIES.values())


__all__ = [
    "CallPlan", "Candidate", "In", "Match", "OpFamily", "Out", "OutBuf", "Skip", "Step", "Ws",
    "register", "get_family", "family_for_op", "all_families",
]
