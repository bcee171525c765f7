"""``lint(workflow)``: determinism hazards and silent bugs in a workflow's body.

A workflow is replayed from its history, so its body must make the same decisions every
time it runs. Codes (each finding names file:line and a one-line fix):

- SM100 the workflow's source cannot be read (nothing was checked)
- SM101 ``time.*`` call (``time.time()``, ``time.sleep()``, ``time.monotonic()``...)
- SM102 ``datetime.now()/utcnow()/today()``, ``date.today()``
- SM103 ``random.*`` (also ``numpy.random``, ``secrets``, ``os.urandom``)
- SM104 ``uuid.uuid1()`` / ``uuid.uuid4()``
- SM105 ``os.environ`` / ``os.getenv()``: configuration may differ between processes
- SM106 file or network I/O: ``open``, requests/httpx/urllib/socket/aiohttp, subprocess
- SM107 threads: ``threading``, ``concurrent.futures``, ``multiprocessing``
- SM108 ``asyncio``
- SM109 iterating a set (a literal, ``set(...)``/``frozenset(...)``, or a name last
  assigned one): string hashing makes the order differ between processes
- SM110 ``global`` statement: module state is not part of the history
- SM111 a step or ``sm.*`` command called without ``yield``: it builds a command and
  drops it (a silent no-op). Also ``x = step(...)`` when ``x`` is never yielded nor
  handed on (to ``sm.join``, a list, a helper...): the step never runs, and ``x`` is a
  ``StepCall``, not the step's result (write ``x = yield from step(...)``)
- SM112 bare ``except:``; SM113 ``except BaseException``: they also catch the
  ``GeneratorExit`` used to close a workflow and the runtime's cancellation

Only the workflow body is checked (and helper generators it runs with ``yield from``);
nested ``def``/``class`` bodies are not. Names resolve through the function's globals
and closure, so ``from squidmesh import random`` is not mistaken for ``random``.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

from squidmesh.analysis import source as src
from squidmesh.analysis.source import MISSING, FunctionSource, Scope, StepRef

__all__ = ["CODES", "Finding", "lint"]

# name -> [(line, assigned value or None)] of the plain-name bindings in a body.
_Assignments = dict[str, list[tuple[int, "ast.expr | None"]]]

IO_HINT = "do I/O inside an `@sm.step` and `yield` it"


@dataclasses.dataclass(frozen=True)
class Finding:
    code: str
    message: str
    file: str
    lineno: int
    hint: str

    def __str__(self) -> str:
        return f"{self.file}:{self.lineno}: {self.code} {self.message} (fix: {self.hint})"


# (code, qualified-name prefixes, what it is, fix). A prefix matches the name itself or
# anything below it: "time" matches "time.time" but not "datetime.time".
_CALL_RULES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("SM101", ("time",), "reads the clock or blocks the worker", "use `yield from sm.now()`"),
    (
        "SM102",
        (
            "datetime.datetime.now",
            "datetime.datetime.utcnow",
            "datetime.datetime.today",
            "datetime.date.today",
        ),
        "reads the clock: the value differs on replay",
        "use `yield from sm.now()`",
    ),
    (
        "SM103",
        ("random", "numpy.random", "secrets", "os.urandom"),
        "is random: the value differs on replay",
        "use `yield from sm.random()`",
    ),
    (
        "SM104",
        ("uuid.uuid1", "uuid.uuid4"),
        "is random: the value differs on replay",
        "use `yield from sm.uuid4()`",
    ),
    (
        "SM105",
        ("os.getenv", "os.getenvb", "os.putenv", "os.unsetenv"),
        "reads process configuration that may differ on replay",
        "pass it in the payload or read it inside a step",
    ),
    (
        "SM106",
        (
            "builtins.open",
            "io.open",
            "requests",
            "httpx",
            "urllib",
            "urllib3",
            "aiohttp",
            "socket",
            "http.client",
            "ftplib",
            "smtplib",
            "subprocess",
            "shutil",
            "os.system",
            "os.popen",
            "os.listdir",
            "os.scandir",
            "os.walk",
            "os.remove",
            "os.unlink",
            "os.rename",
            "os.mkdir",
            "os.makedirs",
        ),
        "does I/O: it runs again on every replay",
        IO_HINT,
    ),
    (
        "SM107",
        ("threading", "_thread", "concurrent.futures", "multiprocessing"),
        "starts threads or processes: their timing is not replayable",
        "run parallel work with `yield sm.join(...)` of steps",
    ),
    (
        "SM108",
        ("asyncio",),
        "uses asyncio: workflows are synchronous generators",
        "put async code in an `async def` step",
    ),
)
_SM101_SLEEP_HINT = "use `yield sm.sleep(seconds=...)`"

#: code -> short title, for documentation and CLI listings.
CODES: dict[str, str] = {
    "SM100": "source unavailable",
    "SM101": "time.* call",
    "SM102": "datetime.now/utcnow/today or date.today",
    "SM103": "random",
    "SM104": "uuid.uuid1/uuid4",
    "SM105": "os.environ / os.getenv",
    "SM106": "file or network I/O",
    "SM107": "threads",
    "SM108": "asyncio",
    "SM109": "iterating a set",
    "SM110": "global statement",
    "SM111": "step or command called without yield",
    "SM112": "bare except",
    "SM113": "except BaseException",
}
_EXCEPT_HINT = "catch `sm.StepFailed` or a specific exception type"
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
#: expressions whose value is (or may be) the command itself, and those that consume it
_CONTAINERS = (ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Starred, ast.BoolOp)
_CONSUMERS = (
    ast.Attribute,
    ast.Subscript,
    ast.Compare,
    ast.BinOp,
    ast.UnaryOp,
    ast.FormattedValue,
    ast.Expr,
)


def lint(workflow: Any) -> list[Finding]:
    """Findings for a ``WorkflowDefinition`` (or a plain generator function), sorted by
    file and line. Never raises for odd code: what cannot be read is SM100."""
    linter = _Linter()
    linter.function(getattr(workflow, "fn", workflow))
    unique = dict.fromkeys(linter.findings)
    return sorted(unique, key=lambda f: (f.file, f.lineno, f.code))


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class _Linter:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.seen: set[Any] = set()  # code objects already checked (helpers, recursion)

    def function(self, fn: Any, *, body: bool = True) -> None:
        source = src.load(fn)
        key = getattr(source.fn, "__code__", None) or id(source.fn)
        if key in self.seen:
            return
        self.seen.add(key)
        if source.tree is None:
            self._add(
                source,
                None,
                "SM100",
                f"cannot check the workflow: {source.error}",
                "define the workflow in a module file",
            )
            return
        scope = Scope(source.fn, source.tree)
        sets = _set_assignments(source.tree)
        for node in src.iter_scope(source.tree):
            self._check(node, source, scope, sets)
        self._never_yielded(source, scope, returns_to_caller=not body)

    def _add(
        self, source: FunctionSource, node: ast.AST | None, code: str, message: str, hint: str
    ) -> None:
        line = source.line(node) if node is not None else source.line(source.tree or ast.Pass())
        self.findings.append(Finding(code, message, source.file, line, hint))

    def _check(
        self, node: ast.AST, source: FunctionSource, scope: Scope, sets: _Assignments
    ) -> None:
        if isinstance(node, ast.Call):
            self._call(node, source, scope)
        elif isinstance(node, (ast.Attribute, ast.Name)) and isinstance(node.ctx, ast.Load):
            if src.qualified_name(scope, node) == "os.environ":
                self._add(
                    source,
                    node,
                    "SM105",
                    f"`{source.segment(node)}` reads process configuration that may "
                    "differ on replay",
                    "pass it in the payload or read it inside a step",
                )
        elif isinstance(node, ast.Global):
            self._add(
                source,
                node,
                "SM110",
                f"`global {', '.join(node.names)}`: module state is not replayed",
                "keep state in local variables or step results",
            )
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            target = src.callee(scope, node.value.func)
            if isinstance(target, StepRef) or src.is_constructor(target):
                text = source.segment(node.value.func)
                self._add(
                    source,
                    node,
                    "SM111",
                    f"`{text}(...)` is called without `yield`: it does nothing",
                    f"write `yield {text}(...)`",
                )
        elif isinstance(node, ast.ExceptHandler):
            self._handler(node, source, scope)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            if _is_set(node.iter, scope, sets, source.line(node.iter) - source.offset):
                self._add(
                    source,
                    node.iter,
                    "SM109",
                    f"iterates the set `{source.segment(node.iter)}`: its order differs "
                    "between processes",
                    "iterate `sorted(...)` instead",
                )
        elif isinstance(node, ast.YieldFrom) and isinstance(node.value, ast.Call):
            # Helper generators run as part of the workflow: check them too.
            target = src.callee(scope, node.value.func)
            if target is not MISSING and not isinstance(target, StepRef):
                helper = src.generator_target(target)
                if helper is not None:
                    self.function(helper, body=False)

    def _call(self, node: ast.Call, source: FunctionSource, scope: Scope) -> None:
        name = src.qualified_name(scope, node.func)
        if name is None:
            return
        for code, prefixes, what, hint in _CALL_RULES:
            if _matches(name, prefixes):
                if code == "SM101" and name == "time.sleep":
                    hint = _SM101_SLEEP_HINT
                self._add(source, node, code, f"`{source.segment(node.func)}()` {what}", hint)
                return

    def _never_yielded(
        self, source: FunctionSource, scope: Scope, *, returns_to_caller: bool
    ) -> None:
        """``x = step(...)`` where ``x`` is never yielded nor handed on: SM111."""
        tree = source.tree
        assert tree is not None
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in src.iter_scope(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if not isinstance(target, ast.Name) or not isinstance(value, ast.Call):
                continue
            callee = src.callee(scope, value.func)
            if not (isinstance(callee, StepRef) or src.is_constructor(callee)):
                continue
            loads = [
                n
                for n in ast.walk(tree)
                if isinstance(n, ast.Name) and n.id == target.id and isinstance(n.ctx, ast.Load)
            ]
            if any(_handed_on(n, parents, tree, returns_to_caller) for n in loads):
                continue
            text = source.segment(value.func)
            self._add(
                source,
                node,
                "SM111",
                f"`{target.id} = {text}(...)` is never yielded: the step does not run and "
                f"`{target.id}` is a command, not its result",
                f"write `{target.id} = yield from {text}(...)`",
            )

    def _handler(self, node: ast.ExceptHandler, source: FunctionSource, scope: Scope) -> None:
        if node.type is None:
            self._add(
                source,
                node,
                "SM112",
                "bare `except:` also catches GeneratorExit and run cancellation",
                _EXCEPT_HINT,
            )
            return
        types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        if any(src.qualified_name(scope, t) == "builtins.BaseException" for t in types):
            self._add(
                source,
                node,
                "SM113",
                "`except BaseException` also catches GeneratorExit and run cancellation",
                _EXCEPT_HINT,
            )


def _handed_on(
    load: ast.Name, parents: dict[ast.AST, ast.AST], top: ast.AST, returns_to_caller: bool
) -> bool:
    """Whether this use of a variable holding a command may get it yielded later: yielded
    (also inside ``sm.join(...)``), passed to a call, stored, assigned on, used by a
    nested function... Only uses that certainly consume it as a value are not:
    ``x.attr``, ``x[...]``, comparisons, arithmetic, f-strings, tests, and ``return x``
    from the workflow (the run's result would hold a command)."""
    node: ast.AST = load
    while True:
        parent = parents.get(node, top)
        if parent is top or isinstance(parent, _DEFINITIONS):
            return True  # a nested function may yield it: unknowable
        if isinstance(parent, _CONTAINERS) or (
            isinstance(parent, ast.IfExp) and parent.test is not node
        ):
            node = parent  # the value flows on: judge what happens to the container
            continue
        if isinstance(parent, ast.Return):
            return returns_to_caller  # a helper generator may return it to be yielded
        if isinstance(parent, _CONSUMERS):
            return False
        if isinstance(parent, (ast.If, ast.While, ast.Assert, ast.IfExp)):
            return parent.test is not node
        if isinstance(parent, ast.Call):
            return parent.func is not node
        return True


def _is_set_expr(expr: ast.AST, scope: Scope) -> bool:
    if isinstance(expr, (ast.Set, ast.SetComp)):
        return True
    if isinstance(expr, ast.Call):
        return src.qualified_name(scope, expr.func) in ("builtins.set", "builtins.frozenset")
    return False


def _set_assignments(tree: ast.AST) -> _Assignments:
    """name -> [(line, assigned value)] for plain-name assignments in the body."""
    found: _Assignments = {}
    for node in src.iter_scope(tree):
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if not isinstance(node, ast.stmt):
            continue
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                found.setdefault(target.id, []).append((node.lineno, value))
    return found


def _is_set(expr: ast.expr, scope: Scope, sets: _Assignments, line: int) -> bool:
    if _is_set_expr(expr, scope):
        return True
    if not isinstance(expr, ast.Name):
        return False
    # The assignment in force is the last one written above the loop (flow-insensitive,
    # but it keeps `xs = set(...); xs = sorted(xs)` quiet).
    before = [value for lineno, value in sets.get(expr.id, ()) if lineno <= line]
    return bool(before) and before[-1] is not None and _is_set_expr(before[-1], scope)
