"""Model zoo: random-init models that carry long-tail ops, in CPU ("small") and realistic ("large")
sizes. ``MODELS[name](size=..., device=..., seed=...) -> (model, inputs)``."""
from __future__ import annotations

from typing import Any, Callable

from .models import (SIZES, CustomOpModel, DLRM, HSTUBlock, SeqRec, TinyTransformer, make_custom_op, make_dlrm,
                     make_hstu, make_seqrec, make_transformer)
from .recsys import EmbeddingBagMLP, make_embedding_bag_mlp

#: name -> builder(size="small"|"large", device="cpu", seed=0) -> (model, inputs)
MODELS: dict[str, Callable[..., tuple[Any, tuple]]] = {
    "dlrm": make_dlrm,
    "seqrec": make_seqrec,
    "hstu": make_hstu,
    "transformer": make_transformer,
    "custom_op": make_custom_op,
}

__all__ = ["MODELS", "SIZES", "CustomOpModel", "DLRM", "EmbeddingBagMLP", "HSTUBlock", "SeqRec", "TinyTransformer",
           "make_custom_op", "make_dlrm", "make_embedding_bag_mlp", "make_hstu", "make_seqrec", "make_transformer"]
