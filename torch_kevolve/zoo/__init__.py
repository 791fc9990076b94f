"""Model zoo: random-init models that carry long-tail ops, in CPU ("small") and realistic sizes."""
from __future__ import annotations

from .recsys import EmbeddingBagMLP, make_embedding_bag_mlp

__all__ = ["EmbeddingBagMLP", "make_embedding_bag_mlp"]
