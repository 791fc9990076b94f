"""torch_kevolve: a torch.compile backend that searches, verifies and caches Triton kernels for the
long tail of PyTorch operators. ``torch.compile(model, backend="kevolve")``."""
from __future__ import annotations

__version__ = "0.1.0"

import os as _os
import sys as _sys


def _default_interpreter() -> None:
    """Without a GPU, Triton kernels run in Triton's interpreter. ``TRITON_INTERPRET`` must be set
    before triton itself is imported (its builtins are built then), so decide it here, first."""
    if "TRITON_INTERPRET" in _os.environ:
        return
    import torch

    if torch.cuda.is_available():
        return
    if "triton" in _sys.modules:
        import logging

        logging.getLogger("torch_kevolve").warning(
            "no GPU and triton was imported before torch_kevolve without TRITON_INTERPRET=1: "
            "kernels cannot run in this process; set TRITON_INTERPRET=1 before importing triton")
        return
    _os.environ["TRITON_INTERPRET"] = "1"


_default_interpreter()

from .backend import kevolve_backend  # noqa: E402


def _ensure_registered() -> None:
    """Installed packages are found through the ``torch_dynamo_backends`` entry point; a checkout on
    ``PYTHONPATH`` (the GPU machine) has no entry point, so register the name once, on import."""
    from torch._dynamo.backends.registry import list_backends, register_backend

    if "kevolve" not in list_backends(exclude_tags=()):
        register_backend(name="kevolve")(kevolve_backend)


_ensure_registered()

__all__ = ["kevolve_backend", "__version__"]
