"""A step call's policy: recorded in its history entry's ``meta``, read back as a value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import squidmesh as sm
from squidmesh.core.definition import StepPolicy
from squidmesh.core.retry import Backoff

HISTORY = Path(__file__).resolve().parents[1] / "histories" / "ring_errand_happy.json"


class Refused(Exception):
    pass


def _unbook(**_: Any) -> None:
    return None


@sm.step(
    retry=sm.Retry(max_attempts=4, backoff=Backoff.fixed(2), non_retryable=(Refused,)),
    timeout=30,
    heartbeat_timeout=5,
    compensate=_unbook,
)
def book(seat: str) -> str:
    return seat


def test_a_step_records_what_differs_from_the_defaults_in_the_shape_entries_always_had() -> None:
    recorded = book.policy().to_json()
    assert recorded == {
        "ref": f"{__name__}:book",
        "retry": {
            "max_attempts": 4,
            "backoff": {"kind": "fixed", "min": 2.0, "max": 2.0},
            "non_retryable": [f"{__name__}.Refused"],
        },
        "timeout": 30.0,
        "heartbeat_timeout": 5.0,
        "compensate": f"{__name__}:_unbook",
    }
    # The retry part is what the definition's Retry has always written.
    assert recorded["retry"] == book.retry.to_json()
    # A step of every default records where its function is, and nothing else.
    assert _unbook_step.policy().to_json() == {"ref": f"{__name__}:_unbook_step"}
    flags = sm.step(irreversible=True, compensatable=False, transaction=True)(_flagged)
    assert flags.policy().to_json() == {
        "ref": f"{__name__}:_flagged",
        "irreversible": True,
        "compensatable": False,
        "transaction": True,
    }
    for step in (book, _unbook_step, flags):
        assert StepPolicy.from_json(step.policy().to_json()) == step.policy()


@sm.step
def _unbook_step() -> None:
    return None


def _flagged() -> None:
    return None


def test_a_recorded_policy_reads_back_the_same_beside_the_other_meta_keys() -> None:
    policy = book.policy()
    meta = {**policy.to_json(), "flow": {"queue": "seats"}, "held": True, "lost": 1}
    assert StepPolicy.from_json(json.loads(json.dumps(meta))) == policy


def test_policies_recorded_by_older_versions_read_with_defaults() -> None:
    history = json.loads(HISTORY.read_text())
    steps = [e for e in history["entries"] if e["kind"] == "step"]
    assert steps and all("heartbeat_timeout" not in e["meta"] for e in steps)
    pack = StepPolicy.from_json(steps[0]["meta"])
    assert pack.ref == "examples.ring_errand:pack_lembas"
    assert pack.compensate == "examples.ring_errand:unpack_lembas"
    assert (pack.max_attempts, pack.heartbeat_timeout, pack.undoable) == (1, None, True)
    # An entry that is not a step call (or a meta with nothing recorded) has the defaults.
    assert StepPolicy.from_json({}) == StepPolicy(ref="")


def test_an_irreversible_or_non_compensatable_step_is_not_undoable() -> None:
    assert not StepPolicy("m:f", irreversible=True).undoable
    assert not StepPolicy("m:f", compensatable=False).undoable
    assert not StepPolicy.from_json({"ref": "m:f", "compensatable": False}).undoable
    assert StepPolicy.from_json({"ref": "m:f", "irreversible": False}).undoable
