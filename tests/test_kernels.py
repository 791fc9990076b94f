"""torch_kevolve.kernels: the interpreter's fast path for NaN-propagating max/min reductions."""
from __future__ import annotations

import math

import pytest
import torch

from torch_kevolve.families import segment_reduce as SR
from torch_kevolve.kernels import load_module

# segment_reduce's own helpers (its _max_nan / _min_nan and the _reduce that uses them), plus one
# combine the fast path does not know by name: the interpreter's element-by-element path
_SOURCE = SR._HEADER + SR._COMMON + '''

@triton.jit
def _max_slow(a, b):
    return _max_nan(a, b)


@triton.jit
def reduce_kernel(x_ptr, out_ptr, AXIS: tl.constexpr, OP: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    x = tl.load(x_ptr + r[:, None] * C + c[None, :])
    if OP == 0:
        y = _reduce(x, AXIS, 2)
    elif OP == 1:
        y = _reduce(x, AXIS, 3)
    else:
        y = tl.reduce(x, AXIS, _max_slow)
    if AXIS == 0:
        tl.store(out_ptr + c, y)
    else:
        tl.store(out_ptr + r, y)
'''


@pytest.mark.parametrize("axis", [0, 1])
def test_nan_propagating_reductions_match_torch_and_the_generic_path(axis: int) -> None:
    mod = load_module(_SOURCE, interpret=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, generator=g)
    x[1, 3] = math.nan
    x[5, :] = math.inf
    x[:, 7] = -math.inf
    x[2, 9] = math.nan
    x[6, 11] = -0.0
    n = x.shape[1 - axis]
    outs = []
    for op in (0, 1, 2):
        out = torch.empty(n)
        mod.reduce_kernel[(1,)](x, out, AXIS=axis, OP=op, R=8, C=16)
        outs.append(out)
    torch.testing.assert_close(outs[0], x.amax(axis), equal_nan=True, rtol=0, atol=0)  # amax propagates NaN
    torch.testing.assert_close(outs[1], x.amin(axis), equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(outs[0], outs[2], equal_nan=True, rtol=0, atol=0)  # fast path == element-wise
    assert bool(outs[0].isnan().any())


def test_template_sources_have_no_backslash() -> None:
    """Inductor's user-defined-kernel path embeds a kernel's source in a triple-quoted string literal
    (``async_compile.triton(name, '''...''')``), so every escape in the source is interpreted once: an
    asm string written with ``\\n`` became a real newline, an unterminated string, and the compiled graph
    failed to load (H100, the histogram ``shared`` template's first version). Kernel sources therefore
    carry no backslash at all (PTX takes ``;``-separated instructions on one line)."""
    import importlib

    from torch_kevolve import families

    seen = 0
    for fam in families.all_families():
        mod = importlib.import_module(type(fam).__module__)
        for name, val in vars(mod).items():
            srcs = [val] if name.endswith("_SOURCE") and isinstance(val, str) else []
            if name == "TEMPLATES" and isinstance(val, dict):
                srcs += [v[-1] for v in val.values() if isinstance(v, tuple) and isinstance(v[-1], str)]
            for src in srcs:
                seen += 1
                bad = [ln for ln in src.splitlines() if "\\" in ln]
                assert not bad, f"{fam.name} {name}: {bad[:3]}"
    assert seen > 30
