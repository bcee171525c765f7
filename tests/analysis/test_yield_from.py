"""The analyzer treats ``x = yield from cmd`` exactly like ``x = yield cmd``.

Each module of workflows (the analyzer's tricky cases and every example) is rewritten
with ``yield from`` in front of every command it yields (same lines, one word more), then
its step graphs (nodes, lines, edges) and lint findings must be those of the original.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.analysis import lint, step_graph
from squidmesh.analysis import source as src
from tests.analysis import tricky


def example_modules() -> list[ModuleType]:
    import examples

    found = []
    for info in pkgutil.walk_packages(examples.__path__, "examples."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an example needing an extra that is not installed
            continue
        except Exception as exc:
            # The Django project's models, admin and URLs need Django's settings (its
            # workflows module does not, and is walked like any other).
            if type(exc).__name__ == "ImproperlyConfigured":
                continue
            raise
        if any(isinstance(v, sm.WorkflowDefinition) for v in vars(module).values()):
            found.append(module)
    return found


def with_yield_from(module: ModuleType, folder: Path) -> tuple[ModuleType, int]:
    """A copy of ``module`` in which every ``yield <command>`` reads ``yield from``."""
    path = Path(str(module.__file__))
    text = path.read_text()
    scope = src.Scope(None)
    scope.globals = vars(module)
    spots = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Yield) and isinstance(node.value, ast.Call):
            target = src.callee(scope, node.value.func)
            if isinstance(target, src.StepRef) or src.is_constructor(target):
                spots.append((node.lineno, node.col_offset))
    lines = text.splitlines(keepends=True)
    for lineno, col in sorted(spots, reverse=True):
        line = lines[lineno - 1]
        assert line[col : col + 5] == "yield", (path, lineno)
        lines[lineno - 1] = f"{line[: col + 5]} from{line[col + 5 :]}"
    copy = folder / f"{path.stem}_yield_from.py"
    copy.write_text("".join(lines))
    spec = importlib.util.spec_from_file_location(f"{module.__name__}_yield_from", copy)
    assert spec is not None and spec.loader is not None
    rewritten = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewritten)
    return rewritten, len(spots)


def workflows_of(module: ModuleType) -> dict[str, sm.WorkflowDefinition]:
    found = [v for v in vars(module).values() if isinstance(v, sm.WorkflowDefinition)]
    found += [v for v in getattr(module, "ALL", ()) if v not in found]
    return {wf.name: wf for wf in found}


def graph_shape(workflow: sm.WorkflowDefinition) -> Any:
    """The graph without file names; conditions quote the source as written, so the
    rewritten ``(yield from sm.approval(...)).approved`` is read back as the original."""
    data = step_graph(workflow).to_json()
    for node in data["nodes"]:
        node.pop("file")
    return json.loads(json.dumps(data).replace("yield from ", "yield "))


def findings(workflow: sm.WorkflowDefinition) -> list[tuple[str, int, str]]:
    return [(f.code, f.lineno, f.message) for f in lint(workflow)]


@pytest.mark.parametrize(
    "module", [tricky, *example_modules()], ids=lambda m: m.__name__.rsplit(".", 1)[-1]
)
def test_yield_from_gives_the_same_graph_and_findings(module: ModuleType, tmp_path: Path) -> None:
    rewritten, changed = with_yield_from(module, tmp_path)
    before, after = workflows_of(module), workflows_of(rewritten)
    assert before and sorted(before) == sorted(after)
    for name, workflow in before.items():
        assert graph_shape(after[name]) == graph_shape(workflow), name
        assert findings(after[name]) == findings(workflow), name
    if module is tricky:
        assert changed > 40  # the rewrite really covered the tricky cases


def test_yield_from_a_command_is_a_command_node_not_a_helper() -> None:
    graph = step_graph(typed_flow())
    kinds = [(n.kind, n.name) for n in graph.nodes]
    assert kinds == [
        ("start", "typed"),
        ("step", "walk_home"),
        ("step", "renamed_step"),
        ("approval", "council"),
        ("join", "join"),
        ("step", "march_to_gate"),
        ("step", "look_brave"),
        ("patched", "eagles"),
        ("step", "reserve_eagle"),
        ("return", "return"),
    ]
    assert not graph.find("dynamic")
    assert [(e.source, e.target, e.kind) for e in graph.edges][-3:] == [
        ("n7", "n8", "branch"),
        ("n8", "n9", "next"),
        ("n7", "n9", "branch"),
    ]


def typed_flow() -> sm.WorkflowDefinition:
    from examples.ring_errand import look_brave, march_to_gate, reserve_eagle, walk_home

    @sm.workflow
    def typed(payload: Any) -> Any:
        home = yield from walk_home("Sam")
        tea = yield from tricky.brew("green")
        decision = yield from sm.approval("council")
        pair = yield from sm.join(march_to_gate(3), look_brave())
        if (yield from sm.patched("eagles")):
            yield from reserve_eagle("r")
        return home, tea, decision, pair

    return typed
