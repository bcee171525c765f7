from __future__ import annotations

# examples/operations_tour.py is the script whose output docs/operations.md shows: run it
# and check the facts it returns (and prints) so the doc cannot drift from the API.
import contextlib
import uuid
from typing import Any

import pytest

from examples import operations_tour

RESULT = "Frodo crossed Moria on 11 lembas"


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    capture = tmp_path_factory.mktemp("tour") / "out.txt"
    with capture.open("w") as out, contextlib.redirect_stdout(out):
        facts = operations_tour.main()
    return facts, capture.read_text()


def test_start_run_is_idempotent_and_resolves_defaults(tour: tuple[dict[str, Any], str]) -> None:
    facts, out = tour
    assert facts["idempotent"] is True
    assert facts["payload"] == {
        "ring_id": "one-ring",
        "bearer": "Frodo",
        "snack_count": 11,
        "fellowship": ["Sam"],
        "started_on": "2030-01-01",
    }
    assert "returned status: running" in out
    assert "same key, same run: True" in out


def test_explain_at_each_stop(tour: tuple[dict[str, Any], str]) -> None:
    facts, out = tour
    assert facts["timer"] == ("waiting_for_timer", "2030-01-01T09:00:05+00:00")
    assert facts["pause"] == (
        "paused",
        "paused_for_manual_action",
        "hide_at_prancing_pony",
        ("unblock_run", "cancel_run"),
    )
    assert facts["approval"] == (
        "paused",
        "paused_for_approval",
        ("approve_run", "reject_run", "cancel_run"),
    )
    # Completed, but insult_sauron and toss_ring cannot be undone: only fork is offered.
    assert facts["completed"] == ("completed", "completed", ("fork_run",))
    assert facts["replay_details"] == {
        "allowed": False,
        "blocked_by": ["insult_sauron", "toss_ring"],
        "required_override": "allow_irreversible",
    }
    assert facts["result"] == RESULT
    assert "reason:       paused_for_manual_action" in out
    assert "next_actions: approve_run, reject_run, cancel_run" in out


def test_history_and_audit(tour: tuple[dict[str, Any], str]) -> None:
    facts, out = tour
    names = [name for _, _, name, _ in facts["step_runs"]]
    assert names == [
        "pack_lembas",
        "log",
        "sleep",
        "hide_at_prancing_pony",
        "council_vote",
        "cross_moria",
        "reserve_eagle",
        "insult_sauron",
        "join",
        "march_to_gate",
        "look_brave",
        "log",
        "toss_ring",
    ]
    assert {status for *_, status in facts["step_runs"]} == {"completed"}
    assert facts["audit"] == [
        ("run_started", None, None),
        ("paused", "hide_at_prancing_pony", None),
        ("unblocked", "hide_at_prancing_pony", "strider"),
        ("paused", "council_vote", None),
        ("approved", "council_vote", "elrond"),
    ]
    assert facts["approved_metadata"] == {"vote": "9-0"}
    assert "comment='pipeweed restocked' metadata={'ticket': 'BREE-42'}" in out


def test_list_runs_pages_newest_first(tour: tuple[dict[str, Any], str]) -> None:
    facts, _ = tour
    ids = facts["ids"]
    assert facts["page1"] == [ids["waiting"], ids["home"]]
    assert facts["page2"] == [ids["one"]]
    assert facts["paused_ids"] == [ids["waiting"]]
    assert facts["home_result"] == "went home"


def test_cancel_replay_fork_export(tour: tuple[dict[str, Any], str]) -> None:
    facts, out = tour
    ids = facts["ids"]
    assert facts["cancelled"] == "cancelled"
    assert facts["cancel_again"] == ("cancelled", "cancel_run")
    assert facts["unsafe_steps"] == ["insult_sauron", "toss_ring"]
    assert "UnsafeReplayError: run " in out and "allow_irreversible=True" in out
    assert facts["replayed_from"] == ids["home"]
    assert facts["replayed_status"] == "running"  # a fresh run, sleeping at its timer
    fork = facts["fork"]
    assert fork["at_seq"] == 5
    assert fork["forked_from"] == ids["one"]
    assert isinstance(fork["forked_from"], uuid.UUID)
    assert (fork["status"], fork["result"]) == ("completed", RESULT)
    assert fork["reused"] == [
        "pack_lembas",
        "log",
        "sleep",
        "hide_at_prancing_pony",
        "council_vote",
    ]
    assert facts["export"] == {"outcome": "completed", "entries": 13}
