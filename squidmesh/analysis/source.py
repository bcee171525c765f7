"""Shared plumbing of the analyzer: a function's source as an AST, and name resolution.

Resolution is *static*: names are looked up in the function's closure cells and
``__globals__`` dict, attributes with ``inspect.getattr_static``. Nothing the user wrote
is called or imported, so analysing a workflow can never run its code (no properties,
no module-level ``__getattr__``, no descriptors).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import inspect
import os
import textwrap
import types
from collections.abc import Callable, Iterator
from typing import Any

from squidmesh.core import commands
from squidmesh.core.definition import StepDefinition, WorkflowDefinition, step

__all__ = [
    "CONSTRUCTORS",
    "MISSING",
    "FunctionSource",
    "Scope",
    "StepRef",
    "callee",
    "generator_target",
    "is_constructor",
    "iter_scope",
    "load",
    "qualified_name",
]

MISSING: Any = object()

#: ``sm.*`` command constructors -> the graph node kind they produce.
CONSTRUCTORS: dict[Callable[..., Any], str] = {
    commands.sleep: "sleep",
    commands.sleep_until: "sleep",
    commands.pause: "pause",
    commands.approval: "approval",
    commands.wait_for_event: "event",
    commands.join: "join",
    commands.first: "first",
    commands.log: "log",
    commands.undo: "undo",
    commands.now: "now",
    commands.uuid4: "uuid4",
    commands.random: "random",
    commands.patched: "patched",
    commands.child: "child",
    commands.start_child: "start_child",
    commands.continue_as_new: "continue_as_new",
    commands.publish: "publish",
}

# Scopes of their own: code inside them is not the workflow body being analysed.
NESTED_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Lambda,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


@dataclasses.dataclass(frozen=True)
class StepRef:
    """A call target that is a step, by its durable name (what history records)."""

    name: str


@dataclasses.dataclass
class FunctionSource:
    """The parsed source of one function; ``tree`` is None when it cannot be had."""

    fn: Any
    file: str
    tree: ast.FunctionDef | ast.AsyncFunctionDef | None
    text: str = ""
    offset: int = 0  # added to AST line numbers to get file line numbers
    error: str | None = None

    def line(self, node: ast.AST) -> int:
        return int(getattr(node, "lineno", 1)) + self.offset

    def segment(self, node: ast.AST) -> str:
        """The node's source text as written (falls back to ``ast.unparse``)."""
        text = None
        try:
            text = ast.get_source_segment(self.text, node)
        except Exception:  # positions may not match a re-indented source
            text = None
        if not text:
            try:
                text = ast.unparse(node)
            except Exception:
                text = type(node).__name__
        return " ".join(text.split())  # one line: it ends up in labels


def load(fn: Any) -> FunctionSource:
    """Parse ``fn``'s source. Decorator wrappers are peeled off (``__wrapped__``) so
    stacked decorators point at the function the user actually wrote."""
    target = _unwrap(fn)
    file = "<unknown>"
    try:
        file = inspect.getsourcefile(target) or inspect.getfile(target)
    except (TypeError, OSError):
        pass
    try:
        lines, start = inspect.getsourcelines(target)
    except (TypeError, OSError) as exc:
        return FunctionSource(target, file, None, error=f"source unavailable: {exc}")
    raw = "".join(lines)
    name = getattr(target, "__name__", None)
    # Indented sources (methods, functions defined in functions) parse once dedented; a
    # multi-line string at column 0 defeats dedent, hence the `if 1:` fallback.
    for text, offset in ((textwrap.dedent(raw), start - 1), ("if 1:\n" + raw, start - 2)):
        try:
            module = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(module):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                name is None or node.name == name
            ):
                return FunctionSource(target, file, node, text, offset)
        break
    return FunctionSource(target, file, None, error="could not parse the function's source")


def _unwrap(fn: Any) -> Any:
    try:
        return inspect.unwrap(fn)
    except ValueError:  # a __wrapped__ cycle
        return fn


class Scope:
    """What a name means inside one function, without running anything."""

    def __init__(self, fn: Any, tree: ast.AST | None = None) -> None:
        code = getattr(fn, "__code__", None)
        self.locals: frozenset[str] = frozenset(
            (getattr(code, "co_varnames", ()) or ()) + (getattr(code, "co_cellvars", ()) or ())
        )
        self.globals: dict[str, Any] = dict(getattr(fn, "__globals__", None) or {})
        self.closure: dict[str, Any] = {}
        cells = getattr(fn, "__closure__", None) or ()
        for var, cell in zip(getattr(code, "co_freevars", ()) or (), cells, strict=False):
            try:
                self.closure[var] = cell.cell_contents
            except ValueError:  # an empty cell: the variable is not assigned yet
                pass
        # `import x as y` inside the body: y is a local, but statically it is module x.
        self.imports: dict[str, str] = {}
        if tree is not None:
            for node in iter_scope(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.asname:
                            self.imports[alias.asname] = alias.name
                        else:
                            top = alias.name.split(".")[0]
                            self.imports[top] = top
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    for alias in node.names:
                        self.imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def lookup(self, name: str) -> Any:
        """The object bound to a free name, or MISSING (locals are unknowable)."""
        if name in self.locals:
            return MISSING
        if name in self.closure:
            return self.closure[name]
        if name in self.globals:
            return self.globals[name]
        return getattr(builtins, name, MISSING)

    def resolve(self, expr: ast.AST) -> Any:
        """The object a Name / dotted Attribute chain refers to, or MISSING."""
        if isinstance(expr, ast.Name):
            return self.lookup(expr.id)
        if isinstance(expr, ast.Attribute):
            base = self.resolve(expr.value)
            if base is MISSING:
                return MISSING
            try:
                return inspect.getattr_static(base, expr.attr)
            except AttributeError:
                return MISSING
        return MISSING


def iter_scope(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of a function body, not descending into nested function/class scopes
    (lambdas and comprehensions are walked: they run as part of the body)."""
    stack: list[ast.AST] = list(ast.iter_child_nodes(tree))
    if isinstance(tree, (ast.FunctionDef, ast.AsyncFunctionDef)):
        stack = list(reversed(tree.body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def qualified_name(scope: Scope, expr: ast.AST) -> str | None:
    """``module.attr.attr`` for a Name/Attribute chain, resolving only its root name.

    ``dt.datetime.now`` with ``import datetime as dt`` is ``datetime.datetime.now``;
    ``now`` after ``from time import time as now`` is ``time.time``. A local variable
    is unknowable (None); an unbound free name keeps its spelling, so hazards are
    still caught in code that is not importable as written.
    """
    attrs: list[str] = []
    while isinstance(expr, ast.Attribute):
        attrs.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    root = expr.id
    if root in scope.imports:
        base: str | None = scope.imports[root]
    else:
        obj = scope.lookup(root)
        if obj is MISSING:
            base = None if root in scope.locals else root
        else:
            base = _object_name(obj)
    if base is None:
        return None
    return ".".join([base, *reversed(attrs)])


def _object_name(obj: Any) -> str | None:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    if isinstance(obj, (type, types.FunctionType)):
        return f"{obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, (types.BuiltinFunctionType, types.MethodType)):
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "?")
        if isinstance(owner, types.ModuleType):
            return f"{owner.__name__}.{name}"
        if isinstance(owner, type):
            return f"{owner.__module__}.{owner.__qualname__}.{name}"
        if owner is not None:  # e.g. random.random, bound to the module's Random()
            return f"{type(owner).__module__}.{name}"
        module = getattr(obj, "__module__", None)
        return f"{module}.{name}" if module else name
    if _is_environ(obj):
        return "os.environ"
    return None


def _is_environ(obj: Any) -> bool:
    # Identity only: the analyzer never reads the environment.
    return obj is os.environ


def callee(scope: Scope, func: ast.AST) -> Any:
    """What a call's ``func`` is: a ``StepRef`` for steps (including ``step.options(...)``
    and ``sm.step(fn)``), else the resolved object, else MISSING."""
    if isinstance(func, ast.Call):
        inner = func.func
        # my_step.options(name=..., retry=...)(...)
        if isinstance(inner, ast.Attribute) and inner.attr == "options":
            base = scope.resolve(inner.value)
            if isinstance(base, StepDefinition):
                return StepRef(_const_kw(func, "name") or base.name)
            return MISSING
        # sm.step(fn)(...) and sm.step(name=...)(fn)(...)
        if scope.resolve(inner) is step and func.args:
            return StepRef(_const_kw(func, "name") or _fn_name(scope, func.args[0]))
        if (
            isinstance(inner, ast.Call)
            and scope.resolve(inner.func) is step
            and not inner.args
            and func.args
        ):
            return StepRef(_const_kw(inner, "name") or _fn_name(scope, func.args[0]))
        return MISSING
    obj = scope.resolve(func)
    if isinstance(obj, StepDefinition):
        return StepRef(obj.name)
    return obj


def _const_kw(call: ast.Call, name: str) -> str | None:
    for kw in call.keywords:
        value = kw.value
        if kw.arg == name and isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
    return None


def _fn_name(scope: Scope, expr: ast.AST) -> str:
    obj = scope.resolve(expr)
    name = getattr(obj, "__name__", None) if obj is not MISSING else None
    if isinstance(name, str):
        return name
    return expr.attr if isinstance(expr, ast.Attribute) else getattr(expr, "id", "?")


def is_constructor(target: Any) -> bool:
    """True for an ``sm.*`` command constructor (``sm.sleep``, ``sm.join``...)."""
    try:
        return target in CONSTRUCTORS
    except TypeError:  # unhashable: not one of our functions
        return False


def generator_target(obj: Any) -> Any:
    """The generator function behind ``yield from obj(...)``, or None."""
    if isinstance(obj, WorkflowDefinition):
        obj = obj.fn
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    target = _unwrap(obj)
    return target if inspect.isgeneratorfunction(target) else None
