"""The run lifecycle table: what may happen to a run in each status, and that the
runtime moves runs through it only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from squidmesh.core.lifecycle import (
    ENDINGS,
    TRANSITIONS,
    IllegalTransition,
    RunEvent,
    transition,
)
from squidmesh.types import TERMINAL_STATUSES, RunStatus

PACKAGE = Path(__file__).resolve().parents[2] / "squidmesh"


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES, key=str))
@pytest.mark.parametrize("event", list(RunEvent))
def test_a_finished_run_never_moves(status: RunStatus, event: RunEvent) -> None:
    with pytest.raises(IllegalTransition, match=f"a run that is {status.value}"):
        transition(status, event, waiting=RunStatus.RUNNING)


def test_every_active_status_has_a_way_to_each_ending() -> None:
    for status in RunStatus:
        if status in TERMINAL_STATUSES:
            continue
        for ending, event in ENDINGS.items():
            assert transition(status, event) is ending


def test_waiting_takes_the_status_of_what_is_waited_on_except_while_cancelling() -> None:
    assert transition("running", RunEvent.WAITS, waiting=RunStatus.PAUSED) is RunStatus.PAUSED
    assert transition("paused", RunEvent.WAITS, waiting=RunStatus.RETRYING) is RunStatus.RETRYING
    assert (
        transition("cancelling", RunEvent.WAITS, waiting=RunStatus.PAUSED) is RunStatus.CANCELLING
    )
    with pytest.raises(IllegalTransition, match="needs the status its wait implies"):
        transition("running", RunEvent.WAITS)


def test_only_what_the_event_is_about_changes() -> None:
    assert transition("pending", RunEvent.ACTIVATED) is RunStatus.RUNNING
    assert transition("paused", RunEvent.ACTIVATED) is RunStatus.PAUSED
    assert transition("retrying", RunEvent.STEP_STARTED) is RunStatus.RUNNING
    assert transition("cancelling", RunEvent.STEP_STARTED) is RunStatus.CANCELLING


def test_an_operator_cannot_bring_a_cancelling_run_back() -> None:
    assert transition("paused", RunEvent.RESUMED) is RunStatus.RUNNING
    assert transition("suspended", RunEvent.RESUMED) is RunStatus.RUNNING
    with pytest.raises(IllegalTransition):
        transition("cancelling", RunEvent.RESUMED)


def test_the_table_names_every_event_and_no_terminal_status_on_the_left() -> None:
    assert set(TRANSITIONS) == set(RunEvent)
    for moves in TRANSITIONS.values():
        assert not set(moves) & TERMINAL_STATUSES


def _status_assignments(path: Path) -> list[str]:
    """``<x>.status = <value>`` of run records whose value is not ``transition(...)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if not (
                isinstance(target, ast.Attribute)
                and target.attr == "status"
                and isinstance(target.value, ast.Name)
                and target.value.id == "run"
            ):
                continue
            value = node.value
            through_table = (
                isinstance(value, ast.Attribute)
                and isinstance(value.value, ast.Call)
                and isinstance(value.value.func, ast.Name)
                and value.value.func.id == "transition"
            )
            if not through_table:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def test_the_runtime_moves_runs_only_through_the_table() -> None:
    modules = [*PACKAGE.glob("*.py"), *(PACKAGE / "runtime").glob("*.py")]
    stray = [where for path in sorted(modules) for where in _status_assignments(path)]
    assert not stray, "run statuses assigned outside squidmesh.core.lifecycle: " + ", ".join(stray)


_RUN_STATUSES = {s.value for s in RunStatus}
#: values only a run has (a history entry is never retrying, paused, suspended or
#: cancelling): a comparison with one of them is about a run whatever its variable
_RUN_ONLY = _RUN_STATUSES - {"pending", "running", "completed", "failed", "cancelled"}
#: the names runs are held under across the package
_RUN_NAMES = ("run", "record")


def _strings(node: ast.expr) -> list[str]:
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def _spelled_statuses(path: Path) -> list[str]:
    """Run statuses written as strings: compared with a run's ``status``, or gathered
    into a set of their own beside ``TERMINAL_STATUSES``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            of_run = any(
                isinstance(s, ast.Attribute)
                and s.attr == "status"
                and isinstance(s.value, ast.Name)
                and s.value.id in _RUN_NAMES
                for s in sides
            )
            spelled = {v for s in sides for v in _strings(s)}
            if (of_run and spelled & _RUN_STATUSES) or (
                any(isinstance(s, ast.Attribute) and s.attr == "status" for s in sides)
                and spelled & _RUN_ONLY
            ):
                found.append(where)
        elif isinstance(node, ast.Assign):
            value = node.value
            if isinstance(value, ast.Call) and value.args:
                value = value.args[0]
            spelled = set(_strings(value)) if not isinstance(value, ast.Constant) else set()
            if {s.value for s in TERMINAL_STATUSES} <= spelled <= _RUN_STATUSES:
                found.append(where)
    return found


def test_the_clis_order_of_the_terminal_statuses_names_each_once() -> None:
    from squidmesh.cli.parser import TERMINAL

    assert sorted(TERMINAL) == sorted(s.value for s in TERMINAL_STATUSES)


def test_run_statuses_are_spelled_once() -> None:
    # squidmesh.types holds the statuses and the terminal set; everything else names
    # RunStatus members and derives its sets from them, so none can drift.
    modules = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "types.py"]
    stray = [where for path in sorted(modules) for where in _spelled_statuses(path)]
    assert not stray, "run statuses spelled as strings: " + ", ".join(stray)
