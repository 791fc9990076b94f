"""Issue 11 (training): backward graphs go through the pass; a zoo training step (forward + loss + backward)
compiled with ``backend="kevolve"`` (JIT search under the Triton interpreter) gives the loss and every
parameter's gradient of eager, with the backward long-tail ops served by stored kernels."""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from torch_kevolve.lowering import graph_pass
from torch_kevolve.zoo import MODELS

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

#: model -> backward ops that must be served by a stored (searched) kernel
BACKWARD_SERVED = {
    "dlrm": {"aten._embedding_bag_backward.default"},
    "seqrec": {"aten._embedding_bag_backward.default", "aten._segment_reduce_backward.default"},
}

#: models whose training step must match eager too; no backward family serves their backward ops yet
#: (transformer: cummax's backward is a 3-D scatter_add the scatter family skips, SDPA's CPU backward)
GRADS_ONLY = ("transformer", "hstu")


def _loss(out: torch.Tensor) -> torch.Tensor:
    return (out.float() - 0.25).square().mean()


def _step(model: torch.nn.Module, inputs: tuple) -> torch.Tensor:
    loss = _loss(model(*inputs))
    loss.backward()
    return loss.detach()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Any]:
    """Per model: one eager and one kevolve training step on the same weights and inputs, plus the pass's
    findings for the kevolve compile (forward and backward graphs). Shared: CPU compiles are slow."""
    cache = tmp_path_factory.mktemp("kevolve_train_store")
    res: dict[str, Any] = {}
    for name in (*BACKWARD_SERVED, *GRADS_ONLY):
        model, inputs = MODELS[name](size="small", seed=1)
        model.train()
        ref = copy.deepcopy(model)
        torch._dynamo.reset()
        graph_pass.REPORTS.clear()
        cm = torch.compile(model, backend="kevolve", options={
            "mode": "jit", "cache_dir": str(cache), "max_candidates": 2, "seeds": 1, "executor": "inprocess",
            "fx_graph_cache": False})
        loss = _step(cm, inputs)
        findings = [list(fs) for fs in graph_pass.REPORTS]
        res[name] = dict(model=model, ref=ref, loss=loss, ref_loss=_step(ref, inputs), findings=findings)
    torch._dynamo.reset()
    return res


@pytest.mark.parametrize("name", sorted((*BACKWARD_SERVED, *GRADS_ONLY)))
def test_training_step_matches_eager(trained: dict, name: str) -> None:
    r = trained[name]
    torch.testing.assert_close(r["loss"], r["ref_loss"], atol=1e-6, rtol=1e-5)
    params = dict(r["ref"].named_parameters())
    n = 0
    for pname, p in r["model"].named_parameters():
        q = params[pname]
        assert (p.grad is None) == (q.grad is None), pname
        if q.grad is None:
            continue
        assert q.grad.abs().sum() > 0 or pname.endswith("bias"), f"{pname}: eager grad is all zero (a vacuous check)"
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=f"{name}.{pname}")
        n += 1
    assert n == len(params)


@pytest.mark.parametrize("name", sorted(BACKWARD_SERVED))
def test_backward_graph_reaches_the_pass_and_is_served(trained: dict, name: str) -> None:
    """Our post-grad pass sees the backward graph AOTAutograd hands Inductor, and each backward long-tail op
    of the model is served by a kernel the JIT search stored."""
    findings = trained[name]["findings"]
    assert len(findings) >= 2, "forward and backward graphs both reach the pass"
    bwd = [f for fs in findings for f in fs if "backward" in f.op]
    assert bwd, [f.op for fs in findings for f in fs]
    for op in BACKWARD_SERVED[name]:
        hits = [f for f in bwd if f.op == op]
        assert hits, (op, [f.op for f in bwd])
        for f in hits:
            assert f.status == "candidate" and f.key, (f.op, f.status, f.detail)
            assert f.decision.startswith(("searched now", "stored kernel")) and "custom_op" in f.decision, f.decision
