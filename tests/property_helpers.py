"""A family-generic driver for property-based tests of hostile user input (issue 10, part 3).

A family's hypothesis strategy draws a :class:`Case`: how to build the spec (``make_spec``: the same
``spec_for`` its ``match`` calls, so a ValueError there is the node being skipped) and the concrete
inputs, any of which may be hostile: odd and zero sizes, non-contiguous, offset, overlapping (stride 0)
views, NaN/inf/huge values, out-of-range or overflowing indices. :func:`check_case` then decides:

* ``declined``: ``make_spec`` raised ValueError, so the node keeps Inductor's path; eager decides.
* ``served``: eager accepts the inputs. The kernel (the family's first candidate of a template the
  case picks, launched through ``kernels.launch`` with ``family.call_plan``) must equal eager: shapes,
  dtypes, NaN positions, values (within the family's tolerance, or within it of the float64 reference
  where eager itself rounds worse), inputs unmodified, and nothing written outside its outputs (every
  output sits between two poisoned guard zones that must come back bit-identical).
* ``guarded``: eager accepts values the family's ``input_error`` says the kernel was not verified
  for (unsorted boundaries, offsets eager tolerates): the raw kernel must stay in bounds and
  ``runtime.call`` must return eager's answer bit for bit.
* ``interpreter_overflow``: Triton's interpreter raised on an fp16 atomic add that overflows (a GPU
  gives inf, like eager); the runtime's failure fallback must give eager's answer.
* ``rejected``: eager raises. The raw kernel must still not fault nor write outside its outputs (its
  values are unspecified), and the user-facing path, ``runtime.call`` (the ``kevolve::run`` custom op),
  must raise eager's exception type: its value guard (``family.input_error``) sends such inputs to
  eager. ``asserted``: a rejected case where the raw kernel, run with device asserts live (as every GPU
  launch is), also stopped on its index-range assert, which is how a GPU call raises.

Served and guarded launches run with the device asserts live too: an assert there (on inputs eager
accepts) fails the test.

Adding a family: write a strategy that returns ``Case`` objects and call ``run_property`` from a test
(see ``tests/test_properties.py``); nothing here names a family.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable, Sequence

import torch
from family_helpers import firsts, interpreter_asserts, is_index_assert

from torch_kevolve.families.base import Candidate, OpFamily
from torch_kevolve.kernels import launch, load_module
from torch_kevolve.lowering import runtime
from torch_kevolve.spec import OpSpec

GUARD = 64  # elements of poisoned guard zone on each side of every output


@dataclasses.dataclass
class Case:
    """One drawn call: ``make_spec()`` builds the spec as ``match`` would (ValueError = skipped)."""

    make_spec: Callable[[], OpSpec]
    inputs: list[torch.Tensor | None]
    template: int = 0  # which template's first candidate to launch (modulo their number)
    note: str = ""  # what is hostile about it, for the failure message and the figures
    # NaN positions may follow the float64 reference instead of eager: eager sums fp16/bf16 in the data
    # dtype on some paths (65504 + 65504 = inf, then + -inf = NaN where the exact sum is -inf)
    reference_nans: bool = False


#: per family: outcome -> count, and the notes seen (printed as PROPERTY lines, quoted in RELIABILITY.md)
FIGURES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


# -- input builders the strategies share ------------------------------------------------------------


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``t`` in another memory layout: ``contig``, ``offset`` (storage offset),
    ``step`` (every other element of the last dim), ``transposed`` (dims reversed in memory)."""
    if kind == "contig" or t.dim() == 0:
        return t.contiguous()
    if kind == "offset":
        buf = torch.empty(t.numel() + 3, dtype=t.dtype)
        return buf[3:].view(t.shape).copy_(t)
    if kind == "step":
        big = torch.empty(*t.shape[:-1], max(2 * t.shape[-1], 1), dtype=t.dtype)
        v = big[..., ::2][..., : t.shape[-1]]
        return v.copy_(t)
    if kind == "transposed":
        perm = tuple(reversed(range(t.dim())))
        return t.permute(perm).contiguous().permute(perm)
    raise ValueError(kind)


LAYOUTS = ("contig", "offset", "step", "transposed")


def expand_dim(t: torch.Tensor, dim: int) -> torch.Tensor:
    """An overlapping view (stride 0 along ``dim``) with ``t``'s shape: row 0 repeated."""
    if t.dim() == 0 or t.shape[dim] == 0:
        return t
    return t.narrow(dim, 0, 1).expand(t.shape)


SPECIALS = (math.nan, math.inf, -math.inf, -0.0, 1e30, -1e30, 1e-30, 65504.0)


def float_values(shape: Sequence[int], dtype: torch.dtype, seed: int, special: float) -> torch.Tensor:
    """Random values (some ties), with a fraction ``special`` of NaN/inf/huge/tiny/-0.0 entries."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.2, x.round(), x)  # ties
    if special > 0 and x.numel():
        pick = torch.rand(x.shape, generator=g) < special
        vals = torch.tensor(SPECIALS, dtype=torch.float64)[torch.randint(0, len(SPECIALS), x.shape, generator=g)]
        x = torch.where(pick, vals, x)
    return x.to(dtype)


# -- checks -----------------------------------------------------------------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.reshape(-1))  # stride 1 even for size-1 views
    return flat.to(torch.uint8) if t.dtype == torch.bool or flat.numel() == 0 else flat.view(torch.uint8)


def _guarded_outputs(family: OpFamily, spec: OpSpec, cand: Candidate) -> tuple[list[torch.Tensor], list]:
    """The plan's outputs, each the middle of a poisoned buffer with GUARD elements either side."""
    plan = family.call_plan(spec, cand)
    outs, zones = [], []
    for ob in plan.outputs:
        dt = getattr(torch, ob.dtype)
        n = math.prod(ob.shape)
        buf = torch.empty(n + 2 * GUARD, dtype=dt)
        if dt.is_floating_point:
            buf.fill_(math.nan)
        elif dt == torch.bool:
            buf.fill_(True)
        else:
            buf.fill_(torch.iinfo(dt).min + 7)
        out = buf[GUARD:GUARD + n].view(ob.shape)
        if ob.fill is not None:
            out.fill_(ob.fill)
        outs.append(out)
        zones.append((buf, n, _bits(buf[:GUARD]).clone(), _bits(buf[GUARD + n:]).clone()))
    return outs, zones


def run_kernel(family: OpFamily, spec: OpSpec, cand: Candidate, inputs: list) -> list[torch.Tensor]:
    """Launch ``cand`` the way the runtime does; assert it wrote nothing outside its outputs and left
    its inputs as they were."""
    before = [None if t is None else t.clone() for t in inputs]
    outs, zones = _guarded_outputs(family, spec, cand)
    launch(load_module(cand.source), family.call_plan(spec, cand), inputs, device=torch.device("cpu"), outs=outs)
    for buf, n, lo, hi in zones:
        assert torch.equal(_bits(buf[:GUARD]), lo) and torch.equal(_bits(buf[GUARD + n:]), hi), \
            "kernel wrote outside its output buffer"
    for t, b in zip(inputs, before):
        if t is not None:
            assert torch.equal(_bits(t), _bits(b)), "kernel modified an input"
    return outs


def assert_like_eager(family: OpFamily, spec: OpSpec, inputs: list, outs: list[torch.Tensor],
                      eager: list[torch.Tensor], reference_nans: bool = False) -> None:
    """Same count, shapes, dtypes, NaN positions and values as eager (or, for floating outputs, as
    close to the float64 reference as the family's tolerance allows: eager rounds fp16/bf16 sums in
    the data dtype on some paths, the kernels accumulate in fp32)."""
    assert len(outs) == len(eager), f"{len(outs)} outputs, eager has {len(eager)}"
    semantic = getattr(family, "compare", None)  # families whose right answer is not unique (tied indices)
    verdict = semantic(spec, inputs, outs, eager) if semantic is not None else None
    if verdict is not None:
        assert verdict == "", f"differs from eager: {verdict}"
        return
    ref = None
    for j, (o, e) in enumerate(zip(outs, eager)):
        assert o.shape == e.shape, f"output {j}: shape {tuple(o.shape)} vs eager {tuple(e.shape)}"
        assert o.dtype == e.dtype, f"output {j}: dtype {o.dtype} vs eager {e.dtype}"
        if not o.dtype.is_floating_point:
            assert torch.equal(o, e), f"output {j}: {o.tolist()} vs eager {e.tolist()}"
            continue
        rtol, atol = family.tolerance(o.dtype)
        if reference_nans and not torch.equal(o.isnan(), e.isnan()):
            if ref is None:
                ref = family.reference(spec, inputs)
            assert torch.equal(o.isnan(), ref[j].isnan()), \
                f"output {j}: NaN positions differ from eager and from the reference"
            torch.testing.assert_close(o.double(), ref[j].double(), rtol=rtol,
                                       atol=atol + _order_bound(o.dtype, inputs), equal_nan=True)
            continue
        assert torch.equal(o.isnan(), e.isnan()), f"output {j}: NaN positions differ from eager"
        try:
            torch.testing.assert_close(o, e, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError:
            if ref is None:
                ref = family.reference(spec, inputs)
            # Sums over huge values of both signs (1e30 - 1e30) depend on the order: the result is
            # only defined to n * eps * max|x| (an atomic add or another block order is not a bug).
            torch.testing.assert_close(o.double(), ref[j].double(), rtol=rtol, atol=atol + _order_bound(o.dtype, inputs),
                                       equal_nan=True)


def _order_bound(dtype: torch.dtype, inputs: list) -> float:
    """How far two summation orders of these inputs may differ: eps * max finite |x| * elements."""
    fl = [t for t in inputs if t is not None and t.is_floating_point() and t.numel()]
    if not fl:
        return 0.0
    big = max(float(t.double().nan_to_num(0.0, 0.0, 0.0).abs().max()) for t in fl)
    return torch.finfo(dtype).eps * big * max(t.numel() for t in fl)


def _run_unspecified(family: OpFamily, spec: OpSpec, cand: Candidate, inputs: list) -> None:
    """Run the raw kernel where its values are unspecified: only faults and stray writes count (an
    fp16 atomic overflow the interpreter raises on is neither; see ``interpreter_overflow``)."""
    try:
        run_kernel(family, spec, cand, inputs)
    except Exception as e:  # noqa: BLE001
        if "overflow to signed inf" not in str(e):
            raise


def _asserts_on_rejected(family: OpFamily, spec: OpSpec, cand: Candidate, inputs: list) -> bool:
    """Whether the raw kernel, with device asserts live, stops on an index-range assert (an input eager
    rejects: the GPU raises there). Any other failure is left to the run without asserts."""
    try:
        with interpreter_asserts():
            run_kernel(family, spec, cand, inputs)
    except Exception as e:  # noqa: BLE001
        return is_index_assert(e)
    return False


def pick_candidate(family: OpFamily, spec: OpSpec, template: int) -> Candidate:
    """The first candidate of one template (chosen by the case, so examples rotate templates)."""
    heads = list(firsts(family.candidates(spec)).values())
    assert heads, f"{family.name}: no candidate for {spec.describe()}"
    return heads[template % len(heads)]


def check_case(family: OpFamily, case: Case) -> str:
    """Check one case; returns its outcome: ``declined``, ``served``, ``guarded``, ``rejected`` or
    ``asserted``."""
    try:
        spec = case.make_spec()
    except ValueError:  # the node is skipped: Inductor's path (eager's answer or error), nothing of ours
        return "declined"
    cpu = list(case.inputs)
    try:
        eager = family.eager(spec, cpu)
    except Exception as e:  # noqa: BLE001 - eager rejects these inputs: so must we
        cand = pick_candidate(family, spec, case.template)
        asserted = _asserts_on_rejected(family, spec, cand, cpu)
        _run_unspecified(family, spec, cand, cpu)  # values unspecified; must not fault or write out of bounds
        runtime.install(spec, cand)
        try:
            got = runtime.call(runtime.spec_handle(spec), cpu)
        except Exception as e2:  # noqa: BLE001
            assert isinstance(e2, type(e)), f"runtime raised {type(e2).__name__}: {e2}; eager raised {type(e).__name__}: {e}"
            return "asserted" if asserted else "rejected"
        raise AssertionError(f"eager raised {type(e).__name__}: {e}, but runtime.call returned "
                             f"{[tuple(t.shape) for t in got]} ({case.note})")
    cand = pick_candidate(family, spec, case.template)
    check = getattr(family, "input_error", None)
    if check is not None and check(spec, cpu) is not None:
        # eager accepts values the kernel was not verified for (unsorted boundaries, offsets eager
        # tolerates...): the raw kernel must stay in bounds (and not assert), the runtime must give eager's answer
        with interpreter_asserts():
            _run_unspecified(family, spec, cand, cpu)
        runtime.install(spec, cand)
        got = runtime.call(runtime.spec_handle(spec), cpu)
        assert len(got) == len(eager) and all(
            g.dtype == e.dtype and g.shape == e.shape and torch.equal(_bits(g), _bits(e)) for g, e in zip(got, eager)
        ), "runtime.call differs from eager on inputs its value guard sends to eager"
        return "guarded"
    try:
        with interpreter_asserts():  # no device assert may fire on inputs eager accepts
            outs = run_kernel(family, spec, cand, cpu)
    except Exception as e:  # noqa: BLE001
        if "overflow to signed inf" not in str(e):
            raise
        # Triton's interpreter raises where an fp16 atomic add overflows (a GPU gives inf, as eager
        # does): the runtime catches the failure and answers with eager, which is what must hold here.
        runtime.install(spec, cand)
        got = runtime.call(runtime.spec_handle(spec), cpu)
        assert all(torch.equal(_bits(g), _bits(x)) for g, x in zip(got, eager)), "runtime fallback differs from eager"
        return "interpreter_overflow"
    assert_like_eager(family, spec, cpu, outs, eager, case.reference_nans)
    return "served"


def record(family: OpFamily, outcome: str, note: str) -> None:
    FIGURES[family.name][outcome] += 1
    for tag in filter(None, note.split(",")):
        FIGURES[family.name][f"{outcome}:{tag}"] += 1


def figures_line(name: str) -> str:
    c = FIGURES[name]
    total = sum(v for k, v in c.items() if ":" not in k)
    return f"PROPERTY {name}: {total} examples, " + ", ".join(f"{k}={c[k]}" for k in ("served", "guarded", "rejected", "asserted", "declined",
                                                                     "interpreter_overflow")) \
        + "; tags: " + ", ".join(f"{k}={v}" for k, v in sorted(c.items()) if ":" in k)


def run_property(family: OpFamily, case: Case) -> None:
    """The body of a hypothesis test: check and count one case (failures name the hostile tags)."""
    try:
        outcome = check_case(family, case)
    except AssertionError as e:
        raise AssertionError(f"{family.name} [{case.note}]: {e}") from e
    record(family, outcome, case.note)


def settings_for(examples: int) -> Any:
    """Deterministic settings (CI must not flake): derandomized, no deadline (the interpreter is slow),
    ``KEVOLVE_PROPERTY_SCALE`` (``make chaos``) multiplies the example count."""
    import os

    from hypothesis import HealthCheck, settings

    scale = float(os.environ.get("KEVOLVE_PROPERTY_SCALE", "1"))
    return settings(max_examples=max(1, int(examples * scale)), deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), database=None)
