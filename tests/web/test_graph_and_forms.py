from __future__ import annotations

# The pieces under the pages: the step graph's layout and node states, and payload
# models as forms.
import pytest

import squidmesh as sm
from squidmesh.analysis import step_graph
from squidmesh.runtime.views import DeclaredStep
from squidmesh.web import forms, graph
from tests.web import flows


@sm.step
def a() -> int:
    return 1


@sm.workflow
def branchy():
    first = yield a()
    both = yield sm.join(a(), sm.sleep(seconds=1))
    while first < 3:
        first = yield a()
    return both


def test_layout_puts_every_edge_downwards_except_loops() -> None:
    g = step_graph(branchy)
    drawing = graph.layout(g, graph.node_states(g, None))
    boxes = {}

    def walk(items: list[graph.Box]) -> None:
        for box in items:
            boxes[box.id] = box
            walk(box.children)

    walk(drawing.boxes)
    assert set(boxes) == {n.id for n in g.nodes}
    join = next(b for b in boxes.values() if b.kind == "join")
    assert [c.kind for c in join.children] == ["step", "sleep"]
    for child in join.children:  # branches sit inside their join's box
        assert join.x <= child.x and child.x + child.w <= join.x + join.w
        assert join.y <= child.y and child.y + child.h <= join.y + join.h
    top = [b for b in drawing.boxes]
    for edge in g.edges:
        if edge.kind == "loop" or edge.source not in {b.id for b in top}:
            continue
        if edge.target in {b.id for b in top}:
            assert boxes[edge.target].y > boxes[edge.source].y, edge
    assert any(line.kind == "loop" for line in drawing.lines)
    assert drawing.width >= max(b.x + b.w for b in top)
    assert drawing.height >= max(b.y + b.h for b in top)


def test_node_states_follow_the_run() -> None:
    g = step_graph(flows.review)
    steps = [
        DeclaredStep("prepare", "step", "completed"),
        DeclaredStep("check", "pause", "completed"),
        DeclaredStep("sign_off", "approval", "waiting"),
        DeclaredStep("ship", "step", "waiting"),
    ]
    states = graph.node_states(g, steps, current=["sign_off"])
    by_name = {n.name: states[n.id] for n in g.nodes if n.kind != "return"}
    assert by_name == {
        "review": "completed",
        "prepare": "completed",
        "check": "completed",
        "sign_off": "waiting",
        "ship": "ahead",
    }
    finished = graph.node_states(g, steps[:3], current=[])  # ship was never reached
    assert finished[g.find(name="ship")[0].id] == "not_taken"


def test_a_join_takes_the_state_of_its_branches() -> None:
    g = step_graph(branchy)
    join = g.find(kind="join")[0]
    steps = [
        DeclaredStep("a", "step", "completed"),
        DeclaredStep("a", "step", "running"),
        DeclaredStep("sleep", "sleep", "completed"),
        DeclaredStep("a", "step", "waiting"),
    ]
    assert graph.node_states(g, steps, current=["a"])[join.id] == "running"


def test_payload_models_become_fields_and_forms_become_payloads() -> None:
    fields = {f.name: f for f in forms.fields_of(flows.Order)}
    assert {n: f.input for n, f in fields.items()} == {
        "item": "text",
        "qty": "number",
        "rush": "bool",
        "size": "choice",
        "due": "date",
        "tags": "json",
    }
    assert fields["item"].required and not fields["qty"].required
    assert fields["qty"].default == "1" and fields["rush"].default == "false"
    assert fields["size"].choices == ("s", "m", "l")
    assert fields["tags"].default == "computed when the run starts"
    assert forms.fields_of(None) == []
    payload = forms.payload_from_form(
        list(fields.values()),
        {"field.item": " lamp ", "field.qty": "", "field.tags": '["a"]', "other": "x"},
    )
    assert payload == {"item": " lamp ", "tags": ["a"]}
    with pytest.raises(forms.FormError, match="tags: not valid JSON"):
        forms.payload_from_form(list(fields.values()), {"field.tags": "[a"})
