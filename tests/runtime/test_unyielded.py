from __future__ import annotations

# A step call that workflow code never yields is recorded as a `warning` audit event
# (step, file:line), once per run: not again when a new Mesh (a restart, another worker)
# replays the run, nor for every round of a loop. It is not a history entry, so the
# steps, sequence numbers and the run's result are those of the code without the bug.
from collections.abc import Generator
from pathlib import Path
from typing import Any

import squidmesh as sm
from tests.runtime.support import MeshFactory

HERE = Path(__file__)


def line_of(marker: str) -> str:
    lines = HERE.read_text().splitlines()
    hits = [n for n, text in enumerate(lines, start=1) if text.rstrip().endswith(f"# <{marker}>")]
    assert len(hits) == 1, marker
    return f"{HERE}:{hits[0]}"


@sm.step
def add(a: int, b: int) -> int:
    return a + b


@sm.step
def notify(text: str) -> str:
    return f"sent {text}"


@sm.workflow
def forgetful() -> Generator[Any, Any, Any]:
    first = yield from add(1, 1)
    notify("bare")  # <bare>
    prepared = add(first, 1)  # yielded after the approval and the loop: legal
    yield from sm.approval("go")
    for n in range(3):
        notify(f"round {n}")  # <loop>
        yield from sm.sleep(seconds=1)
    second = yield prepared
    kept = add(9, 9)  # <kept>
    return [second, kept.name]


def warnings(mesh: sm.Mesh, run_id: Any) -> list[tuple[str | None, Any]]:
    events = mesh.inspect_run(run_id, include_history=True).audit_events or ()
    return [(e.step, (e.metadata or {}).get("loc")) for e in events if e.type == "warning"]


def test_never_yielded_calls_are_audited_once_across_restarts(
    mesh_factory: MeshFactory,
) -> None:
    first = mesh_factory([forgetful])
    run = first.start_run(forgetful)
    assert first.explain_run(run.id).reason == "paused_for_approval"
    assert warnings(first, run.id) == [("notify", line_of("bare"))]
    first.close()

    second = mesh_factory([forgetful])  # cold: replays the bare call, reports nothing new
    second.approve_run(run.id, actor="elrond")
    mesh_factory.clock.advance(1)
    second.drain()  # hot: the loop's second round is the same line
    third = mesh_factory([forgetful])  # cold again, in the middle of the loop
    for _ in range(2):
        mesh_factory.clock.advance(1)
        third.drain()

    done = third.inspect_run(run.id, include_history=True)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, [3, "add"])
    assert warnings(third, run.id) == [
        ("notify", line_of("bare")),
        ("notify", line_of("loop")),
        ("add", line_of("kept")),
    ]
    (bare,) = [e for e in done.audit_events or () if e.type == "warning"][:1]
    assert bare.metadata == {"code": "never_yielded", "loc": line_of("bare")}
    assert bare.comment is not None and "never yielded" in bare.comment
    # Warnings are not history: only the commands the workflow really yielded.
    assert [(s.kind, s.name) for s in done.step_runs or ()] == [
        ("step", "add"),
        ("approval", "go"),
        ("sleep", "sleep"),
        ("sleep", "sleep"),
        ("sleep", "sleep"),
        ("step", "add"),
    ]
