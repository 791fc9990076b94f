"""Run-time side of a stored kernel: load it once per process, guard its signature, launch it,
fall back to the op's eager (ATen) implementation if anything is off. Used by the custom-op route."""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Sequence

import torch

from .. import stats
from ..families import get_family
from ..families.base import Candidate, CallPlan, OpFamily
from ..kernels import launch, load_module, needs_interpreter
from ..log import warn_once
from ..spec import OpSpec

log = logging.getLogger("torch_kevolve")


@dataclass
class Loaded:
    family: OpFamily
    spec: OpSpec
    candidate: Candidate | None  # None: no usable kernel, run eager
    module: ModuleType | None
    plan: CallPlan | None


_lock = threading.Lock()
_registry: dict[str, Loaded] = {}


def install(spec: OpSpec, candidate: Candidate) -> Loaded:
    """Called by the graph pass: the kernel is known good for ``spec`` in this process."""
    family = get_family(spec.family)
    module = load_module(candidate.source, interpret=needs_interpreter(spec.device.type))
    plan = family.call_plan(spec, candidate)
    ld = Loaded(family, spec, candidate, module, plan)
    with _lock:
        _registry[spec_handle(spec)] = ld
    return ld


def spec_handle(spec: OpSpec) -> str:
    return json.dumps(spec.to_json(), sort_keys=True, separators=(",", ":"))


def _resolve(handle: str) -> Loaded:
    with _lock:
        ld = _registry.get(handle)
    if ld is not None:
        return ld
    # A graph loaded from Inductor's cache in a new process: find the kernel in the store.
    spec = OpSpec.from_json(json.loads(handle))
    family = get_family(spec.family)
    from ..config import Settings
    from ..store import KernelStore

    ld = Loaded(family, spec, None, None, None)
    try:
        entry = KernelStore.from_settings(Settings.from_env()).get(spec)
        if entry is None:
            warn_once("kevolve: stored kernel %s is gone from the store; running the ATen op instead", spec.key)
        else:
            ld = Loaded(family, spec, entry.candidate, load_module(entry.candidate.source, interpret=needs_interpreter(spec.device.type)), family.call_plan(spec, entry.candidate))
    except Exception as e:  # noqa: BLE001
        warn_once("kevolve: could not load stored kernel %s (%s); running the ATen op instead", spec.key, e)
    with _lock:
        _registry[handle] = ld
    return ld


def _inside_signature(spec: OpSpec, args: Sequence[torch.Tensor | None]) -> bool:
    if len(args) != len(spec.args):
        return False
    for sig, t in zip(spec.args, args):
        if (sig is None) != (t is None):
            return False
        if t is not None and (not sig.matches(t) or t.device.type != spec.device.type):  # type: ignore[union-attr]
            return False
    return True


def call(handle: str, args: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    ld = _resolve(handle)
    if ld.module is None or ld.plan is None:
        stats.bump("runtime_fallbacks")
        return ld.family.eager(ld.spec, args)
    if not _inside_signature(ld.spec, args):
        warn_once("kevolve: inputs outside the verified signature of %s; running the ATen op", ld.spec.key)
        stats.bump("runtime_fallbacks")
        return ld.family.eager(ld.spec, args)
    try:
        outs = launch(ld.module, ld.plan, args)
    except Exception as e:  # noqa: BLE001 - never fail the user's model because of our kernel
        warn_once("kevolve: kernel %s failed at run time (%s: %s); running the ATen op from now on", ld.spec.key, type(e).__name__, e)
        with _lock:
            _registry[handle] = Loaded(ld.family, ld.spec, None, None, None)
        stats.bump("runtime_fallbacks")
        return ld.family.eager(ld.spec, args)
    stats.bump("kernel_calls")
    return outs


def fake(handle: str, args: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    spec = OpSpec.from_json(json.loads(handle))
    family = get_family(spec.family)
    return [torch.empty_like(o) for o in family.eager(spec, args)]
