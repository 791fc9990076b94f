"""The static screen: our templates pass, hostile sources are refused with a message that says why."""
from __future__ import annotations

import pytest
import torch

from torch_kevolve.families import get_family
from torch_kevolve.families.embedding_bag import TEMPLATES
from torch_kevolve.harness.static_check import check_source

FAM = get_family("embedding_bag")


def _spec():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 12, generator=g)
    idx = torch.randint(0, 40, (25,), generator=g)
    return FAM.spec_for(w, idx, torch.tensor([0, 3, 3, 10, 18]), mode=1)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_embedding_bag_templates_pass(template):
    report = check_source(TEMPLATES[template][1])
    assert report.ok, report.problems
    assert report.problems == []


def test_every_proposed_candidate_passes():
    for cand in FAM.candidates(_spec()):
        assert check_source(cand.source).ok, cand.template


HOSTILE = [
    ("import os", "import of 'os' is not allowed"),
    ("import subprocess", "import of 'subprocess' is not allowed"),
    ("from os import system", "'from os import ...' is not allowed"),
    ("open('/etc/passwd')", "use of open is not allowed"),
    ("eval('1')", "use of eval is not allowed"),
    ("exec('x')", "use of exec is not allowed"),
    ("__import__('os')", "use of __import__ is not allowed"),
    ("().__class__.__bases__", "dunder attribute '__class__'"),
    ("import torch\ntorch.load('x')", "torch.load is not allowed"),
    ("print('hi')", "top-level call to print() is not allowed"),
]


@pytest.mark.parametrize("source,expected", HOSTILE, ids=[h[0].splitlines()[-1] for h in HOSTILE])
def test_hostile_source_rejected_with_reason(source, expected):
    report = check_source(source)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
    assert all(p.startswith("line ") for p in report.problems)


@pytest.mark.parametrize(
    "body,expected",
    [
        ("    open('/etc/passwd')\n", "use of open"),
        ("    x = eval('1')\n", "use of eval"),
        ("    import os\n", "import of 'os'"),
        ("    y = ().__class__\n", "dunder attribute '__class__'"),
        ("    t = torch.ops.aten.add\n", "torch.ops is not allowed"),
        ("    t = th.save\n", "torch.save is not allowed"),
        ("    f = getattr(torch, 'load')\n", "torch.load is not allowed"),
        ("    f = getattr(x_ptr, '__class__')\n", "getattr() with the dunder name '__class__'"),
        ("    f = getattr(x_ptr, 'a' + 'b')\n", "literal attribute name"),
        ("    m = torch\n", "may only be used as 'torch.name'"),
        ("    triton.runtime.build.subprocess.run(['ls'])\n", "'.subprocess' is not allowed"),
        ("    g = globals()\n", "use of globals"),
        ("    tl.load = None\n", "no monkey-patching"),
        ("    c = torch.cuda.memory._dump_snapshot\n", "torch.cuda.memory is not allowed"),
        ("    z = torch._dynamo\n", "torch._dynamo is not allowed"),
    ],
)
def test_hostile_code_inside_a_kernel_is_found(body, expected):
    src = (
        "import torch\nimport torch as th\nimport triton\nimport triton.language as tl\n\n"
        "@triton.jit\ndef k(x_ptr, n, BLOCK: tl.constexpr):\n" + body + "    tl.store(x_ptr + tl.arange(0, BLOCK), 0.0)\n"
    )
    report = check_source(src)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems


def test_mutated_template_is_rejected_on_its_line():
    src = TEMPLATES["bag_per_program"][1].replace("import triton\n", "import triton\nimport os\n", 1)
    report = check_source(src)
    assert report.problems == [
        "line 2: import of 'os' is not allowed (kernel sources may import only triton, triton.language, torch and math)"
    ]


@pytest.mark.parametrize(
    "source",
    [
        "from triton import jit\nimport triton.language as tl\n\n@jit\ndef k(x_ptr):\n    pass\n",
        "import math\nimport triton\nfrom triton.language import constexpr\nBLOCK = 64\nSCALE: float = 1 / math.sqrt(2)\n",
        "import triton\nimport triton.language as tl\n"
        "configs = [triton.Config({'BLOCK': b}, num_warps=w) for b in (16, 32) for w in (2, 4)]\n\n"
        "@triton.autotune(configs=configs, key=['n'])\n@triton.heuristics({'EVEN': lambda a: a['n'] % 2 == 0})\n"
        "@triton.jit\ndef k(x_ptr, n, BLOCK: tl.constexpr, EVEN: tl.constexpr):\n    '''doc'''\n    pass\n\n"
        "def helper(n):\n    return triton.cdiv(n, 2)\n",
        '"""A module docstring."""\nimport triton.language.extra.libdevice as libdevice\n',
    ],
    ids=["from-triton-jit", "constants", "autotune-heuristics-helper", "libdevice"],
)
def test_ordinary_kernel_modules_pass(source):
    report = check_source(source)
    assert report.ok, report.problems


@pytest.mark.parametrize(
    "source,expected",
    [
        ("import triton\nX = triton.runtime.driver.active.get_current_device()\n", "top-level assignment calls"),
        ("import functools\n@functools.cache\ndef f():\n    pass\n", "decorator '@functools.cache'"),
        ("class A:\n    pass\n", "top-level class definition is not allowed"),
        ("while True:\n    pass\n", "top-level while loop is not allowed"),
        ("from torch import load\n", "'from torch import ...' is not allowed"),
        ("from . import x\n", "'from . import ...' is not allowed"),
        ("def f(:\n", "syntax error"),
    ],
)
def test_module_structure_rules(source, expected):
    report = check_source(source)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
