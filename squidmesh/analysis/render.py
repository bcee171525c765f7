"""Text renderings of a ``StepGraph``: Mermaid ``flowchart TD`` and Graphviz ``digraph``.

Node ids are the graph's (``n0``, ``n1``...), never user text, so labels are the only
place that needs escaping. Join/first branches are drawn inside a box (a Mermaid
subgraph, a Graphviz cluster) attached to their join node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from squidmesh.analysis.model import Edge, Node, StepGraph

__all__ = ["dot", "mermaid"]

_TERMINALS = frozenset({"start", "end", "return", "raise", "continue_as_new"})
_WAITS = frozenset({"sleep", "pause", "approval", "event", "child"})


def node_label(node: Node) -> str:
    if node.kind == "join" and node.detail and "limit=" in node.detail:
        return f"join ({node.detail})"  # a capped fan-out
    if node.kind == "start":
        return f"start: {node.name}"
    if node.kind in ("end", "join", "first", "undo", "now", "uuid4", "random"):
        return node.kind
    if node.kind == "return":
        return f"return {node.detail}" if node.detail else "return"
    if node.kind == "continue_as_new":
        return f"continue as new: {node.detail}" if node.detail else "continue as new"
    if node.kind == "start_child":
        return f"start child: {node.name}"
    if node.kind == "log":
        return f"log: {node.detail}" if node.detail else "log"
    if node.kind == "sleep":
        return f"sleep: {node.detail}" if node.detail else "sleep"
    return f"{node.kind}: {node.name}"


def edge_label(edge: Edge) -> str | None:
    if edge.kind == "branch":
        return f"{edge.condition}: {edge.label}" if edge.condition else edge.label
    if edge.kind == "error":
        text = f"except {edge.label}" if edge.label and edge.label != "*" else "except"
        return f"{text} [{edge.condition}]" if edge.condition else text
    if edge.kind == "loop":
        return f"loop [{edge.condition}: {edge.label}]" if edge.condition else "loop"
    return None


def _children(graph: StepGraph) -> dict[str, list[Node]]:
    kids: dict[str, list[Node]] = {}
    for node in graph.nodes:
        if node.parent is not None:
            kids.setdefault(node.parent, []).append(node)
    return kids


# --------------------------------------------------------------------------- mermaid


def _mm(text: str) -> str:
    # Inside "..." Mermaid takes entity codes; quotes and angle brackets would end the
    # label or be read as HTML; a pipe would end an edge label.
    for raw, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("|", "#124;")):
        text = text.replace(raw, code)
    return f'"{text}"'


def _mm_node(node: Node) -> str:
    label = _mm(node_label(node))
    if node.kind in _TERMINALS:
        return f"{node.id}([{label}])"
    if node.kind in _WAITS:
        return f"{node.id}{{{{{label}}}}}"
    if node.kind in ("join", "first"):
        return f"{node.id}[[{label}]]"
    if node.kind == "dynamic":
        return f"{node.id}[/{label}/]"
    return f"{node.id}[{label}]"


def mermaid(graph: StepGraph) -> str:
    lines = ["flowchart TD"]
    kids = _children(graph)
    for node in graph.nodes:
        if node.parent is None:
            lines.append(f"    {_mm_node(node)}")
    for parent, children in kids.items():
        lines.append(f"    subgraph {parent}_branches [{_mm('branches')}]")
        lines.extend(f"        {_mm_node(child)}" for child in children)
        lines.append("    end")
        lines.append(f"    {parent} -.- {parent}_branches")
    for edge in graph.edges:
        arrow = "-.->" if edge.kind == "error" else "-->"
        label = edge_label(edge)
        text = f"|{_mm(label)}|" if label else ""
        lines.append(f"    {edge.source} {arrow}{text} {edge.target}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- graphviz


def _dq(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _dot_node(node: Node) -> str:
    shape = (
        "oval"
        if node.kind in _TERMINALS
        else "hexagon"
        if node.kind in _WAITS
        else "box3d"
        if node.kind in ("join", "first")
        else "parallelogram"
        if node.kind == "dynamic"
        else "box"
    )
    return f"{node.id} [label={_dq(node_label(node))}, shape={shape}];"


def dot(graph: StepGraph) -> str:
    lines = [f"digraph {_dq(graph.workflow)} {{", "    rankdir=TB;", "    node [shape=box];"]
    kids = _children(graph)
    for node in graph.nodes:
        if node.parent is None:
            lines.append(f"    {_dot_node(node)}")
    for parent, children in kids.items():
        lines.append(f"    subgraph cluster_{parent} {{")
        lines.append(f"        label={_dq('branches')}; style=dashed;")
        lines.extend(f"        {_dot_node(child)}" for child in children)
        lines.append("    }")
        lines.extend(
            f"    {parent} -> {child.id} [style=dotted, arrowhead=none];" for child in children
        )
    for edge in graph.edges:
        attrs = []
        label = edge_label(edge)
        if label:
            attrs.append(f"label={_dq(label)}")
        if edge.kind == "error":
            attrs.append("style=dashed, color=red")
        elif edge.kind == "loop":
            attrs.append("constraint=false")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"    {edge.source} -> {edge.target}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"
