"""Child process for end-to-end tests: compile the demo model with backend="kevolve" and report.

Usage: python tests/e2e_child.py MODEL_SIZE > json   (env: KEVOLVE_*)."""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from torch_kevolve import stats  # noqa: E402
from torch_kevolve.lowering import REPORTS  # noqa: E402
from torch_kevolve.zoo import make_embedding_bag_mlp  # noqa: E402


def main() -> None:
    model, inputs = make_embedding_bag_mlp(sys.argv[1] if len(sys.argv) > 1 else "small")
    with torch.no_grad():
        ref = model(*inputs)
        out = torch.compile(model, backend="kevolve")(*inputs)
    print("E2E " + json.dumps({
        "match": bool(torch.allclose(out, ref, rtol=1e-4, atol=1e-5)),
        "err": float((out - ref).abs().max()),
        "stats": stats.snapshot(),
        "decisions": [f.decision for rep in REPORTS for f in rep],
    }))


if __name__ == "__main__":
    main()
