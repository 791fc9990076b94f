"""torch_kevolve: a torch.compile backend that searches, verifies and caches Triton kernels for the
long tail of PyTorch operators. ``torch.compile(model, backend="kevolve")``."""
from __future__ import annotations

__version__ = "0.1.0"

from .backend import kevolve_backend  # noqa: E402


def _ensure_registered() -> None:
    """Installed packages are found through the ``torch_dynamo_backends`` entry point; a checkout on
    ``PYTHONPATH`` (the GPU machine) has no entry point, so register the name once, on import."""
    from torch._dynamo.backends.registry import list_backends, register_backend

    if "kevolve" not in list_backends(exclude_tags=()):
        register_backend(name="kevolve")(kevolve_backend)


_ensure_registered()

__all__ = ["kevolve_backend", "__version__"]
