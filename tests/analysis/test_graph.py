"""step_graph: the static step graph of workflows, from the examples to odd sources."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pkgutil
import re
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from examples import ring_errand as example
from squidmesh.analysis import Edge, Node, StepGraph, lint, step_graph
from tests.analysis import tricky
from tests.analysis.tricky import line_of

EXAMPLE_FILE = str(Path(example.__file__).resolve())


def example_line(snippet: str) -> int:
    """The line of examples/ring_errand.py containing ``snippet`` (exactly once)."""
    lines = Path(EXAMPLE_FILE).read_text().splitlines()
    found = [n for n, line in enumerate(lines, start=1) if snippet in line]
    assert len(found) == 1, (snippet, found)
    return found[0]


def top(graph: StepGraph) -> list[tuple[str, str]]:
    return [(n.kind, n.name) for n in graph.nodes if n.parent is None]


def edge(graph: StepGraph, source: Node, target: Node) -> Edge:
    (found,) = [e for e in graph.edges if e.source == source.id and e.target == target.id]
    return found


def only(graph: StepGraph, kind: str, name: str | None = None) -> Node:
    (found,) = graph.find(kind, name)
    return found


# --------------------------------------------------------------------------- ring errand


def test_ring_errand_nodes_in_source_order_with_lines() -> None:
    graph = step_graph(example.ring_errand)
    assert graph.workflow == "ring_errand"
    assert top(graph) == [
        ("start", "ring_errand"),
        ("step", "pack_lembas"),
        ("log", "log"),
        ("sleep", "sleep"),
        ("pause", "hide_at_prancing_pony"),
        ("approval", "council_vote"),
        ("step", "walk_home"),
        ("return", "return"),
        ("step", "cross_moria"),
        ("undo", "undo"),
        ("step", "walk_home"),
        ("return", "return"),
        ("step", "reserve_eagle"),
        ("step", "insult_sauron"),
        ("join", "join"),
        ("log", "log"),
        ("step", "toss_ring"),
        ("return", "return"),
    ]
    lines = {(n.kind, n.name): n.lineno for n in graph.nodes}
    assert lines[("start", "ring_errand")] == example_line("def ring_errand(")
    assert lines[("step", "pack_lembas")] == example_line("yield from pack_lembas(")
    assert lines[("sleep", "sleep")] == example_line("yield sm.sleep(seconds=5)")
    assert lines[("approval", "council_vote")] == example_line('sm.approval("council_vote")')
    assert lines[("step", "cross_moria")] == example_line("yield from cross_moria(")
    assert lines[("step", "toss_ring")] == example_line("yield toss_ring(")
    assert all(n.file == EXAMPLE_FILE for n in graph.nodes)
    assert [n.lineno for n in graph.find("step", "walk_home")] == _walk_home_lines()
    assert only(graph, "sleep").detail == "seconds=5"
    assert [n.detail for n in graph.find("log")] == ["Leaving the Shire", "Distraction in place"]
    assert [n.detail for n in graph.find("return")] == [
        '"went home"',
        '"retreated"',
        "report.summary",
    ]


def _walk_home_lines() -> list[int]:
    lines = Path(EXAMPLE_FILE).read_text().splitlines()
    return [n for n, line in enumerate(lines, start=1) if "yield walk_home(" in line]


def test_ring_errand_branch_error_and_join_edges() -> None:
    graph = step_graph(example.ring_errand)
    council = only(graph, "approval", "council_vote")
    home, retreat = graph.find("step", "walk_home")
    moria = only(graph, "step", "cross_moria")
    # `if not council.approved:` -> two labelled branch edges with the condition's text.
    assert edge(graph, council, home) == Edge(
        council.id, home.id, "branch", "True", "not council.approved"
    )
    assert edge(graph, council, moria) == Edge(
        council.id, moria.id, "branch", "False", "not council.approved"
    )
    # `except sm.StepFailed:` -> an error edge from the try body to the handler.
    undo = only(graph, "undo")
    assert edge(graph, moria, undo) == Edge(moria.id, undo.id, "error", "sm.StepFailed")
    assert edge(graph, undo, retreat).kind == "next"
    assert [e.kind for e in graph.edges_from(moria.id)] == ["error", "next"]
    # Both early returns end their paths.
    for ret in graph.find("return")[:2]:
        assert graph.edges_from(ret.id) == []
    # The join carries its branches as child nodes, in argument order.
    join = only(graph, "join")
    kids = [graph.node(k) for k in join.branches]
    assert [(k.kind, k.name, k.parent) for k in kids] == [
        ("step", "march_to_gate", join.id),
        ("step", "look_brave", join.id),
    ]
    assert join.lineno == example_line("yield from sm.join(")
    assert all(k.lineno == example_line("march_to_gate(army=") for k in kids)
    assert graph.edges_to(kids[0].id) == [] and graph.edges_from(kids[0].id) == []
    assert [graph.node(e.target).name for e in graph.edges_from(join.id)] == ["log"]
    assert {e.kind for e in graph.edges} == {"next", "branch", "error"}


def test_ring_errand_declared_steps() -> None:
    assert step_graph(example.ring_errand).steps() == [
        ("pack_lembas", "step"),
        ("sleep", "sleep"),
        ("hide_at_prancing_pony", "pause"),
        ("council_vote", "approval"),
        ("walk_home", "step"),
        ("cross_moria", "step"),
        ("walk_home", "step"),
        ("reserve_eagle", "step"),
        ("insult_sauron", "step"),
        ("march_to_gate", "step"),
        ("look_brave", "step"),
        ("toss_ring", "step"),
    ]
    first = step_graph(example.ring_errand).steps()[0]
    assert (first.name, first.kind) == ("pack_lembas", "step")


def test_ring_errand_json_is_stable_and_plain() -> None:
    one = step_graph(example.ring_errand).to_json()
    two = step_graph(example.ring_errand).to_json()
    assert one == two
    assert json.dumps(one, sort_keys=False) == json.dumps(one, sort_keys=True)
    assert json.loads(json.dumps(one)) == one
    assert set(one) == {"workflow", "nodes", "edges"} and one["workflow"] == "ring_errand"
    for node in one["nodes"]:
        assert {"id", "kind", "name", "lineno", "file"} <= set(node)
    for e in one["edges"]:
        assert {"source", "target", "kind", "label"} <= set(e)
    ids = [n["id"] for n in one["nodes"]]
    assert len(set(ids)) == len(ids)
    assert all(e["source"] in ids and e["target"] in ids for e in one["edges"])


# --------------------------------------------------------------------------- renderings

MERMAID_NODE = re.compile(
    r"^    (?:    )?(n\d+)(\(\[|\{\{|\[\[|\[/|\[)\".*\"(\]\)|\}\}|\]\]|/\]|\])$"
)
MERMAID_EDGE = re.compile(r"^    (n\d+) (-->|-\.->)(\|\"[^\"|]*\"\|)? (n\d+)$")


def check_mermaid(graph: StepGraph) -> None:
    text = graph.to_mermaid()
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    declared: set[str] = set()
    depth = 0
    for line in lines[1:]:
        if m := MERMAID_NODE.match(line):
            declared.add(m.group(1))
        elif m := MERMAID_EDGE.match(line):
            assert m.group(1) in declared and m.group(4) in declared, line
        elif re.match(r"^    subgraph n\d+_branches \[\"branches\"\]$", line):
            depth += 1
        elif line == "    end":
            depth -= 1
        else:
            assert re.match(r"^    n\d+ -\.- n\d+_branches$", line), line
        assert depth in (0, 1)
    assert depth == 0
    assert declared == {n.id for n in graph.nodes}
    assert sum(bool(MERMAID_EDGE.match(line)) for line in lines) == len(graph.edges)


def check_dot(graph: StepGraph) -> None:
    text = graph.to_dot()
    assert text.startswith(f'digraph "{graph.workflow}" {{\n') and text.rstrip().endswith("}")
    outside = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # braces inside labels do not count
    depth = 0
    for char in outside:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    declared = set(re.findall(r"^\s+(n\d+) \[label=", text, re.M))
    assert declared == {n.id for n in graph.nodes}
    arrows = re.findall(r"^\s+(n\d+) -> (n\d+)(?: \[[^\]]*\])?;$", outside, re.M)
    assert {a for a, _ in arrows} | {b for _, b in arrows} <= declared
    flow = [(e.source, e.target) for e in graph.edges]
    assert set(flow) <= set(arrows)


@pytest.mark.parametrize("workflow", [example.ring_errand, *tricky.ALL], ids=lambda w: w.name)
def test_renderings_are_well_formed(workflow: sm.WorkflowDefinition) -> None:
    graph = step_graph(workflow)
    check_mermaid(graph)
    check_dot(graph)


def test_mermaid_for_ring_errand() -> None:
    text = step_graph(example.ring_errand).to_mermaid()
    assert '-->|"not council.approved: True"|' in text
    assert '-.->|"except sm.StepFailed"|' in text
    assert "subgraph n14_branches" in text
    assert "#quot;went home#quot;" in text  # quotes in labels are escaped


def test_dot_escapes_labels() -> None:
    text = step_graph(example.ring_errand).to_dot()
    assert 'label="return \\"went home\\""' in text
    assert 'n5 -> n8 [label="not council.approved: False"];' in text
    assert "subgraph cluster_n14 {" in text


# --------------------------------------------------------------------------- tricky


def test_steps_resolve_through_aliases_modules_options_and_inline_step() -> None:
    graph = step_graph(tricky.aliases)
    steps = [(n.name, n.lineno) for n in graph.find("step")]
    assert steps == [
        ("pack_lembas", line_of("alias")),  # imported as `pack`
        ("cross_moria", line_of("module_qualified")),  # errand.cross_moria(...)
        ("walk_home", line_of("options")),  # .options(retry=...)(...)
        ("walk_home_again", line_of("options_renamed")),  # .options(name=...) renames
        ("renamed_step", line_of("stacked_step")),  # @sm.step(name=) over a decorator
        ("inline_step", line_of("inline_step")),  # sm.step(name=...)(fn)(...)
        ("plain_fn", line_of("inline_plain")),  # sm.step(fn)(...)
    ]
    assert graph.find("dynamic") == []


def test_stacked_workflow_decorators_are_peeled_off() -> None:
    graph = step_graph(tricky.stacked)
    assert graph.workflow == "stacked_flow"
    assert top(graph) == [
        ("start", "stacked_flow"),
        ("step", "toss_ring"),
        ("event", "ring_tossed"),
        ("end", "end"),
    ]
    assert only(graph, "step").lineno == line_of("stacked_first")
    assert only(graph, "event").lineno == line_of("stacked_event")
    assert all(n.file == str(tricky.SOURCE) for n in graph.nodes)


def test_nested_definitions_are_not_part_of_the_graph() -> None:
    graph = step_graph(tricky.nested)
    assert top(graph) == [
        ("start", "nested"),
        ("step", "look_brave"),
        ("dynamic", "factory()"),
        ("return", "return"),
    ]
    assert only(graph, "step").lineno == line_of("nested_after_defs")
    assert only(graph, "dynamic").lineno == line_of("nested_lambda_call")
    assert line_of("nested_def_yield") not in {n.lineno for n in graph.nodes}


def test_helpers_are_inlined_and_recursion_is_cut() -> None:
    graph = step_graph(tricky.helpers)
    assert top(graph) == [
        ("start", "helpers"),
        ("step", "march_to_gate"),  # gather(2000)
        ("log", "log"),
        ("step", "march_to_gate"),  # twice(3) -> gather(3)
        ("log", "log"),
        ("dynamic", "yield from twice(n - 1)"),  # twice -> twice: recursion
        ("dynamic", "yield from unknown()"),  # a local: unresolvable
        ("step", "look_brave"),  # yield from [a(), b()]
        ("step", "toss_ring"),
        ("approval", "after_helpers"),
        ("return", "return"),
    ]
    first, _log, second, *_ = graph.nodes[1:]
    assert first.lineno == line_of("helper_step")
    assert graph.find("dynamic")[0].lineno == line_of("helper_recursive")
    assert graph.find("dynamic")[0].detail.startswith("recursive helper")  # type: ignore[union-attr]
    assert graph.find("dynamic")[1].lineno == line_of("helpers_unknown")
    # The helper's early `return` resumes the caller: its branch edge goes to what follows.
    assert edge(graph, first, second) == Edge(first.id, second.id, "branch", "True", "army > 1000")
    assert edge(graph, first, graph.find("log")[0]).label == "False"
    approval = only(graph, "approval")
    assert approval.lineno == line_of("helpers_after")
    assert [graph.node(e.source).name for e in graph.edges_to(approval.id)] == ["toss_ring"]


def test_run_time_choices_become_dynamic_nodes() -> None:
    graph = step_graph(tricky.runtime_choice)
    dynamic = {n.lineno: n for n in graph.find("dynamic")}
    for marker, text in [
        ("dynamic_variable", 'chosen("x")'),
        ("dynamic_subscript", 'STEPS["walk"]("y")'),
        ("dynamic_name", "command"),
        ("dynamic_comprehension", "[c for c in calls][-1]"),
        ("dynamic_lambda", "(lambda: look_brave())()"),
        ("dynamic_getattr", "getattr(errand, payload.name)()"),
        ("dynamic_bare", "yield"),
        ("dynamic_not_a_command", "std_random.random()"),
    ]:
        assert dynamic[line_of(marker)].name == text, marker
        assert dynamic[line_of(marker)].parent is None
    join = only(graph, "join")
    assert join.lineno == line_of("dynamic_starred")
    assert [(graph.node(k).kind, graph.node(k).name) for k in join.branches] == [
        ("dynamic", "*calls")
    ]
    # A comprehension of one command is that command, once per item: drawn once.
    first = only(graph, "first")
    assert [(graph.node(k).kind, graph.node(k).name) for k in first.branches] == [
        ("step", "look_brave"),
        ("step", "walk_home"),
    ]
    assert graph.node(first.branches[1]).detail == "for i in range(2) (a branch each)"
    approval = only(graph, "approval")
    assert approval.name == 'f"review_{payload.kind}"' and "run time" in (approval.detail or "")
    assert graph.steps() == [
        ("look_brave", "step"),
        ("walk_home", "step"),
        ('f"review_{payload.kind}"', "approval"),
    ]


def test_control_flow_loops_patches_try_match() -> None:
    graph = step_graph(tricky.control)
    at = {n.lineno: n for n in graph.nodes if n.parent is None}
    walk, again, brave = (
        at[line_of("for_body")],
        at[line_of("while_test")],
        at[line_of("while_body")],
    )
    forever = at[line_of("forever_body")]
    # for: enter/skip as branches, back edge as loop, break leaves the loop.
    start = graph.nodes[0]
    assert edge(graph, start, walk) == Edge(
        start.id, walk.id, "branch", "True", "for bearer in payload.bearers"
    )
    assert edge(graph, start, again).label == "False"
    assert edge(graph, walk, walk).kind == "loop"
    assert any(
        e.condition == 'bearer == "Gollum"' and e.label == "True"
        for e in graph.edges_from(walk.id)
        if e.target == again.id
    )
    # while whose test yields: the approval is the loop head.
    assert edge(graph, again, brave) == Edge(
        again.id, brave.id, "branch", "True", '(yield sm.approval("again")).approved'
    )
    assert edge(graph, brave, again).kind == "loop"
    assert edge(graph, again, forever).label == "False"
    assert edge(graph, forever, forever) == Edge(
        forever.id, forever.id, "loop", "False", "payload.done"
    )
    # patched is a branch point.
    patch = only(graph, "patched", "use_eagles")
    assert patch.lineno == line_of("patched")
    new, old = at[line_of("patched_new")], at[line_of("patched_old")]
    assert (edge(graph, patch, new).label, edge(graph, patch, old).label) == ("True", "False")
    assert edge(graph, forever, patch).condition == "payload.done"
    # try: each command in the body has an error edge to each handler.
    toss, check = at[line_of("try_body")], at[line_of("try_pause")]
    timeout, failed = at[line_of("except_timeout")], at[line_of("except_failed")]
    for body in (toss, check):
        assert edge(graph, body, timeout) == Edge(body.id, timeout.id, "error", "sm.TimedOut")
        assert edge(graph, body, failed).label == "(sm.StepFailed, ValueError)"
    assert edge(graph, check, at[line_of("try_else")]).kind == "next"
    cleanup = at[line_of("finally")]
    assert {graph.node(e.source).lineno for e in graph.edges_to(cleanup.id)} == {
        line_of("try_else"),
        line_of("except_timeout"),
        line_of("except_failed"),
    }
    # match and nested ifs: conditions are conjoined on the path.
    fast = at[line_of("case_fast")]
    assert edge(graph, cleanup, fast).condition == 'payload.mode matches "fast"'
    both = at[line_of("nested_if")]
    assert edge(graph, fast, both) == Edge(
        fast.id, both.id, "branch", "True", "payload.a and payload.b"
    )
    first = only(graph, "first")
    assert [graph.node(k).kind for k in first.branches] == ["approval", "sleep"]
    assert {(e.condition, e.label) for e in graph.edges_from(fast.id) if e.target == first.id} == {
        ("payload.a and not payload.b", "True"),
        ("payload.a", "False"),
    }
    raised = at[line_of("raise")]
    assert (raised.kind, raised.name) == ("raise", "sm.Fail")
    assert graph.find("end") == []  # every path raises


def test_closure_resolved_steps() -> None:
    graph = step_graph(tricky.closure_flow)
    assert top(graph) == [("start", "closure_flow"), ("step", "walk_home"), ("end", "end")]
    assert only(graph, "step").lineno == line_of("closure_step")


def test_plain_generator_function_is_accepted() -> None:
    graph = step_graph(tricky.gather)
    assert [n.kind for n in graph.nodes] == ["start", "step", "return", "log", "return"]
    assert graph.workflow == "gather"


def test_source_unavailable_is_a_dynamic_node_not_an_error() -> None:
    namespace: dict[str, Any] = {"sm": sm}
    code = "def made_up():\n    yield sm.sleep(seconds=1)\n"
    exec(compile(code, "<generated>", "exec"), namespace)
    flow = sm.workflow(namespace["made_up"])
    graph = step_graph(flow)
    assert [(n.kind, n.name) for n in graph.nodes] == [
        ("start", "made_up"),
        ("dynamic", "unanalysable"),
        ("end", "end"),
    ]
    assert "source unavailable" in (graph.nodes[1].detail or "")
    assert [f.code for f in lint(flow)] == ["SM100"]


ODD_SOURCES = {
    "walrus_and_star": """
        def flow(payload):
            if (done := (yield sm.approval("a"))).approved:
                first, *rest = yield sm.join(step_a(), step_a())
            if payload.flags | 1 > 2 and "{x}" != '"':
                yield sm.log("<b>#1</b> | {ok}")
            del payload
            assert (yield sm.now()) is not None
            return (yield step_a()) if payload.y else [step_a() for _ in ()]
    """,
    "deep_nesting": """
        def flow(payload):
            while payload.x:
                for i in range(3):
                    try:
                        with ctx() as c, other((yield sm.pause("p"))):
                            if i:
                                continue
                            elif c:
                                break
                            else:
                                return (yield step_a())
                    finally:
                        pass
                else:
                    yield sm.log(f"{i}")
            else:
                yield sm.undo()
    """,
    "weird_yields": """
        def flow(payload):
            yield {"not": "a command"}
            yield sm.join()
            yield sm.first(*payload.branches)
            yield sm.sleep_until(payload.when)
            yield sm.log(payload.message, level="debug")
            yield sm.pause(name=payload.name)
            yield sm.approval()
            yield step_a.options(**payload.options)()
            yield step_a.retry
            yield (yield from (x for x in ()))
            x = yield sm.join(sm.join(step_a()), sm.first(step_a()))
            yield lambda: (yield)
            global G
            nonlocal_ish = [lambda: step_a() for _ in range(2)]
            async def inner():
                await something()
            class K:
                yield_here = step_a()
            try:
                pass
            except* ValueError:
                yield sm.undo()
    """,
}


@pytest.mark.parametrize("name", sorted(ODD_SOURCES))
def test_odd_sources_never_crash(name: str, tmp_path: Path) -> None:
    source = ODD_SOURCES[name]
    if "except*" in source and sys.version_info < (3, 11):
        source = source.replace("except* ValueError", "except ValueError")
    module_text = (
        "import squidmesh as sm\n\n@sm.step\ndef step_a() -> int:\n    return 1\n\n"
        + textwrap.dedent(source)
    )
    path = tmp_path / f"odd_{name}.py"
    path.write_text(module_text)
    spec = importlib.util.spec_from_file_location(f"odd_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flow = sm.workflow(module.flow)
    graph = step_graph(flow)
    assert graph.nodes[0].kind == "start"
    assert all(n.file == str(path) for n in graph.nodes)
    assert all(1 <= n.lineno <= module_text.count("\n") + 1 for n in graph.nodes)
    check_mermaid(graph)
    check_dot(graph)
    json.dumps(graph.to_json())
    lint(flow)


def example_workflows() -> list[sm.WorkflowDefinition]:
    """Every workflow defined in a module under examples/ (optional extras skipped)."""
    import examples

    found: list[sm.WorkflowDefinition] = []
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
        found += [
            v
            for v in vars(module).values()
            if isinstance(v, sm.WorkflowDefinition) and v.fn.__module__ == info.name
        ]
    return found


@pytest.mark.parametrize("workflow", example_workflows(), ids=lambda w: w.name)
def test_every_example_workflow_is_fully_resolved(workflow: sm.WorkflowDefinition) -> None:
    graph = step_graph(workflow)
    assert graph.find("dynamic") == []
    assert graph.steps(), "an example workflow declares steps"
    lines, first = inspect.getsourcelines(workflow.fn)
    def_line = first + next(i for i, text in enumerate(lines) if text.lstrip().startswith("def "))
    assert (graph.nodes[0].kind, graph.nodes[0].lineno) == ("start", def_line)
    assert all(def_line <= n.lineno <= first + len(lines) for n in graph.nodes)
    source_file = inspect.getsourcefile(workflow.fn)
    assert all(n.file == source_file for n in graph.nodes)
    check_mermaid(graph)
    check_dot(graph)
    assert lint(workflow) == []


def test_every_known_workflow_analyses(tmp_path: Path) -> None:
    from tests.runtime import flows

    found = [v for v in vars(flows).values() if isinstance(v, sm.WorkflowDefinition)]
    assert len(found) > 5
    for flow in [example.ring_errand, *found]:
        graph = step_graph(flow)
        assert graph.find("start") and not graph.find("dynamic"), flow.name
        check_mermaid(graph)
        check_dot(graph)


# --------------------------------------------------------------------------- inspection


@sm.step
def fetch(order: str) -> str:
    return f"fetched {order}"


@sm.step
def ship(order: str) -> str:
    return f"shipped {order}"


@sm.step
def refund(order: str) -> str:
    return f"refunded {order}"


@sm.workflow
def gated_order(payload: Any):
    yield fetch("o-1")
    decision = yield sm.approval("manager")
    if not decision.approved:
        yield refund("o-1")
        return "refunded"
    yield sm.join(ship("o-1"), sm.sleep(seconds=1))
    return "shipped"


def test_inspect_run_lists_declared_steps_with_waiting_ones() -> None:
    with sm.Mesh("memory://", workflows=[gated_order], executor=sm.InlineExecutor()) as mesh:
        run = mesh.start_run(gated_order)
        paused = mesh.inspect_run(run.id, include_history=True)
        assert paused.status is sm.RunStatus.PAUSED
        assert paused.steps is not None
        assert [(s.name, s.kind, s.status) for s in paused.steps] == [
            ("fetch", "step", "completed"),
            ("manager", "approval", "waiting"),
            ("refund", "step", "waiting"),
            ("ship", "step", "waiting"),
            ("sleep", "sleep", "waiting"),
        ]
        # Without history nothing is computed.
        assert mesh.inspect_run(run.id).steps is None
        mesh.reject_run(run.id, actor="boss")
        done = mesh.inspect_run(run.id, include_history=True)
        assert done.status is sm.RunStatus.COMPLETED and done.result == "refunded"
        # A finished run lists what it reached: the other branch was never taken.
        assert [(s.name, s.status) for s in done.steps or ()] == [
            ("fetch", "completed"),
            ("manager", "completed"),
            ("refund", "completed"),
        ]


def test_inspect_run_ring_errand_matches_the_branch_taken() -> None:
    now = [datetime(2030, 1, 1, tzinfo=timezone.utc)]
    with sm.Mesh(
        "memory://",
        workflows=[example.ring_errand],
        executor=sm.InlineExecutor(),
        clock=lambda: now[0],
    ) as mesh:
        run = mesh.start_run(example.ring_errand, {"ring_id": "r"})
        early = mesh.inspect_run(run.id, include_history=True).steps or ()
        assert [s.name for s in early] == [
            name for name, _ in step_graph(example.ring_errand).steps()
        ]
        assert [s.status for s in early][:2] == ["completed", "waiting"]
        assert {s.status for s in early[2:]} == {"waiting"}
        now[0] += timedelta(seconds=6)
        mesh.drain()
        mesh.unblock_run(run.id)
        mesh.reject_run(run.id, actor="boromir")
        done = mesh.inspect_run(run.id, include_history=True).steps or ()
        assert [(s.name, s.status) for s in done] == [
            ("pack_lembas", "completed"),
            ("sleep", "completed"),
            ("hide_at_prancing_pony", "completed"),
            ("council_vote", "completed"),
            ("walk_home", "completed"),
        ]


def test_build_run_appends_steps_absent_from_the_graph() -> None:
    from squidmesh.core.history import Entry
    from squidmesh.runtime.views import declared_steps

    entries = [
        Entry(0, "step", "fetch", status="completed"),
        Entry(1, "approval", "manager", status="completed"),
        Entry(2, "step", "chosen_at_run_time", status="running", attempts=1),
        Entry(3, "step", "fetch", status="failed"),
    ]
    steps = declared_steps(entries, gated_order, sm.RunStatus.RUNNING)
    assert [(s.name, s.status) for s in steps] == [
        ("fetch", "failed"),  # a repeat (loop) shows its latest entry
        ("manager", "completed"),
        ("refund", "waiting"),
        ("ship", "waiting"),
        ("sleep", "waiting"),
        ("chosen_at_run_time", "running"),
    ]
    # Without a definition: the history's own order, as before.
    plain = declared_steps(entries, None, sm.RunStatus.RUNNING)
    assert [s.name for s in plain] == ["fetch", "manager", "chosen_at_run_time", "fetch"]


def test_analysis_does_not_run_user_code() -> None:
    # Resolving names must not trigger properties or module __getattr__ of user objects.
    calls: list[str] = []

    class Sneaky:
        @property
        def step(self) -> Any:
            calls.append("property")
            return fetch

    holder = Sneaky()

    @sm.workflow
    def sneaky_flow():
        yield holder.step("x")

    graph = step_graph(sneaky_flow)
    assert calls == []
    assert [n.kind for n in graph.nodes] == ["start", "dynamic", "end"]
    assert inspect.isgeneratorfunction(sneaky_flow.fn)


def test_composition_commands_are_nodes() -> None:
    from tests.runtime import family

    @sm.workflow
    def composed(payload: Any) -> Any:
        first = yield from sm.child(family.kid, {"n": 1})
        by_name = yield sm.child("kid", {"n": 2}, key="k")
        run_id = yield sm.start_child(family.kid, {"n": 3})
        results = yield sm.join(*[sm.child(family.kid, {"n": n}) for n in payload.items], limit=20)
        yield sm.publish("progress", {"done": len(results)})
        if first > 10:
            yield sm.continue_as_new({"items": []})
        return [first, by_name, str(run_id)]

    graph = step_graph(composed)
    assert [(n.kind, n.name) for n in graph.nodes] == [
        ("start", "composed"),
        ("child", "kid"),
        ("child", "kid"),
        ("start_child", "kid"),
        ("join", "join"),
        ("child", "kid"),
        ("publish", "progress"),
        ("continue_as_new", "continue_as_new"),
        ("return", "return"),
    ]
    join = graph.find("join")[0]
    assert join.detail == "limit=20"
    (branch,) = [graph.node(b) for b in join.branches]
    assert branch.detail == 'for n in payload.items (a branch each); {"n": n}'
    assert graph.find("dynamic") == []
    # the run ends where it continues as new: no edge leaves that node
    (again,) = graph.find("continue_as_new")
    assert graph.edges_from(again.id) == []
    assert again.detail == '{"items": []}'
    assert [s.kind for s in graph.steps()] == ["child", "child", "child"]
    mermaid = graph.to_mermaid()
    assert '[["join (limit=20)"]]' in mermaid
    assert '{{"child: kid"}}' in mermaid and '["start child: kid"]' in mermaid
    assert '(["continue as new: {#quot;items#quot;: []}"])' in mermaid
    check_mermaid(graph)
    check_dot(graph)
