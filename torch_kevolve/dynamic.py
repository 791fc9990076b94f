"""Dynamic shapes: symbolic sizes become power-of-two *buckets* of a spec.

Why buckets: with ``torch.compile(dynamic=True)`` (or after a recompile marks a dim dynamic) a node's
sizes are SymInts. One kernel per exact size would search again for every batch; one kernel for every
size would be served where nobody verified it. A bucket is the middle way: a spec whose symbolic dims
carry a range ``lo..hi`` (``(2^(k-1), 2^k]``), keyed by the range and not the size, verified at the
range's ends as well as at the size it was found with, and guarded in the graph (``lo <= s <= hi``) so
that a size outside it recompiles into another bucket — which the store answers, searches, or leaves
to Inductor, like any other spec.

The spec of a bucket is concrete at the size it was found with (the *hint*): families build inputs
and call plans from concrete shapes as always. ``OpSpec.dynamic`` lists which sizes are symbolic and
their ranges (and which strides follow from them); the key masks those; at run time the custom-op
route re-plans for each concrete shape inside the ranges (:func:`concretize`). Families opt in with
``OpFamily.dynamic_ok`` (their constants and configs must not depend on the symbolic sizes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Iterator, Sequence

import torch

from .spec import OpSpec, TensorSig

log = logging.getLogger("torch_kevolve")

SIZE, STRIDE = "size", "stride"


def bucket_of(n: int) -> tuple[int, int]:
    """Power-of-two bucket ``(lo, hi)`` holding ``n``: 0 and 1 alone, then (2^(k-1), 2^k]."""
    if n < 0:
        raise ValueError(f"negative size {n}")
    if n <= 1:
        return n, n
    hi = 1 << (n - 1).bit_length()
    return hi // 2 + 1, hi


def _is_sym(x: Any) -> bool:
    return isinstance(x, torch.SymInt) and not isinstance(getattr(x.node, "maybe_as_int", lambda: None)(), int)


def symbolic(val: Any) -> bool:
    """Whether a meta value (tensor or nested list of them) has a symbolic size or stride."""
    if isinstance(val, torch.Tensor):
        return any(_is_sym(s) for s in (*val.shape, *val.stride()))
    if isinstance(val, (list, tuple)):
        return any(symbolic(v) for v in val)
    return False


def _hint(x: Any) -> int | None:
    if isinstance(x, int):
        return x
    h = getattr(x.node, "hint", None)  # a backed size's value in the example inputs (torch 2.11 and 2.13)
    if h is None:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # renamed in 2.13; the old name works on both
                h = x.node.shape_env.size_hint(x.node.expr, allow_none=True)
        except Exception:  # noqa: BLE001 - an unbacked or odd symbol: no hint, not served
            return None
    try:
        return None if h is None else int(h)
    except TypeError:  # a symbolic hint: data-dependent
        return None


def _concrete(val: Any) -> Any:
    """A FakeTensor like ``val`` with its sizes and strides at their hints (same fake mode, device, dtype)."""
    if isinstance(val, (list, tuple)):
        return type(val)(_concrete(v) for v in val)
    if not isinstance(val, torch.Tensor) or not symbolic(val):
        return val
    size = [_hint(s) for s in val.shape]
    stride = [_hint(s) for s in val.stride()]
    if any(v is None for v in (*size, *stride)):
        raise ValueError("a size has no hint (data-dependent)")
    mode = getattr(val, "fake_mode", None)
    ctx = mode if mode is not None else contextlib.nullcontext()
    with ctx:
        return torch.empty_strided(size, stride, dtype=val.dtype, device=val.device)


@contextlib.contextmanager
def concrete_meta(node: Any) -> Iterator[None]:
    """Within: ``node``, its inputs and its getitem users carry concrete FakeTensors at the size hints,
    so a family's ``match`` (which serves static shapes) builds the spec at the hint. Restored after."""
    nodes = [node, *node.all_input_nodes, *[u for u in node.users if u.op == "call_function"]]
    saved = {n: n.meta.get("val") for n in nodes if "val" in n.meta}
    try:
        for n, v in saved.items():
            n.meta["val"] = _concrete(v)
        yield
    finally:
        for n, v in saved.items():
            n.meta["val"] = v


@dataclasses.dataclass
class Dynamic:
    """What a bucketed match adds: the spec's dynamic entries and the SymInts to guard in the graph."""

    entries: tuple[tuple, ...]  # (SIZE, arg, dim, symbol, lo, hi) | (STRIDE, arg, dim, "", 0, 0)
    guards: list[tuple[Any, int, int]]  # (SymInt, lo, hi)


def _contiguous_strides(shape: Sequence[int]) -> list[int]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(int(s), 1)
    return out[::-1]


def dynamic_of(inputs: Sequence[Any], spec: OpSpec) -> Dynamic | str:
    """The buckets of a spec built at the hint, from the symbolic meta of its canonical input nodes
    (aligned with ``spec.args``), or why the node cannot be bucketed."""
    if len(inputs) != len(spec.args):
        return "the family's canonical inputs do not line up with its spec"
    entries: list[tuple] = []
    guards: list[tuple[Any, int, int]] = []
    seen: dict[str, tuple[int, int]] = {}
    for i, (n, sig) in enumerate(zip(inputs, spec.args)):
        val = getattr(n, "meta", {}).get("val") if n is not None else None
        if sig is None or not isinstance(val, torch.Tensor):
            continue
        if len(val.shape) != len(sig.shape):
            return f"input {i}: rank differs from its spec"
        for d, s in enumerate(val.shape):
            if not _is_sym(s):
                continue
            expr = s.node.expr
            import sympy

            if not isinstance(expr, sympy.Symbol):
                return f"input {i} dim {d} is an expression of sizes ({expr}), not one symbolic size"
            h = _hint(s)
            if h is None:
                return f"input {i} dim {d} has no size hint (data-dependent)"
            lo, hi = bucket_of(h)
            seen.setdefault(str(expr), (lo, hi))
            entries.append((SIZE, i, d, str(expr), lo, hi))
            guards.append((s, lo, hi))
        sym_strides = [d for d, st in enumerate(val.stride()) if _is_sym(st)]
        if sym_strides:
            if list(sig.stride) != _contiguous_strides(sig.shape):
                return f"input {i} has symbolic strides and is not contiguous"
            entries += [(STRIDE, i, d, "", 0, 0) for d in sym_strides]
    if not entries:
        return "no symbolic sizes"
    return Dynamic(tuple(entries), guards)


def install_guards(dyn: Dynamic) -> None:
    """Guard ``lo <= s <= hi`` for each bucketed size: the graph (and the kernel in it) is then only
    reused for sizes in the bucket; another size recompiles into its own bucket."""
    for s, lo, hi in dyn.guards:
        ok = bool(s >= lo) and bool(s <= hi)  # SymBool -> bool records the guard in the ShapeEnv
        if not ok:  # the hint is inside by construction; anything else is a bug worth stopping for
            raise AssertionError(f"size {s} outside its own bucket {lo}..{hi}")


# -- on the spec ---------------------------------------------------------------------------------------
def masked_args(spec: OpSpec) -> list:
    """``spec.args`` as JSON-able dicts with bucketed sizes and derived strides masked (for the key)."""
    args = [None if a is None else {"dtype": a.dtype, "shape": list(a.shape), "stride": list(a.stride)}
            for a in spec.args]
    for kind, i, d, _sym, lo, hi in spec.dynamic:
        a = args[i]
        if a is None:
            continue
        if kind == SIZE:
            a["shape"][d] = f"{lo}..{hi}"
        else:
            a["stride"][d] = "contiguous"
    return args


def inside(spec: OpSpec, args: Sequence[torch.Tensor | None]) -> bool:
    """Whether concrete ``args`` fit the spec: dtypes, static sizes and strides equal, bucketed sizes
    in their ranges (one value per symbol), derived strides contiguous."""
    if len(args) != len(spec.args):
        return False
    dyn_size = {(i, d): (sym, lo, hi) for k, i, d, sym, lo, hi in spec.dynamic if k == SIZE}
    dyn_stride = {(i, d) for k, i, d, *_ in spec.dynamic if k == STRIDE}
    values: dict[str, int] = {}
    for i, (sig, t) in enumerate(zip(spec.args, args)):
        if (sig is None) != (t is None):
            return False
        if t is None or sig is None:
            continue
        if str(t.dtype).replace("torch.", "") != sig.dtype or t.dim() != len(sig.shape):
            return False
        cont = _contiguous_strides(t.shape)
        for d in range(t.dim()):
            n = int(t.shape[d])
            if (i, d) in dyn_size:
                sym, lo, hi = dyn_size[(i, d)]
                if not lo <= n <= hi or values.setdefault(sym, n) != n:
                    return False
            elif n != sig.shape[d]:
                return False
            st = int(t.stride(d))
            if (i, d) in dyn_stride:
                if n > 1 and st != cont[d]:
                    return False
            elif n > 1 and st != sig.stride[d]:
                return False
    return True


def concretize(spec: OpSpec, args: Sequence[torch.Tensor | None]) -> OpSpec:
    """The static spec of one call inside the buckets (for its call plan)."""
    new = tuple(None if (a is None or t is None) else TensorSig(a.dtype, tuple(int(s) for s in t.shape),
                                                                  tuple(int(s) for s in t.stride()))
                for a, t in zip(spec.args, args))
    return dataclasses.replace(spec, args=new, dynamic=())


def at_sizes(spec: OpSpec, values: dict[str, int]) -> OpSpec:
    """The static spec with each bucketed symbol at ``values[symbol]`` (derived strides recomputed),
    for verifying a kernel at the ends of its buckets."""
    shapes = [None if a is None else list(a.shape) for a in spec.args]
    strides = [None if a is None else list(a.stride) for a in spec.args]
    for kind, i, d, sym, _lo, _hi in spec.dynamic:
        if kind == SIZE and shapes[i] is not None:
            shapes[i][d] = values[sym]
    for kind, i, d, *_ in spec.dynamic:
        if kind == STRIDE and shapes[i] is not None:
            strides[i][d] = _contiguous_strides(shapes[i])[d]
    new = tuple(None if a is None else TensorSig(a.dtype, tuple(sh), tuple(st))
                for a, sh, st in zip(spec.args, shapes, strides))
    return dataclasses.replace(spec, args=new, dynamic=())


def bucket_cases(spec: OpSpec) -> list[tuple[str, OpSpec]]:
    """Specs at the bucket ends: every symbol at its ``lo``, then every one at its ``hi`` (the hint's
    own spec is the search's main case already)."""
    syms: dict[str, tuple[int, int]] = {}
    for kind, _i, _d, sym, lo, hi in spec.dynamic:
        if kind == SIZE:
            syms.setdefault(sym, (lo, hi))
    if not syms:
        return []
    out = []
    for name, pick in (("bucket-lo", 0), ("bucket-hi", 1)):
        out.append((name, at_sizes(spec, {s: r[pick] for s, r in syms.items()})))
    return out


def describe(spec: OpSpec) -> str:
    syms: dict[str, tuple[int, int]] = {}
    for kind, _i, _d, sym, lo, hi in spec.dynamic:
        if kind == SIZE:
            syms.setdefault(sym, (lo, hi))
    return ", ".join(f"{s}∈[{lo},{hi}]" for s, (lo, hi) in syms.items())
