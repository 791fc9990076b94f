"""Static screen for candidate kernel sources, run before a source is ever imported.

Candidate sources come from templates today and from an LLM synthesizer tomorrow; importing one runs
its top level and Triton's interpreter runs kernel bodies as plain Python. Worker processes contain
crashes and hangs, but not a source that reads files, spawns processes or reaches the network. This
check is an allow-list over the ``ast``: a kernel module needs only Triton, ``torch`` tensors'
metadata and ``math``, so anything else is refused with a message the synthesizer can act on.

It is a guard against accidents and the obvious escapes, not a sandbox: run workers without
secrets or write access you care about.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

# Modules a kernel module may import (``import X`` / ``import X as Y``). Submodules of triton too.
_IMPORTABLE = ("triton", "torch", "math")
# ``from X import ...`` is allowed from these (and their submodules for triton); not from torch, so
# ``from torch import load`` cannot dodge the torch deny list.
_FROM_IMPORTABLE = ("triton", "math")

_FORBIDDEN_BUILTINS = {
    "__import__": "__import__() imports arbitrary modules",
    "eval": "eval() runs arbitrary code",
    "exec": "exec() runs arbitrary code",
    "compile": "compile() builds arbitrary code",
    "open": "open() touches files",
    "input": "input() reads stdin",
    "breakpoint": "breakpoint() starts a debugger",
    "globals": "globals() exposes the module namespace",
    "locals": "locals() exposes the frame namespace",
    "vars": "vars() exposes object namespaces",
    "help": "help() starts an interactive pager",
    "exit": "exit() stops the process",
    "quit": "quit() stops the process",
    "memoryview": "memoryview() reads raw memory",
}
_ATTR_BUILTINS = ("getattr", "setattr", "delattr", "hasattr")

# Names of modules that reach the OS; refused as names and as attributes (``triton.x.os.system``).
_FORBIDDEN_MODULE_NAMES = {
    "os", "sys", "subprocess", "socket", "shutil", "ctypes", "importlib", "builtins", "pathlib",
    "multiprocessing", "threading", "pickle", "marshal", "inspect", "tempfile", "urllib", "pty", "posix",
}
# Frame/code introspection attributes: the non-dunder ways from an object back to globals/builtins.
_FORBIDDEN_ATTRS = {
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "gi_frame", "gi_code", "cr_frame",
    "cr_code", "ag_frame", "ag_code", "tb_frame", "tb_next", "co_code", "func_globals",
}

# ``torch.<attr>`` chains refused: files, processes, op registries, the C extension. Entries with a
# dot refuse that exact prefix (``torch.cuda.memory`` and its members). Any ``torch._private`` too.
_TORCH_DENY = {
    "load", "save", "hub", "utils", "ops", "classes", "_C", "distributed", "multiprocessing",
    "jit", "package", "library", "from_file", "compile", "export", "onnx", "backends", "profiler",
    "autograd", "cuda.memory", "cuda.set_per_process_memory_fraction", "cuda.empty_cache",
    "cuda.nvtx", "cuda.graphs", "cuda.jiterator", "Storage", "UntypedStorage", "TypedStorage",
}

# Decorators a top-level function may carry (resolved through import aliases).
_ALLOWED_DECORATORS = {"triton.jit", "triton.autotune", "triton.heuristics"}
# Calls allowed in a top-level constant's value (autotune config lists and friends), plus ``math.*``.
_TOPLEVEL_CALLS = {
    "triton.Config", "triton.language.constexpr", "triton.next_power_of_2", "triton.cdiv",
    "range", "len", "min", "max", "int", "float", "bool", "tuple", "list", "dict", "abs", "zip",
    "enumerate", "sorted", "reversed",
}


_STMT_NAMES = {
    "Expr": "expression statement", "For": "for loop", "AsyncFor": "for loop", "While": "while loop",
    "If": "if statement", "With": "with statement", "AsyncWith": "with statement", "Try": "try statement",
    "ClassDef": "class definition", "AugAssign": "augmented assignment", "Delete": "del statement",
    "Raise": "raise statement", "Assert": "assert statement", "Global": "global statement",
    "Match": "match statement", "Pass": "pass statement", "TryStar": "try statement",
}


@dataclass
class StaticReport:
    ok: bool
    problems: list[str] = field(default_factory=list)

    def message(self) -> str:
        """One line per problem; the synthesizer gets this text back."""
        return "\n".join(self.problems)


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


class _Checker(ast.NodeVisitor):
    def __init__(self) -> None:
        self.problems: list[str] = []
        # local name -> dotted module/object it is bound to by an import
        self.aliases: dict[str, str] = {}
        # local names bound to *modules* by ``import`` (must only be used as ``name.attr``)
        self.module_names: set[str] = set()
        self._parents: dict[int, ast.AST] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def add(self, node: ast.AST | None, msg: str) -> None:
        line = getattr(node, "lineno", None)
        text = f"line {line}: {msg}" if line is not None else msg
        if text not in self.problems:
            self.problems.append(text)

    def dotted(self, node: ast.AST) -> str | None:
        """``a.b.c`` with import aliases resolved (``tl.load`` -> ``triton.language.load``), else None."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(self.aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    def check_torch_chain(self, node: ast.AST, dotted: str | None) -> None:
        if not dotted or not (dotted == "torch" or dotted.startswith("torch.")):
            return
        rest = dotted[len("torch."):] if dotted != "torch" else ""
        if not rest:
            return
        first = rest.split(".")[0]
        denied = next((d for d in sorted(_TORCH_DENY) if rest == d or rest.startswith(d + ".")), None)
        if denied is None and first.startswith("_"):
            denied = first
        if denied is not None:
            self.add(node, f"torch.{denied} is not allowed in kernel sources (it touches files, processes or "
                           "PyTorch internals); use tensors passed as kernel arguments")

    # -- imports ---------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            root = a.name.split(".")[0]
            if root not in _IMPORTABLE or (root != "triton" and "." in a.name):
                self.add(node, f"import of '{a.name}' is not allowed (kernel sources may import only triton, "
                               "triton.language, torch and math)")
                continue
            if a.asname:
                self.aliases[a.asname] = a.name
                self.module_names.add(a.asname)
            else:
                self.aliases[root] = root
                self.module_names.add(root)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        root = mod.split(".")[0]
        if node.level or root not in _FROM_IMPORTABLE or (root == "math" and mod != "math"):
            what = "." * node.level + mod
            self.add(node, f"'from {what} import ...' is not allowed (kernel sources may import only triton, "
                           "triton.language, torch and math)")
            return
        for a in node.names:
            if a.name == "*":
                continue
            if _is_dunder(a.name) or a.name in _FORBIDDEN_MODULE_NAMES or a.name in _FORBIDDEN_BUILTINS:
                self.add(node, f"importing '{a.name}' from {mod} is not allowed")
                continue
            self.aliases[a.asname or a.name] = f"{mod}.{a.name}"

    # -- names and attributes --------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _FORBIDDEN_BUILTINS:
            self.add(node, f"use of {node.id} is not allowed: {_FORBIDDEN_BUILTINS[node.id]}")
        elif _is_dunder(node.id):
            self.add(node, f"use of the dunder name '{node.id}' is not allowed")
        elif node.id in _FORBIDDEN_MODULE_NAMES:
            self.add(node, f"use of '{node.id}' is not allowed (no OS, process or import machinery access)")
        elif node.id in self.module_names and not isinstance(self._parents.get(id(node)), ast.Attribute):
            parent = self._parents.get(id(node))
            if not (isinstance(parent, ast.Call) and parent.args and parent.args[0] is node
                    and isinstance(parent.func, ast.Name) and parent.func.id in _ATTR_BUILTINS):
                self.add(node, f"the module '{node.id}' may only be used as '{node.id}.name' "
                               "(passing or rebinding a module hides what is called)")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _is_dunder(node.attr):
            self.add(node, f"access to the dunder attribute '{node.attr}' is not allowed (no introspection of "
                           "Python internals)")
        elif node.attr in _FORBIDDEN_MODULE_NAMES or node.attr in _FORBIDDEN_ATTRS:
            self.add(node, f"access to '.{node.attr}' is not allowed (no OS, process, frame or import machinery access)")
        if not isinstance(node.ctx, ast.Load):
            root = node
            while isinstance(root, ast.Attribute):
                root = root.value  # type: ignore[assignment]
            if isinstance(root, ast.Name) and root.id in self.aliases:
                self.add(node, f"assigning to '{self.dotted(node)}' is not allowed (no monkey-patching of modules)")
        # only judge the outermost attribute of a chain for the torch deny list
        if not isinstance(self._parents.get(id(node)), ast.Attribute):
            self.check_torch_chain(node, self.dotted(node))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in _ATTR_BUILTINS:
            name_arg = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(name_arg, ast.Constant) and isinstance(name_arg.value, str)):
                self.add(node, f"{node.func.id}() needs a literal attribute name (computed names hide what is accessed)")
            else:
                attr = name_arg.value
                if _is_dunder(attr):
                    self.add(node, f"{node.func.id}() with the dunder name '{attr}' is not allowed")
                elif attr in _FORBIDDEN_MODULE_NAMES or attr in _FORBIDDEN_ATTRS:
                    self.add(node, f"{node.func.id}() with '{attr}' is not allowed")
                elif node.args:
                    base = self.dotted(node.args[0])
                    if base is not None:
                        self.check_torch_chain(node, f"{base}.{attr}")
        self.generic_visit(node)

    def generic_visit(self, node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            self._parents[id(child)] = node
        super().generic_visit(node)

    # -- module top level ------------------------------------------------------------------------
    def _decorator_ok(self, dec: ast.expr) -> bool:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = self.dotted(target)
        return name in _ALLOWED_DECORATORS

    def _constant_expr(self, value: ast.expr) -> str | None:
        """Why ``value`` is not a constant expression (None when it is)."""
        for sub in ast.walk(value):
            if isinstance(sub, ast.Call):
                name = self.dotted(sub.func)
                if name not in _TOPLEVEL_CALLS and not (name or "").startswith("math."):
                    return f"calls {name or 'a computed function'}()"
            elif isinstance(sub, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
                return f"uses {type(sub).__name__}"
        return None

    def check_module(self, tree: ast.Module) -> None:
        for i, stmt in enumerate(tree.body):
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                continue  # docstring / string statement
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if isinstance(stmt, ast.AsyncFunctionDef):
                    self.add(stmt, f"async function '{stmt.name}' is not allowed")
                for dec in stmt.decorator_list:
                    if not self._decorator_ok(dec):
                        shown = ast.unparse(dec)
                        self.add(dec, f"decorator '@{shown}' on '{stmt.name}' is not allowed (only @triton.jit, "
                                      "@triton.autotune(...) and @triton.heuristics(...))")
                continue
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if not all(_binds_names_only(t) for t in targets):
                    self.add(stmt, "top-level assignments may only bind plain names")
                if stmt.value is not None:
                    why = self._constant_expr(stmt.value)
                    if why is not None:
                        self.add(stmt, f"top-level assignment {why}: the top level may only hold imports, function "
                                       "definitions, constants and docstrings")
                continue
            kind = _STMT_NAMES.get(type(stmt).__name__, type(stmt).__name__)
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                fn = self.dotted(stmt.value.func) or "a function"
                self.add(stmt, f"top-level call to {fn}() is not allowed: the top level may only hold imports, "
                               "function definitions, constants and docstrings (code there runs on import)")
            else:
                self.add(stmt, f"top-level {kind} is not allowed: the top level may only hold imports, "
                               "function definitions, constants and docstrings (code there runs on import)")


def _binds_names_only(target: ast.expr) -> bool:
    if isinstance(target, ast.Name):
        return True
    if isinstance(target, (ast.Tuple, ast.List)):
        return all(_binds_names_only(e) for e in target.elts)
    if isinstance(target, ast.Starred):
        return _binds_names_only(target.value)
    return False


def check_source(source: str) -> StaticReport:
    """Screen a candidate kernel module's source; ``ok`` only when no problem was found."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return StaticReport(False, [f"line {e.lineno}: syntax error: {e.msg}"])
    except (ValueError, RecursionError) as e:  # null bytes, absurd nesting
        return StaticReport(False, [f"source cannot be parsed: {e}"])
    checker = _Checker()
    # Imports anywhere bind aliases; collect them first so uses before an inner import resolve.
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            checker.visit(node)
    checker.problems.clear()
    checker.visit(tree)
    checker.check_module(tree)
    problems = sorted(checker.problems, key=_line_of)
    return StaticReport(not problems, problems)


def _line_of(p: str) -> int:
    if p.startswith("line "):
        head = p[5:].split(":", 1)[0]
        if head.isdigit():
            return int(head)
    return 0


__all__ = ["StaticReport", "check_source"]
