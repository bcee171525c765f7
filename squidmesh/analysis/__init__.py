"""Static analysis of workflow source: the step graph and the determinism linter.

``step_graph(workflow)`` reads a workflow's source (``inspect.getsource`` + ``ast``) and
returns its ``StepGraph``; ``lint(workflow)`` returns determinism ``Finding``s. Neither
runs or imports user code: names are resolved statically through the function's globals
and closure.
"""

from __future__ import annotations

from squidmesh.analysis.graph import DeclaredNode, Edge, Node, StepGraph, step_graph
from squidmesh.analysis.lint import CODES, Finding, lint

__all__ = ["CODES", "DeclaredNode", "Edge", "Finding", "Node", "StepGraph", "lint", "step_graph"]
