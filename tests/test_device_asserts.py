"""Index-range device asserts (issue 10, part 3): on a GPU launch (Triton ``debug``, as Inductor compiles
its own kernels) an index eager rejects stops the kernel with a device-side assert, as eager's CUDA
kernels do, instead of giving unspecified values. Checked here in the interpreter with the asserts made
live: every template of every family that reads user indices asserts on a bad one, and none asserts on
valid inputs (masked tails, padding, empty bags). The property tests run every served case with the
asserts live as well (no false positive on inputs eager accepts)."""
from __future__ import annotations

import pytest
import torch
from family_helpers import firsts, interpreter_asserts, is_index_assert

from torch_kevolve.families import get_family
from torch_kevolve.families.bucketize import SEARCHSORTED
from torch_kevolve.families.scatter import INDEX_PUT, SCATTER_ADD, SCATTER_REDUCE
from torch_kevolve.kernels import compile_options, launch, load_module

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CPU = torch.device("cpu")


def _run(fam, spec, cand, inputs) -> list[torch.Tensor]:
    return launch(load_module(cand.source), fam.call_plan(spec, cand), inputs, device=CPU)


def _cases():
    """(family, spec builder, good inputs, bad inputs, label): the bad ones differ in one index."""
    eb = get_family("embedding_bag")
    w = torch.randn(7, 5)
    good_i = torch.tensor([1, 6, 0, 3, 3, 2])
    off = torch.tensor([0, 2, 2, 5])  # an empty bag, a tail past the last offset
    for mode in (0, 1, 2):
        for bad in (7, -1):
            bad_i = good_i.clone()
            bad_i[3] = bad
            yield (eb, lambda i, mode=mode: eb.spec_for(w, i, off, None, mode, False, 0),
                   [w, good_i, off, None], [w, bad_i, off, None], f"embedding_bag mode{mode} idx={bad}")

    ebb = get_family("embedding_bag_backward")
    g = torch.randn(4, 5)
    o2b = torch.tensor([0, 0, 2, 2, 2, 3])
    bsz = torch.tensor([2, 0, 3, 1])
    for mode in (0, 1, 2):
        mi = torch.tensor([[1] * 5, [0] * 5, [3] * 5, [2] * 5]) if mode == 2 else None
        bad_i = good_i.clone()
        bad_i[2] = 9
        yield (ebb, lambda i, mode=mode, mi=mi: ebb.spec_for(g, i, off, None, 7, mode, -1, o2b, bsz, mi),
               [g, good_i, off, None, o2b, bsz, mi], [g, bad_i, off, None, o2b, bsz, mi],
               f"embedding_bag_backward mode{mode}")

    sc = get_family("scatter")
    x = torch.randn(6, 3)
    for op, reduce in ((INDEX_PUT, "sum"), (SCATTER_ADD, "sum"), (SCATTER_REDUCE, "amax"), (SCATTER_REDUCE, "mean")):
        if op == INDEX_PUT:
            idx = torch.tensor([0, 5, -6, 2, 2])
            src = torch.randn(5, 3)
            bads = (6, -7)
        else:
            idx = torch.tensor([[0, 1, 2], [5, 5, 5], [2, 0, 1], [2, 2, 3]])
            src = torch.randn(4, 3)
            bads = (6, -1)
        for bad in bads:
            bad_idx = idx.clone()
            bad_idx.view(-1)[4] = bad
            yield (sc, lambda i, op=op, reduce=reduce, src=src: sc.spec_for(op, x, i, src, 0, reduce, True),
                   [x, idx, src], [x, bad_idx, src], f"{op.split('.')[1]} {reduce} idx={bad}")

    bk = get_family("bucketize")
    seq = torch.tensor([[3.0, -1.0, 7.0, 0.5, 2.0], [1.0, 0.0, -2.0, 4.0, 9.0]])
    sorter = torch.argsort(seq, dim=-1)
    vals = torch.randn(2, 9) * 4
    for bad in (5, -1):
        bad_s = sorter.clone()
        bad_s[:, :] = bad  # every probe of the binary search reads a bad entry
        yield (bk, lambda s: bk.spec_for(SEARCHSORTED, vals, seq, s, False, False),
               [vals, seq, sorter], [vals, seq, bad_s], f"searchsorted sorter={bad}")


CASES = list(_cases())


@pytest.mark.parametrize("case", CASES, ids=[c[4] for c in CASES])
def test_bad_index_asserts_in_every_template(case) -> None:
    fam, make, good, bad, _ = case
    idx_pos = next(k for k, (a, b) in enumerate(zip(good, bad)) if a is not None and not torch.equal(a, b))
    spec = make(good[idx_pos])
    assert fam.input_error(spec, bad) is not None  # the CPU runtime's value guard sends these to eager
    with pytest.raises(Exception):
        fam.eager(spec, bad)  # and eager rejects them
    cands = list(firsts(fam.candidates(spec)).values())
    assert cands
    for cand in cands:
        with interpreter_asserts():
            ref = fam.eager(spec, good)
            got = _run(fam, spec, cand, good)  # no assert on valid inputs
            for o, r in zip(got, ref):
                if o.is_floating_point():
                    rtol, atol = fam.tolerance(o.dtype)
                    torch.testing.assert_close(o, r, rtol=rtol, atol=atol, equal_nan=True)
                else:
                    assert torch.equal(o, r)
            with pytest.raises(Exception) as ei:
                _run(fam, spec, cand, bad)
        assert is_index_assert(ei.value), f"{cand.template}: {ei.value!r}"
        _run(fam, spec, cand, bad)  # asserts off (the interpreter's default): masked, no fault


def test_gpu_launches_compile_the_asserts() -> None:
    """GPU launches (and the sm_90 resource checks) pass Triton's ``debug`` unless Inductor's own
    ``assert_indirect_indexing`` is off; the overflow sanitizer stays off, as in Inductor. (Config's
    own ``patch``: pytest's monkeypatch would *delete* the entry on undo, breaking every later compile.)"""
    import torch._inductor.config as ic

    assert compile_options() == {"debug": True, "sanitize_overflow": False}
    with ic.patch(assert_indirect_indexing=False):
        assert compile_options() == {}
    assert ic.assert_indirect_indexing is True and compile_options()["debug"] is True
