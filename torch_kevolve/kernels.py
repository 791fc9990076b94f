"""Turning kernel source into launchable Triton functions, and launching them by call plan.

Triton's compiler reads a kernel's source through ``inspect``, so kernels built with ``exec`` run in
the interpreter but not on a GPU. Sources are therefore written to content-addressed files and
imported. Inductor's user-defined-kernel path reads the same file.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .families.base import CallPlan, In, Out, OutBuf, Step, Ws

if TYPE_CHECKING:
    from .spec import OpSpec

_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}


def module_dir() -> Path:
    env = os.environ.get("KEVOLVE_MODULE_DIR")
    d = Path(env) if env else Path(tempfile.gettempdir()) / f"torch_kevolve_modules_{os.getuid()}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def needs_interpreter(device: torch.device | str) -> bool:
    """Kernels for a device without a Triton backend run in Triton's interpreter."""
    return torch.device(device).type not in ("cuda", "xpu")


@contextlib.contextmanager
def _interpret_env(interpret: bool | None):
    if interpret is None or bool(os.environ.get("TRITON_INTERPRET") == "1") == interpret:
        yield
        return
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


_NAN_COMBINES = {"_max_nan": "max", "_min_nan": "min"}
_interp_patched = False


def _interpreter_nan_reductions() -> None:
    """A fast path in Triton's interpreter for max/min reductions that propagate NaN.

    The interpreter runs a ``tl.reduce`` whose combine it does not know element by element in Python
    (segment_reduce's max/min tests went from 3 s to 46 s). Kernels here reduce with combines named
    ``_max_nan`` / ``_min_nan`` (``tl.maximum``/``tl.minimum`` with ``propagate_nan=ALL``, which the
    interpreter runs as ``np.maximum``/``np.minimum``); ``np.max``/``np.min`` are exactly those
    reductions. Interpreter only: compiled GPU code never goes through it."""
    global _interp_patched
    if _interp_patched:
        return
    _interp_patched = True
    try:
        import numpy as np
        from triton.runtime import interpreter as ti

        ops = ti.ReduceOps
        orig = ops.apply_impl
        ops.min_max  # noqa: B018  (the helper the fast path uses)
    except (ImportError, AttributeError):
        return

    def apply_impl(self: Any, input: Any) -> Any:
        name = getattr(getattr(self.combine_fn, "fn", None), "__name__", "")
        if name in _NAN_COMBINES and len(input) == 1:
            return self.min_max(input[0], val_reduce_op=np.max if _NAN_COMBINES[name] == "max" else np.min)
        return orig(self, input)

    ops.apply_impl = apply_impl


def load_module(source: str, interpret: bool | None = None) -> ModuleType:
    """Import ``source`` as a module (once per process per distinct source and mode).

    ``interpret``: decorate its kernels for Triton's interpreter (CPU tensors) or not; None follows
    ``TRITON_INTERPRET``. ``@triton.jit`` reads that variable when it decorates, hence the switch here.
    """
    h = source_hash(source)
    if interpret is None:
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
    h_mode = h + (":i" if interpret else ":c")
    if interpret:
        _interpreter_nan_reductions()
    with _lock:
        mod = _modules.get(h_mode)
        if mod is not None:
            return mod
        path = module_dir() / f"kevolve_{h[:24]}.py"
        if not path.exists() or path.read_text() != source:
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(source)
            os.replace(tmp, path)
        name = f"torch_kevolve._gen.k_{h[:24]}_{'i' if interpret else 'c'}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            with _interpret_env(interpret):
                spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _modules[h_mode] = mod
        return mod


def _poison(buf: torch.Tensor) -> None:
    if buf.is_floating_point():
        buf.fill_(float("nan"))
    elif buf.dtype == torch.bool:
        buf.fill_(True)
    else:
        buf.fill_(torch.iinfo(buf.dtype).min + 7)


def _allocate(bufs: Sequence[OutBuf], device: torch.device, poison: bool) -> list[torch.Tensor]:
    out = []
    for ob in bufs:
        dt = getattr(torch, ob.dtype)
        if ob.fill is None:
            t = torch.empty(ob.shape, dtype=dt, device=device)
            if poison:
                _poison(t)
        else:
            t = torch.full(ob.shape, ob.fill, dtype=dt, device=device)
        out.append(t)
    return out


def allocate_outputs(plan: CallPlan, device: torch.device, poison: bool = False) -> list[torch.Tensor]:
    return _allocate(plan.outputs, device, poison)


def allocate_workspace(plan: CallPlan, device: torch.device, poison: bool = False) -> list[torch.Tensor]:
    """Scratch for one call. Verification poisons it like the outputs (unless it has a fill): a step
    that reads scratch no earlier step wrote must fail there, not pass on whatever memory held."""
    return _allocate(plan.workspace, device, poison=poison)


def bind_args(
    plan: CallPlan | Step,
    inputs: Sequence[torch.Tensor | None],
    outs: Sequence[torch.Tensor],
    ws: Sequence[torch.Tensor] = (),
) -> dict:
    """Keyword arguments of one launch (a plan stands for its main kernel)."""
    kwargs = {}
    for name, v in plan.args:
        if isinstance(v, In):
            kwargs[name] = inputs[v.i]
        elif isinstance(v, Out):
            kwargs[name] = outs[v.j]
        elif isinstance(v, Ws):
            kwargs[name] = ws[v.k]
        else:
            kwargs[name] = v
    return kwargs


def device_asserts() -> bool:
    """Compile GPU launches with ``tl.device_assert`` live, as Inductor compiles its own kernels: its
    ``assert_indirect_indexing`` (default on) sets Triton's ``debug``, and so does the Triton route's
    user-defined-kernel launch. Templates assert index ranges eager checks on the device (e.g. an
    embedding_bag index past the table), so a bad index raises a device-side assert, as eager does,
    instead of an unspecified value. Triton's integer overflow sanitizer stays off (as in Inductor)."""
    try:
        import torch._inductor.config as ic

        return bool(getattr(ic, "assert_indirect_indexing", True))
    except Exception:  # pragma: no cover - Inductor unavailable
        return True


def compile_options() -> dict:
    """Extra Triton options of a GPU launch (see ``device_asserts``)."""
    return {"debug": True, "sanitize_overflow": False} if device_asserts() else {}


def launch(
    module: ModuleType,
    plan: CallPlan,
    inputs: Sequence[torch.Tensor | None],
    device: torch.device | None = None,
    poison: bool = False,
    outs: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Allocate the plan's outputs and workspace, launch its steps in order. Capturable: no host syncs."""
    if device is None:
        device = next(t.device for t in inputs if t is not None)
    if outs is None:
        outs = allocate_outputs(plan, device, poison=poison)
    ws = allocate_workspace(plan, device, poison=poison) if plan.workspace else []
    extra = {} if needs_interpreter(device) else compile_options()
    for step in plan.steps:
        if all(g > 0 for g in step.grid):
            fn = getattr(module, step.kernel)
            fn[tuple(step.grid)](**bind_args(step, inputs, outs, ws), num_warps=step.num_warps,
                                 num_stages=step.num_stages, **extra)
    return outs


# ------------------------------------------------------------------------------------------------
# Compiling for a GPU without one
# ------------------------------------------------------------------------------------------------

_POINTER = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16", "float64": "*fp64", "int8": "*i8",
            "int16": "*i16", "int32": "*i32", "int64": "*i64", "uint8": "*u8", "bool": "*i1"}


class NoGpuToolchain(RuntimeError):
    """Triton's CUDA backend has no ptxas here: GPU compilation cannot be checked on this machine."""


def step_signature(spec: "OpSpec", plan: CallPlan, step: Step) -> tuple[dict, dict]:
    """Triton signature and constexprs of one launch, as the runtime JIT would specialize them:
    tensors by dtype, UPPERCASE parameters and ints equal to 1 as constexprs, other ints i32/i64."""
    sig: dict = {}
    consts: dict = {}
    for name, v in step.args:
        if isinstance(v, (In, Out, Ws)):
            buf = spec.args[v.i] if isinstance(v, In) else plan.outputs[v.j] if isinstance(v, Out) else plan.workspace[v.k]
            assert buf is not None, f"{name} is bound to a missing input"
            sig[name] = _POINTER[buf.dtype]
        elif name.isupper() or (type(v) is int and v == 1):
            sig[name], consts[name] = "constexpr", v
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            sig[name] = "i64" if abs(int(v)) >= 2**31 else "i32"
    return sig, consts


def divisibility_attrs(module: ModuleType, step: Step, sig: dict) -> dict:
    """The ``tt.divisibility=16`` hints the runtime JIT gives a launch whose tensors are 16-byte aligned
    (fresh allocations) and whose ints are multiples of 16: without them a CPU compile shows scalar
    loads where the GPU build vectorizes, and other register counts."""
    names = list(getattr(module, step.kernel).arg_names)
    return {(names.index(n),): [["tt.divisibility", 16]] for n, v in step.args
            if isinstance(v, (In, Out, Ws)) or (type(v) is int and v % 16 == 0 and sig[n] != "constexpr")}


def compile_for_gpu(module: ModuleType, spec: "OpSpec", plan: CallPlan, arch: int = 90) -> dict:
    """Compile every step of ``plan`` for ``sm_<arch>`` with Triton's CUDA backend, no GPU needed:
    GPU-only compile errors and resource use (registers, spills) show up on a CPU machine. Each step is
    specialized as the runtime JIT specializes the common, aligned launch (:func:`divisibility_attrs`).
    The module must have been loaded with ``interpret=False``. Returns kernel name → compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    out: dict = {}
    for step in plan.steps:
        sig, consts = step_signature(spec, plan, step)
        attrs = divisibility_attrs(module, step, sig)
        try:
            out[step.kernel] = triton.compile(
                ASTSource(fn=getattr(module, step.kernel), signature=sig, constexprs=consts, attrs=attrs),
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": step.num_warps, "num_stages": step.num_stages, **compile_options()})
        except Exception as e:
            if "ptxas" in str(e).lower() and "not found" in str(e).lower():
                raise NoGpuToolchain(str(e)) from e
            raise
    return out
