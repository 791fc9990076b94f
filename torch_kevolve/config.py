"""Settings: environment knobs (``KEVOLVE_*``) overridable by the backend's ``options``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MODES = ("jit", "offline", "cache", "off")
CONTEST = ("auto", "all", "none")
SYNTHESIZERS = ("auto", "template", "llm")


def parse_budget(text: str) -> tuple[int | None, float | None]:
    """``KEVOLVE_BUDGET``: ``"64"`` evaluations, ``"120s"`` wall seconds, ``"64,120s"`` both ("" none)."""
    evals: int | None = None
    wall: float | None = None
    for part in (p.strip().lower() for p in str(text).split(",")):
        if not part:
            continue
        try:
            if part.endswith("s"):
                if wall is not None:
                    raise ValueError
                wall = float(part[:-1])
                if wall <= 0:
                    raise ValueError
            else:
                if evals is not None:
                    raise ValueError
                evals = int(part)
                if evals <= 0:
                    raise ValueError
        except ValueError:
            raise ValueError(
                f"KEVOLVE_BUDGET / budget: expected '64' (evaluations), '120s' (wall seconds) or '64,120s', got {text!r}"
            ) from None
    return evals, wall


def _flag(v: object) -> bool:
    return str(v or "").strip().lower() in ("1", "true", "yes", "on")


def default_cache_dir() -> Path:
    env = os.environ.get("KEVOLVE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "torch_kevolve"


def shipped_cache_dir() -> Path:
    """The repo's ``kernel_cache/``: pre-searched kernels shipped read-only with the package."""
    env = os.environ.get("KEVOLVE_SHIPPED_DIR")
    if env is not None:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "kernel_cache"


@dataclass(frozen=True)
class Settings:
    mode: str = "jit"
    cache_dir: Path = field(default_factory=default_cache_dir)
    shipped_dir: Path | None = field(default_factory=shipped_cache_dir)
    search_budget_s: float = 120.0  # JIT: wall-time budget per key
    lock_timeout_s: float = 300.0  # JIT: how long to wait for another process searching the key
    seeds: int = 3  # verification seeds per candidate
    max_candidates: int = -1  # per search; -1: auto (4 under the CPU interpreter, unbounded on GPU)
    route: str = "auto"  # "auto" | "triton" (Inductor user-defined kernel) | "custom_op"
    search: str = "mcts"  # search strategy by name (torch_kevolve.search.strategies registry)
    budget: str = ""  # "64" evaluations, "120s" wall, "64,120s" both; parts given override
    # max_candidates / search_budget_s
    patience: int | None = None  # stop after this many evaluations without a better verified time
    search_seed: int = 0  # the strategy's rng: same seed, same synthesizer and timer -> same search
    # candidates evaluated per search step (0: the strategy's own default, 4 for MCTS). 1 makes every
    # proposal see the results of all before it (an LLM's next prompt carries the last error).
    search_batch: int = 0
    executor: str = "local"  # where candidates are evaluated: "local" worker pool, "inprocess", "ray"
    eval_timeout_s: float = 120.0  # one candidate's compile+verify+time in a worker, then it is killed
    # Ops Inductor lowers itself (a family's ``lowered_ops``): "auto" contests them on CUDA, where
    # timings can show a kernel beats Inductor's; "all" on every device (tests); "none" never.
    contest: str = "auto"
    workers_per_gpu: int = 0  # local harness: evaluation workers sharing one GPU (0: auto)
    # Who proposes kernels: "template" (the family's templates), "llm" (a model over an
    # OpenAI-compatible endpoint), "auto" (the LLM when an endpoint is configured for kevolve).
    synthesizer: str = "auto"
    llm_base_url: str = ""  # falls back to OPENAI_BASE_URL
    llm_model: str = ""  # empty: the first model the server lists
    llm_api_key: str = field(default="", repr=False)  # falls back to OPENAI_API_KEY; never printed
    llm_max_tokens: int = 4096  # per reply
    llm_budget_tokens: int = 400_000  # prompt + completion tokens per search (0: no limit)
    llm_concurrency: int = 4  # requests in flight per search
    # A recorded search to replay with no endpoint: a transcript JSON (list of exchanges), or a store
    # entry (its meta.llm.transcript). The LLM synthesizer answers from it, in order, by tag.
    llm_replay: str = ""
    # Use a user store whose directories are writable by group/others (entries are code this process
    # runs, so such a store is refused unless opted in). KEVOLVE_ALLOW_SHARED_STORE=1.
    allow_shared_store: bool = field(default_factory=lambda: _flag(os.environ.get("KEVOLVE_ALLOW_SHARED_STORE")))

    @staticmethod
    def from_env(options: dict[str, Any] | None = None) -> "Settings":
        s = Settings()
        env = {
            "mode": os.environ.get("KEVOLVE_MODE"),
            "cache_dir": os.environ.get("KEVOLVE_CACHE_DIR"),
            "search_budget_s": os.environ.get("KEVOLVE_SEARCH_BUDGET_S"),
            "lock_timeout_s": os.environ.get("KEVOLVE_LOCK_TIMEOUT_S"),
            "seeds": os.environ.get("KEVOLVE_SEEDS"),
            "max_candidates": os.environ.get("KEVOLVE_MAX_CANDIDATES"),
            "route": os.environ.get("KEVOLVE_ROUTE"),
            "search": os.environ.get("KEVOLVE_SEARCH"),
            "budget": os.environ.get("KEVOLVE_BUDGET"),
            "patience": os.environ.get("KEVOLVE_PATIENCE"),
            "search_seed": os.environ.get("KEVOLVE_SEARCH_SEED"),
            "executor": os.environ.get("KEVOLVE_EXECUTOR"),
            "search_batch": os.environ.get("KEVOLVE_SEARCH_BATCH"),
            "eval_timeout_s": os.environ.get("KEVOLVE_EVAL_TIMEOUT_S"),
            "contest": os.environ.get("KEVOLVE_CONTEST"),
            "workers_per_gpu": os.environ.get("KEVOLVE_WORKERS_PER_GPU"),
            "synthesizer": os.environ.get("KEVOLVE_SYNTHESIZER"),
            "llm_base_url": os.environ.get("KEVOLVE_LLM_BASE_URL"),
            "llm_model": os.environ.get("KEVOLVE_LLM_MODEL"),
            "llm_api_key": os.environ.get("KEVOLVE_LLM_API_KEY"),
            "llm_max_tokens": os.environ.get("KEVOLVE_LLM_MAX_TOKENS"),
            "llm_budget_tokens": os.environ.get("KEVOLVE_LLM_BUDGET_TOKENS"),
            "llm_concurrency": os.environ.get("KEVOLVE_LLM_CONCURRENCY"),
            "llm_replay": os.environ.get("KEVOLVE_LLM_REPLAY"),
            "allow_shared_store": os.environ.get("KEVOLVE_ALLOW_SHARED_STORE"),
        }
        merged = {k: v for k, v in env.items() if v not in (None, "")}
        merged.update({k: v for k, v in (options or {}).items() if v is not None})
        known = {f.name: f for f in fields(Settings)}
        unknown = set(merged) - set(known)
        if unknown:
            raise ValueError(f"unknown kevolve option(s): {sorted(unknown)}; known: {sorted(known)}")
        conv: dict[str, Any] = {}
        for k, v in merged.items():
            if k in ("cache_dir", "shipped_dir"):
                conv[k] = None if v is None else Path(v).expanduser()
            elif k in ("search_budget_s", "lock_timeout_s", "eval_timeout_s"):
                conv[k] = float(v)
            elif k in ("seeds", "max_candidates", "search_seed", "search_batch", "workers_per_gpu", "llm_max_tokens",
                       "llm_budget_tokens", "llm_concurrency"):
                conv[k] = int(v)
            elif k == "patience":
                conv[k] = int(v) if int(v) > 0 else None  # 0 / negative: no patience limit
            elif k == "allow_shared_store":
                conv[k] = v if isinstance(v, bool) else _flag(v)
            elif k in ("search", "contest", "synthesizer"):
                conv[k] = str(v).strip().lower()
            else:
                conv[k] = str(v)
        s = replace(s, **conv)
        if s.mode not in MODES:
            raise ValueError(f"KEVOLVE_MODE / mode must be one of {MODES}, got {s.mode!r}")
        if s.route not in ("auto", "triton", "custom_op"):
            raise ValueError(f"KEVOLVE_ROUTE / route must be auto, triton or custom_op, got {s.route!r}")
        if s.synthesizer not in SYNTHESIZERS:
            raise ValueError(f"KEVOLVE_SYNTHESIZER / synthesizer must be one of {SYNTHESIZERS}, got {s.synthesizer!r}")
        if s.llm_concurrency < 1 or s.llm_max_tokens < 1:
            raise ValueError("KEVOLVE_LLM_CONCURRENCY and KEVOLVE_LLM_MAX_TOKENS must be at least 1")
        if s.search_batch < 0:
            raise ValueError(f"KEVOLVE_SEARCH_BATCH / search_batch must be 0 (strategy default) or more, got {s.search_batch}")
        if s.contest not in CONTEST:
            raise ValueError(f"KEVOLVE_CONTEST / contest must be one of {CONTEST}, got {s.contest!r}")
        parse_budget(s.budget)  # fail here, not in the middle of a compile
        return s
