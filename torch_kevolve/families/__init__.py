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
    from . import argreduce, scan  # noqa: F401  (cumsum/cumprod/logcumsumexp; argmax/argmin)
    from . import sort  # noqa: F401  (sort/argsort, topk, kthvalue, median)
    from . import histogram  # noqa: F401  (histc, bincount)
    from . import generic  # noqa: F401  (the fallback for custom ops: see family_for_op)
    from . import hstu_attention  # noqa: F401  (a region family: see detect.detect_regions)
    from . import embedding_bag_backward  # noqa: F401  (training: nn.EmbeddingBag's dense weight gradient)
    from . import segment_reduce_backward  # noqa: F401  (training: segment_reduce's gradient, sum/mean)


def get_family(name: str) -> OpFamily:
    _load_builtin()
    return _FAMILIES[name]


#: namespaces of PyTorch's own ops: never served by the generic (custom op) family
CORE_NAMESPACES = frozenset({"aten", "prims", "_c10d_functional", "c10d_functional", "kevolve", "higher_order",
                             "quantized_decomposed", "inductor", "_inductor_test"})


def family_for_op(op_name: str) -> OpFamily | None:
    """The family registered for ``op_name``; else, for a custom op (a namespace outside PyTorch's
    own), the generic family, which the LLM synthesizer serves from its contract alone."""
    _load_builtin()
    fam = _BY_OP.get(op_name)
    if fam is None and "." in op_name and op_name.split(".", 1)[0] not in CORE_NAMESPACES:
        fam = _FAMILIES.get("generic")
    return fam


def all_families() -> list[OpFamily]:
    _load_builtin()
    return list(_FAMILIES.values())


__all__ = [
    "CallPlan", "Candidate", "In", "Match", "OpFamily", "Out", "OutBuf", "Skip", "Step", "Ws",
    "register", "get_family", "family_for_op", "all_families",
]
