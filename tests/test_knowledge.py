"""The knowledge base: passages load, diagnostics-driven queries retrieve the right topics, and a
verified stored kernel writes back as a retrievable passage under the user's cache."""
from __future__ import annotations

import sys

import pytest
import torch

from torch_kevolve.families import get_family
from torch_kevolve.knowledge import KnowledgeBase, load_passages, tokenize, write_back
from torch_kevolve.knowledge.retrieval import PACKAGE_DIR, parse_passage, user_dir
from torch_kevolve.llm.feedback import Feedback, knowledge_query
from torch_kevolve.store import Entry

FAM = get_family("embedding_bag")


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase(load_passages([PACKAGE_DIR]))


def _memory_bound() -> Feedback:
    return Feedback(stage="ok", time_ms=0.2, baseline_ms=0.3, summary="ok",
                    profile={"bound": "memory", "pct_of_floor": 22.0, "achieved_GBps": 650.0, "bytes_moved": 10**8})


def test_package_passages_are_well_formed(kb):
    ps = kb.passages
    assert 20 <= len(ps) <= 30
    assert len({p.id for p in ps}) == len(ps)
    for p in ps:
        assert p.title and p.tags and 300 < len(p.text) < 2500 and p.origin == "package", p.id
    topics = " ".join(t for p in ps for t in p.tags)
    for must in ("mask", "int64", "constexpr", "cumsum", "atomic", "num_warps", "coalescing", "h100", "a100",
                 "mi300", "segmented reduction", "jagged", "scan", "sort", "histogram", "attention"):
        assert must in topics, must


def test_memory_bound_parent_pulls_memory_passages(kb):
    q = knowledge_query(_memory_bound(), "embedding_bag", "aten._embedding_bag.default")
    assert "memory-bound" in q and "embedding" in q
    top = kb.search(q, k=4)
    assert len(top) == 4
    assert all("memory" in " ".join(p.tags) or "memory" in p.title.lower() for p in top[:3]), [p.id for p in top]
    assert {"memory-bound-kernels", "memory-coalescing"} <= {p.id for p in top}


def test_errors_pull_their_topic(kb):
    compile_err = Feedback(stage="compile", summary="compile failed",
                           error="triton.compiler.errors.CompilationError: at 12:8:\n"
                                 "ValueError: arange's range must be a power of 2")
    ids = [p.id for p in kb.search(knowledge_query(compile_err, "segment_reduce"), k=3)]
    assert "triton-constexpr" in ids or "triton-compile-errors" in ids, ids
    wrong = Feedback(stage="verify", case="edge:all_bags_empty", error="output 0 differs from reference",
                     max_abs_err=3.0, summary="verify failed")
    ids = [p.id for p in kb.search(knowledge_query(wrong, "embedding_bag"), k=3)]
    assert "triton-masks" in ids, ids
    spills = Feedback(stage="ok", summary="ok", profile={"bound": "compute", "n_spills": 12, "n_regs": 255})
    ids = [p.id for p in kb.search(knowledge_query(spills, "jagged"), k=4)]
    assert "occupancy-registers" in ids, ids
    assert kb.search("zzzz qqqq") == [] and kb.search("") == []


def test_builtin_bm25_stands_in_without_bm25s(monkeypatch, kb):
    monkeypatch.setitem(sys.modules, "bm25s", None)  # import fails
    mini = KnowledgeBase(list(kb.passages))
    q = knowledge_query(_memory_bound(), "embedding_bag")
    got = [p.id for p in mini.search(q, k=4)]
    assert mini._mini and {"memory-bound-kernels", "memory-coalescing"} <= set(got)
    q2 = "atomic contention scatter"
    assert [p.id for p in kb.search(q2, k=2)] == [p.id for p in mini.search(q2, k=2)]


def test_tokenize_and_front_matter():
    assert tokenize("tl.cumsum num_warps") == ["tl", "cumsum", "num_warps", "num", "warps"]
    p = parse_passage("# Plain title\nbody text here", "x")
    assert p.title == "Plain title" and p.text == "body text here" and p.tags == ()


def test_winner_writes_back_as_a_retrievable_passage(store_dir):
    g = torch.Generator().manual_seed(0)
    spec = FAM.spec_for(torch.randn(40, 12, generator=g), torch.randint(0, 40, (25,), generator=g),
                        torch.tensor([0, 3, 3, 10, 18]), mode=1)
    cand = FAM.candidates(spec)[0]
    entry = Entry(spec, cand, {"speedup": 1.7, "time_ms": 0.1, "use": True,
                               "profile": {"bound": "memory", "achieved_GBps": 900.0, "pct_of_floor": 35.0}})
    path = write_back(entry)
    assert path is not None and path.parent == user_dir() / "kernels" and store_dir in path.parents
    assert not str(path).startswith(str(PACKAGE_DIR))
    text = path.read_text()
    assert "bag_per_program" in text and spec.key in text and "One program = one bag" in text  # strategy notes
    assert write_back(entry) == path  # idempotent: same kernel, same passage
    kb = KnowledgeBase.load()  # package + user passages
    mine = [p for p in kb.passages if p.origin == "user"]
    assert len(mine) == 1 and "memory-bound" in mine[0].tags
    hit = kb.search("embedding_bag bag_per_program stored kernel example float32", k=2)
    assert hit and hit[0].id == mine[0].id
