"""The job harness: hostile candidates (derived from the real embedding_bag template) are contained.

Each failure mode must come back as a scored value with the right stage, the parent must survive,
and the next job on a fresh worker must succeed. One module-scoped pool (2 spawned workers) is
reused: spawning a worker and importing torch costs seconds.
"""
from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from torch_kevolve.families import get_family
from torch_kevolve.families.base import Candidate
from torch_kevolve.harness import (
    InProcessExecutor, Job, LocalExecutor, LocalPool, RayExecutor, make_executor, make_jobs,
)
from torch_kevolve.harness.worker import EvaluatorCache, JobResult, mode_mismatch, run_job
from torch_kevolve.search import Evaluator

FAM = get_family("embedding_bag")
SEEDS = 2

# The final store of the bag_per_program template; most mutations rewrite it.
STORE = "    tl.store(out_ptr + bag * stride_out + d, acc.to(out_ptr.dtype.element_ty), mask=d_mask)\n"
BODY_START = "    bag = tl.program_id(0).to(tl.int64)\n"


def _spec():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 12, generator=g)
    idx = torch.randint(0, 40, (25,), generator=g)
    return FAM.spec_for(w, idx, torch.tensor([0, 3, 3, 10, 18]), mode=1)


SPEC = _spec()
GOOD = FAM.candidates(SPEC)
BASE = GOOD[0]
assert BASE.template == "bag_per_program"


def mutate(old: str, new: str, origin: str) -> Candidate:
    assert old in BASE.source, old
    return dataclasses.replace(BASE, source=BASE.source.replace(old, new, 1), origin=f"test:{origin}")


OOB_WRITE = mutate(STORE, STORE.replace("+ d,", "+ d + 100_000_000,").replace(", mask=d_mask)", ")"), "oob")
HANG = mutate(BODY_START, BODY_START + "    i = 0\n    while i >= 0:\n        i += 1\n", "hang")
MUTATES_INPUT = mutate(STORE, "    tl.store(weight_ptr + d, acc.to(weight_ptr.dtype.element_ty) + 12345.0, mask=d_mask)\n"
                       + STORE, "mutates-input")
UNWRITTEN = mutate(STORE, STORE.replace("mask=d_mask)", "mask=d_mask & (d < dim - 1))"), "unwritten-column")
EDGE_ONLY = mutate(STORE, "    acc = tl.where(num_indices == 0, 7.0, acc)\n" + STORE, "edge-only")
STICKY = mutate(BODY_START, '    raise RuntimeError("CUDA error: an illegal memory access was encountered")\n'
                + BODY_START, "sticky")


def jobs(*cands: Candidate, seed_base: int = 0) -> list[Job]:
    return make_jobs(FAM, SPEC, cands, seeds=SEEDS, seed_base=seed_base)


def stages(results) -> list[str]:
    return [r.diagnostics.stage for r in results]


@pytest.fixture(scope="module")
def pool():
    with LocalPool(workers=2, gpus=[], interpret=True, timeout_s=60.0, progress=False) as p:
        yield p
    assert all(not w.proc.is_alive() for w in p._workers)


# -- plain data ----------------------------------------------------------------------------------


def test_job_is_picklable_plain_data_and_round_trips():
    job = jobs(GOOD[1])[0]
    back = pickle.loads(pickle.dumps(job))
    assert back == job and back.candidate() == GOOD[1]
    res = JobResult(job.job_id, True, 1.5, {"stage": "ok", "cases_checked": 3, "future_field": 1}, {"seeds": [17]})
    scored = pickle.loads(pickle.dumps(res)).to_scored(job)
    assert scored.ok and scored.time_ms == 1.5 and scored.candidate == GOOD[1]
    assert scored.diagnostics.cases_checked == 3 and scored.evidence == {"seeds": [17]}


def test_worker_refuses_a_spec_for_the_other_triton_mode():
    job = dataclasses.replace(jobs(BASE)[0], spec_json={**SPEC.to_json(), "device": {"type": "cuda", "name": "x", "arch": "sm_90"}})
    assert "TRITON_INTERPRET" in (mode_mismatch(job, interpret=True) or "")
    assert mode_mismatch(jobs(BASE)[0], interpret=True) is None


# -- in-process ------------------------------------------------------------------------------------


def test_inprocess_executor_matches_the_evaluator_and_screens_statically(tmp_path):
    marker = tmp_path / "imported"
    hostile = dataclasses.replace(BASE, source=BASE.source.replace(
        "import triton\n", f"import triton\nimport os\n_M = os.makedirs({str(marker)!r})\n", 1))
    with InProcessExecutor(timer=lambda fn: 2.0) as ex:
        res = ex.map(jobs(GOOD[1], hostile, GOOD[2]))
    assert stages(res) == ["ok", "static", "ok"]
    assert [r.time_ms for r in res] == [2.0, None, 2.0]
    assert not marker.exists()
    direct = Evaluator(FAM, SPEC, timer=lambda fn: 2.0, seeds=SEEDS).evaluate(GOOD[1])
    assert direct.diagnostics.cases_checked == res[0].diagnostics.cases_checked
    assert res[0].evidence == direct.evidence


def test_input_mutation_does_not_poison_the_warm_evaluator():
    """A kernel that wrote into cached inputs must not make every later verdict wrong."""
    with InProcessExecutor(timer=lambda fn: 1.0) as ex:
        res = ex.map(jobs(GOOD[1], MUTATES_INPUT, GOOD[1]))
        assert stages(res) == ["ok", "verify", "ok"]
        assert ex._cache.evictions == 0  # the Evaluator restored the inputs it caught being modified


def test_changed_cache_without_a_modified_input_fails_the_job_and_flags_the_process():
    """Cases that changed although no launch's inputs did mean writes outside the outputs."""

    class Corrupted(EvaluatorCache):
        def check(self, job, timer=None):
            super().check(job, timer)
            return False

    res = run_job(jobs(GOOD[1])[0], Corrupted(), timer=lambda fn: 1.0)
    assert not res.ok and res.restart and res.evidence["stray_writes"]
    assert "wrote outside its outputs" in res.diagnostics["error"]


def test_timer_none_verifies_without_timing():
    (res,) = InProcessExecutor().map([dataclasses.replace(jobs(GOOD[1])[0], timer="none")])
    assert res.ok and res.time_ms is None


def test_make_executor_by_name_and_env(monkeypatch):
    assert isinstance(make_executor("inprocess"), InProcessExecutor)
    monkeypatch.setenv("KEVOLVE_EXECUTOR", "in-process")
    assert isinstance(make_executor(), InProcessExecutor)
    with pytest.raises(ValueError, match="unknown executor 'nope'"):
        make_executor("nope")


# -- LocalPool: good candidates ------------------------------------------------------------------


def test_good_candidates_pass_in_order(pool):
    cands = GOOD[:5]
    res = pool.map(jobs(*cands))
    assert stages(res) == ["ok"] * len(cands)
    assert [r.candidate for r in res] == list(cands)  # order preserved across 2 workers
    assert all(r.ok and r.time_ms is not None and r.diagnostics.cases_checked > SEEDS for r in res)


# -- LocalPool: hostile candidates ---------------------------------------------------------------


def test_out_of_bounds_write_is_contained(pool):
    """An unmasked store 400 MB past the output: segfaults the interpreter (or corrupts the heap)."""
    res = pool.map(jobs(OOB_WRITE, GOOD[1]))
    assert res[0].diagnostics.stage in ("crash", "verify"), res[0].diagnostics
    if res[0].diagnostics.stage == "crash":
        assert "worker died with exit code" in res[0].diagnostics.error
    assert res[1].ok
    again = pool.map(jobs(GOOD[2], GOOD[3]))  # one of these lands on the fresh worker
    assert all(r.ok for r in again)


def test_never_terminating_kernel_times_out_and_worker_is_replaced(pool):
    before = pool.restarts
    res = pool.map(jobs(HANG, GOOD[1]), timeout_s=8)
    assert res[0].diagnostics.stage == "timeout"
    assert "exceeded 8s" in res[0].diagnostics.error
    assert res[1].ok
    assert pool.restarts == before + 1
    again = pool.map(jobs(GOOD[2], GOOD[3]))
    assert all(r.ok for r in again)


def test_pool_survives_three_consecutive_crashes(pool):
    before = pool.restarts
    res = pool.map(jobs(OOB_WRITE, OOB_WRITE, OOB_WRITE, GOOD[1]))
    assert stages(res)[3] == "ok"
    crashed = sum(s == "crash" for s in stages(res)[:3])
    assert all(s in ("crash", "verify") for s in stages(res)[:3])
    assert pool.restarts == before + crashed


@pytest.mark.parametrize(
    "cand,error,case_prefix",
    [
        (MUTATES_INPUT, "modified an input", "seed"),
        (UNWRITTEN, "output 0 differs from reference", "seed"),
        (EDGE_ONLY, "output 0 differs from reference", "edge:"),
    ],
    ids=["mutates-input", "unwritten-last-column", "garbage-only-when-all-bags-empty"],
)
def test_wrong_kernels_fail_verification(pool, cand, error, case_prefix):
    (res,) = pool.map(jobs(cand))
    d = res.diagnostics
    assert not res.ok and d.stage == "verify", d
    assert error in d.error and d.case.startswith(case_prefix), d
    if cand is EDGE_ONLY:
        assert d.case == "edge:all_bags_empty" and d.cases_checked == SEEDS  # every seed passed first
    if cand is UNWRITTEN:
        assert d.where is not None and d.where[-1] == 11  # the last column of D=12


def test_nan_on_one_seed_only(pool):
    """NaN whenever the first index equals the one the second seed draws (and N is the spec's)."""
    seed_base = 0
    while True:
        seeds = Evaluator(FAM, SPEC, timer=lambda fn: 0.0, seeds=SEEDS, seed_base=seed_base).seeds
        firsts = [int(FAM.make_inputs(SPEC, s)[1][0]) for s in seeds]
        if firsts[1] != firsts[0]:
            break
        seed_base += 1
    n = SPEC.args[1].shape[0]
    cand = mutate(STORE, "    first = tl.load(indices_ptr).to(tl.int64)\n"
                  f"    acc = tl.where((num_indices == {n}) & (first == {firsts[1]}), acc * float('nan'), acc)\n"
                  + STORE, "nan-one-seed")
    (res,) = pool.map(jobs(cand, seed_base=seed_base))
    d = res.diagnostics
    assert d.stage == "verify" and d.case == f"seed{seeds[1]}" and d.cases_checked == 1, d


@pytest.mark.parametrize(
    "inject,problem",
    [
        ("import os\n_M = os.makedirs({marker!r})\n", "import of 'os' is not allowed"),
        ("_M = open({marker!r}, 'w')\n", "use of open is not allowed"),
        ("_M = eval(\"open({marker!r}, 'w')\")\n", "use of eval is not allowed"),
    ],
    ids=["import-os", "open", "eval"],
)
def test_static_rejection_is_never_imported(pool, tmp_path, inject, problem):
    marker = tmp_path / "was_imported"
    src = BASE.source.replace("import triton\n", "import triton\n" + inject.format(marker=str(marker)), 1)
    cand = dataclasses.replace(BASE, source=src, origin="test:static")
    (res,) = pool.map(jobs(cand))
    assert res.diagnostics.stage == "static" and not res.ok
    assert problem in res.diagnostics.error
    assert any(problem in p for p in res.evidence["static_problems"])
    assert not marker.exists()


def test_sticky_device_error_restarts_the_worker(pool):
    before = pool.restarts
    res = pool.map(jobs(STICKY))
    assert res[0].diagnostics.stage == "verify" and "illegal memory access" in res[0].diagnostics.error
    again = pool.map(jobs(GOOD[1], GOOD[2]))
    assert all(r.ok for r in again)
    assert pool.restarts == before + 1


def test_local_executor_wraps_the_pool_and_close_stops_workers():
    ex = make_executor("local", workers=1, gpus=[], interpret=True, timeout_s=60.0, progress=False)
    assert isinstance(ex, LocalExecutor)
    try:
        (res,) = ex.map(jobs(GOOD[1]))
        assert res.ok
    finally:
        ex.close()
    assert all(not w.proc.is_alive() for w in ex.pool._workers)
    with pytest.raises(RuntimeError, match="closed"):
        ex.map(jobs(GOOD[1]))


def test_pool_from_an_unguarded_stdin_script_does_not_rerun_main():
    """Spawn would re-run ``__main__`` in each worker (an unguarded script twice, ``<stdin>`` not at
    all); the pool hides it while workers start."""
    import os
    import subprocess
    import sys

    script = (
        "print('MAIN RAN', flush=True)\n"
        "import torch\n"
        "from torch_kevolve.families import get_family\n"
        "from torch_kevolve.harness import LocalPool, make_jobs\n"
        "F = get_family('embedding_bag')\n"
        "spec = F.spec_for(torch.randn(40, 12), torch.randint(0, 40, (25,)), torch.tensor([0, 3, 3, 10, 18]))\n"
        "with LocalPool(workers=1, gpus=[], interpret=True, progress=False) as p:\n"
        "    print('STAGES', [r.diagnostics.stage for r in p.map(make_jobs(F, spec, F.candidates(spec)[:1], seeds=1))])\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("MAIN RAN") == 1 and "STAGES ['ok']" in out.stdout, out.stdout + out.stderr[-3000:]


# -- Ray -------------------------------------------------------------------------------------------


def test_ray_executor_evaluates_candidates():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        ex = RayExecutor(timeout_s=120.0)
        res = ex.map(jobs(GOOD[1], UNWRITTEN, GOOD[2]))
        assert stages(res) == ["ok", "verify", "ok"]
        assert [r.candidate for r in res] == [GOOD[1], UNWRITTEN, GOOD[2]]
        # A segfaulting task (retried once: max_retries=1) and a hung one (force-cancelled).
        res = ex.map(jobs(OOB_WRITE, HANG), timeout_s=10)
        assert stages(res)[0] in ("crash", "verify") and stages(res)[1] == "timeout", res
        assert "exceeded 10s" in res[1].diagnostics.error
        ex.close()  # did not start Ray: leaves it running
        assert ray.is_initialized()
    finally:
        ray.shutdown()


# -- GPU (skipped without CUDA; the parent may itself run the interpreter: workers get their own mode)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_pool_pins_compiles_and_recovers_from_a_faulting_kernel():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4000, 64, generator=g).cuda()
    idx = torch.randint(0, 4000, (3000,), generator=g).cuda()
    off = torch.sort(torch.randint(0, 3000, (256,), generator=g)).values.cuda()
    off[0] = 0
    spec = FAM.spec_for(w, idx, off, mode=0)
    good = FAM.candidates(spec)
    base = next(c for c in good if c.template == "bag_per_program")
    fault = dataclasses.replace(base, source=base.source.replace(STORE, STORE.replace(
        "+ d,", "+ d + (1 << 40),").replace(", mask=d_mask)", ")")), origin="test:gpu-fault")
    assert fault.source != base.source
    js = make_jobs(FAM, spec, [good[0], fault, good[1], good[2]], seeds=SEEDS)
    with LocalPool(workers=1, gpus=[0], interpret=False, timeout_s=120.0, progress=False) as p:
        assert p.interpret is False
        res = p.map(js)
        assert stages(res)[0] == "ok" and res[0].time_ms is not None and res[0].time_ms > 0
        assert stages(res)[1] in ("crash", "verify"), res[1].diagnostics
        assert stages(res)[2:] == ["ok", "ok"], [r.diagnostics for r in res]
        assert p.restarts >= 1  # the faulting job left a dead context (or a dead worker) behind


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_shared_pool_survives_a_hang_and_an_oob_write():
    """Two workers share the GPU through the gate: a kernel that never terminates is killed at the
    time limit (releasing the gate: the kernel holds it while it runs), an out-of-bounds writer is
    caught, and the good candidates around them verify and time."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4000, 64, generator=g).cuda()
    idx = torch.randint(0, 4000, (3000,), generator=g).cuda()
    off = torch.sort(torch.randint(0, 3000, (256,), generator=g)).values.cuda()
    off[0] = 0
    spec = FAM.spec_for(w, idx, off, mode=0)
    good = FAM.candidates(spec)
    base = next(c for c in good if c.template == "bag_per_program")
    start = "    bag = tl.program_id(0).to(tl.int64)\n"
    hang = dataclasses.replace(base, source=base.source.replace(start, start + (
        "    while tl.load(offsets_ptr, volatile=True) >= 0:\n        bag = bag + 0\n"), 1), origin="test:gpu-hang")
    oob = dataclasses.replace(base, source=base.source.replace(STORE, STORE.replace(
        "+ d,", "+ d + (1 << 40),").replace(", mask=d_mask)", ")")), origin="test:gpu-oob")
    assert hang.source != base.source and oob.source != base.source
    js = make_jobs(FAM, spec, [good[0], hang, oob, good[1], good[2], good[3]], seeds=SEEDS)
    with LocalPool(workers=2, gpus=[0], interpret=False, timeout_s=60.0, progress=False) as p:
        assert p.worker_env[0].get("KEVOLVE_GPU_GATE")
        res = p.map(js)
        st = stages(res)
        assert st[1] == "timeout", res[1].diagnostics
        assert st[2] in ("crash", "verify"), res[2].diagnostics
        assert [st[0]] + st[3:] == ["ok"] * 4, [r.diagnostics for r in res]
        assert all(r.time_ms and r.time_ms > 0 for i, r in enumerate(res) if i in (0, 3, 4, 5))
        assert p.restarts >= 2


# -- multi-step plans --------------------------------------------------------------------------------


def test_multi_step_plan_jobs_verify_and_wrong_steps_fail():
    """segment_reduce lengths on scanned starts (pre-steps + workspace) through a job; a scan writing
    the starts one slot off is caught by verification."""
    fam = get_family("segment_reduce")
    spec = fam.spec_for(torch.randn(30, 4), "mean", lengths=torch.tensor([3, 0, 7, 20]))
    one, two = (next(c for c in fam.candidates(spec) if c.cfg.get("SCAN") == k) for k in (1, 2))
    old = "tl.store(starts_ptr + ss + 1, carry + tl.cumsum(x, axis=0), mask=m)"
    assert one.source.count(old) == 2
    off_by_one = dataclasses.replace(one, source=one.source.replace(old, old.replace("ss + 1", "ss"), 1))
    with InProcessExecutor(timer=lambda fn: 1.0) as ex:
        res = ex.map(make_jobs(fam, spec, [one, two, off_by_one], seeds=1))
    assert stages(res) == ["ok", "ok", "verify"], [r.diagnostics.summary() for r in res]


def test_plan_resources_reports_the_max_and_each_kernel():
    from types import SimpleNamespace

    from torch_kevolve.families.base import CallPlan, OutBuf, Step
    from torch_kevolve.search.evaluate import plan_resources

    def kernel(regs: int, spills: int, shared: int):
        ck = SimpleNamespace(n_regs=regs, n_spills=spills, metadata=SimpleNamespace(shared=shared))
        return SimpleNamespace(device_caches={0: ({"k": ck},)})

    mod = SimpleNamespace(main=kernel(40, 0, 1024), scan=kernel(96, 2, 0))
    single = CallPlan("main", (1,), (), (OutBuf((1,), "float32"),))
    assert plan_resources(mod, single) == {"n_regs": 40, "n_spills": 0, "shared_bytes": 1024}
    two = CallPlan("main", (1,), (), (OutBuf((1,), "float32"),), pre=(Step("scan", (1,), ()),))
    prof = plan_resources(mod, two)
    assert prof["n_regs"] == 96 and prof["n_spills"] == 2 and prof["shared_bytes"] == 1024
    assert prof["kernels"] == {"scan": {"n_regs": 96, "n_spills": 2, "shared_bytes": 0},
                               "main": {"n_regs": 40, "n_spills": 0, "shared_bytes": 1024}}
