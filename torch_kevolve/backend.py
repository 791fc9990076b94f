"""``torch.compile(model, backend="kevolve")``: Inductor with our pass inside it.

The entry point (``torch_dynamo_backends`` group) points at :func:`kevolve_backend`, a plain function,
so Dynamo finds it without importing the package first and without a duplicate-name error.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from .config import Settings

log = logging.getLogger("torch_kevolve")


def _split_options(options: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our settings vs Inductor config patches, both accepted in ``options``."""
    from dataclasses import fields

    ours = {f.name for f in fields(Settings)}
    kev, ind = {}, {}
    for k, v in (options or {}).items():
        (kev if k in ours or k == "timer" else ind)[k] = v
    return kev, ind


def kevolve_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    mode: str | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx

    kev, patches = _split_options(options)
    timer = kev.pop("timer", None)
    settings = Settings.from_env(kev)
    if mode and mode != "default":
        patches = {**torch._inductor.list_mode_options(mode), **patches}
    if settings.mode != "off":
        from .lowering import KevolvePass

        user_pass = patches.pop("post_grad_custom_pre_pass", inductor_config.post_grad_custom_pre_pass)
        patches["post_grad_custom_pre_pass"] = KevolvePass(settings, user_pass=user_pass, timer=timer)
    return compile_fx(gm, example_inputs, config_patches=patches)
