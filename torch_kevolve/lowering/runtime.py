"""Run-time side of a stored kernel: load it once per process, guard its signature, launch it,
fall back to the op's eager (ATen) implementation if anything is off. Used by the custom-op route."""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
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
    # Bucketed (dynamic) specs only: the plan of each concrete (shapes, strides) seen, so a call
    # costs one dict lookup. Per Loaded, so the key needs no spec or source; bounded by _MAX_PLANS.
    plans: dict[tuple, CallPlan] = field(default_factory=dict)


_MAX_PLANS = 4096  # distinct concrete shapes kept per kernel; a stream of odd sizes starts over
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
    if spec.dynamic:  # a bucket: sizes inside its ranges
        from ..dynamic import inside

        return inside(spec, args) and all(t is None or t.device.type == spec.device.type for t in args)
    for sig, t in zip(spec.args, args):
        if (sig is None) != (t is None):
            return False
        if t is not None and (not sig.matches(t) or t.device.type != spec.device.type):  # type: ignore[union-attr]
            return False
    return True


def _input_error(family: OpFamily, spec: OpSpec, args: Sequence[torch.Tensor | None]) -> str | None:
    """Why these values are outside what the kernel was verified for (indices out of range, offsets
    that do not partition the data...), from the family's optional ``input_error(spec, inputs)``.

    Checked only for CPU tensors: there it costs a pass over the index tensors and no sync. On an
    accelerator it would cost a host sync per call (and break CUDA graphs), so there the kernels'
    masking is the whole policy: they never touch memory out of bounds, but out-of-range entries
    give unspecified values where eager raises (RELIABILITY.md, "Hostile input")."""
    check = getattr(family, "input_error", None)
    if check is None or any(t is not None and t.device.type != "cpu" for t in args):
        return None
    try:
        return check(spec, args)
    except Exception as e:  # noqa: BLE001 - a broken check must not break the call: take the safe path
        return f"input check failed ({type(e).__name__}: {e})"


def _plan(ld: Loaded, args: Sequence[torch.Tensor | None]) -> CallPlan:
    """The call plan for these inputs: the installed one for a static spec; for a bucket, the plan of
    the concrete sizes (made once per distinct shape). No lock: two threads racing on a new shape
    both compute the same plan, and dict get/set are atomic under the GIL."""
    assert ld.plan is not None and ld.candidate is not None
    if not ld.spec.dynamic:
        return ld.plan
    key = tuple(None if t is None else (tuple(t.shape), tuple(t.stride())) for t in args)
    plan = ld.plans.get(key)
    if plan is None:
        from ..dynamic import concretize

        plan = ld.family.call_plan(concretize(ld.spec, args), ld.candidate)
        if len(ld.plans) >= _MAX_PLANS:
            ld.plans.clear()
        ld.plans[key] = plan
    return plan


def call(handle: str, args: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    ld = _resolve(handle)
    if ld.module is None or ld.plan is None:
        stats.bump("runtime_fallbacks")
        return ld.family.eager(ld.spec, args)
    if not _inside_signature(ld.spec, args):
        warn_once("kevolve: inputs outside the verified signature of %s; running the ATen op", ld.spec.key)
        stats.bump("runtime_fallbacks")
        return ld.family.eager(ld.spec, args)
    why = _input_error(ld.family, ld.spec, args)
    if why is not None:  # eager raises its own error for these (or computes what it defines)
        warn_once("kevolve: %s for %s; running the ATen op", why, ld.spec.key)
        stats.bump("runtime_fallbacks")
        return ld.family.eager(ld.spec, args)
    try:
        outs = launch(ld.module, _plan(ld, args), args)
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
