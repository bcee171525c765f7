"""The step graph's data: ``Node``, ``Edge`` and ``StepGraph`` (built by ``graph.py``)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from squidmesh.analysis import render

__all__ = ["DECLARED_KINDS", "DeclaredNode", "Edge", "Node", "StepGraph"]

#: Node kinds that are "steps" of a run for inspection: they wait for something.
DECLARED_KINDS = frozenset({"step", "sleep", "pause", "approval", "event", "child"})


@dataclasses.dataclass(frozen=True)
class Node:
    """One command (or start/end marker) of the graph, where it is written."""

    id: str
    kind: str
    name: str
    lineno: int
    file: str
    parent: str | None = None  # the join/first node this is a branch of
    branches: tuple[str, ...] = ()  # join/first: child node ids, in argument order
    detail: str | None = None  # source text (dynamic), duration (sleep), message (log)

    def to_json(self) -> dict[str, Any]:
        return {
            "branches": list(self.branches),
            "detail": self.detail,
            "file": self.file,
            "id": self.id,
            "kind": self.kind,
            "lineno": self.lineno,
            "name": self.name,
            "parent": self.parent,
        }


@dataclasses.dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str  # next | branch | error | loop
    label: str | None = None  # "True"/"False" (branch), exception text (error)
    condition: str | None = None  # the guarding condition's source text

    def to_json(self) -> dict[str, Any]:
        return {
            "condition": self.condition,
            "kind": self.kind,
            "label": self.label,
            "source": self.source,
            "target": self.target,
        }


class DeclaredNode(NamedTuple):
    """A declared step of the workflow, as ``(name, kind)``."""

    name: str
    kind: str


@dataclasses.dataclass(frozen=True)
class StepGraph:
    workflow: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def find(self, kind: str | None = None, name: str | None = None) -> list[Node]:
        """Nodes of a kind and/or name, in source order."""
        return [
            n
            for n in self.nodes
            if (kind is None or n.kind == kind) and (name is None or n.name == name)
        ]

    def edges_from(self, node_id: str, kind: str | None = None) -> list[Edge]:
        return [e for e in self.edges if e.source == node_id and (kind is None or e.kind == kind)]

    def edges_to(self, node_id: str, kind: str | None = None) -> list[Edge]:
        return [e for e in self.edges if e.target == node_id and (kind is None or e.kind == kind)]

    def steps(self) -> list[DeclaredNode]:
        """The declared steps (step, sleep, pause, approval, event, child; join branches
        included) in source order."""
        return [DeclaredNode(n.name, n.kind) for n in self.nodes if n.kind in DECLARED_KINDS]

    def to_json(self) -> dict[str, Any]:
        return {
            "edges": [e.to_json() for e in self.edges],
            "nodes": [n.to_json() for n in self.nodes],
            "workflow": self.workflow,
        }

    def to_mermaid(self) -> str:
        """A Mermaid ``flowchart TD``."""
        return render.mermaid(self)

    def to_dot(self) -> str:
        """A Graphviz ``digraph``."""
        return render.dot(self)
