"""``step_graph(workflow)``: the step graph of a workflow, read from its source.

The workflow function is parsed (``inspect.getsource`` + ``ast``), never run. Each
``yield`` of a command becomes a node (``yield from`` a command too: it is the typed
spelling of the same yield); Python control flow becomes edges:

- ``next``   plain sequence;
- ``branch`` an ``if``/``while``/``for``/``match`` arm, labelled ``True``/``False`` with
  the condition's source text (nested conditions are conjoined);
- ``error``  from every command inside a ``try`` body to each ``except`` handler,
  labelled with the handler's exception text (``*`` for a bare ``except:``);
- ``loop``   the back edge of a ``for``/``while`` body to the loop's first command.

Node kinds: ``start``, ``step``, ``sleep``, ``pause``, ``approval``, ``event``, ``join``
and ``first`` (their branches are child nodes with ``parent`` set; a ``join`` with
``limit=`` carries it in ``detail``), ``child`` and ``start_child`` (named for the child's
workflow), ``publish`` (named for what it publishes), ``continue_as_new`` (the run ends
there, like ``return``), ``log``, ``undo``, ``now``, ``uuid4``, ``random``, ``patched`` (a
branch point for versioning), ``return``, ``raise``, ``end`` (falling off the function)
and ``dynamic``: anything the analyzer cannot resolve statically (a step picked from a
dict at run time, ``yield some_var``, a list built beforehand: ``sm.join(*calls)``). A
branch list written in place as a comprehension of one command
(``sm.join(*[sm.child(wf, x) for x in xs], limit=20)``) is that command, drawn once, with
the comprehension as its detail. Analysis never raises for odd code: it degrades to
``dynamic`` nodes.

Callees are resolved through the function's closure and ``__globals__`` only, so a step
imported under another name or reached as ``module.step_fn`` keeps its durable
``.name``. ``yield from helper(...)`` inlines the helper generator's graph (recursion is
cut with a ``dynamic`` node). Nested ``def``/``class`` bodies are not part of the graph.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, NamedTuple

from squidmesh.analysis import source as src
from squidmesh.analysis.model import DECLARED_KINDS, DeclaredNode, Edge, Node, StepGraph
from squidmesh.analysis.source import CONSTRUCTORS, MISSING, FunctionSource, Scope, StepRef

__all__ = ["DECLARED_KINDS", "DeclaredNode", "Edge", "Node", "StepGraph", "step_graph"]

_NAMED_ARG = {
    "pause": "name",
    "approval": "name",
    "event": "name",
    "patched": "change_id",
    "publish": "name",
}
_MAX_INLINE_DEPTH = 8  # helper generators inlined inside helper generators...


# --------------------------------------------------------------------------- building


class _Pending(NamedTuple):
    """An edge waiting for its target: the next node emitted on this path."""

    source: str
    kind: str = "next"
    label: str | None = None
    condition: str | None = None


@dataclasses.dataclass
class _Spec:
    kind: str
    name: str
    lineno: int
    detail: str | None = None
    children: list[_Spec] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Loop:
    breaks: list[_Pending] = dataclasses.field(default_factory=list)
    continues: list[_Pending] = dataclasses.field(default_factory=list)


def step_graph(workflow: Any) -> StepGraph:
    """The step graph of a ``WorkflowDefinition`` (or a plain generator function)."""
    name = getattr(workflow, "name", None) or getattr(workflow, "__name__", None)
    name = name if isinstance(name, str) else repr(workflow)
    fn = getattr(workflow, "fn", workflow)
    builder = _Builder()
    try:
        return builder.build(name, fn)
    except Exception as exc:  # a safety net: inspection must never fail on odd code
        file = builder.source.file if builder.source is not None else "<unknown>"
        start = Node("n0", "start", name, 1, file)
        broken = Node("n1", "dynamic", "unanalysable", 1, file, detail=f"analysis failed: {exc!r}")
        return StepGraph(name, (start, broken), (Edge("n0", "n1", "next"),))


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.frontier: list[_Pending] = []
        self.loops: list[_Loop] = []
        self.returns: list[list[_Pending]] = []  # one per inlined helper being walked
        self.stack: list[Any] = []  # code objects being walked: recursion guard
        self.source: FunctionSource | None = None
        self.scope = Scope(None)

    # -- output

    def build(self, name: str, fn: Any) -> StepGraph:
        source = src.load(fn)
        self.source, self.scope = source, Scope(source.fn, source.tree)
        self.stack.append(getattr(source.fn, "__code__", None))
        tree = source.tree
        start = self._add("start", name, source.line(tree) if tree is not None else 1)
        self.frontier = [_Pending(start)]
        if tree is None:
            self._emit(_Spec("dynamic", "unanalysable", 1, detail=source.error))
        else:
            self._block(tree.body)
        if self.frontier:
            end_line = getattr(tree, "end_lineno", None) or 1
            self._emit(_Spec("end", "end", end_line + source.offset))
        unique = list(dict.fromkeys(self.edges))  # the same path can be added twice
        return StepGraph(name, tuple(self.nodes), tuple(unique))

    def _add(self, kind: str, name: str, lineno: int, **extra: Any) -> str:
        node_id = f"n{len(self.nodes)}"
        file = self.source.file if self.source is not None else "<unknown>"
        self.nodes.append(Node(node_id, kind, name, lineno, file, **extra))
        return node_id

    def _add_spec(self, spec: _Spec, parent: str | None = None) -> str:
        node_id = self._add(spec.kind, spec.name, spec.lineno, parent=parent, detail=spec.detail)
        if spec.children:
            index = len(self.nodes) - 1
            kids = tuple(self._add_spec(child, node_id) for child in spec.children)
            self.nodes[index] = dataclasses.replace(self.nodes[index], branches=kids)
        return node_id

    def _emit(self, spec: _Spec) -> str:
        node_id = self._add_spec(spec)
        for p in self.frontier:
            self.edges.append(Edge(p.source, node_id, p.kind, p.label, p.condition))
        # The run ends at continue_as_new (the next run starts over): nothing follows.
        self.frontier = [] if spec.kind == "continue_as_new" else [_Pending(node_id)]
        return node_id

    # -- helpers

    def _line(self, node: ast.AST) -> int:
        assert self.source is not None
        return self.source.line(node)

    def _text(self, node: ast.AST) -> str:
        assert self.source is not None
        return self.source.segment(node)

    def _top_level(self, start: int) -> list[str]:
        return [n.id for n in self.nodes[start:] if n.parent is None]

    # -- statements

    def _block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self._stmt(stmt)

    def _stmt(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return  # a nested definition is not run by being defined
        if isinstance(stmt, ast.If):
            self._yields(stmt.test)
            cond, entry = self._text(stmt.test), self.frontier
            self.frontier = _branch(entry, cond, True)
            self._block(stmt.body)
            taken = self.frontier
            self.frontier = _branch(entry, cond, False)
            self._block(stmt.orelse)
            self.frontier = taken + self.frontier
        elif isinstance(stmt, ast.While):
            infinite = isinstance(stmt.test, ast.Constant) and bool(stmt.test.value)
            self._loop(stmt, self._text(stmt.test), stmt.test, infinite)
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            self._yields(stmt.iter)
            cond = f"for {self._text(stmt.target)} in {self._text(stmt.iter)}"
            self._loop(stmt, cond, None, False)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            self._try(stmt)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                self._yields(item.context_expr)
            self._block(stmt.body)
        elif isinstance(stmt, ast.Match):
            self._match(stmt)
        elif isinstance(stmt, ast.Return):
            if stmt.value is not None:
                self._yields(stmt.value)
            if self.returns:  # returning from an inlined helper resumes the caller
                self.returns[-1].extend(self.frontier)
            else:
                detail = self._text(stmt.value) if stmt.value is not None else None
                self._emit(_Spec("return", "return", self._line(stmt), detail=detail))
            self.frontier = []
        elif isinstance(stmt, ast.Raise):
            self._yields(stmt)
            exc = stmt.exc
            target = exc.func if isinstance(exc, ast.Call) else exc
            name = self._text(target) if target is not None else "raise"
            self._emit(_Spec("raise", name, self._line(stmt)))
            self.frontier = []
        elif isinstance(stmt, (ast.Break, ast.Continue)):
            if self.loops:
                loop = self.loops[-1]
                (loop.breaks if isinstance(stmt, ast.Break) else loop.continues).extend(
                    self.frontier
                )
            self.frontier = []
        else:
            self._yields(stmt)

    def _loop(self, stmt: Any, cond: str, test: ast.expr | None, infinite: bool) -> None:
        start, entry = len(self.nodes), self.frontier
        if test is not None:
            self._yields(test)
        tested = len(self.nodes) > start  # the test itself yields: it is the loop head
        after_test = self.frontier
        loop = _Loop()
        self.loops.append(loop)
        # `while True:` is no decision: its body simply follows.
        self.frontier = after_test if infinite else _branch(after_test, cond, True)
        self._block(stmt.body)
        self.loops.pop()
        body_end = self.frontier + loop.continues
        heads = self._top_level(start)
        if not heads:  # no command inside: the loop does not show in the graph
            self.frontier = entry
            self._block(stmt.orelse)
            return
        for p in body_end:
            self.edges.append(Edge(p.source, heads[0], "loop", p.label, p.condition))
        if infinite:
            self.frontier = []
        elif tested:
            self.frontier = _branch(after_test, cond, False)
        else:
            self.frontier = _branch(entry + body_end, cond, False)
        self._block(stmt.orelse)  # runs on normal exit, not after break
        self.frontier = self.frontier + loop.breaks

    def _try(self, stmt: Any) -> None:
        start, entry = len(self.nodes), self.frontier
        self._block(stmt.body)
        risky = [n.id for n in self.nodes[start:] if n.parent is None and n.kind != "return"]
        self._block(stmt.orelse)
        exits = self.frontier
        sources = risky or [p.source for p in entry]
        for handler in stmt.handlers:
            label = self._text(handler.type) if handler.type is not None else "*"
            self.frontier = [_Pending(s, "error", label) for s in sources]
            self._block(handler.body)
            exits = exits + self.frontier
        self.frontier = exits
        self._block(stmt.finalbody)

    def _match(self, stmt: ast.Match) -> None:
        self._yields(stmt.subject)
        subject, entry = self._text(stmt.subject), self.frontier
        exits: list[_Pending] = []
        exhaustive = False
        for case in stmt.cases:
            cond = f"{subject} matches {self._text(case.pattern)}"
            if case.guard is not None:
                cond += f" if {self._text(case.guard)}"
            self.frontier = _branch(entry, cond, True)
            self._block(case.body)
            exits += self.frontier
            irrefutable = isinstance(case.pattern, ast.MatchAs) and case.pattern.pattern is None
            exhaustive = exhaustive or (irrefutable and case.guard is None)
        if not exhaustive:
            exits += _branch(entry, f"{subject} matches a case", False)
        self.frontier = exits

    # -- yields

    def _yields(self, node: ast.AST) -> None:
        for found in _find_yields(node):
            if isinstance(found, ast.YieldFrom):
                self._yield_from(found)
            elif found.value is None:
                self._emit(_dynamic("yield", self._line(found), "bare `yield`: not a command"))
            else:
                self._emit(self._describe(found.value, self._line(found)))

    def _describe(self, expr: ast.expr, lineno: int) -> _Spec:
        """What a yielded expression is, as a node spec; ``dynamic`` when unknown."""
        if isinstance(expr, ast.Call):
            target = src.callee(self.scope, expr.func)
            if isinstance(target, StepRef):
                return _Spec("step", target.name, lineno)
            try:
                kind = CONSTRUCTORS.get(target)
            except TypeError:  # an unhashable object: certainly not a constructor
                kind = None
            if kind is not None:
                return self._command(kind, expr, lineno)
        return _dynamic(self._text(expr), lineno, self._text(expr))

    def _command(self, kind: str, call: ast.Call, lineno: int) -> _Spec:
        args = [*call.args, *(kw.value for kw in call.keywords if kw.arg is None)]
        if kind in ("child", "start_child"):
            return self._child(kind, call, lineno)
        if kind == "continue_as_new":
            payload = call.args[0] if call.args else _keyword(call, "payload")
            detail = self._text(payload) if payload is not None else None
            return _Spec(kind, kind, lineno, detail=detail)
        if kind in _NAMED_ARG:
            arg = call.args[0] if call.args else _keyword(call, _NAMED_ARG[kind])
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                return _Spec(kind, arg.value, lineno)
            # The name is computed at run time: show the expression instead.
            text = self._text(arg) if arg is not None else "?"
            return _Spec(kind, text, lineno, detail=f"name computed at run time: {text}")
        if kind in ("join", "first"):
            kids = [self._branch_spec(arg) for arg in call.args]
            extras = [self._text(kw) for kw in call.keywords]
            return _Spec(kind, kind, lineno, detail=", ".join(extras) or None, children=kids)
        if kind == "log":
            msg = call.args[0] if call.args else _keyword(call, "message")
            if isinstance(msg, ast.Constant) and isinstance(msg.value, str):
                return _Spec("log", "log", lineno, detail=msg.value)
            return _Spec("log", "log", lineno, detail=self._text(msg) if msg else None)
        if kind == "sleep":
            parts = [self._text(a) for a in args] + [
                self._text(kw) for kw in call.keywords if kw.arg is not None
            ]
            return _Spec("sleep", "sleep", lineno, detail=", ".join(parts) or None)
        return _Spec(kind, kind, lineno)

    def _child(self, kind: str, call: ast.Call, lineno: int) -> _Spec:
        """``sm.child(wf, ...)``: a node named for the child's workflow (its ``name``
        when ``wf`` resolves to an ``@sm.workflow``, or a string constant)."""
        target = call.args[0] if call.args else _keyword(call, "workflow")
        options = [self._text(a) for a in call.args[1:]] + [
            self._text(kw) for kw in call.keywords if kw.arg not in (None, "workflow")
        ]
        detail = ", ".join(options) or None
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            return _Spec(kind, target.value, lineno, detail=detail)
        found = self.scope.resolve(target) if target is not None else MISSING
        name = getattr(found, "name", None) if found is not MISSING else None
        if isinstance(name, str) and isinstance(getattr(found, "triggers", None), tuple):
            return _Spec(kind, name, lineno, detail=detail)
        text = self._text(target) if target is not None else "?"
        return _Spec(kind, text, lineno, detail=f"workflow chosen at run time: {text}")

    def _branch_spec(self, arg: ast.expr) -> _Spec:
        if isinstance(arg, ast.Starred):
            inner = arg.value
            if isinstance(inner, (ast.ListComp, ast.GeneratorExp)) and not isinstance(
                inner.elt, (ast.Starred, ast.Yield, ast.YieldFrom)
            ):
                # `*[sm.child(wf, x) for x in xs]`: one branch per item, all alike. Drawn
                # as that command once, the comprehension as its detail.
                found = self._describe(inner.elt, self._line(inner.elt))
                if found.kind != "dynamic":
                    loops = " ".join(
                        f"for {self._text(g.target)} in {self._text(g.iter)}"
                        + "".join(f" if {self._text(c)}" for c in g.ifs)
                        for g in inner.generators
                    )
                    found.detail = f"{loops} (a branch each)" + (
                        f"; {found.detail}" if found.detail else ""
                    )
                    return found
            # `*calls`: what and how many is known only at run time
            return _dynamic(self._text(arg), self._line(arg), self._text(arg))
        return self._describe(arg, self._line(arg))

    def _yield_from(self, node: ast.YieldFrom) -> None:
        value = node.value
        if isinstance(value, (ast.List, ast.Tuple)):  # `yield from [a(), b()]`
            for elt in value.elts:
                if isinstance(elt, ast.Starred):
                    self._emit(_dynamic(self._text(elt), self._line(elt), self._text(elt)))
                else:
                    self._emit(self._describe(elt, self._line(elt)))
            return
        if isinstance(value, ast.Call):
            target = src.callee(self.scope, value.func)
            if isinstance(target, StepRef) or src.is_constructor(target):
                # `x = yield from step(...)` / `yield from sm.sleep(...)`: the typed
                # spelling of `yield` (the command yields itself), the same node.
                self._emit(self._describe(value, self._line(node)))
                return
            helper = None if target is MISSING else target
            fn = src.generator_target(helper) if helper is not None else None
            if fn is not None and self._inline(fn, node):
                return
        text = f"yield from {self._text(value)}"
        self._emit(_dynamic(text, self._line(node), text))

    def _inline(self, fn: Any, node: ast.YieldFrom) -> bool:
        """Walk a helper generator's body in place of ``yield from helper(...)``."""
        code = getattr(fn, "__code__", None)
        if code in self.stack or len(self.stack) > _MAX_INLINE_DEPTH:
            text = f"yield from {self._text(node.value)}"
            self._emit(_dynamic(text, self._line(node), f"recursive helper: {text}"))
            return True
        source = src.load(fn)
        if source.tree is None:
            return False
        saved = (self.source, self.scope, self.loops)
        self.source, self.scope, self.loops = source, Scope(source.fn, source.tree), []
        self.stack.append(code)
        self.returns.append([])
        try:
            self._block(source.tree.body)
        finally:
            returned = self.returns.pop()
            self.stack.pop()
            self.source, self.scope, self.loops = saved
        self.frontier = self.frontier + returned
        return True


def _dynamic(text: str, lineno: int, detail: str | None) -> _Spec:
    name = text if len(text) <= 60 else text[:57] + "..."
    return _Spec("dynamic", name, lineno, detail=detail)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _operand(text: str) -> str:
    """``text`` made safe as one operand of ``and`` (which is associative)."""
    loose = (" or ", " if ", "lambda", " matches ")
    if text.startswith("for ") or any(op in text for op in loose):
        return f"({text})"
    return text


def _guard(cond: str, truth: bool) -> str:
    if truth:
        return cond
    return f"not {cond}" if " " not in cond else f"not ({cond})"


def _branch(frontier: list[_Pending], cond: str, truth: bool) -> list[_Pending]:
    """Guard every pending edge with ``cond`` taking the value ``truth``.

    A plain edge becomes ``branch`` (``cond``, ``"True"``/``"False"``). An edge already
    guarded (a nested ``if`` with no command in between) gets the conjunction of both
    guards with label ``"True"``: a reader sees the whole condition of the path. An
    ``error`` edge stays an error edge and carries the guard as its condition.
    """
    out: list[_Pending] = []
    for p in frontier:
        if p.kind == "next":
            out.append(_Pending(p.source, "branch", "True" if truth else "False", cond))
            continue
        guard = _guard(cond, truth)
        outer = p.condition
        if outer is not None and p.kind == "branch":
            outer = _guard(outer, p.label != "False")
        combined = f"{_operand(outer)} and {_operand(guard)}" if outer else guard
        out.append(_Pending(p.source, p.kind, "True" if p.kind == "branch" else p.label, combined))
    return out


def _find_yields(node: ast.AST) -> list[ast.Yield | ast.YieldFrom]:
    """Yield expressions under ``node`` in evaluation order (operands before the yield
    that uses them), skipping nested scopes."""
    found: list[ast.Yield | ast.YieldFrom] = []

    def visit(current: ast.AST) -> None:
        if isinstance(current, src.NESTED_SCOPES):
            return
        for child in ast.iter_child_nodes(current):
            visit(child)
        if isinstance(current, (ast.Yield, ast.YieldFrom)):
            found.append(current)

    visit(node)
    return found
