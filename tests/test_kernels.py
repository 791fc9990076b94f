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
