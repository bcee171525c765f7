from __future__ import annotations

# Golden histories of the examples, recorded through the real runtime with
# `mesh.export_history` and replayed with `squidmesh.testing.assert_golden_histories`:
# a change to an example that would break its in-flight runs fails here first.
#
# `python -m tests.test_example_histories` writes the files again after an intended change.
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from examples.beacon_watch import beacon_watch
from examples.final_distraction import final_distraction
from examples.order_fulfilment import fulfil_order, fulfil_order_or_apologise
from squidmesh.testing import assert_golden_histories, replay
from tests.test_ring_errand import outline, portable

HISTORIES = Path(__file__).resolve().parent / "histories" / "examples"
WORKFLOWS = [beacon_watch, final_distraction, fulfil_order, fulfil_order_or_apologise]

ORDER = {"order_id": "o-7", "items": ["rope", "lembas"], "amount_cents": 4200}
#: file name -> (workflow, trigger, payload, expected outcome)
CASES: dict[str, tuple[sm.WorkflowDefinition, str | None, dict[str, Any], str]] = {
    "beacon_watch_rohan_answers.json": (beacon_watch, "light_now", {"orc_count": 300}, "completed"),
    "beacon_watch_rohan_refuses.json": (beacon_watch, "light_now", {"orc_count": 20_000}, "failed"),
    "final_distraction.json": (final_distraction, None, {}, "completed"),
    "order_fulfilment_shipped.json": (fulfil_order, None, ORDER, "completed"),
    "order_fulfilment_apology.json": (
        fulfil_order_or_apologise,
        None,
        {**ORDER, "address": "Barad-dur, Mordor"},
        "completed",
    ),
}


def record(name: str) -> dict[str, Any]:
    """Run one case through a Mesh (in-memory store, virtual clock) and export it."""
    workflow, trigger, payload, _ = CASES[name]
    now = [datetime(2030, 1, 1, tzinfo=timezone.utc)]
    mesh = sm.Mesh(
        "memory://", workflows=[workflow], executor=sm.InlineExecutor(), clock=lambda: now[0]
    )
    try:
        run = mesh.start_run(workflow, payload, trigger=trigger)
        for _ in range(100):  # timers and retry backoff run on the virtual clock
            if mesh.inspect_run(run.id).status.is_terminal:
                break
            now[0] += timedelta(seconds=60)
            mesh.drain()
        return portable(sm.History.from_json(mesh.export_history(run.id)))
    finally:
        mesh.close()


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_history_is_current(name: str) -> None:
    stored = json.loads((HISTORIES / name).read_text())
    fresh = record(name)
    assert outline(stored) == outline(fresh)
    assert stored["outcome"] == fresh["outcome"] == CASES[name][3]
    assert stored["result"] == fresh["result"]


def test_example_histories_replay_against_the_current_code() -> None:
    checked = {p.name for p in assert_golden_histories(WORKFLOWS, HISTORIES)}
    assert set(CASES) <= checked


def test_a_changed_example_breaks_its_golden_history() -> None:
    data = json.loads((HISTORIES / "order_fulfilment_shipped.json").read_text())

    @sm.workflow(name="fulfil_order", triggers=[sm.manual("checkout", payload=None)])
    def reordered(payload=None):
        from examples.order_fulfilment import charge_card, reserve_inventory

        yield charge_card("o-7", 4200)  # charging before reserving: not what was recorded
        yield reserve_inventory("o-7", ["rope"])

    with pytest.raises(sm.NondeterminismError) as caught:
        replay(reordered, {**data, "payload": {}})
    assert caught.value.seq == 0
    assert "charge_card" in caught.value.expected and "reserve_inventory" in caught.value.recorded


if __name__ == "__main__":
    for file_name in sorted(CASES):
        (HISTORIES / file_name).write_text(json.dumps(record(file_name), indent=2) + "\n")
        print(f"wrote tests/histories/examples/{file_name}")
