from __future__ import annotations

# The example workflows (examples/beacon_watch.py, final_distraction.py,
# order_fulfilment.py) through every path with ``WorkflowTester`` (each command is
# re-checked by a fresh replay), plus what only a Mesh shows: cron ticks, replay guards.
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import squidmesh as sm
from examples.beacon_watch import (
    beacon_watch,
    call_rohan,
    inspect_hilltops,
    light_first_beacon,
)
from examples.final_distraction import (
    declare_victory,
    final_distraction,
    look_very_brave,
    sneak_up_volcano,
)
from examples.order_fulfilment import (
    charge_card,
    fulfil_order,
    fulfil_order_or_apologise,
    ship,
)
from squidmesh.testing import TestRun, WorkflowTester, raises

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def status(run: TestRun) -> sm.RunStatus:
    return run.status


def compensations(run: TestRun) -> list[tuple[str, Any]]:
    """(step, compensation output) in the order the compensations ran."""
    outputs = {e.name: (e.compensation or {}).get("output") for e in run.history.entries}
    return [(name, outputs[name]) for name, _ in run.compensations]


# --------------------------------------------------------------------------- Beacon Watch

BEACON_TRACE = [
    "step:inspect_hilltops",
    "step:light_first_beacon",
    "log",
    "step:call_rohan",
]


def test_beacon_watch_cron_tick_uses_the_payload_defaults() -> None:
    tester = WorkflowTester(beacon_watch)
    run = tester.start(trigger="nightly_beacon_check")
    assert run.trigger == "nightly_beacon_check"
    assert run.payload == {"steward_mood": "dramatic", "orc_count": 9001}
    assert status(run) is sm.RunStatus.COMPLETED
    assert run.trace == BEACON_TRACE
    assert run.result == "beacon on Amon Dîn lit; Rohan will answer"
    assert run.history[1].result == {"beacon": "beacon on Amon Dîn", "lit_by": "a dramatic steward"}
    assert run.logs[0]["message"] == "Gondor calls for aid"
    assert run.logs[0]["fields"] == {"beacon": "beacon on Amon Dîn"}
    assert compensations(run) == []


def test_beacon_watch_retries_the_inspection_with_backoff() -> None:
    tester = WorkflowTester(
        beacon_watch, steps={inspect_hilltops: raises(ConnectionError, times=3)}
    )
    run = tester.start(trigger="nightly_beacon_check")
    assert status(run) is sm.RunStatus.RETRYING
    assert tester.advance_to_next_timer() == T0 + timedelta(seconds=1)  # 1 s, then 2 s, 4 s
    assert tester.advance_to_next_timer() == T0 + timedelta(seconds=3)
    assert tester.advance_to_next_timer() == T0 + timedelta(seconds=7)
    assert status(run) is sm.RunStatus.COMPLETED
    assert [a.status for a in run.step_attempts("inspect_hilltops")] == [
        "failed",
        "failed",
        "failed",
        "completed",
    ]
    assert run.trace == BEACON_TRACE  # attempts never add history positions


def test_beacon_watch_gives_up_after_five_inspections() -> None:
    tester = WorkflowTester(beacon_watch, steps={inspect_hilltops: raises(ConnectionError)})
    run = tester.start(trigger="nightly_beacon_check")
    while tester.advance_to_next_timer() is not None:
        pass
    assert status(run) is sm.RunStatus.FAILED
    assert run.reason == "step_failed"
    assert len(run.step_attempts("inspect_hilltops")) == 5
    assert run.trace == ["step:inspect_hilltops"]  # nothing was lit, nothing to put out


def test_beacon_watch_puts_the_beacon_out_when_rohan_refuses() -> None:
    tester = WorkflowTester(beacon_watch)
    run = tester.start({"orc_count": 20_000, "steward_mood": "grim"}, trigger="light_now")
    assert status(run) is sm.RunStatus.FAILED
    assert run.reason == "step_failed"
    assert run.error is not None and "Rohan will not ride" in run.error["message"]
    assert run.trace == BEACON_TRACE
    assert compensations(run) == [("light_first_beacon", "extinguished beacon on Amon Dîn")]


def test_beacon_watch_compensation_receives_the_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real = light_first_beacon.compensate
    assert real is not None

    def spy(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(light_first_beacon, "compensate", spy)
    tester = WorkflowTester(beacon_watch, steps={call_rohan: raises(sm.NonRetryable("no"))})
    tester.start(trigger="nightly_beacon_check")
    (call,) = seen
    assert call["input"] == {"hilltop": "Amon Dîn", "mood": "dramatic"}
    assert call["output"]["beacon"] == "beacon on Amon Dîn"
    assert call["failure"]["message"] == "no"


def test_beacon_watch_cron_ticks_fire_once_per_fire_time() -> None:
    mesh = sm.Mesh("memory://", workflows=[beacon_watch], executor=sm.InlineExecutor())
    tick = datetime(2030, 1, 1, 21, 0, tzinfo=timezone.utc)
    run = mesh.fire_cron(beacon_watch, "nightly_beacon_check", tick)
    again = mesh.fire_cron(beacon_watch, "nightly_beacon_check", tick)
    assert again.id == run.id
    done = mesh.inspect_run(run.id)
    assert done.status == "completed"
    assert done.payload == {"steward_mood": "dramatic", "orc_count": 9001}
    assert done.schedule is not None and done.schedule["timezone"] == "Etc/UTC"
    assert len(mesh.list_runs()) == 1


# --------------------------------------------------------------------------- Final Distraction


def test_final_distraction_joins_three_steps_then_declares_victory() -> None:
    tester = WorkflowTester(final_distraction)
    run = tester.start({"speech": "For Frodo!"})
    assert status(run) is sm.RunStatus.COMPLETED
    assert run.trace == [
        "join",
        "step:march_to_gate",
        "step:look_very_brave",
        "step:sneak_up_volcano",
        "step:declare_victory",
    ]
    assert run.result == (
        "Victory! (6000 soldiers at the Black Gate; Aragorn shouts 'For Frodo!'; "
        "Frodo and Sam at the Crack of Doom)"
    )
    branches = [e for e in run.history.entries if e.parent == 0]
    assert [e.name for e in branches] == ["march_to_gate", "look_very_brave", "sneak_up_volcano"]
    assert run.history[4].meta.get("irreversible") is True


def test_final_distraction_waits_for_the_slowest_branch() -> None:
    tester = WorkflowTester(final_distraction, steps={sneak_up_volcano: raises(OSError, times=2)})
    run = tester.start()
    assert status(run) is sm.RunStatus.RETRYING
    assert run.history[1].status == "completed" and run.history[2].status == "completed"
    assert "step:declare_victory" not in run.trace  # not before all three completed
    tester.advance(20)
    assert status(run) is sm.RunStatus.COMPLETED
    assert run.trace[-1] == "step:declare_victory"
    assert len(run.step_attempts("sneak_up_volcano")) == 3


def test_final_distraction_never_declares_victory_when_a_branch_fails() -> None:
    tester = WorkflowTester(
        final_distraction, steps={look_very_brave: raises(sm.NonRetryable("stage fright"))}
    )
    run = tester.start()
    assert status(run) is sm.RunStatus.FAILED
    assert run.reason == "step_failed"
    assert "step:declare_victory" not in run.trace
    assert run.error is not None and "stage fright" in run.error["message"]


def test_final_distraction_replay_is_guarded_by_the_irreversible_step() -> None:
    mesh = sm.Mesh("memory://", workflows=[final_distraction], executor=sm.InlineExecutor())
    run = mesh.start_run(final_distraction)
    assert mesh.inspect_run(run.id).status == "completed"
    why = mesh.explain_run(run.id)
    assert "replay_run" not in why.next_actions
    assert why.details["replay"]["blocked_by"] == [declare_victory.name]
    with pytest.raises(sm.UnsafeReplayError) as info:
        mesh.replay_run(run.id)
    assert info.value.steps == ["declare_victory"]
    again = mesh.replay_run(run.id, allow_irreversible=True)
    assert mesh.inspect_run(again.id).status == "completed"
    assert again.replayed_from_run_id == run.id


# --------------------------------------------------------------------------- order saga

ORDER = {"order_id": "o-1", "items": ["mithril coat"], "amount_cents": 4200}
TO_MORDOR = {**ORDER, "address": "Barad-dûr, Mordor"}


def test_order_ships() -> None:
    run = WorkflowTester(fulfil_order).start(ORDER)
    assert status(run) is sm.RunStatus.COMPLETED
    assert run.payload["address"] == "Bag End, Hobbiton"  # a default, resolved once
    assert run.result == {"reservation": "res-o-1", "charge": "ch-o-1", "tracking": "trk-o-1"}
    assert run.trace == ["step:reserve_inventory", "step:charge_card", "step:ship"]
    assert compensations(run) == []


def test_a_failed_shipment_rolls_the_saga_back_in_reverse_order() -> None:
    run = WorkflowTester(fulfil_order).start(TO_MORDOR)
    assert status(run) is sm.RunStatus.FAILED
    assert run.reason == "step_failed"
    assert run.error is not None and "no carrier delivers" in run.error["message"]
    assert len(run.step_attempts("ship")) == 1  # NonRetryable: no retries
    assert run.compensations == [("charge_card", "completed"), ("reserve_inventory", "completed")]
    assert compensations(run) == [
        ("charge_card", "refunded 4200 cents of ch-o-1"),
        ("reserve_inventory", "released res-o-1"),
    ]


def test_shipping_retries_before_the_saga_gives_up() -> None:
    tester = WorkflowTester(fulfil_order, steps={ship: raises(ConnectionError)})
    run = tester.start(ORDER)
    assert status(run) is sm.RunStatus.RETRYING
    while tester.advance_to_next_timer() is not None:
        pass
    assert status(run) is sm.RunStatus.FAILED
    assert len(run.step_attempts("ship")) == 3
    assert [name for name, _ in compensations(run)] == ["charge_card", "reserve_inventory"]


def test_a_card_that_cannot_be_charged_releases_only_the_inventory() -> None:
    tester = WorkflowTester(fulfil_order, steps={charge_card: raises(sm.NonRetryable("declined"))})
    run = tester.start(ORDER)
    assert status(run) is sm.RunStatus.FAILED
    assert compensations(run) == [("reserve_inventory", "released res-o-1")]
    assert "step:ship" not in run.trace


def test_the_undo_variant_compensates_then_apologises() -> None:
    run = WorkflowTester(fulfil_order_or_apologise).start(TO_MORDOR)
    assert status(run) is sm.RunStatus.COMPLETED
    assert run.result == {"status": "cancelled", "undone": ["charge_card", "reserve_inventory"]}
    assert run.trace == [
        "step:reserve_inventory",
        "step:charge_card",
        "step:ship",
        "undo",
        "step:email_apology",
    ]
    assert compensations(run) == [
        ("charge_card", "refunded 4200 cents of ch-o-1"),
        ("reserve_inventory", "released res-o-1"),
    ]
    apology = run.history[4]
    assert apology.result == "apologised for o-1: no carrier delivers to Barad-dûr, Mordor"


def test_the_undo_variant_ships_when_it_can() -> None:
    run = WorkflowTester(fulfil_order_or_apologise).start(ORDER)
    assert run.result == {"status": "shipped", "tracking": "trk-o-1"}
    assert compensations(run) == []


def test_order_payloads_are_validated() -> None:
    tester = WorkflowTester(fulfil_order)
    with pytest.raises(sm.PayloadError) as info:
        tester.start({"order_id": "o-2", "amount_cents": 0, "colour": "red"})
    assert info.value.missing_fields == ["items"]
    assert info.value.unknown_fields == ["colour"]
    assert set(info.value.invalid_types) == {"amount_cents"}


def test_the_saga_on_a_mesh_records_each_compensation() -> None:
    mesh = sm.Mesh("memory://", workflows=[fulfil_order], executor=sm.InlineExecutor())
    run = mesh.start_run(fulfil_order, TO_MORDOR)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "failed"
    assert done.step_runs is not None and done.audit_events is not None
    by_name = {s.name: s for s in done.step_runs}
    assert by_name["ship"].status == "failed" and by_name["ship"].compensation is None
    assert by_name["charge_card"].compensation is not None
    assert by_name["charge_card"].compensation["output"] == "refunded 4200 cents of ch-o-1"
    assert [(e.type, e.step) for e in done.audit_events if e.type.startswith("compens")] == [
        ("compensation_started", None),
        ("compensated", "charge_card"),
        ("compensated", "reserve_inventory"),
    ]
    assert mesh.explain_run(run.id).reason == "step_failed"
