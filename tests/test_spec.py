from __future__ import annotations

import subprocess
import sys

import torch

from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig

CODE = """
import torch
from torch_kevolve.spec import DeviceSig, OpSpec, TensorSig
s = OpSpec("embedding_bag", "aten._embedding_bag.default",
           (TensorSig.of(torch.empty(10, 4)), TensorSig.of(torch.empty(7, dtype=torch.int64)), None),
           (("mode", 0), ("include_last_offset", False)), DeviceSig.of("cpu"), (("torch", "x"),))
print(s.key)
"""


def _spec(**kw) -> OpSpec:
    base = dict(
        family="embedding_bag", op="aten._embedding_bag.default",
        args=(TensorSig.of(torch.empty(10, 4)), TensorSig.of(torch.empty(7, dtype=torch.int64)), None),
        consts=(("mode", 0), ("include_last_offset", False)), device=DeviceSig.of("cpu"), versions=(("torch", "x"),),
    )
    base.update(kw)
    return OpSpec(**base)


def test_key_stable_across_processes():
    keys = {subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)}
    assert keys == {_spec().key}


def test_loose_and_strict():
    a = _spec()
    assert a.loose_key == _spec(versions=(("torch", "y"),)).loose_key
    assert a.strict_key != _spec(versions=(("torch", "y"),)).strict_key
    assert a.loose_key != _spec(consts=(("mode", 1), ("include_last_offset", False))).loose_key
    assert a.loose_key != _spec(args=(TensorSig.of(torch.empty(10, 4, dtype=torch.float16)),) + a.args[1:]).loose_key
    assert a.loose_key != _spec(args=(TensorSig.of(torch.empty(11, 4)),) + a.args[1:]).loose_key
    assert a.loose_key != _spec(args=(TensorSig.of(torch.empty(4, 10).t()),) + a.args[1:]).loose_key
    assert a.loose_key != _spec(device=DeviceSig("cuda", "NVIDIA H100", "sm_90")).loose_key


def test_json_round_trip():
    a = _spec()
    assert OpSpec.from_json(a.to_json()) == a
    assert OpSpec.from_json(a.to_json()).key == a.key


def test_contiguity():
    assert TensorSig.of(torch.empty(3, 4)).contiguous
    assert not TensorSig.of(torch.empty(4, 3).t()).contiguous
    assert TensorSig.of(torch.empty(0, 4)).contiguous
