"""The histogram family (histc, bincount with a provably static size): ATen's bin rule pinned against
eager, every template (Triton interpreter) vs the reference and eager on odd sizes and every edge case,
the candidate space and multi-step plans, GPU compilation (sm_90, no device needed), matching on real
post-grad graphs (what reaches them, and why most bincounts are skipped), and the backend end to end."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from family_helpers import (compile_and_record, family_nodes, firsts, run_kevolve_backend, run_sm90,  # noqa: E402
                            with_cfg)

from torch_kevolve import families as _families

_families.all_families()

from torch_kevolve.families import Match, Skip, family_for_op, get_family  # noqa: E402
from torch_kevolve.families.base import Candidate, Out, Ws  # noqa: E402
from torch_kevolve.families.histogram import BINCOUNT, HISTC, TEMPLATES, HistogramFamily  # noqa: E402
from torch_kevolve.kernels import launch, load_module  # noqa: E402
from torch_kevolve.spec import DeviceSig, OpSpec  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

FAM: HistogramFamily = get_family("histogram")  # type: ignore[assignment]
NAN, INF = math.nan, math.inf
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
I64, I32, I16, I8, U8 = torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8
CUDA = DeviceSig("cuda", "NVIDIA H100 80GB HBM3", "sm_90")


def histc_spec(n: Any = 301, bins: int = 13, mn: float = -1.5, mx: float = 2.25, dt: torch.dtype = F32) -> OpSpec:
    shape = n if isinstance(n, tuple) else (n,)
    return FAM.histc_spec(torch.empty(shape, dtype=dt), bins, mn, mx)


def bincount_spec(n: int = 257, m: int = 19, dt: torch.dtype = I64, w: torch.dtype | None = None, wrap: str = "mod",
                  a: int = 17, b: int = 0) -> OpSpec:
    weights = None if w is None else torch.empty(n, dtype=w)
    return FAM.bincount_spec(torch.empty(n, dtype=dt), weights, m, wrap, a, b)


def small_cands(spec: OpSpec) -> dict[str, Candidate]:
    """One candidate per template from the CUDA candidate space (every template offered where it fits)
    with interpreter-sized blocks: several programs, several tiles per program."""
    cands = firsts(FAM.candidates(dataclasses.replace(spec, device=CUDA)))
    cands.pop("shared", None)  # PTX: the interpreter cannot run it (test_shared_bins_on_gpu, sm_90 compile test)
    small = {"private": dict(BLOCK=64, PROGRAMS=3), "atomic": dict(BLOCK=128),
             "twopass": dict(BLOCK=64, PROGRAMS=3, RB=8, PCHUNK=2)}
    out = {t: with_cfg(c, **small[t]) for t, c in cands.items()}
    # twopass by register histograms where they fit (as private), and by atomics into its own partials
    out["twopass-global"] = with_cfg(out["twopass"], GLOBAL=True, ONEHOT=False)
    if "private" in out:
        out["twopass"] = with_cfg(out["twopass"], GLOBAL=False)
    else:
        del out["twopass"]
    weighted = spec.op == BINCOUNT and spec.args[1] is not None
    if not weighted and FAM.nbins(spec) <= 64:  # counts by one-hot sums instead of tl.histogram
        out["private-onehot"] = with_cfg(out["private"], ONEHOT=True)
        out["twopass-onehot"] = with_cfg(out["twopass"], ONEHOT=True)
    return out


def assert_same(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape, f"{what}: {out.dtype}{list(out.shape)} vs {ref.dtype}" \
                                                              f"{list(ref.shape)}"
    if out.is_floating_point():
        rtol, atol = FAM.tolerance(out.dtype)
        ok = torch.allclose(out.double(), ref.double(), rtol=rtol, atol=atol)
    else:
        ok = torch.equal(out, ref)
    if not ok:
        bad = torch.nonzero(~torch.isclose(out.double(), ref.double()))[:5].flatten().tolist()
        raise AssertionError(f"{what}: differ at {bad}: {out[bad].tolist()} vs {ref[bad].tolist()}")


def check(spec: OpSpec, cand: Candidate, inputs: list, what: str = "") -> None:
    (out,) = launch(load_module(cand.source), FAM.call_plan(spec, cand), inputs, poison=True)
    (ref,) = FAM.reference(spec, inputs)
    (eager,) = FAM.eager(spec, inputs)
    assert_same(ref, eager, f"{what}: reference vs eager")
    assert_same(out, eager, f"{what}: {cand.template} {cand.cfg}")
    if spec.op == HISTC or spec.args[1] is None:  # counts are exact
        assert torch.equal(out, eager), f"{what}: counts differ"


# ------------------------------------------------------------------------------------------------
# registration, aten semantics, specs
# ------------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert family_for_op(HISTC) is FAM and family_for_op(BINCOUNT) is FAM
    assert FAM.lowered_ops == () and set(TEMPLATES) == {"private", "atomic", "twopass", "shared"}
    from torch_kevolve.harness.static_check import check_source

    assert all(check_source(src).ok for _, src in TEMPLATES.values())  # what the harness runs first


def test_eager_semantics_pinned() -> None:
    """The rules the kernels follow, as eager shows them: x == max in the last bin, x == min in the
    first, bin edges go up, outside / NaN / inf ignored, min == max means the data range (widened by 1
    when all equal), counts in the input dtype; bincount's output dtypes by weights."""
    x = torch.tensor([0.0, 1.0, 0.25, 0.5, 0.75, 1.5, -0.1, NAN, INF, 0.7499999])
    want = [1.0, 1.0, 2.0, 2.0]  # [0,.25) [.25,.5) [.5,.75) [.75,1]
    assert torch.histc(x, 4, 0.0, 1.0).tolist() == want
    assert torch.histc(torch.tensor([2.0, 2.0]), 4, 0, 0).tolist() == [0.0, 0.0, 2.0, 0.0]  # [1, 3]
    assert torch.histc(torch.tensor([1.0, 3.0, 2.0]), 2, 5, 5).tolist() == [1.0, 2.0]  # data range [1, 3]
    assert torch.histc(torch.empty(0), 3, 0, 0).tolist() == [0.0] * 3
    assert torch.histc(torch.ones(3, dtype=F64), 2, 0, 2).dtype == F64
    with pytest.raises(RuntimeError):
        torch.histc(torch.tensor([1.0, NAN]), 3, 0, 0)  # data range with NaN: eager refuses (not verified)
    y = torch.tensor([0, 3, 3, 1])
    assert torch.bincount(y, minlength=6).dtype == I64
    assert torch.bincount(y, torch.ones(4), 6).dtype == F32
    assert torch.bincount(y, torch.ones(4, dtype=F16), 6).dtype == F64
    for spec, inputs in [(FAM.histc_spec(x, 4, 0.0, 1.0), [x]), (FAM.bincount_spec(y, None, 6), [y, None])]:
        (r,), (e,) = FAM.reference(spec, inputs), FAM.eager(spec, inputs)
        assert torch.equal(r, e)
        for t, cand in small_cands(spec).items():
            check(spec, cand, inputs, t)


def test_spec_errors_and_roundtrip() -> None:
    spec = histc_spec((4, 6), 10, 0, 1)
    assert spec.consts == (("bins", 10), ("data_range", False), ("max", 1.0), ("min", 0.0))
    back = OpSpec.from_json(spec.to_json())
    assert back == spec and back.key == spec.key
    assert histc_spec(mn=2.0, mx=2.0).const("data_range") is True
    e = torch.empty
    for fn, needle in [
        (lambda: FAM.histc_spec(e(5, dtype=F16), 3, 0, 1), "float32/float64"),
        (lambda: FAM.histc_spec(e(5, dtype=I32), 3, 0, 1), "float32/float64"),
        (lambda: FAM.histc_spec(e(5, 4).T, 3, 0, 1), "contiguous"),
        (lambda: FAM.histc_spec(e(5), 0, 0, 1), "bins"),
        (lambda: FAM.histc_spec(e(5), 3, 0, INF), "finite"),
        (lambda: FAM.histc_spec(e(5), 3, 1.0, 1.0 + 1e-12), "increasing"),  # distinct doubles, same float
        (lambda: FAM.bincount_spec(e(5, dtype=F32), None, 3), "bincount of"),
        (lambda: FAM.bincount_spec(e(5, 2, dtype=I64), None, 3), "1-D"),
        (lambda: FAM.bincount_spec(e(5, dtype=I64), None, 0), "not static"),
        (lambda: FAM.bincount_spec(e(5, dtype=I64), None, 3, "mod", 4), "remainder"),
        (lambda: FAM.bincount_spec(e(5, dtype=I64), None, 3, "clamp", 0, 3), "clamp"),
        (lambda: FAM.bincount_spec(e(5, dtype=I64), e(4), 3), "length"),
        (lambda: FAM.bincount_spec(e(5, dtype=I8), None, 300, "mod", 250), "fit"),  # int8 % 250 is % -6
        (lambda: FAM.bincount_spec(e(5, dtype=U8), None, 300, "clamp", 0, 299), "fit"),
        (lambda: FAM.bincount_spec(e(5, dtype=I64), e(5, dtype=I32), 3), "weights of"),
    ]:
        with pytest.raises(ValueError, match=needle):
            fn()


def test_floor_bytes() -> None:
    assert FAM.floor_bytes(histc_spec(1000, 10)) == 4000 + 40
    assert FAM.floor_bytes(bincount_spec(1000, 50, I32, w=F16)) == 1000 * 6 + 50 * 8
    assert FAM.floor_bytes(bincount_spec(1000, 50, I64, w=F32)) == 1000 * 12 + 50 * 4
    assert FAM.floor_bytes(bincount_spec(1 << 24, 1000, a=1000)) == (1 << 27) + 8000


# ------------------------------------------------------------------------------------------------
# candidates and call plans
# ------------------------------------------------------------------------------------------------


def test_candidates_and_plans() -> None:
    big = dataclasses.replace(bincount_spec(1 << 24, 1000, a=1000), device=CUDA)
    cands = FAM.candidates(big)
    assert cands[0].template == "shared" and {c.template for c in cands} == {"shared", "private", "atomic", "twopass"}
    assert "shared" not in {c.template for c in FAM.candidates(bincount_spec(1 << 24, 1000, a=1000))}  # CPU
    assert any(c.cfg["PROGRAMS"] == 0 for c in cands if c.template == "private")  # one-shot grid offered
    assert any(c.cfg["PROGRAMS"] > 0 for c in cands if c.template == "private")  # persistent grid offered
    many = dataclasses.replace(bincount_spec(1 << 20, 100_000, a=100_000), device=CUDA)
    assert {c.template for c in FAM.candidates(many)} == {"atomic"}  # too many bins to privatize
    wmany = dataclasses.replace(bincount_spec(1 << 20, 1000, w=F32, a=1000), device=CUDA)
    assert [c.template for c in FAM.candidates(wmany)][:11] == ["shared"] * 10 + ["atomic"]  # one-hot: <= 256 bins
    # shared bins: 4 bytes a bin (u32 counts, f32 sums), 8 for f64 sums, 32 KB at most
    w64 = dataclasses.replace(bincount_spec(1 << 20, 4096, w=F16, a=4096), device=CUDA)
    assert "shared" in {c.template for c in FAM.candidates(w64)}
    w64big = dataclasses.replace(bincount_spec(1 << 20, 4097, w=F16, a=4097), device=CUDA)
    assert "shared" not in {c.template for c in FAM.candidates(w64big)}
    assert "shared" in {c.template for c in FAM.candidates(dataclasses.replace(w64big, args=(w64big.args[0], None)))}
    sh = next(c for c in cands if c.template == "shared")
    plan = FAM.call_plan(big, sh)
    assert plan.kernel == "hist_shared" and dict(plan.args)["SMEM"] == 4096 and plan.outputs[0].fill == 0
    assert dict(FAM.call_plan(w64, sh).args)["SMEM"] == 8 * 4096
    with pytest.raises(ValueError, match="CUDA only"):
        FAM.call_plan(bincount_spec(1 << 24, 1000, a=1000), sh)
    with pytest.raises(ValueError, match="2 elements per thread"):
        FAM.call_plan(big, with_cfg(sh, BLOCK=128, num_warps=4))
    with pytest.raises(ValueError, match="shared memory"):
        FAM.call_plan(w64big, sh)
    for spec in (big, many, wmany, dataclasses.replace(histc_spec(1 << 20, 100, 0, 0), device=CUDA)):
        for c in FAM.candidates(spec):
            plan = FAM.call_plan(spec, c)
            assert plan.outputs[0].shape == (FAM.nbins(spec),)
            assert (plan.outputs[0].fill is None) == (c.template == "twopass")
            if c.template in ("private", "shared"):
                tiles = math.ceil(FAM.numel(spec) / c.cfg["BLOCK"])
                assert plan.grid[0] == min(c.cfg["PROGRAMS"] or tiles, tiles)  # never an idle program
            if spec.op == HISTC and spec.const("data_range"):
                assert plan.pre[0].kernel == "hist_minmax" and dict(plan.pre[0].args)["range_ptr"] == Ws(0)
            if c.template == "twopass":
                assert [s.kernel for s in plan.steps][-2:] == ["hist_partial", "hist_reduce"]
                assert dict(plan.args)["out_ptr"] == Out(0)
    few = dataclasses.replace(bincount_spec(1 << 20, 50, a=50), device=CUDA)
    assert any(c.cfg.get("ONEHOT") for c in FAM.candidates(few))
    assert not any(c.cfg.get("ONEHOT") for c in cands)  # 1000 bins: tl.histogram only
    spec = histc_spec()
    c = small_cands(spec)["private"]
    with pytest.raises(ValueError, match="one-hot"):
        FAM.call_plan(spec, with_cfg(c, ONEHOT=True, BLOCK=1024))
    with pytest.raises(ValueError, match="power of two"):
        FAM.call_plan(spec, with_cfg(c, BLOCK=96))
    with pytest.raises(ValueError, match="unknown"):
        FAM.call_plan(spec, dataclasses.replace(c, template="nope", source="x"))
    with pytest.raises(ValueError, match="private"):
        FAM.call_plan(many, c)


# ------------------------------------------------------------------------------------------------
# kernels vs reference and eager
# ------------------------------------------------------------------------------------------------

_HISTC = [  # (shape, bins, min, max, dtype)
    ((301,), 13, -1.5, 2.25, F32),
    ((7, 45), 1, 0.0, 1.0, F32),
    ((263,), 100, 0.1, 0.7, F64),
    ((250,), 7, 3.0, 3.0, F32),   # data range
    ((3, 67), 300, 0.0, 0.0, F64),  # data range, bins > elements
    ((129,), 1000, -3.3, 1e3, F32),
]


@pytest.mark.parametrize("i", range(len(_HISTC)))
def test_histc_kernels(i: int) -> None:
    shape, bins, mn, mx, dt = _HISTC[i]
    spec = histc_spec(shape, bins, mn, mx, dt)
    for seed in (1, 2):  # seed 1 mod 3: NaN and inf (when the range is given)
        inputs = FAM.make_inputs(spec, seed)
        assert spec.args[0].matches(inputs[0])
        for t, cand in small_cands(spec).items():
            check(spec, cand, inputs, f"{spec.describe()} seed {seed}")


_BINCOUNT = [  # (n, minlength, dtype, weights, wrap, a, b)
    (257, 19, I64, None, "mod", 17, 0),
    (300, 64, I32, F32, "mod", 64, 0),
    (131, 40, I16, F64, "clamp", 3, 39),
    (200, 5, U8, F16, "clamp", 0, 4),
    (77, 300, I8, BF16, "mod", 100, 0),
    (199, 33, I64, None, "none", 0, 0),
]


@pytest.mark.parametrize("i", range(len(_BINCOUNT)))
def test_bincount_kernels(i: int) -> None:
    n, m, dt, w, wrap, a, b = _BINCOUNT[i]
    spec = bincount_spec(n, m, dt, w, wrap, a, b)
    inputs = FAM.make_inputs(spec, i)
    if wrap != "none":
        assert bool((inputs[0] < 0).any()) or dt == U8  # the wrap has work to do
    for t, cand in small_cands(spec).items():
        check(spec, cand, inputs, spec.describe())


_EDGE_SPECS = {
    "histc-f32": lambda: histc_spec(50, 8, -1.0, 3.0),
    "histc-f64-odd-range": lambda: histc_spec(50, 10, 0.1, 0.3, F64),  # edges not representable
    "histc-data-range": lambda: histc_spec(50, 6, 1.0, 1.0),
    "bincount-i64-mod": lambda: bincount_spec(50, 12, I64, None, "mod", 10),
    "bincount-i32-clamp-w": lambda: bincount_spec(50, 12, I32, F32, "clamp", 2, 9),
    "bincount-u8-mod-w64": lambda: bincount_spec(50, 7, U8, F64, "mod", 7),
}
_HISTC_EDGES = {"bin_edges", "around_edges", "bounds", "outside", "nan_inf", "empty", "one_element", "all_equal",
                "two_d", "long"}
_RANGE_EDGES = {"one_value", "one_element", "negative_data", "data_edges", "empty", "two_d", "long"}
_BIN_EDGES = {"empty", "every_bin", "one_bin", "one_element", "long", "wrap_extremes"}


@pytest.mark.parametrize("key", list(_EDGE_SPECS))
def test_edge_cases(key: str) -> None:
    spec = _EDGE_SPECS[key]()
    cases = FAM.edge_cases(spec)
    want = _BIN_EDGES if spec.op == BINCOUNT else _RANGE_EDGES if spec.const("data_range") else _HISTC_EDGES
    assert {n for n, _, _ in cases} == want
    long_n = next(i[0].numel() for n, _, i in cases if n == "long")
    assert long_n > 2 * max(c.cfg["BLOCK"] for c in FAM.candidates(spec))  # crosses every block
    cands = dict(small_cands(spec), **{f"default-{t}": c for t, c in firsts(FAM.candidates(spec)).items()})
    for name, cspec, inputs in cases:
        assert cspec.op == spec.op and [c for c in cspec.consts] == [c for c in spec.consts]
        assert cspec.args[0].matches(inputs[0])
        for t, cand in cands.items():
            check(cspec, cand, inputs, f"{key}/{name}/{t}")


def test_edges_land_as_torch_says() -> None:
    """The pinned boundary behaviour, counted: every edge of 8 bins on [-1, 3] twice -> 2 per bin, the
    last bin 4 (its right edge is max); one-ulp neighbours straddle the edges."""
    spec = _EDGE_SPECS["histc-f32"]()
    cases = {n: (s, i) for n, s, i in FAM.edge_cases(spec)}
    s, inputs = cases["bin_edges"]
    cand = small_cands(s)["private"]
    (out,) = launch(load_module(cand.source), FAM.call_plan(s, cand), inputs, poison=True)
    assert out.tolist() == [2.0] * 7 + [4.0]
    s, inputs = cases["nan_inf"]
    (out,) = launch(load_module(cand.source), FAM.call_plan(s, cand), inputs, poison=True)
    assert out.tolist() == [1.0] + [0.0] * 6 + [1.0]  # only lo and hi count


@pytest.mark.skipif(not torch.cuda.is_available(), reason="shared-memory bins are PTX: CUDA only")
def test_shared_bins_on_gpu() -> None:
    """The ``shared`` template (the interpreter cannot run it) against eager on the GPU: every kernel test
    spec and edge case above, at its first config and with tiles as small as it allows (several tiles
    per program, a partial last tile). Run on the device: ``python -m pytest tests/test_histogram_family.py -k gpu``."""
    cuda = DeviceSig.of(torch.device("cuda"))
    specs = [histc_spec(*h) for h in _HISTC] + [bincount_spec(*b) for b in _BINCOUNT]
    specs += [f() for f in _EDGE_SPECS.values()]
    checked = 0
    for spec in specs:
        spec = dataclasses.replace(spec, device=cuda)
        first = next(c for c in FAM.candidates(spec) if c.template == "shared")
        cases = [("inputs", spec, [None if t is None else t.cuda() for t in FAM.make_inputs(spec, 1)])]
        cases += [(n, dataclasses.replace(s, device=cuda), [None if t is None else t.cuda() for t in i])
                  for n, s, i in FAM.edge_cases(spec)]
        for name, cspec, inputs in cases:
            for cand in (first, with_cfg(first, BLOCK=256, PROGRAMS=3, num_warps=4)):
                check(cspec, cand, inputs, f"{spec.describe()} {name}")
                checked += 1
    assert checked > 100


# ------------------------------------------------------------------------------------------------
# GPU compilation without a GPU
# ------------------------------------------------------------------------------------------------

_SM90_SCRIPT = r"""
fam = get_family("histogram")
specs = [  # the bench shapes, fp64 data range, weighted int32 with fp32 / fp16 (-> fp64) weights (100k
           # bins: atomics only), uint8 counts in few bins (one-hot option)
    fam.histc_spec(e(1 << 24), 1000, 0.0, 1.0),
    fam.bincount_spec(e(1 << 24, dtype=torch.int64), None, 1000, "mod", 1000),
    fam.histc_spec(e(1 << 20, dtype=torch.float64), 100, 0.0, 0.0),
    fam.bincount_spec(e(1 << 20, dtype=torch.int32), e(1 << 20), 200, "clamp", 0, 199),
    fam.bincount_spec(e(1 << 20, dtype=torch.int32), e(1 << 20, dtype=torch.float16), 100000, "mod", 100000),
    fam.bincount_spec(e(1 << 20, dtype=torch.uint8), None, 64, "mod", 50),
    # the largest input served: shared's 64-bit offsets (OFF32 off: n + BLOCK >= 2**31); no memory
    fam.bincount_spec(torch.empty(2**31 - 1, dtype=torch.int32, device="meta"), None, 1000, "mod", 1000),
]


def pick(i, cands):
    # per (template, one-hot): the default, and the largest tile x warps (registers)
    chosen = {}
    for cand in cands:
        c = cand.cfg
        chosen.setdefault((cand.template, c.get("ONEHOT"), "first"), cand)
        k = (cand.template, c.get("ONEHOT"), "big")
        if k not in chosen or (c["BLOCK"], c["num_warps"]) > (chosen[k].cfg["BLOCK"], chosen[k].cfg["num_warps"]):
            chosen[k] = cand
    return list(dict.fromkeys(chosen.values()))


expect = 0
for spec, cand, plan, compiled in each_plan(fam, specs, pick):
    expect += len(plan.steps)
    for k, c in compiled.items():
        ptx = c.asm["ptx"]
        ieee = "div.rn.f32" in ptx and "div.full.f32" not in ptx
        # shared bins: shared atomics per thread (each element once: no replicated tile), declarations
        smem = "red%d/%d/decl%d" % (ptx.count("red.shared.add"),
                                     cand.cfg["BLOCK"] // (32 * cand.cfg["num_warps"]),
                                     ptx.count(".shared .align 16 .b8 kv_hist_smem"))
        off = "off32" if dict(plan.args).get("OFF32") else "off64"
        print("OK", spec.op, spec.args[0].dtype, cand.template, k, "ieee" if ieee else "-", smem, off,
              resources(c.asm["cubin"]), dict(cand.config))
print("EXPECT", expect)
"""


def test_kernels_compile_for_sm90(tmp_path) -> None:
    """Every template and step kernel (privatized tl.histogram, one-hot sums, int64/fp32/fp64 atomics,
    the min/max pre-step, the two-pass reduce) compiles to sm_90 cubin; fp32 histc divides with IEEE
    rounding (div.rn) as ATen does. A subprocess: TRITON_INTERPRET=1 at import makes triton
    interpreter-only for the process."""
    stdout, lines = run_sm90(_SM90_SCRIPT, tmp_path)
    kernels = {ln.split()[4] for ln in lines}
    assert kernels == {"hist_private", "hist_atomic", "hist_partial", "hist_reduce", "hist_minmax", "hist_shared"}, stdout
    shared = [ln.split() for ln in lines if ln.split()[4] == "hist_shared"]
    assert len(shared) >= 8, stdout
    for f in shared:
        red, per, decl = f[6].split("/")
        assert red == f"red{per}" and decl == "decl1", " ".join(f)
    assert {f[7] for f in shared} == {"off32", "off64"}, stdout  # both offset widths compiled
    assert f"EXPECT {len(lines)}" in stdout, stdout  # every step of every plan compiled
    fp32_bins = [ln for ln in lines if "histc" in ln and "float32" in ln and ln.split()[4] != "hist_reduce"]
    assert fp32_bins and all(ln.split()[5] == "ieee" for ln in fp32_bins), stdout
    spills = [ln for ln in lines if "local ?" not in ln and "local 0" not in ln]
    assert not spills, "\n".join(spills)


# ------------------------------------------------------------------------------------------------
# real post-grad graphs and the backend
# ------------------------------------------------------------------------------------------------


def _fn(x, w, y):
    return (torch.histc(x, 10, -1.0, 1.0) * 2,
            torch.bincount(y % 7, minlength=7),           # served: size provably 7
            torch.bincount(y.clamp(2, 8), w, minlength=9),  # served: weighted, clamp-bounded
            torch.bincount(y.abs(), minlength=5),           # skipped: size data-dependent
            torch.histc(w.double() * 3 - 1, 6, 0, 0))      # served: data range (pre-step)


def _inputs() -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 41, generator=g)
    x[0, 3] = 1.0
    x[1, 1] = NAN
    y = torch.randint(-20, 20, (90,), generator=g)
    w = torch.rand(90, generator=g)
    return x, w, y


def test_match_real_graph() -> None:
    """What reaches the post-grad graph: without capture_dynamic_output_shape_ops the bincounts
    graph-break (only histc arrives); with it, bincount has an unbacked size and is matched only when
    its input is a bounding remainder/clamp, whose input becomes the kernel's."""
    from torch_kevolve.detect import long_tail_reason

    args = _inputs()
    graphs, _ = compile_and_record(lambda x: torch.histc(x, 10, -1.0, 1.0), args[0])
    assert [str(n.target) for n in family_nodes(graphs, FAM)] == [HISTC]
    graphs, out = compile_and_record(_fn, *args, dynamic_outputs=True)
    for o, r in zip(out, _fn(*args)):
        assert torch.equal(o, r)
    nodes = family_nodes(graphs, FAM)
    assert sorted(str(n.target) for n in nodes) == [BINCOUNT] * 3 + [HISTC] * 2
    assert all("fallback" in long_tail_reason(n) for n in nodes)
    ms = {n.name: FAM.match(n) for n in nodes}
    # bincount inputs: remainder(y, 7), clamp_max(clamp_min(y, 2), 8) (clamp decomposed), abs(y)
    by_input = {str(n.args[0].target): ms[n.name] for n in nodes if str(n.target) == BINCOUNT}
    assert set(by_input) == {"aten.remainder.Scalar", "aten.clamp_max.default", "aten.abs.default"}
    skip = by_input["aten.abs.default"]
    assert isinstance(skip, Skip) and "data-dependent" in skip.reason
    bm, bc = by_input["aten.remainder.Scalar"], by_input["aten.clamp_max.default"]
    assert isinstance(bm, Match) and (bm.spec.const("wrap"), bm.spec.const("wrap_a")) == ("mod", 7)
    assert bm.inputs[0].op == "placeholder" and bm.inputs[1] is None  # y itself, not the remainder
    assert isinstance(bc, Match) and (bc.spec.const("wrap"), bc.spec.const("wrap_a"), bc.spec.const("wrap_b")) == \
        ("clamp", 2, 8)
    assert bc.inputs[0].op == "placeholder" and bc.spec.args[1].dtype == "float32"
    hs = sorted((m for n, m in ms.items() if str(next(x for x in nodes if x.name == n).target) == HISTC),
                key=lambda m: m.spec.const("data_range"))
    h, hr = hs
    assert isinstance(h, Match) and h.spec.consts == (("bins", 10), ("data_range", False), ("max", 1.0), ("min", -1.0))
    assert isinstance(hr, Match) and hr.spec.const("data_range") and hr.spec.args[0].dtype == "float64"
    # eager on the canonical inputs gives what the graph computes
    x, w, y = args
    assert torch.equal(FAM.eager(bm.spec, [y, None])[0], torch.bincount(y % 7, minlength=7))


def test_match_bounds_handbuilt() -> None:
    """Which producers bound bincount's input below minlength (hand-built graphs on FakeTensors):
    remainder by k <= minlength, clamp / clamp_min + clamp_max (either order) inside [0, minlength);
    anything looser, a float bound, a dtype the bound overflows, or no producer at all is skipped."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    aten = torch.ops.aten
    fm = FakeTensorMode()

    def build(dtype: torch.dtype, chain: list[tuple[Any, tuple]], minlength: int = 10, weights: bool = False):
        g = torch.fx.Graph()
        y = g.placeholder("y")
        y.meta["val"] = fm.from_tensor(torch.empty(33, dtype=dtype))
        cur = y
        for target, extra in chain:
            cur = g.call_function(target, (cur, *extra))
            cur.meta["val"] = y.meta["val"]
        w = None
        if weights:
            w = g.placeholder("w")
            w.meta["val"] = fm.from_tensor(torch.empty(33, dtype=F64))
        node = g.call_function(aten.bincount.default, (cur, w, minlength))
        return node, y

    served = [
        (I64, [(aten.remainder.Scalar, (10,))], ("mod", 10, 0)),
        (I32, [(aten.remainder.Scalar, (4,))], ("mod", 4, 0)),
        (I64, [(aten.clamp.default, (0, 9))], ("clamp", 0, 9)),
        (I16, [(aten.clamp_min.default, (1,)), (aten.clamp_max.default, (7,))], ("clamp", 1, 7)),
        (I64, [(aten.clamp_max.default, (7,)), (aten.clamp_min.default, (3,))], ("clamp", 3, 7)),
    ]
    for dt, chain, want in served:
        node, y = build(dt, chain, weights=dt == I16)
        m = FAM.match(node)
        assert isinstance(m, Match), (chain, m)
        assert (m.spec.const("wrap"), m.spec.const("wrap_a"), m.spec.const("wrap_b")) == want
        assert m.inputs[0] is y and m.spec.args[0].dtype == str(dt)[6:]
        assert (m.spec.args[1] is not None) == (dt == I16)
    skipped = [
        (I64, [], "data-dependent"),
        (I64, [(aten.remainder.Scalar, (11,))], "data-dependent"),  # values up to 10 >= minlength
        (I64, [(aten.clamp.default, (-1, 9))], "data-dependent"),  # negatives: bincount would raise
        (I64, [(aten.clamp_max.default, (9,))], "data-dependent"),  # no lower bound
        (I64, [(aten.clamp_min.default, (0,))], "data-dependent"),  # no upper bound
        (I64, [(aten.clamp.default, (0.0, 9.5))], "data-dependent"),  # float bounds
        (I64, [(aten.abs.default, ())], "data-dependent"),
        (I8, [(aten.remainder.Scalar, (200,))], "fit"),  # int8 % 200 is % -56 in torch
    ]
    for dt, chain, needle in skipped:
        node, _ = build(dt, chain, minlength=300 if dt == I8 else 10)
        m = FAM.match(node)
        assert isinstance(m, Skip) and needle in m.reason, (chain, m)


def test_backend_end_to_end(store_dir, tmp_path) -> None:
    """torch.compile(backend="kevolve") on CPU with dynamic-output capture: histc (given range and data
    range) and the two bounded bincounts replaced by searched kernels (custom-op route), the unbounded
    bincount left to ATen; results equal eager, downstream users of the static-size bincount included."""
    args = _inputs()
    ref = _fn(*args)
    out, found, snap = run_kevolve_backend(_fn, args, tmp_path, "histogram", dynamic_outputs=True, fullgraph=True)
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype and o.shape == r.shape
        assert torch.allclose(o.double(), r.double(), rtol=1e-5, atol=1e-5), (o, r)
    assert sorted(fi.status for fi in found) == ["candidate"] * 4 + ["skipped"], [(f.status, f.detail) for f in found]
    assert snap["rewritten_custom_op"] == 4 and snap["kernel_calls"] == 4, snap
