"""The runtime guard (issue 10, part 4): a stored kernel runs only on inputs inside its verified
signature; anything else takes the ATen path, logged once.

* custom-op route (``runtime.call``): ``_inside_signature`` checked on shapes, dtypes, strides,
  overlapping (expanded) and offset views, device, argument count and presence; the value guard
  (``family.input_error``) on index ranges.
* Triton route (CUDA) has no check of its own: it relies on Dynamo's guards on static shapes (sizes,
  strides, dtype, device of every graph input), and on the pass never serving a node with symbolic
  sizes. Checked here on CPU through the same pass: ``torch.compile(dynamic=True)``, a recompile that
  marks a dim dynamic (automatic dynamic shapes), ``mark_dynamic``, and a stride change that must
  recompile rather than reuse the kernel.
"""
from __future__ import annotations

import logging

import pytest
import torch

from torch_kevolve import stats
from torch_kevolve.config import Settings
from torch_kevolve.families import get_family
from torch_kevolve.lowering import REPORTS, runtime
from torch_kevolve.lowering.custom_op import OP
from torch_kevolve.spec import OpSpec, TensorSig
from torch_kevolve.store import Entry, KernelStore

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]

EB = get_family("embedding_bag")
SR = get_family("segment_reduce")


def _bag():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(20, 6, generator=g)
    idx = torch.randint(0, 20, (11,), generator=g)
    off = torch.tensor([0, 3, 3, 8])
    return w, idx, off


def _installed():
    w, idx, off = _bag()
    spec = EB.spec_for(w, idx, off)
    runtime.install(spec, EB.candidates(spec)[0])
    return spec, [w, idx, off, None]


# -- _inside_signature ----------------------------------------------------------------------------


def _variants(w: torch.Tensor, idx: torch.Tensor, off: torch.Tensor) -> dict[str, list]:
    """Each one step outside the verified signature (weight [20, 6] f32 contiguous, idx [11], off [4])."""
    big = torch.randn(20, 12)
    return {
        "shape: one more row": [torch.randn(21, 6), idx, off, None],
        "shape: more indices": [w, torch.cat([idx, idx[:1]]), off, None],
        "shape: more bags": [w, idx, torch.tensor([0, 3, 3, 8, 9]), None],
        "dtype: weight f16": [w.half(), idx, off, None],
        "dtype: weight f64": [w.double(), idx, off, None],
        "dtype: indices int32": [w, idx.int(), off, None],
        "stride: weight columns every other": [big[:, ::2], idx, off, None],
        "stride: weight transposed": [w.t().contiguous().t(), idx, off, None],
        "stride: indices every other": [w, torch.stack([idx, idx], 1).reshape(-1)[::2], off, None],
        "overlap: weight rows expanded (stride 0)": [w[:1].expand(20, 6), idx, off, None],
        "overlap: indices expanded (stride 0)": [w, idx[:1].expand(11), off, None],
        "device: meta weight": [w.to("meta"), idx, off, None],
        "presence: per_sample_weights given": [w, idx, off, torch.ones(11)],
        "count: an argument missing": [w, idx, off],
        "presence: weight None": [None, idx, off, None],
    }


def test_inside_signature_accepts_exact_and_offset_views():
    spec, args = _installed()
    assert runtime._inside_signature(spec, args)
    w, idx, off, _ = args
    buf = torch.randn(w.numel() + 5)
    w_off = buf[5:].view(20, 6)  # a storage offset keeps shape/strides: the kernel takes data_ptr
    assert runtime._inside_signature(spec, [w_off, idx, off, None])


@pytest.mark.parametrize("what", list(_variants(*_bag()).keys()))
def test_inside_signature_rejects(what):
    spec, args = _installed()
    assert not runtime._inside_signature(spec, _variants(*args[:3])[what]), what


@pytest.mark.parametrize("what", [k for k in _variants(*_bag()) if not k.startswith(("device", "count", "presence: weight"))])
def test_outside_signature_runs_aten_logged_once(what, caplog):
    """Through the real custom op: eager's result, counted as a fallback, one warning for two calls."""
    spec, args = _installed()
    bad = _variants(*args[:3])[what]
    handle = runtime.spec_handle(spec)
    from torch_kevolve import log as klog

    klog._once.discard(f"kevolve: inputs outside the verified signature of {spec.key}; running the ATen op")
    stats.reset()
    with caplog.at_level(logging.WARNING, logger="torch_kevolve"):
        outs = [OP(handle, bad)[0] for _ in range(2)]
    try:
        expect = EB.eager(spec, bad)[0]
    except RuntimeError:  # eager rejects it too (per_sample_weights in sum mode is fine; kept general)
        pytest.fail(f"eager rejected {what}")
    for o in outs:
        torch.testing.assert_close(o, expect)
    assert stats.snapshot() == {"runtime_fallbacks": 2}
    assert sum("outside the verified signature" in r.getMessage() for r in caplog.records) == 1


def test_inside_signature_still_runs_the_kernel():
    spec, args = _installed()
    stats.reset()
    out = OP(runtime.spec_handle(spec), args)[0]
    torch.testing.assert_close(out, EB.eager(spec, args)[0])
    assert stats.snapshot() == {"kernel_calls": 1}


def test_value_guard_out_of_range_index_raises_like_eager(caplog):
    """Inside the signature but an index past the table: eager's error, never the kernel's guess."""
    spec, (w, idx, off, _) = _installed()
    bad = idx.clone()
    bad[4] = 20
    stats.reset()
    with caplog.at_level(logging.WARNING, logger="torch_kevolve"):
        for _ in range(2):
            with pytest.raises(RuntimeError) as ours:
                OP(runtime.spec_handle(spec), [w, bad, off, None])
            with pytest.raises(RuntimeError) as eager:
                EB.eager(spec, [w, bad, off, None])
            assert str(ours.value) == str(eager.value)
    assert stats.snapshot() == {"runtime_fallbacks": 2}
    assert sum("indices out of range" in r.getMessage() for r in caplog.records) <= 1
    stats.reset()
    out = OP(runtime.spec_handle(spec), [w, idx, off, None])[0]  # good inputs still get the kernel
    torch.testing.assert_close(out, EB.eager(spec, [w, idx, off, None])[0])
    assert stats.snapshot() == {"kernel_calls": 1}


# -- what the Triton route relies on: Dynamo guards and no symbolic specs --------------------------


def _seg_sum(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.segment_reduce(x, "sum", lengths=lengths) * 2.0


def _seg_inputs(rows: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=g)
    cut = rows // 3
    return x, torch.tensor([cut, 0, rows - cut])


def _store_kernel_for(x: torch.Tensor, lengths: torch.Tensor) -> OpSpec:
    spec = SR.spec_for(x, "sum", lengths=lengths)
    cand = next(c for c in SR.candidates(spec) if c.cfg.get("SCAN"))
    assert KernelStore.from_settings(Settings.from_env()).put(Entry(spec, cand, {"test": True}))
    return spec


def _skipped_as_dynamic(fd) -> bool:
    """Skipped because of symbolic sizes: by the family's own check ("symbolic sizes/strides") or by
    detect's dynamic-shape gate ("dynamic shapes: this family serves static shapes only"). A family
    that opts into bucketed dynamic specs (``dynamic_ok``) needs its own guard test instead."""
    return fd.status == "skipped" and ("symbolic" in fd.detail or "dynamic shapes" in fd.detail)


def _never_the_static_spec(found: list, static: OpSpec) -> None:
    """Each dynamic-graph finding is skipped as dynamic, or (a family that opted into buckets) a
    bucketed spec with its own key: never the static spec whose kernel was verified for one size."""
    assert found
    for fd in found:
        if fd.status == "candidate":
            assert fd.key != static.key and getattr(fd.match.spec, "dynamic", ()), fd
        else:
            assert _skipped_as_dynamic(fd), fd


def _findings() -> list:
    return [f for rep in REPORTS for f in rep if f.family == "segment_reduce"]


@pytest.fixture
def fresh():
    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    yield
    torch._dynamo.reset()


def _compile(**kw):
    return torch.compile(_seg_sum, backend="kevolve", options={"fx_graph_cache": False, "mode": "cache"}, **kw)


def test_dynamic_true_skips_symbolic_nodes(store_dir, fresh):
    """dynamic=True: the node has symbolic sizes, so it is skipped with that reason, or matched as a
    bucket under its own key (a kernel stored for these very sizes must not be served for every size),
    and Inductor's path gives eager's result."""
    x, lengths = _seg_inputs(12)
    static = _store_kernel_for(x, lengths)
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
        f = _compile(dynamic=True)
        for rows in (12, 17):
            xi, li = _seg_inputs(rows)
            torch.testing.assert_close(f(xi, li), _seg_sum(xi, li))
    _never_the_static_spec(_findings(), static)
    assert stats.snapshot().get("kernel_calls", 0) == 0 and stats.snapshot().get("store_hits", 0) == 0


def test_recompile_with_a_dynamic_dim_does_not_reuse_the_kernel(store_dir, fresh):
    """Static first (kernel served from the store), then a new size: Dynamo's size guard fails and
    it recompiles with that dim dynamic (automatic dynamic shapes); that graph must not get the static
    spec, whose kernel was verified for 12 rows."""
    x, lengths = _seg_inputs(12)
    static = _store_kernel_for(x, lengths)
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False), \
            torch._dynamo.config.patch(automatic_dynamic_shapes=True, assume_static_by_default=True):
        f = _compile()
        torch.testing.assert_close(f(x, lengths), _seg_sum(x, lengths))
        assert stats.snapshot()["kernel_calls"] == 1
        first = _findings()
        assert [fd.status for fd in first] == ["candidate"] and first[0].decision.startswith("stored kernel")
        REPORTS.clear()
        for rows in (17, 23):
            xi, li = _seg_inputs(rows)
            torch.testing.assert_close(f(xi, li), _seg_sum(xi, li))
    _never_the_static_spec(_findings(), static)
    assert stats.snapshot()["kernel_calls"] == 1  # only the first, static call used the kernel


def test_mark_dynamic_is_skipped(store_dir, fresh):
    x, lengths = _seg_inputs(12)
    static = _store_kernel_for(x, lengths)
    xd = x.clone()
    torch._dynamo.mark_dynamic(xd, 0)
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
        torch.testing.assert_close(_compile()(xd, lengths), _seg_sum(x, lengths))
    _never_the_static_spec(_findings(), static)
    assert stats.snapshot().get("kernel_calls", 0) == 0


def test_new_strides_recompile_instead_of_reusing_the_kernel(store_dir, fresh):
    """Same shape, other strides: Dynamo's stride guard recompiles, and the new graph's node (other
    strides: another spec, or one the family declines) keeps Inductor's path. The first graph's
    kernel is never called on the column-major input."""
    x, lengths = _seg_inputs(12)
    spec = _store_kernel_for(x, lengths)
    xt = x.t().contiguous().t()  # [12, 4] column-major
    assert TensorSig.of(xt) != spec.args[0]
    with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False), \
            torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        f = _compile()
        torch.testing.assert_close(f(x, lengths), _seg_sum(x, lengths))
        assert stats.snapshot()["kernel_calls"] == 1
        torch.testing.assert_close(f(xt, lengths), _seg_sum(xt, lengths))
    assert stats.snapshot()["kernel_calls"] == 1
    decisions = [fd.decision for fd in _findings()]
    # two graphs (Dynamo recompiled); the second is not served (its spec is another, or not served)
    assert len(decisions) == 2 and decisions[1].startswith("Inductor ("), decisions


# -- every family (and spec.py) refuses symbolic sizes ----------------------------------------------


def _symbolic(mode, t: torch.Tensor) -> torch.Tensor:
    from torch.fx.experimental.symbolic_shapes import DimDynamic, StatelessSymbolicContext

    return mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * t.dim()))


def _spec_calls(mode) -> dict:
    """Per family, a spec_for call on fake tensors whose sizes are SymInts (as match gets them under
    dynamic=True)."""
    s = lambda t: _symbolic(mode, t)  # noqa: E731
    jg, bk, sc, ce = (get_family(n) for n in ("jagged", "bucketize", "scatter", "cumextrema"))
    return {
        "embedding_bag": lambda: EB.spec_for(s(torch.randn(20, 6)), s(torch.zeros(11, dtype=torch.long)),
                                             s(torch.tensor([0, 3, 8]))),
        "segment_reduce": lambda: SR.spec_for(s(torch.randn(12, 4)), "sum", lengths=s(torch.tensor([3, 9]))),
        "scatter": lambda: sc.spec_for("aten.scatter_add.default", s(torch.randn(5, 3)),
                                       s(torch.zeros(4, 3, dtype=torch.long)), s(torch.randn(4, 3)), 0),
        "jagged": lambda: jg.j2p_spec(s(torch.randn(9, 3)), [s(torch.tensor([0, 4, 9]))], [5], 0.0),
        "bucketize": lambda: bk.spec_for("aten.bucketize.Tensor", s(torch.randn(7)), s(torch.arange(4.0))),
        "cumextrema": lambda: ce.spec_for("aten.cummax.default", s(torch.randn(3, 8)), 1),
    }


@pytest.mark.parametrize("family", ["embedding_bag", "segment_reduce", "scatter", "jagged", "bucketize", "cumextrema"])
def test_symbolic_sizes_are_refused(family):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv())
    env = mode.shape_env
    with pytest.raises(ValueError, match="symbolic"):
        _spec_calls(mode)[family]()
    assert not env.guards, f"{family} added guards (specialized a symbolic size): {env.guards}"


def test_tensor_sig_refuses_symbolic_sizes():
    """The safety net in spec.py: int() on a SymInt would specialize the graph silently."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv())
    with pytest.raises(ValueError, match="symbolic"):
        TensorSig.of(_symbolic(mode, torch.randn(4, 5)))
    assert not mode.shape_env.guards
    assert TensorSig.of(torch.empty(4, 5)[:, ::2]) == TensorSig("float32", (4, 3), (5, 2))
