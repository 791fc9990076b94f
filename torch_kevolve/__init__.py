"""torch_kevolve: a torch.compile backend that searches, verifies and caches Triton kernels for the
long tail of PyTorch operators. ``torch.compile(model, backend="kevolve")``."""
from __future__ import annotations

__version__ = "0.1.0"

from .backend import kevolve_backend  # noqa: E402

__all__ = ["kevolve_backend", "__version__"]
