"""Job harness: evaluate candidates in isolated, parallel worker processes (or Ray tasks).

A candidate is screened statically (``static_check``), then scored by the same Evaluator as the
in-process search, but in a process that may crash or hang without taking the caller with it.
"""
from __future__ import annotations

from .executor import (
    Executor, InProcessExecutor, LocalExecutor, RayExecutor, executor_names, make_executor, register_executor,
)
from .pool import LocalPool
from .static_check import StaticReport, check_source
from .worker import Job, JobResult, make_jobs, run_job

__all__ = [
    "Executor", "InProcessExecutor", "LocalExecutor", "RayExecutor", "executor_names", "make_executor",
    "register_executor", "LocalPool", "StaticReport", "check_source", "Job", "JobResult", "make_jobs", "run_job",
]
