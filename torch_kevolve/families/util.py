"""Small helpers every op family needs: sizes, grids, and tensors with an exact layout."""
from __future__ import annotations

from typing import Any, Sequence

import math
from dataclasses import dataclass

import torch

from ..spec import TensorSig


def next_pow2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def elem_size(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def all_int(t: Any) -> bool:
    """True when every size and stride is a concrete int (SymInts are not ``int``)."""
    return all(isinstance(s, int) for s in tuple(t.shape) + tuple(t.stride()))


def storage_size(shape: Sequence[int], stride: Sequence[int]) -> int:
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(shape, stride))


def strided(sig: TensorSig, values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor with exactly ``sig``'s shape/stride/dtype holding ``values`` (a dense tensor), so
    generated inputs reproduce the layout (strides, expanded dims) the spec was keyed on."""
    base = torch.zeros(storage_size(sig.shape, sig.stride), dtype=sig.torch_dtype, device=device)
    view = base.as_strided(sig.shape, sig.stride)
    if view.numel() == 0:
        return view
    if any(st == 0 and s > 1 for s, st in zip(sig.shape, sig.stride)):  # expanded: aliases share a value
        base.fill_(values.reshape(-1)[0].item())
    else:
        view.copy_(values.reshape(sig.shape).to(sig.torch_dtype))
    return view


def node_kwargs(node: Any) -> dict | None:
    """An FX call's arguments by schema name, defaults filled in (None if they don't normalize)."""
    from torch.fx.operator_schemas import normalize_function

    norm = normalize_function(node.target, tuple(node.args), dict(node.kwargs), normalize_to_only_use_kwargs=True)
    if norm is None:
        return None
    kw = dict(norm.kwargs)
    for a in node.target._schema.arguments:  # normalize_function may leave defaults out
        if a.name not in kw and a.has_default_value():
            kw[a.name] = a.default_value
    return kw


def meta_val(x: Any) -> Any:
    """The FakeTensor (or constant) an FX argument stands for."""
    return None if x is None else x.meta.get("val") if hasattr(x, "meta") else x


def unique_candidates(proposals: Any, source_of: Any) -> list:
    """``(template, config dict)`` proposals → Candidates in order, duplicates dropped.

    ``source_of(template)`` gives the template's module source. Families build their candidate lists
    from overlapping shape heuristics; the first occurrence keeps its place (the search's prior)."""
    from .base import Candidate

    seen: set = set()
    cands: list = []
    for template, cfg in proposals:
        config = tuple(sorted(cfg.items()))
        if (template, config) in seen:
            continue
        seen.add((template, config))
        cands.append(Candidate(source=source_of(template), config=config, origin="template", template=template))
    return cands


def template_of(cand: Any, templates: dict, family: str, variants: dict[str, str] | None = None) -> str:
    """The template ``cand`` comes from: its recorded name, else the template whose source it is (each
    ``templates`` value ends with the source; ``variants`` maps a template to another source it may come
    as, e.g. segment_reduce's scan prefix). An unknown name is a ValueError: a stored or model-written
    candidate naming a template the family no longer has must not be launched with a guessed plan."""
    variants = variants or {}
    name = cand.template or next(
        (t for t, entry in templates.items() if cand.source in (entry[-1], variants.get(t))), "")
    if name not in templates:
        raise ValueError(f"unknown {family} template {name!r}")
    return name


def check_pow2(cfg: dict, keys: Any = lambda k: k.startswith("BLOCK")) -> None:
    """Every config value whose key ``keys`` selects (block sizes by default) is a power of two."""
    for k, v in cfg.items():
        if keys(k) and (int(v) < 1 or int(v) & (int(v) - 1)):
            raise ValueError(f"{k}={v} is not a power of two")


def one_dim(shape: Sequence[int], stride: Sequence[int]) -> tuple[int, int] | None:
    """Dims as one strided dim (size, stride), None when they do not collapse (size-1 dims ignored)."""
    size = math.prod(shape)
    dims = [(int(s), int(st)) for s, st in zip(shape, stride) if s != 1]
    if size == 0 or not dims:
        return size, 0
    for (_, st0), (s1, st1) in zip(dims, dims[1:]):
        if st0 != s1 * st1:
            return None
    return size, dims[-1][1]


def norm_dim(dim: Any, ndim: int) -> int:
    """``dim`` wrapped into ``[0, max(ndim, 1))`` (a 0-d tensor has dim 0 / -1, as torch allows); a
    ValueError for a non-int (bool included) or out-of-range dim."""
    r = max(ndim, 1)
    if not isinstance(dim, int) or isinstance(dim, bool) or not -r <= dim < r:
        raise ValueError(f"dim={dim!r} out of range")
    return dim % r


@dataclass(frozen=True)
class RowGeom:
    """``[outer, length, inner]``: ``outer * inner`` rows (lanes) of ``length`` along one dim."""

    outer: int
    length: int
    inner: int
    stride_o: int
    stride_l: int
    stride_i: int

    @property
    def lanes(self) -> int:
        return self.outer * self.inner


def split_at(x: TensorSig, dim: int) -> tuple[int, int, int, int, int, int]:
    """``x`` (at least 1-d) as ``[outer, dim, inner]``: RowGeom's fields; ValueError when the dims
    before or after ``dim`` do not collapse to one strided dim."""
    o = one_dim(x.shape[:dim], x.stride[:dim])
    i = one_dim(x.shape[dim + 1:], x.stride[dim + 1:])
    if o is None or i is None:
        raise ValueError(f"input strides {x.stride} (shape {x.shape}) do not collapse to [outer, dim {dim}, inner]")
    return o[0], int(x.shape[dim]), i[0], o[1], int(x.stride[dim]), i[1]


# Kernel-source pieces shared by several families' templates. Each template stays one self-contained
# module string (stored with the kernel), so these are text concatenated into the *_SOURCE strings.

EXTREMUM_IDENT_SOURCE = '''
@triton.jit
def _ident(shape, MODE: tl.constexpr, KIND: tl.constexpr):
    \"\"\"A value no element loses to under max (MODE 0) / min (MODE 1), in KIND's compute dtype
    (0 fp32, 1 fp64, 2 int32, 3 int64); the index paired with it must lose every tie (see _load).\"\"\"
    if KIND == 0:
        if MODE == 0:
            t = tl.full(shape, float("-inf"), tl.float32)
        else:
            t = tl.full(shape, float("inf"), tl.float32)
    elif KIND == 1:
        if MODE == 0:
            t = tl.full(shape, float("-inf"), tl.float64)
        else:
            t = tl.full(shape, float("inf"), tl.float64)
    elif KIND == 2:
        if MODE == 0:
            t = tl.full(shape, -2147483647 - 1, tl.int32)
        else:
            t = tl.full(shape, 2147483647, tl.int32)
    else:
        if MODE == 0:
            t = tl.full(shape, -9223372036854775807 - 1, tl.int64)
        else:
            t = tl.full(shape, 9223372036854775807, tl.int64)
    return t
'''


# NaN-propagating max/min (max.NaN.f32 on the GPU). kernels.py gives reductions with these combine
# names an interpreter fast path (np.max / np.min).
NAN_PROPAGATE_SOURCE = '''
@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _min_nan(a, b):
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)
'''

# NaN-absorbing max/min by compare and select: any dtype (ints are never NaN; no max.NaN for fp64). A
# tie returns b, the later operand of a scan's combine.
NAN_ABSORB_SOURCE = '''
@triton.jit
def _vmax(a, b):
    \"\"\"max with NaN absorbing, by compare and select (any dtype); a tie returns b, the later operand.\"\"\"
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def _vmin(a, b):
    \"\"\"min with NaN absorbing, by compare and select; a tie returns b.\"\"\"
    return tl.where((a < b) | (a != a), a, b)
'''
