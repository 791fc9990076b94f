"""From a model's reply to a Candidate, or to a reason it is not one (a value, never an exception).

Why so strict before anything runs: an LLM candidate is launched through the *template's* call
plan, so it must keep the template's entry point (kernel names and parameters, in order) and its
config keys; and generated code is statically screened (``harness.static_check``) before it can
become a candidate, because the in-process evaluator imports sources without a worker around them.
The reasons are written for the model: the synthesizer sends them back once for a corrected reply.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..families.base import Candidate, In, Out, Ws
from ..harness.static_check import check_source

if TYPE_CHECKING:
    from ..families.base import OpFamily
    from ..spec import OpSpec


# -- the entry-point contract -----------------------------------------------------------------------
@dataclass(frozen=True)
class KernelSig:
    name: str
    params: tuple[str, ...]
    constexprs: tuple[str, ...]
    text: str  # the ``def`` line(s) as the template writes them


@dataclass(frozen=True)
class Contract:
    """What a rewrite of ``template`` must keep: the launched kernels' signatures, and the config
    keys the call plan reads (with the template candidate's values)."""

    template: str
    kernels: tuple[KernelSig, ...]
    bindings: tuple[tuple[str, str, str], ...] = ()  # (kernel, parameter, what the host passes)
    grids: tuple[tuple[str, tuple], ...] = ()  # (kernel, grid) per launch
    launch: tuple[tuple[str, int, int], ...] = ()  # (kernel, num_warps, num_stages) per launch
    config: tuple[tuple[str, Any], ...] = ()
    outputs: tuple[str, ...] = ()
    workspace: tuple[str, ...] = ()
    problem: str = ""  # why the plan could not be built for the template (then bindings are empty)

    @property
    def config_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.config)


def _defs(source: str) -> dict[str, ast.FunctionDef]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _is_constexpr(a: ast.arg) -> bool:
    return a.annotation is not None and "constexpr" in ast.unparse(a.annotation)


def _sig(fn: ast.FunctionDef) -> KernelSig:
    args = [*fn.args.posonlyargs, *fn.args.args]
    header = f"def {fn.name}({ast.unparse(fn.args)}):"
    return KernelSig(fn.name, tuple(a.arg for a in args), tuple(a.arg for a in args if _is_constexpr(a)), header)


def _what(v: Any, spec: "OpSpec") -> str:
    if isinstance(v, In):
        sig = spec.args[v.i] if v.i < len(spec.args) else None
        if sig is None:
            return f"input {v.i}"
        return f"input {v.i} ({sig.dtype}{list(sig.shape)}, strides {list(sig.stride)})"
    if isinstance(v, Out):
        return f"output buffer {v.j}"
    if isinstance(v, Ws):
        return f"workspace buffer {v.k}"
    return f"= {v!r}"


def extract_contract(family: "OpFamily", spec: "OpSpec", cand: Candidate) -> Contract:
    """The contract of ``cand``'s template, read from its source and its call plan for ``spec``."""
    defs = _defs(cand.source)
    try:
        plan = family.call_plan(spec, cand)
    except Exception as e:  # noqa: BLE001 - still give the model the signatures
        jit = [d for d in defs.values() if any("jit" in ast.unparse(x) for x in d.decorator_list)]
        return Contract(cand.template, tuple(_sig(d) for d in jit), config=cand.config,
                        problem=f"{type(e).__name__}: {e}")
    kernels = tuple(_sig(defs[k]) for k in plan.kernels if k in defs)
    bindings = tuple((st.kernel, name, _what(v, spec)) for st in plan.steps for name, v in st.args)
    grids = tuple((st.kernel, tuple(st.grid)) for st in plan.steps)
    launch = tuple((st.kernel, st.num_warps, st.num_stages) for st in plan.steps)
    outs = tuple(f"output {j}: {o.dtype}{list(o.shape)}"
                 + (" (uninitialized: write every element)" if o.fill is None else f" pre-filled with {o.fill}")
                 for j, o in enumerate(plan.outputs))
    ws = tuple(f"workspace {k}: {o.dtype}{list(o.shape)}" for k, o in enumerate(plan.workspace))
    return Contract(cand.template, kernels, bindings, grids, launch, cand.config, outs, ws)


def check_contract(source: str, contract: Contract) -> list[str]:
    """Problems keeping ``source`` from being launched by the template's call plan."""
    defs = _defs(source)
    problems = []
    for k in contract.kernels:
        fn = defs.get(k.name)
        if fn is None:
            problems.append(f"the module must define the kernel `{k.name}` at top level (the host launches it by name)")
            continue
        if not any("jit" in ast.unparse(d) for d in fn.decorator_list):
            problems.append(f"`{k.name}` must be decorated with @triton.jit")
        got = _sig(fn)
        if got.params != k.params:
            problems.append(f"`{k.name}` must keep the parameters ({', '.join(k.params)}) in this order; "
                            f"got ({', '.join(got.params)})")
        missing = [p for p in k.constexprs if p in got.params and p not in got.constexprs]
        if missing:
            problems.append(f"`{k.name}`: parameters {missing} must stay `tl.constexpr`")
    return problems


# -- reply parsing --------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


@dataclass
class ParsedReply:
    ok: bool
    source: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the config the candidate will be launched with
    reason: str = ""  # why not ok (written for the model)
    notes: list[str] = field(default_factory=list)  # accepted, with remarks (ignored keys...)
    rationale: str = ""  # the reply's prose before the code


def _blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, body, closed) of each fenced block."""
    out = []
    for m in _FENCE.finditer(text):
        closed = text[m.end() - 3:m.end()] == "```"
        out.append((m.group(1).lower(), m.group(2), closed))
    return out


def extract_code(text: str, names: tuple[str, ...] = ()) -> tuple[str, str]:
    """(source, reason): the fenced Python block holding the kernel module, preferring one that
    defines the contract's kernels; a bare module (no fences) is accepted when it starts with imports."""
    blocks = _blocks(text)
    code = [(b, closed) for lang, b, closed in blocks if lang in ("python", "py", "python3", "triton", "")
            and ("def " in b or "import" in b)]
    if code:
        def score(item: tuple[str, bool]) -> tuple:
            b, closed = item
            return (sum(f"def {n}(" in b for n in names), "@triton.jit" in b, closed, len(b))

        body, closed = max(code, key=score)
        if not closed:
            return body, "the reply was cut off inside the code block (no closing ```): reply with a shorter module"
        return body.strip("\n") + "\n", ""
    stripped = text.strip()
    if not blocks and stripped.startswith(("import ", "from ")) and "@triton.jit" in stripped:
        return stripped + "\n", ""
    return "", "no ```python code block with the kernel module was found in the reply"


def extract_config(text: str) -> tuple[dict[str, Any] | None, str]:
    """(config, reason) from the last ```json block; (None, "") when there is none."""
    js = [b for lang, b, _ in _blocks(text) if lang == "json"]
    if not js:
        return None, ""
    try:
        cfg = json.loads(js[-1])
    except json.JSONDecodeError as e:
        return None, f"the ```json config block is not valid JSON: {e}"
    if not isinstance(cfg, dict):
        return None, "the ```json config block must be one object mapping config keys to values"
    return cfg, ""


def _coerce(key: str, new: Any, old: Any) -> tuple[Any, str]:
    if isinstance(old, bool):
        if isinstance(new, bool) or new in (0, 1):
            return bool(new), ""
    elif isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new, ""
        if isinstance(new, float) and new.is_integer():
            return int(new), ""
    elif isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new), ""
    elif isinstance(old, str):
        if isinstance(new, str):
            return new, ""
    elif old is None or isinstance(old, (list, tuple)):
        return (tuple(new) if isinstance(new, list) else new), ""
    return None, f"config `{key}` must be a {type(old).__name__} like the template's {old!r}, got {new!r}"


def merge_config(base: tuple[tuple[str, Any], ...], given: dict[str, Any] | None
                 ) -> tuple[dict[str, Any], str, list[str]]:
    """The template's config with the reply's values for its keys; other keys are dropped with a note."""
    cfg = dict(base)
    notes: list[str] = []
    if not given:
        return cfg, "", notes
    unknown = [k for k in given if k not in cfg]
    if unknown:
        notes.append(f"ignored config keys the call plan does not read: {unknown}")
    for k, v in given.items():
        if k in cfg:
            val, why = _coerce(k, v, cfg[k])
            if why:
                return cfg, why, notes
            cfg[k] = val
    return cfg, "", notes


def parse_reply(text: str, contract: Contract) -> ParsedReply:
    """Code block -> static check -> entry-point contract -> config. Never raises."""
    if not text or not text.strip():
        return ParsedReply(False, reason="the reply was empty")
    names = tuple(k.name for k in contract.kernels)
    source, why = extract_code(text, names)
    rationale = text.split("```", 1)[0].strip()[:600]
    if why:
        return ParsedReply(False, source, reason=why, rationale=rationale)
    report = check_source(source)
    if not report.ok:
        return ParsedReply(False, source, reason="the static check rejected the module:\n" + report.message(),
                           rationale=rationale)
    problems = check_contract(source, contract)
    if problems:
        return ParsedReply(False, source, reason="the module breaks the entry-point contract:\n" + "\n".join(problems),
                           rationale=rationale)
    given, why = extract_config(text)
    if why:
        return ParsedReply(False, source, reason=why, rationale=rationale)
    cfg, why, notes = merge_config(contract.config, given)
    if why:
        return ParsedReply(False, source, reason=why, notes=notes, rationale=rationale)
    return ParsedReply(True, source, cfg, notes=notes, rationale=rationale)


def to_candidate(parsed: ParsedReply, template: Candidate, model: str) -> Candidate:
    """A parsed reply as a Candidate of the template it rewrites (same knobs, same order)."""
    order = [k for k, _ in template.config]
    config = tuple((k, parsed.config[k]) for k in order if k in parsed.config)
    return Candidate(source=parsed.source, config=config, origin=f"llm:{model or 'unknown'}",
                     template=template.template)


__all__ = ["KernelSig", "Contract", "ParsedReply", "extract_contract", "check_contract", "extract_code",
           "extract_config", "merge_config", "parse_reply", "to_candidate"]
