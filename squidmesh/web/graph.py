"""The step graph (``squidmesh.analysis.step_graph``) laid out for an SVG drawing.

A layered layout, top to bottom: every top-level node gets the layer of its longest path
from the start (``loop`` edges, the back edges, are left out of that), nodes of a layer
are ordered by a few barycentre sweeps to cut crossings, then placed left to right and
centred. A ``join``/``first`` node is a box holding its branches side by side (nested
joins nest). Edges are cubic curves between box borders; an edge that goes back up (a
loop) swings out to the right.

Each node carries its state in a run: the declared steps of ``inspect_run(...,
include_history=True).steps`` are matched to the graph's declared nodes in source order
(the same alignment the runtime made), a join takes the state of its branches, and
nodes that are not steps (start, log, return, ...) have the state ``none``. Without a
run every node is ``declared``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from squidmesh.analysis import StepGraph
from squidmesh.analysis.model import DECLARED_KINDS, Node
from squidmesh.runtime.views import DeclaredStep
from squidmesh.web.present import scrub

__all__ = ["Box", "Drawing", "Line", "layout", "node_states"]

NODE_H = 46
MIN_W, MAX_W = 112, 236
CHAR_W = 7.4  # average advance of the 12.5px UI font
GAP_X, GAP_Y = 26, 44
PAD, HEADER = 10, 22
MARGIN = 16
LOOP_SWING = 36

#: When the branches of a join disagree, the state shown is the first one found here.
_JOIN_PRIORITY = (
    "failed",
    "running",
    "scheduled",
    "waiting",
    "ahead",
    "cancelled",
    "skipped",
    "compensated",
    "completed",
    "not_taken",
    "declared",
    "none",
)

STATE_WORDS = {
    "declared": "declared",
    "waiting": "waiting here",
    "ahead": "not reached yet",
    "scheduled": "scheduled",
    "running": "running",
    "completed": "completed",
    "failed": "failed",
    "compensated": "compensated",
    "skipped": "skipped",
    "cancelled": "cancelled",
    "not_taken": "not taken by this run",
    "none": "",
}


@dataclasses.dataclass
class Box:
    id: str
    kind: str
    name: str
    state: str
    title: str
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0
    children: list[Box] = dataclasses.field(default_factory=list)

    detail: str | None = None

    @property
    def label(self) -> str:
        text = self.name
        if self.kind in ("log", "sleep", "return", "raise", "dynamic") and self.detail:
            text = self.detail  # the message, the duration, the returned expression
        return text if len(text) <= 30 else text[:29] + "…"

    @property
    def caption(self) -> str:
        word = STATE_WORDS.get(self.state, self.state)
        return f"{self.kind} · {word}" if word and self.state != "declared" else self.kind


@dataclasses.dataclass
class Line:
    kind: str  # next | branch | error | loop
    d: str
    label: str
    label_x: float
    label_y: float
    title: str


@dataclasses.dataclass
class Drawing:
    width: float
    height: float
    boxes: list[Box]
    lines: list[Line]


def node_states(
    graph: StepGraph, steps: Sequence[DeclaredStep] | None, current: Sequence[str] = ()
) -> dict[str, str]:
    """The state of every node of ``graph`` in a run whose declared steps are ``steps``
    and that waits at ``current`` now (``steps=None``: no run, every node ``declared``).

    The runtime calls both a step not reached yet and a wait in progress ``waiting``;
    here the first is ``ahead`` and only what the run waits at now is ``waiting``."""
    if steps is None:
        return {node.id: "declared" for node in graph.nodes}
    here = set(current)
    states: dict[str, str] = {}
    remaining = list(steps)
    at = 0
    for node in graph.nodes:  # source order, as the runtime aligned them
        if node.kind not in DECLARED_KINDS:
            continue
        if at < len(remaining) and (remaining[at].kind, remaining[at].name) == (
            node.kind,
            node.name,
        ):
            status = remaining[at].status
            states[node.id] = "ahead" if status == "waiting" and node.name not in here else status
            at += 1
        else:
            states[node.id] = "not_taken"  # a finished run lists only what it reached
    for node in graph.nodes:
        if node.id in states:
            continue
        states[node.id] = "completed" if node.kind == "start" else "none"
    # Joins (innermost first) take the state of their branches.
    for node in reversed(graph.nodes):
        if node.branches:
            found = {states.get(child, "none") for child in node.branches}
            states[node.id] = next(s for s in (*_JOIN_PRIORITY, *found) if s in found)
    return states


def _title(node: Node, state: str) -> str:
    where = scrub(f"{node.file}:{node.lineno}")
    detail = f" ({node.detail})" if node.detail else ""
    word = STATE_WORDS.get(state, state)
    return f"{node.kind} {node.name}{detail} at {where}" + (f": {word}" if word else "")


def _box(node: Node, graph: StepGraph, states: dict[str, str]) -> Box:
    state = states.get(node.id, "none")
    box = Box(node.id, node.kind, node.name, state, _title(node, state), detail=node.detail)
    if node.branches:
        box.children = [_box(graph.node(child), graph, states) for child in node.branches]
        inner_w = sum(c.w for c in box.children) + GAP_X * (len(box.children) - 1)
        box.w = max(MIN_W, inner_w + 2 * PAD)
        box.h = HEADER + max(c.h for c in box.children) + PAD
    else:
        box.w = min(MAX_W, max(MIN_W, CHAR_W * max(len(box.label), len(box.caption)) + 24))
        box.h = NODE_H
    return box


def _place(box: Box, x: float, y: float) -> None:
    box.x, box.y = x, y
    if box.children:
        inner_w = sum(c.w for c in box.children) + GAP_X * (len(box.children) - 1)
        cx = x + (box.w - inner_w) / 2
        for child in box.children:
            _place(child, cx, y + HEADER)
            cx += child.w + GAP_X


def _layers(ids: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Longest-path layers over the forward edges; nodes on a cycle (none are
    expected once loop edges are out) keep the layer they had reached."""
    preds: dict[str, list[str]] = {i: [] for i in ids}
    succs: dict[str, list[str]] = {i: [] for i in ids}
    for s, t in edges:
        if s != t:
            preds[t].append(s)
            succs[s].append(t)
    indegree = {i: len(preds[i]) for i in ids}
    layer = dict.fromkeys(ids, 0)
    ready = [i for i in ids if indegree[i] == 0]
    done: set[str] = set()
    while ready:
        node = ready.pop(0)
        done.add(node)
        for nxt in succs[node]:
            layer[nxt] = max(layer[nxt], layer[node] + 1)
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    for node in ids:  # a cycle: place after its placed predecessors
        if node not in done:
            placed = [layer[p] for p in preds[node] if p in done]
            layer[node] = max(placed, default=0) + 1
            done.add(node)
    return layer


def _order(rows: list[list[str]], edges: list[tuple[str, str]]) -> None:
    """Barycentre sweeps (down, then up) to reduce edge crossings, in place."""
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    for s, t in edges:
        down.setdefault(s, []).append(t)
        up.setdefault(t, []).append(s)
    for _ in range(2):
        for index in range(1, len(rows)):
            _sort_row(rows[index], rows[index - 1], up)
        for index in range(len(rows) - 2, -1, -1):
            _sort_row(rows[index], rows[index + 1], down)


def _sort_row(row: list[str], other: list[str], neighbours: dict[str, list[str]]) -> None:
    position = {node: i for i, node in enumerate(other)}
    current = {node: i for i, node in enumerate(row)}

    def centre(node: str) -> tuple[float, int]:
        near = [position[n] for n in neighbours.get(node, []) if n in position]
        return (sum(near) / len(near) if near else float(current[node]), current[node])

    row.sort(key=centre)


def _curve(x1: float, y1: float, x2: float, y2: float) -> tuple[str, float, float]:
    bend = max(18.0, (y2 - y1) / 2)
    c1, c2 = (x1, y1 + bend), (x2, y2 - bend)
    mx = (x1 + 3 * c1[0] + 3 * c2[0] + x2) / 8
    my = (y1 + 3 * c1[1] + 3 * c2[1] + y2) / 8
    d = f"M{x1:.1f},{y1:.1f} C{c1[0]:.1f},{c1[1]:.1f} {c2[0]:.1f},{c2[1]:.1f} {x2:.1f},{y2:.1f}"
    return d, mx, my


def layout(graph: StepGraph, states: dict[str, str]) -> Drawing:
    """Boxes and lines of ``graph`` with each node in its state."""
    top = [node for node in graph.nodes if node.parent is None]
    parent = {node.id: node.parent for node in graph.nodes}

    def outer(node_id: str) -> str:
        while parent.get(node_id) is not None:
            node_id = parent[node_id] or node_id
        return node_id

    boxes = {node.id: _box(node, graph, states) for node in top}
    ids = [node.id for node in top]
    forward: list[tuple[str, str]] = []
    for edge in graph.edges:
        s, t = outer(edge.source), outer(edge.target)
        if edge.kind != "loop" and s != t and s in boxes and t in boxes:
            forward.append((s, t))
    layer = _layers(ids, forward)
    rows: list[list[str]] = [[] for _ in range(max(layer.values(), default=0) + 1)]
    for node_id in ids:
        rows[layer[node_id]].append(node_id)
    _order(rows, forward)

    widths = [sum(boxes[n].w for n in row) + GAP_X * (len(row) - 1) for row in rows]
    inner: float = max(widths, default=MIN_W)
    y: float = MARGIN
    for row, width in zip(rows, widths, strict=True):
        x = MARGIN + (inner - width) / 2
        height = max((boxes[n].h for n in row), default=NODE_H)
        for node_id in row:
            _place(boxes[node_id], x, y + (height - boxes[node_id].h) / 2)
            x += boxes[node_id].w + GAP_X
        y += height + GAP_Y

    right = MARGIN + inner
    lines: list[Line] = []
    swings = 0
    for edge in graph.edges:
        s, t = outer(edge.source), outer(edge.target)
        if s not in boxes or t not in boxes:
            continue
        a, b = boxes[s], boxes[t]
        label = edge.label or ""
        title = edge.kind + (f" if {edge.condition} is {label}" if edge.condition else "")
        if edge.kind == "error":
            title = f"error: except {label}" if label else "error"
        if s == t:  # a loop over one node: a small ring on its right side
            x, y1, y2 = a.x + a.w, a.y + a.h * 0.3, a.y + a.h * 0.7
            d = (
                f"M{x:.1f},{y1:.1f} C{x + 30:.1f},{y1 - 12:.1f} "
                f"{x + 30:.1f},{y2 + 12:.1f} {x:.1f},{y2:.1f}"
            )
            lines.append(Line(edge.kind, d, label, x + 26, (y1 + y2) / 2, scrub(title)))
            continue
        if b.y > a.y:
            d, mx, my = _curve(a.x + a.w / 2, a.y + a.h, b.x + b.w / 2, b.y)
        else:  # back up the graph: swing out to the right
            swings += 1
            out = right + LOOP_SWING * swings
            x1, y1 = a.x + a.w, a.y + a.h / 2
            x2, y2 = b.x + b.w, b.y + b.h / 2
            d = f"M{x1:.1f},{y1:.1f} C{out:.1f},{y1:.1f} {out:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            mx, my = out - 8, (y1 + y2) / 2
        lines.append(Line(edge.kind, d, label, mx, my, scrub(title)))
    width = right + MARGIN + LOOP_SWING * max(swings, 1)
    return Drawing(width, max(y - GAP_Y + MARGIN, 2 * MARGIN), list(boxes.values()), lines)
