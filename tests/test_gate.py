"""GPU gate: workers sharing a GPU verify together and time alone, across processes, and a worker
killed while holding the gate never leaves the GPU locked."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest
import torch

from torch_kevolve.families import get_family
from torch_kevolve.harness import LocalPool
from torch_kevolve.harness.gate import GpuGate, NullGate, process_gate
from torch_kevolve.harness.worker import baseline_job, run_job
from torch_kevolve.search import Evaluator

FAM = get_family("embedding_bag")


def _hold(path: str, how: str, seconds: float, ready) -> None:  # child process
    g = GpuGate(path)
    with getattr(g, how)():
        ready.set()
        time.sleep(seconds)


def _child(path: str, how: str, seconds: float):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hold, args=(path, how, seconds, ready), daemon=True)
    p.start()
    assert ready.wait(60), "child never took the gate"
    return p


def test_exclusive_excludes_shared_across_processes(tmp_path):
    path = str(tmp_path / "gpu0.gate")
    p = _child(path, "exclusive", 1.0)
    g = GpuGate(path)
    t0 = time.monotonic()
    with g.shared() as waited:
        assert time.monotonic() - t0 >= 0.5 and waited >= 0.5  # the timing finished first
    p.join(10)


def test_shared_holds_overlap_but_block_exclusive(tmp_path):
    path = str(tmp_path / "gpu0.gate")
    p = _child(path, "shared", 1.0)
    g = GpuGate(path)
    with g.shared() as waited:  # another verifier: no waiting
        assert waited < 0.5
    t0 = time.monotonic()
    with g.exclusive():
        assert time.monotonic() - t0 >= 0.3  # waited for the child's verification to end
    p.join(10)


def test_killed_holder_releases_the_gate(tmp_path):
    path = str(tmp_path / "gpu0.gate")
    p = _child(path, "exclusive", 600.0)  # a hung kernel inside a timing
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    t0 = time.monotonic()
    with GpuGate(path).exclusive():
        assert time.monotonic() - t0 < 5.0


def test_process_gate_follows_env(tmp_path, monkeypatch):
    monkeypatch.delenv("KEVOLVE_GPU_GATE", raising=False)
    assert type(process_gate()) is NullGate
    monkeypatch.setenv("KEVOLVE_GPU_GATE", str(tmp_path / "g"))
    g = process_gate()
    assert isinstance(g, GpuGate) and g.path == str(tmp_path / "g")
    assert process_gate() is g


class RecordingGate(NullGate):
    def __init__(self) -> None:
        self.state: str | None = None
        self.log: list[str] = []

    def _hold(self, how: str):
        import contextlib

        @contextlib.contextmanager
        def cm():
            assert self.state is None, "gate holds must not nest"
            self.state = how
            self.log.append(how)
            try:
                yield 0.0
            finally:
                self.state = None

        return cm()

    def shared(self):
        return self._hold("shared")

    def exclusive(self):
        return self._hold("exclusive")


def _spec():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 12, generator=g)
    idx = torch.randint(0, 40, (25,), generator=g)
    return FAM.spec_for(w, idx, torch.tensor([0, 3, 3, 10, 18]), mode=0)


def test_evaluator_verifies_shared_and_times_exclusive():
    gate = RecordingGate()
    seen: list[str | None] = []

    def timer(fn):
        seen.append(gate.state)
        fn()
        return 1.0

    ev = Evaluator(FAM, _spec(), device="cpu", timer=timer, seeds=1, gate=gate)
    r = ev.evaluate(FAM.candidates(ev.spec)[0])
    assert r.ok, r.diagnostics.summary()
    assert gate.log == ["shared", "exclusive"] and seen == ["exclusive"]
    assert set(r.diagnostics.profile["stage_s"]) == {"verify", "time", "gate_wait"}
    assert ev.baseline_ms("eager") == 1.0 and seen[-1] == "exclusive"
    with pytest.raises(ValueError):
        ev.baseline_fn("nonsense")


def test_inductor_baseline_is_the_op_compiled_alone():
    """The contested-op baseline: Inductor compiles the op by itself; it computes what eager does."""
    ev = Evaluator(FAM, _spec(), device="cpu", seeds=1)
    fn = ev.baseline_fn("inductor")
    want = FAM.eager(ev.spec, ev.cases()[0][2])
    got = fn()
    assert torch.allclose(got[0] if isinstance(got, (list, tuple)) else got, want[0], atol=1e-5)


def test_baseline_job_runs_in_the_harness_path():
    res = run_job(baseline_job(FAM, _spec(), "eager", seeds=1))
    assert res.ok and res.time_ms and res.time_ms > 0 and res.evidence["baseline"] == "eager"
    bad = run_job(baseline_job(FAM, _spec(), "bogus", seeds=1))
    assert not bad.ok and "bogus" in bad.diagnostics["error"]


def test_pool_gates_workers_sharing_a_gpu():
    """Two workers on one GPU get the same gate; one worker per GPU gets none (no GPU is touched:
    the workers only start and stop)."""
    with LocalPool(workers=2, gpus=[0], interpret=True, timeout_s=30) as pool:
        envs = pool.worker_env
        assert envs[0]["KEVOLVE_GPU_GATE"] == envs[1]["KEVOLVE_GPU_GATE"]
        assert envs[0]["CUDA_VISIBLE_DEVICES"] == envs[1]["CUDA_VISIBLE_DEVICES"] == "0"
    with LocalPool(workers=1, gpus=[0], interpret=True, timeout_s=30) as pool:
        assert "KEVOLVE_GPU_GATE" not in pool.worker_env[0]


def test_roofline_verdicts():
    from torch_kevolve.hardware import roofline

    mem = roofline(2_000_000, 0, ms=0.01, bw=4e11, rate=None)  # 2 MB at 400 GB/s = 5 us floor
    assert mem["bound"] == "memory" and abs(mem["pct_of_floor"] - 50.0) < 1e-9
    cmp = roofline(1_000, 10**12, ms=2.0, bw=4e11, rate=1e15)  # 1 TFLOP at 1 PFLOP/s = 1 ms
    assert cmp["bound"] == "compute" and abs(cmp["pct_of_floor"] - 50.0) < 1e-9
    assert abs(cmp["achieved_TFLOPs"] - 500.0) < 1e-9 and "pct_of_matmul_rate" in cmp
    assert "floor_ms" not in roofline(10, 0, ms=1.0, bw=None, rate=None)  # CPU: no ceilings


def test_waiting_for_the_gate_does_not_count_against_the_time_limit():
    """A job blocked behind another worker's GPU turn (here: this process holding the gate for
    longer than the pool's time limit, like a hung kernel until it is killed) is not timed out."""
    spec = _spec()
    good = FAM.candidates(spec)[0]
    from torch_kevolve.harness import make_jobs

    with LocalPool(workers=2, gpus=[0], interpret=True, timeout_s=6, progress=False) as pool:
        pool.map(make_jobs(FAM, spec, [good], seeds=1))  # workers up and warm
        gate = GpuGate(pool.worker_env[0]["KEVOLVE_GPU_GATE"])
        t0 = time.monotonic()
        with gate.exclusive():
            import threading

            box: list = []
            th = threading.Thread(target=lambda: box.append(pool.map(make_jobs(FAM, spec, [good], seeds=1))))
            th.start()
            time.sleep(9)  # past the 6 s limit, with the job waiting at the gate
        th.join(60)
        (res,) = box[0]
        assert res.diagnostics.stage == "ok", res.diagnostics
        assert time.monotonic() - t0 >= 9 and pool.restarts == 0
        gate.close()


def test_a_long_lived_worker_is_not_taken_for_one_that_failed_to_start():
    """Regression (seen on the H100): a job sent to a worker spawned more than ``start_timeout_s``
    ago was judged "no response since spawning" before its ack arrived, and the pool gave up."""
    spec = _spec()
    from torch_kevolve.harness import make_jobs

    with LocalPool(workers=1, gpus=[], interpret=True, timeout_s=60, start_timeout_s=30, progress=False) as pool:
        assert pool.map(make_jobs(FAM, spec, FAM.candidates(spec)[:1], seeds=1))[0].ok
        pool._workers[0].spawned_at -= 1000.0  # as if it had lived for a quarter of an hour
        res = pool.map(make_jobs(FAM, spec, FAM.candidates(spec)[:2], seeds=1))
        assert [r.diagnostics.stage for r in res] == ["ok", "ok"] and pool.restarts == 0
