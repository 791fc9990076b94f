"""What the family test modules share: candidate pickers (which proposals a test runs under the slow
interpreter: every template once, plus a rotating extra), compiling real graphs (recorded post-grad
graphs, the kevolve backend end to end, offline detection in training graphs) and the sm_90 compile run."""
from __future__ import annotations

import contextlib
import dataclasses
import uuid
from typing import Any

import torch

from torch_kevolve.families.base import Candidate


@contextlib.contextmanager
def interpreter_asserts(on: bool = True):
    """``tl.device_assert`` live in Triton's interpreter, as on a GPU launch (``kernels.compile_options``:
    Triton's ``debug``). The interpreter builds its options once, with debug off."""
    from triton.runtime import interpreter

    old = interpreter.interpreter_builder.options
    interpreter.interpreter_builder.options = dataclasses.replace(old, debug=on)
    try:
        yield
    finally:
        interpreter.interpreter_builder.options = old


def is_index_assert(e: BaseException) -> bool:
    """The interpreter's report of one of our templates' index-range device asserts."""
    return "out of range" in str(e) and "AssertionError" in f"{type(e).__name__}: {e!r}"


def firsts(cands: list[Candidate]) -> dict[str, Candidate]:
    """Each template's first proposal (the family's default for it)."""
    out: dict[str, Candidate] = {}
    for c in cands:
        out.setdefault(c.template, c)
    return out


def pick(cands: list[Candidate], rotate: int) -> list[Candidate]:
    """Per template its first proposal plus one more chosen by ``rotate``."""
    out = list(firsts(cands).values())
    rest = [c for c in cands if c not in out]
    if rest:
        out.append(rest[rotate % len(rest)])
    return out


def with_cfg(cand: Candidate, **over: Any) -> Candidate:
    cfg = dict(cand.config)
    cfg.update(over)
    return dataclasses.replace(cand, config=tuple(sorted(cfg.items())))


def compile_and_record(fn: Any, *args: Any, no_grad: bool = True,
                       dynamic_outputs: bool = False) -> tuple[list[torch.fx.Graph], Any]:
    """Compile ``fn`` with Inductor and keep the post-grad graphs it hands to the custom pass: the
    real graphs a family's ``match`` sees. Graph and autograd caches are off (a hit skips the pass)."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.custom_graph_pass import CustomGraphPass

    graphs: list[torch.fx.Graph] = []
    token = uuid.uuid4().bytes  # fresh per compile

    class Record(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            graphs.append(graph)

        def uuid(self) -> bytes:
            return token

    def backend(gm: Any, example_inputs: Any) -> Any:
        return compile_fx(gm, example_inputs, config_patches={"post_grad_custom_pre_pass": Record(),
                                                              "fx_graph_cache": False})

    torch._dynamo.reset()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch._functorch.config.patch(enable_autograd_cache=False))
            stack.enter_context(torch._dynamo.config.patch(capture_dynamic_output_shape_ops=dynamic_outputs))
            if no_grad:
                stack.enter_context(torch.no_grad())
            out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    finally:
        torch._dynamo.reset()
    return graphs, out


def family_nodes(graphs: list[torch.fx.Graph], fam: Any) -> list[torch.fx.Node]:
    """The nodes of ``graphs`` that call one of the family's ops."""
    return [n for g in graphs for n in g.nodes if str(n.target) in fam.ops]


def relu_node() -> torch.fx.Node:
    """A call no family serves (``match`` must Skip it)."""
    g = torch.fx.Graph()
    return g.call_function(torch.ops.aten.relu.default, (g.placeholder("x"),))


def fake_converter(device: str | None = None, dynamic: bool = False) -> Any:
    """``fake(t, dyn=False)``: FakeTensors of one fake mode (with a shape env when ``dynamic``), on
    ``device`` (a fake CUDA tensor needs no GPU) or symbolic in every dim (``dyn``)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    fm = FakeTensorMode(shape_env=ShapeEnv()) if dynamic else FakeTensorMode()

    def fake(t: torch.Tensor, dyn: bool = False) -> Any:
        if device is not None:
            return FakeTensor(fm, torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta"),
                              torch.device(device))
        if dyn:
            ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * t.dim(), constraint_sizes=[None] * t.dim())
            return fm.from_tensor(t, symbolic_context=ctx)
        return fm.from_tensor(t)

    return fake


def fake_node(target: Any, x: torch.Tensor, args: tuple, out: torch.Tensor | tuple[torch.Tensor, ...],
              device: str | None = None, kwargs: dict | None = None, dynamic: bool = False) -> torch.fx.Node:
    """A call on a FakeTensor placeholder (optionally a fake CUDA tensor: no GPU needed); ``out`` a tuple
    for an op with several outputs."""
    fake = fake_converter(device, dynamic)
    g = torch.fx.Graph()
    ph = g.placeholder("x")
    ph.meta["val"] = fake(x, dynamic)
    node = g.call_function(target, (ph, *args), kwargs or {})
    node.meta["val"] = tuple(fake(o) for o in out) if isinstance(out, tuple) else fake(out)
    return node


def run_kevolve_backend(fn: Any, args: tuple, tmp_path: Any, family: str, *, dynamic_outputs: bool = False,
                        fullgraph: bool = False, **options: Any) -> tuple[Any, list, dict]:
    """``torch.compile(fn, backend="kevolve")`` on CPU, no grad, searching one candidate per op in process
    into a fresh store under ``tmp_path`` (graph and autograd caches off: a hit skips the pass). Returns
    the outputs, the family's findings and the stats snapshot."""
    from torch_kevolve import stats
    from torch_kevolve.lowering import REPORTS

    torch._dynamo.reset()
    REPORTS.clear()
    stats.reset()
    opts = {"cache_dir": str(tmp_path / "store"), "executor": "inprocess", "max_candidates": 1,
            "fx_graph_cache": False, **options}
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(torch._functorch.config.patch(enable_autograd_cache=False))
            if dynamic_outputs:
                stack.enter_context(torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True))
            out = torch.compile(fn, backend="kevolve", options=opts, fullgraph=fullgraph)(*args)
    finally:
        torch._dynamo.reset()
    found = [fi for rep in REPORTS for fi in rep if fi.family == family]
    return out, found, stats.snapshot()


def offline_backward_findings(fn: Any, args: tuple, op: str, cache_dir: Any) -> tuple[list, list[str]]:
    """``fn(*args).backward()`` compiled with the kevolve backend in offline mode (the pass reports what
    it detects in the real training graphs, nothing is searched): the findings for ``op``, and the ops of
    every finding (for failure messages)."""
    from torch_kevolve.lowering import graph_pass

    torch._dynamo.reset()
    graph_pass.REPORTS.clear()
    compiled = torch.compile(fn, backend="kevolve",
                             options={"mode": "offline", "cache_dir": str(cache_dir), "fx_graph_cache": False})
    compiled(*args).backward()
    found = [f for fs in graph_pass.REPORTS for f in fs if f.op == op]
    return found, [f.op for fs in graph_pass.REPORTS for f in fs]


# GPU compilation without a GPU: a family's script (SM90_PRELUDE + its specs and prints) runs in a
# subprocess, since TRITON_INTERPRET=1 at import makes triton interpreter-only for the whole process.
SM90_PRELUDE = r'''
import dataclasses, pathlib, re, subprocess, sys, tempfile
import torch, triton
from torch_kevolve.families import get_family
from torch_kevolve.kernels import NoGpuToolchain, compile_for_gpu, load_module
from torch_kevolve.spec import DeviceSig

cuda = DeviceSig("cuda", "NVIDIA H100 80GB HBM3", "sm_90")
e = torch.empty


def resources(cubin):
    # REG / LOCAL (spill) bytes from the cuobjdump in the triton wheel ('?' without it)
    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return "regs ? local ?"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    txt = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    reg, local = re.search(r"REG:(\d+)", txt), re.search(r"LOCAL:(\d+)", txt)
    return f"regs {reg.group(1) if reg else '?'} local {local.group(1) if local else '?'}"


def first_per_template(i, cands):
    out = {}
    for c in cands:
        out.setdefault(c.template, c)
    return list(out.values())


def first_per(key):
    """A pick for each_plan: the first candidate per ``key(cand)``."""
    def pick(i, cands):
        out = {}
        for c in cands:
            out.setdefault(key(c), c)
        return list(out.values())
    return pick


def each_plan(fam, specs, pick=first_per_template):
    """(spec on sm_90, candidate, plan, compiled kernels) for the candidates ``pick(i, cands)`` chooses
    per spec; every kernel has a cubin. Without a toolchain: prints NO-TOOLCHAIN and exits 0."""
    for i, spec in enumerate(specs):
        spec = dataclasses.replace(spec, device=cuda)
        for cand in pick(i, fam.candidates(spec)):
            plan = fam.call_plan(spec, cand)
            try:
                compiled = compile_for_gpu(load_module(cand.source, interpret=False), spec, plan)
            except NoGpuToolchain as ex:
                print("NO-TOOLCHAIN", ex)
                sys.exit(0)
            for k, c in compiled.items():
                assert c.asm.get("cubin"), (cand.template, k)
            yield spec, cand, plan, compiled
'''


def run_sm90(script: str, tmp_path: Any, timeout: int = 300) -> tuple[str, list[str]]:
    """Run ``SM90_PRELUDE + script`` with the interpreter off: its stdout and the lines starting "OK ".
    Skips the test where no GPU toolchain is installed."""
    import os
    import subprocess
    import sys

    import pytest

    env = {**os.environ, "TRITON_INTERPRET": "0", "KEVOLVE_MODULE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", SM90_PRELUDE + script], capture_output=True, text=True, env=env,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    if "NO-TOOLCHAIN" in r.stdout:
        pytest.skip(r.stdout.strip()[:200])
    return r.stdout, [ln for ln in r.stdout.splitlines() if ln.startswith("OK ")]
