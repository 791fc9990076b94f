"""The generic family: any custom (non-aten) op with tensor inputs and tensor outputs of static shapes.

Why a family with no templates: a user's ``torch.library.custom_op`` with only a Python/CPU body has
no kernel anywhere and nothing a template could know about it. The family supplies what a search
needs besides proposals — the op's own implementation as eager fallback and ground truth, inputs,
edge cases, and a *fixed entry-point contract* — and the LLM synthesizer proposes kernels from the
contract and the reference alone (``candidates`` is empty; without an LLM the op stays as it is).

The spec records the op's qualified name, the tensor inputs (contiguous only: the contract passes
bare pointers), the non-tensor arguments as constants (JSON-able only, else Skip) and the outputs'
signatures from the node's FakeTensor metadata (contiguous, static shapes).

The contract::

    @triton.jit
    def kevolve_kernel(in0, in1, ..., out0, out1, ..., N0, N1, ..., BLOCK: tl.constexpr)

``inK`` / ``outK`` are contiguous tensors, ``NK`` the number of elements of output K; the grid is
``cdiv(N0, BLOCK)`` programs on axis 0; the config carries ``BLOCK`` (a power of two) and
``num_warps``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..spec import DeviceSig, OpSpec, TensorSig, software_versions
from . import register
from .base import CallPlan, Candidate, In, Match, OpFamily, Out, OutBuf, Skip
from .util import all_int, cdiv, meta_val

KERNEL = "kevolve_kernel"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SERVED = (*_FLOATS, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


def resolve_op(name: str) -> Any:
    """``"ns.op.overload"`` -> the OpOverload."""
    ns, op, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, ns), op), overload)


def _jsonable(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return all(_jsonable(x) for x in v)
    return False


def _is_fake(t: Any) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return isinstance(t, torch.Tensor) and (is_fake(t) or t.device.type == "meta")


class GenericFamily(OpFamily):
    """Custom ops served only by the LLM synthesizer under a fixed flat contract."""

    name = "generic"
    ops = ()  # claimed by :func:`torch_kevolve.families.family_for_op` as the fallback for non-core ops
    template_version = "1"
    # the op is registered in the user's process only (a custom op defined in their code): a harness
    # worker could not call it for the reference, so searches evaluate in this process
    caller_process_only = True
    fixed_shapes = True  # edge cases keep the spec's shapes (an arbitrary op's shapes are not ours to vary)

    # -- detection -------------------------------------------------------------------------------
    def match(self, node: Any) -> Match | Skip:
        target = getattr(node, "target", None)
        if getattr(node, "op", None) != "call_function" or not isinstance(target, torch._ops.OpOverload):
            return Skip("not an op overload call")
        schema = target._schema
        if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
            return Skip("the op mutates an input")
        name = f"{target.namespace}.{target._opname}.{target._overloadname}"
        from torch.fx.operator_schemas import normalize_function

        norm = normalize_function(target, tuple(node.args), dict(node.kwargs), normalize_to_only_use_kwargs=True)
        if norm is None:
            return Skip("could not normalize the op's arguments")
        kw = dict(norm.kwargs)
        inputs: list = []
        sigs: list[TensorSig] = []
        tensor_args: list[str] = []
        consts: list[tuple[str, Any]] = []
        device = None
        for a in schema.arguments:
            if a.name not in kw:
                continue
            v = kw[a.name]
            val = meta_val(v)
            if isinstance(val, torch.Tensor):
                if not all_int(val):
                    return Skip(f"{a.name} has symbolic sizes (dynamic shapes not served)")
                if val.dtype not in _SERVED:
                    return Skip(f"{a.name} dtype {val.dtype} not served")
                sig = TensorSig.of(val)
                if not sig.contiguous:
                    return Skip(f"{a.name} is not contiguous (the generic contract passes flat pointers)")
                if device is not None and val.device != device:
                    return Skip("inputs on different devices")
                device = val.device
                inputs.append(v)
                sigs.append(sig)
                tensor_args.append(a.name)
            elif hasattr(v, "meta") or (isinstance(v, (list, tuple)) and any(hasattr(x, "meta") for x in v)):
                return Skip(f"argument {a.name} is not a tensor nor a constant")
            elif not _jsonable(v):
                return Skip(f"argument {a.name}={v!r} is not a JSON-able constant")
            else:
                consts.append((f"arg:{a.name}", tuple(v) if isinstance(v, list) else v))
        if not sigs or device is None:
            return Skip("the op has no tensor inputs")
        out = meta_val(node)
        outs = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, (list, tuple)) else None
        if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
            return Skip("the op's outputs are not tensors with FakeTensor metadata")
        out_sigs = []
        for j, o in enumerate(outs):
            if not all_int(o):
                return Skip(f"output {j} has a symbolic (data-dependent) size")
            if o.dtype not in _SERVED:
                return Skip(f"output {j} dtype {o.dtype} not served")
            s = TensorSig.of(o)
            if not s.contiguous:
                return Skip(f"output {j} is not contiguous")
            if o.device != device:
                return Skip(f"output {j} is on another device than the inputs")
            out_sigs.append((s.dtype, s.shape))
        result_users: dict[int, list] = {}
        if isinstance(out, torch.Tensor):
            result_users = {0: [node]}
        else:
            import operator

            for u in node.users:
                if u.target is not operator.getitem or not isinstance(u.args[1], int):
                    return Skip("a user of the op's result list is not an indexing")
                result_users.setdefault(u.args[1], []).append(u)
        consts = [("inputs", tuple(tensor_args)), ("outputs", tuple(out_sigs)), *consts]
        spec = OpSpec(self.name, name, tuple(sigs), tuple(consts), DeviceSig.of(device),
                      software_versions(self.template_version))
        return Match(spec=spec, inputs=inputs, result_users=result_users)

    # -- semantics -------------------------------------------------------------------------------
    @staticmethod
    def _out_sigs(spec: OpSpec) -> list[tuple[str, tuple[int, ...]]]:
        return [(d, tuple(s)) for d, s in spec.const("outputs", ())]

    def _call(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        kwargs = {k[4:]: (list(v) if isinstance(v, tuple) else v) for k, v in spec.consts if k.startswith("arg:")}
        kwargs.update(zip(spec.const("inputs", ()), inputs))
        res = resolve_op(spec.op)(**kwargs)
        return [res] if isinstance(res, torch.Tensor) else list(res)

    def eager(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """The op itself (its CPU implementation; a CUDA spec runs on CPU copies, moved back)."""
        if any(_is_fake(t) for t in inputs):  # tracing (the kevolve::run fake): shapes from the spec
            dev = next(t.device for t in inputs if t is not None)
            return [torch.empty(s, dtype=getattr(torch, d), device=dev) for d, s in self._out_sigs(spec)]
        dev = next((t.device for t in inputs if t is not None), torch.device("cpu"))
        if dev.type == "cpu":
            return [o.contiguous() for o in self._call(spec, inputs)]
        outs = self._call(spec, [None if t is None else t.cpu() for t in inputs])
        return [o.to(dev).contiguous() for o in outs]

    _upcast_ok: dict[str, bool] = {}

    def reference(self, spec: OpSpec, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """The op on CPU, float inputs upcast to float64 when the op accepts that (same output
        shapes, no error); else in the inputs' dtypes (then :meth:`tolerance` is the dtype's)."""
        cpu = [None if t is None else t.detach().cpu() for t in inputs]
        want = self._out_sigs(spec)
        if any(t is not None and t.dtype in _FLOATS and t.dtype != torch.float64 for t in cpu) \
                and self._upcast_ok.get(spec.key, True):
            try:
                up = [t.to(torch.float64) if t is not None and t.dtype in _FLOATS else t for t in cpu]
                outs = self._call(spec, up)
                if len(outs) == len(want) and all(tuple(o.shape) == s for o, (_, s) in zip(outs, want)):
                    self._upcast_ok[spec.key] = True
                    return outs
            except Exception:  # noqa: BLE001 - the op does not take float64: compute in the input dtype
                pass
            self._upcast_ok[spec.key] = False
        return self._call(spec, cpu)

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        return {torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2), torch.float32: (1e-4, 1e-5),
                torch.float64: (1e-7, 1e-9)}.get(dtype, (0.0, 0.0))

    def reference_source(self, spec: OpSpec) -> str:
        import inspect
        import textwrap

        op = resolve_op(spec.op)
        lines = [f"# custom op {spec.op}: {op._schema}",
                 "# called as: " + spec.op.replace(".", "::", 1).rsplit(".", 1)[0] + "("
                 + ", ".join([*spec.const("inputs", ()), *(f"{k[4:]}={v!r}" for k, v in spec.consts
                                                         if k.startswith("arg:"))]) + ")",
                 "# inputs: " + ", ".join(f"{n}: {a.dtype}{list(a.shape)}"
                                          for n, a in zip(spec.const("inputs", ()), spec.args) if a is not None),
                 "# outputs: " + ", ".join(f"{d}{list(s)}" for d, s in self._out_sigs(spec))]
        body = ""
        try:  # the Python body of a torch.library.custom_op, when there is one
            from torch._library.custom_ops import OPDEFS

            qual = spec.op.replace(".", "::", 1).rsplit(".", 1)[0]
            d = OPDEFS.get(qual)
            fn = getattr(d, "_init_fn", None) if d is not None else None
            if fn is None and d is not None:
                fn = next(iter(getattr(d, "_backend_fns", {}).values()), None)
            if fn is not None:
                body = textwrap.dedent(inspect.getsource(fn)).rstrip()
        except Exception:  # noqa: BLE001 - the schema must do
            body = ""
        return "\n".join(lines) + ("\n\n" + body if body else "\n# (no Python source available)") + "\n"

    # -- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _device(spec: OpSpec) -> torch.device:
        return torch.device(spec.device.type)

    def _random(self, sig: TensorSig, gen: torch.Generator) -> torch.Tensor:
        dt = sig.torch_dtype
        if dt in _FLOATS:
            return torch.randn(sig.shape, generator=gen).to(dt)
        if dt == torch.bool:
            return torch.randint(0, 2, sig.shape, generator=gen).bool()
        return torch.randint(0, 8, sig.shape, generator=gen).to(dt)

    def make_inputs(self, spec: OpSpec, seed: int) -> list[torch.Tensor | None]:
        gen = torch.Generator().manual_seed(seed)
        dev = self._device(spec)
        return [None if a is None else self._random(a, gen).to(dev) for a in spec.args]

    def edge_cases(self, spec: OpSpec) -> list[tuple[str, OpSpec, list[torch.Tensor | None]]]:
        """Same shapes (an arbitrary op's shapes are not ours to change): zeros, large float values,
        a few NaNs. A case the op itself rejects is dropped."""
        dev = self._device(spec)
        base = [None if a is None else self._random(a, torch.Generator().manual_seed(99)) for a in spec.args]
        floats = [i for i, a in enumerate(spec.args) if a is not None and a.torch_dtype in _FLOATS]
        cases: list[tuple[str, list]] = [("zeros", [None if t is None else torch.zeros_like(t) for t in base])]
        if floats:
            large = list(base)
            for i in floats:
                t = base[i]
                big = 1e3 if t.dtype in (torch.float16, torch.bfloat16) else 1e6
                large[i] = (t.float() * big).to(t.dtype)
            cases.append(("large", large))
            nan = list(base)
            for i in floats:
                t = base[i].clone().reshape(-1)
                if t.numel():
                    t[:: max(1, t.numel() // 3)] = float("nan")
                nan[i] = t.reshape(base[i].shape)
            cases.append(("nan", nan))
        out = []
        for name, ins in cases:
            try:
                self.reference(spec, ins)
            except Exception:  # noqa: BLE001 - not a valid input for this op
                continue
            out.append((name, spec, [None if t is None else t.to(dev) for t in ins]))
        return out

    def floor_bytes(self, spec: OpSpec) -> int:
        from .util import elem_size

        n = sum(a.numel() * elem_size(a.dtype) for a in spec.args if a is not None)
        for d, s in self._out_sigs(spec):
            n += math.prod(s) * elem_size(d)
        return n

    # -- kernels ---------------------------------------------------------------------------------
    def candidates(self, spec: OpSpec) -> list[Candidate]:
        return []  # no templates: served by the LLM synthesizer alone

    def params(self, spec: OpSpec) -> list[str]:
        n_in, n_out = len(spec.args), len(self._out_sigs(spec))
        return [*(f"in{i}" for i in range(n_in)), *(f"out{j}" for j in range(n_out)), *(f"N{j}" for j in range(n_out))]

    def skeleton(self, spec: OpSpec) -> Candidate:
        """The contract as a module the model fills in (never evaluated itself)."""
        params = ", ".join([*self.params(spec), "BLOCK: tl.constexpr"])
        src = ("import triton\nimport triton.language as tl\n\n\n@triton.jit\n"
               f"def {KERNEL}({params}):\n    pid = tl.program_id(0)\n    # compute the op here\n")
        n0 = math.prod(self._out_sigs(spec)[0][1]) if self._out_sigs(spec) else 1
        block = max(16, min(1024, 1 << max(int(n0) - 1, 0).bit_length()))
        return Candidate(source=src, config=(("BLOCK", block), ("num_warps", 4)), origin="contract", template="generic")

    def contract(self, spec: OpSpec) -> str:
        names = spec.const("inputs", ())
        lines = [f"There is no existing kernel for this op: write `{KERNEL}` from scratch. Every tensor is "
                 "contiguous (row-major); index it flat. Shapes are fixed for this kernel (the same shapes are "
                 "used for every verification input), so you may use them as constants."]
        for i, a in enumerate(spec.args):
            if a is not None:
                lines.append(f"- `in{i}` is the op's argument `{names[i] if i < len(names) else i}`: "
                             f"{a.dtype}{list(a.shape)} ({a.numel()} elements)")
        for j, (d, s) in enumerate(self._out_sigs(spec)):
            lines.append(f"- `out{j}` is output {j}: {d}{list(s)}; `N{j}` = {math.prod(s)} (its element count). "
                         "Write every element.")
        lines.append("- grid = (cdiv(N0, BLOCK),): program `tl.program_id(0)` covers output elements "
                     "[pid*BLOCK, (pid+1)*BLOCK) of out0; mask the tail. `BLOCK` must be a power of two.")
        return "\n".join(lines)

    def call_plan(self, spec: OpSpec, cand: Candidate) -> CallPlan:
        cfg = cand.cfg
        block = int(cfg.get("BLOCK", 1024))
        if block < 1 or block & (block - 1):
            raise ValueError(f"BLOCK={block} is not a power of two")
        outs = self._out_sigs(spec)
        if not outs:
            raise ValueError("the op has no outputs")
        args: list[tuple[str, Any]] = [(f"in{i}", In(i)) for i in range(len(spec.args))]
        args += [(f"out{j}", Out(j)) for j in range(len(outs))]
        args += [(f"N{j}", math.prod(s)) for j, (_, s) in enumerate(outs)]
        args.append(("BLOCK", block))
        return CallPlan(kernel=KERNEL, grid=(cdiv(math.prod(outs[0][1]), block),), args=tuple(args),
                        outputs=tuple(OutBuf(tuple(s), d) for d, s in outs), num_warps=int(cfg.get("num_warps", 4)))


GENERIC = register(GenericFamily())

__all__ = ["GenericFamily", "GENERIC", "KERNEL", "resolve_op"]
