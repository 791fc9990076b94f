"""Talking to any OpenAI-compatible chat-completions server (OpenAI, vLLM, SGLang, Ollama, ...).

Why our own retry loop around the ``openai`` client (whose retries are turned off): a search must
count every attempt, honour ``Retry-After`` exactly, stop at a token/cost budget, and never raise
into the search. Every call returns a :class:`Reply` (errors are values) and every exchange is kept
in :attr:`ChatTransport.transcript` so a search's conversation can be saved and replayed.

``openai`` is imported lazily: the GPU machine may lack it, and a search without an endpoint never
needs it.
"""
from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("torch_kevolve")

Messages = list[dict[str, str]]
OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"


def _env(*names: str) -> str:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return ""


def _float_env(name: str, default: float) -> float:
    v = os.environ.get(name)
    try:
        return float(v) if v not in (None, "") else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {v!r}") from None


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask. ``base_url`` empty and no key: no endpoint (template synthesizer).

    Budgets are per search (one transport per search): ``budget_tokens`` prompt + completion tokens,
    ``budget_cost`` in the currency of the prices (per million tokens); 0 means no limit.
    """

    base_url: str = ""
    model: str = ""  # empty: the first model the server lists
    api_key: str = field(default="", repr=False)
    max_tokens: int = 4096
    budget_tokens: int = 400_000
    concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0  # first retry's wait; doubles per retry, capped at max_backoff_s
    max_backoff_s: float = 60.0
    temperature: float | None = None  # None: the server's default
    price_in: float = 0.0  # per million prompt tokens
    price_out: float = 0.0  # per million completion tokens
    budget_cost: float = 0.0
    explicit: bool = False  # an endpoint was configured for kevolve itself (not only OPENAI_API_KEY)

    @property
    def configured(self) -> bool:
        """An endpoint to talk to: a base URL, or a key for the default OpenAI endpoint."""
        return bool(self.base_url or self.api_key)

    @staticmethod
    def resolve(settings: "Settings | None" = None) -> "LLMConfig":
        """Settings (backend options / ``KEVOLVE_LLM_*``) first, then ``OPENAI_BASE_URL`` /
        ``OPENAI_API_KEY``. Extra knobs only from the environment: ``KEVOLVE_LLM_TIMEOUT_S``,
        ``KEVOLVE_LLM_RETRIES``, ``KEVOLVE_LLM_TEMPERATURE``, ``KEVOLVE_LLM_PRICE_IN`` /
        ``KEVOLVE_LLM_PRICE_OUT`` (per million tokens), ``KEVOLVE_LLM_BUDGET_COST``."""
        s_base = getattr(settings, "llm_base_url", "") if settings is not None else _env("KEVOLVE_LLM_BASE_URL")
        s_key = getattr(settings, "llm_api_key", "") if settings is not None else _env("KEVOLVE_LLM_API_KEY")
        s_model = getattr(settings, "llm_model", "") if settings is not None else _env("KEVOLVE_LLM_MODEL")
        base = s_base or _env("OPENAI_BASE_URL")
        key = s_key or _env("OPENAI_API_KEY")
        temp = os.environ.get("KEVOLVE_LLM_TEMPERATURE")
        kw: dict[str, Any] = {}
        if settings is not None:
            kw = {"max_tokens": int(settings.llm_max_tokens), "budget_tokens": int(settings.llm_budget_tokens),
                  "concurrency": max(1, int(settings.llm_concurrency))}
        return LLMConfig(
            base_url=base, model=s_model, api_key=key,
            timeout_s=_float_env("KEVOLVE_LLM_TIMEOUT_S", 120.0),
            max_retries=int(_float_env("KEVOLVE_LLM_RETRIES", 4)),
            temperature=float(temp) if temp not in (None, "") else None,
            price_in=_float_env("KEVOLVE_LLM_PRICE_IN", 0.0), price_out=_float_env("KEVOLVE_LLM_PRICE_OUT", 0.0),
            budget_cost=_float_env("KEVOLVE_LLM_BUDGET_COST", 0.0),
            explicit=bool(s_base or s_key or _env("OPENAI_BASE_URL")), **kw,
        )


@dataclass
class Usage:
    """What a transport has spent: requests, retries, tokens, cost, and refusals by the budget."""

    requests: int = 0  # HTTP attempts, retries included
    replies: int = 0  # successful completions
    retries: int = 0
    failures: int = 0  # calls that ended without a reply
    refused: int = 0  # calls the budget did not allow
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    max_in_flight: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {**asdict(self), "total_tokens": self.total_tokens}


@dataclass
class Reply:
    """One chat completion, or why there is none (``error``). ``attempts`` counts HTTP requests."""

    text: str = ""
    error: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    latency_s: float = 0.0
    finish_reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class BudgetExceeded(Exception):
    pass


def estimate_tokens(messages: Messages) -> int:
    """A deliberately high estimate (3 characters a token) so reservations rarely undershoot."""
    return sum(len(m.get("content") or "") for m in messages) // 3 + 8 * len(messages)


def retry_after_s(headers: Any) -> float | None:
    """Seconds a 429/503 asks us to wait: ``retry-after-ms``, ``retry-after`` seconds or HTTP date."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms:
            return max(0.0, float(ms) / 1000.0)
        ra = headers.get("retry-after")
    except Exception:  # noqa: BLE001 - odd header objects
        return None
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(ra)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class ChatTransport:
    """A budgeted, concurrency-limited, retrying chat-completions client for one search.

    Thread-safe: :meth:`complete` may be called from many threads; at most ``concurrency`` requests
    are in flight, and a request starts only when its worst case (estimated prompt + ``max_tokens``)
    fits in what the budget has left, so the budget holds under concurrency too.
    """

    def __init__(self, config: LLMConfig, client: Any = None, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self._client = client
        self._sleep = sleep
        self._rng = rng or random.Random(0)
        self._sem = threading.BoundedSemaphore(max(1, config.concurrency))
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self._in_flight = 0
        self._model = config.model
        self.usage = Usage()
        self.transcript: list[dict] = []

    # -- client ------------------------------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            import openai  # lazily: not every machine has it, and no endpoint means no need

            self._client = openai.OpenAI(
                base_url=self.config.base_url or OPENAI_DEFAULT_BASE,
                api_key=self.config.api_key or "EMPTY",  # local servers (vLLM, Ollama) ignore the key
                timeout=self.config.timeout_s, max_retries=0,
            )
        return self._client

    def model(self) -> str:
        """The configured model, else the first one the server lists (asked once)."""
        if not self._model:
            with self._lock:
                if not self._model:
                    try:
                        listed = [m.id for m in self.client().models.list()]
                    except Exception as e:  # noqa: BLE001
                        raise RuntimeError(f"no model configured (KEVOLVE_LLM_MODEL) and listing the server's "
                                           f"models failed: {type(e).__name__}: {e}") from None
                    if not listed:
                        raise RuntimeError("no model configured (KEVOLVE_LLM_MODEL) and the server lists none")
                    self._model = listed[0]
                    log.info("kevolve: LLM model not configured; using %s, the server's first", self._model)
        return self._model

    # -- budget ------------------------------------------------------------------------------------
    def _cost(self, prompt: int, completion: int) -> float:
        return (prompt * self.config.price_in + completion * self.config.price_out) / 1e6

    def _reserve(self, messages: Messages) -> tuple[int, float, int]:
        """(tokens, cost, max_tokens) held for one request. When only other requests' reservations
        stand in the way, wait for them to settle; raise BudgetExceeded when spending alone leaves
        too little."""
        cfg = self.config
        est = estimate_tokens(messages)
        floor = min(256, cfg.max_tokens)  # the smallest reply worth asking for
        with self._cond:
            while True:
                max_tokens = cfg.max_tokens
                spent_room = cfg.budget_tokens - self.usage.total_tokens - est if cfg.budget_tokens > 0 else None
                if spent_room is not None and spent_room < floor:
                    self.usage.refused += 1
                    raise BudgetExceeded(f"token budget: {self.usage.total_tokens} of {cfg.budget_tokens} used; "
                                         f"this request needs about {est + floor}")
                if cfg.budget_cost > 0 and self.usage.cost + self._cost(est, floor) > cfg.budget_cost:
                    self.usage.refused += 1
                    raise BudgetExceeded(f"cost budget: {self.usage.cost:.4g} spent of {cfg.budget_cost:.4g}")
                fits = True
                if spent_room is not None:
                    room = spent_room - self._reserved_tokens
                    fits = room >= floor
                    max_tokens = min(max_tokens, max(room, 0))
                cost = self._cost(est, max_tokens)
                if cfg.budget_cost > 0 and self.usage.cost + self._reserved_cost + cost > cfg.budget_cost:
                    fits = False
                if fits:
                    self._reserved_tokens += est + max_tokens
                    self._reserved_cost += cost
                    return est + max_tokens, cost, max_tokens
                self._cond.wait(timeout=1.0)  # in-flight requests hold the rest: wait for them to settle

    def exhausted(self) -> bool:
        """True when not even a small request would fit in the budget any more."""
        cfg = self.config
        with self._lock:
            if cfg.budget_tokens > 0 and cfg.budget_tokens - self.usage.total_tokens - self._reserved_tokens < 512:
                return True
            return cfg.budget_cost > 0 and self.usage.cost + self._reserved_cost >= cfg.budget_cost

    # -- calls -------------------------------------------------------------------------------------
    def complete(self, messages: Messages, tag: str = "") -> Reply:
        """One chat completion with retries on 429 / 5xx / timeouts / connection errors."""
        t0 = time.monotonic()
        try:
            held_tokens, held_cost, max_tokens = self._reserve(messages)
        except BudgetExceeded as e:
            reply = Reply(error=f"budget: {e}")
            self._record(tag, messages, reply)
            return reply
        try:
            with self._sem:
                with self._lock:
                    self._in_flight += 1
                    self.usage.max_in_flight = max(self.usage.max_in_flight, self._in_flight)
                try:
                    reply = self._attempts(messages, max_tokens)
                finally:
                    with self._lock:
                        self._in_flight -= 1
        except BaseException:
            with self._cond:
                self._reserved_tokens -= held_tokens
                self._reserved_cost -= held_cost
                self._cond.notify_all()
            raise
        reply.latency_s = time.monotonic() - t0
        with self._cond:  # spending replaces the reservation in one step
            self._reserved_tokens -= held_tokens
            self._reserved_cost -= held_cost
            u = self.usage
            u.prompt_tokens += reply.prompt_tokens
            u.completion_tokens += reply.completion_tokens
            u.cost += self._cost(reply.prompt_tokens, reply.completion_tokens)
            if reply.ok:
                u.replies += 1
            else:
                u.failures += 1
            self._cond.notify_all()
        self._record(tag, messages, reply)
        return reply

    def _attempts(self, messages: Messages, max_tokens: int) -> Reply:
        cfg = self.config
        try:
            model = self.model()
        except RuntimeError as e:
            return Reply(error=str(e))
        last = ""
        for attempt in range(cfg.max_retries + 1):
            with self._lock:
                self.usage.requests += 1
                if attempt:
                    self.usage.retries += 1
            wait, last, reply = self._one(model, messages, max_tokens, attempt)
            if reply is not None:
                reply.attempts = attempt + 1
                return reply
            if wait is None or attempt == cfg.max_retries:
                break
            log.debug("kevolve: LLM request failed (%s); retry %d in %.2fs", last, attempt + 1, wait)
            self._sleep(wait)
        return Reply(error=last, model=model, attempts=attempt + 1)

    def _backoff(self, asked: float | None, n: int) -> float | None:
        """Seconds before retry ``n + 1``: what the server asked for (None: give up when that is
        longer than the request timeout), else exponential with jitter."""
        if asked is not None:
            return asked if asked <= self.config.timeout_s else None
        with self._lock:
            jitter = 0.75 + 0.5 * self._rng.random()  # concurrent retries do not stampede together
        return min(self.config.max_backoff_s, self.config.backoff_s * (2 ** n)) * jitter

    def _one(self, model: str, messages: Messages, max_tokens: int, attempt: int = 0
             ) -> tuple[float | None, str, Reply | None]:
        """One HTTP attempt: (seconds to wait before retrying or None for "don't", error, reply)."""
        import openai

        kw: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
        if self.config.temperature is not None:
            kw["temperature"] = self.config.temperature
        try:
            resp = self.client().chat.completions.create(**kw)
        except openai.APIStatusError as e:
            code = e.status_code
            msg = f"HTTP {code}: {str(e)[:300]}"
            if code == 429 or code >= 500 or code == 408:
                return self._backoff(retry_after_s(getattr(e.response, "headers", None)), attempt), msg, None
            return None, msg, None
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            return self._backoff(None, attempt), f"{type(e).__name__}: {str(e)[:300]}", None
        except Exception as e:  # noqa: BLE001 - a malformed response body, a client bug: a value
            return None, f"{type(e).__name__}: {str(e)[:300]}", None
        try:
            choice = resp.choices[0]
            text = choice.message.content or ""
            finish = getattr(choice, "finish_reason", "") or ""
        except (AttributeError, IndexError, TypeError):
            return None, "malformed response: no choices[0].message", None
        u = getattr(resp, "usage", None)
        pt = int(getattr(u, "prompt_tokens", 0) or 0) if u is not None else estimate_tokens(messages)
        ct = int(getattr(u, "completion_tokens", 0) or 0) if u is not None else len(text) // 3
        return None, "", Reply(text=text, model=getattr(resp, "model", "") or model, prompt_tokens=pt,
                               completion_tokens=ct, finish_reason=str(finish))

    def complete_many(self, conversations: Sequence[Messages], tags: Sequence[str] = ()) -> list[Reply]:
        """Several completions at once (at most ``concurrency`` in flight), in input order."""
        tags = list(tags) or [""] * len(conversations)
        if len(conversations) <= 1:
            return [self.complete(m, t) for m, t in zip(conversations, tags)]
        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency), thread_name_prefix="kevolve-llm") as ex:
            return list(ex.map(self.complete, conversations, tags))

    def _record(self, tag: str, messages: Messages, reply: Reply) -> None:
        with self._lock:
            self.transcript.append({"tag": tag, "messages": messages, "reply": reply.text, "error": reply.error,
                                    "model": reply.model, "usage": [reply.prompt_tokens, reply.completion_tokens],
                                    "attempts": reply.attempts})


class ReplayTransport(ChatTransport):
    """Answers from a recorded transcript, in order, with no endpoint: reruns a recorded search.

    Exchanges are matched by position within each tag (so concurrent requests replay the same way
    whatever their completion order was); a request with no recorded answer gets an error reply."""

    def __init__(self, transcript: Sequence[dict], config: LLMConfig | None = None) -> None:
        super().__init__(config or LLMConfig(base_url="replay://", model="replay", budget_tokens=0), client=object())
        self._queues: dict[str, list[dict]] = {}
        for ex in transcript:
            self._queues.setdefault(ex.get("tag", ""), []).append(ex)

    def complete(self, messages: Messages, tag: str = "") -> Reply:
        with self._lock:
            q = self._queues.get(tag) or []
            ex = q.pop(0) if q else None
        if ex is None:
            reply = Reply(error=f"replay: no recorded exchange left for tag {tag!r}")
        else:
            pt, ct = (ex.get("usage") or [0, 0])[:2]
            reply = Reply(text=ex.get("reply", ""), error=ex.get("error", ""), model=ex.get("model", "replay"),
                          prompt_tokens=pt, completion_tokens=ct, attempts=0)
        with self._lock:
            self.usage.prompt_tokens += reply.prompt_tokens
            self.usage.completion_tokens += reply.completion_tokens
            self.usage.replies += reply.ok
        self._record(tag, messages, reply)
        return reply


__all__ = ["LLMConfig", "Usage", "Reply", "ChatTransport", "ReplayTransport", "BudgetExceeded", "retry_after_s",
           "estimate_tokens", "Messages"]
