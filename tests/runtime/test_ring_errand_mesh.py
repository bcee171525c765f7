from __future__ import annotations

# The Ring Errand (examples/ring_errand.py) end to end through ``sm.Mesh`` and the
# InlineExecutor, on every path, on the memory, SQLite and PostgreSQL stores. Time only
# moves when the test advances the virtual clock; ``mesh.drain()`` then runs what is due.
import functools
import json
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from examples import ring_errand as example
from squidmesh.testing import replay
from tests.runtime.support import T0, MeshFactory

GOLDEN = Path(__file__).resolve().parents[1] / "histories" / "ring_errand_happy.json"
PAYLOAD = {"ring_id": "one-ring"}
STEPS = (
    "pack_lembas",
    "cross_moria",
    "reserve_eagle",
    "insult_sauron",
    "march_to_gate",
    "look_brave",
    "toss_ring",
    "walk_home",
)
HAPPY = [
    ("step", "pack_lembas"),
    ("log", "log"),
    ("sleep", "sleep"),
    ("pause", "hide_at_prancing_pony"),
    ("approval", "council_vote"),
    ("step", "cross_moria"),
    ("step", "reserve_eagle"),
    ("step", "insult_sauron"),
    ("join", "join"),
    ("step", "march_to_gate"),
    ("step", "look_brave"),
    ("log", "log"),
    ("step", "toss_ring"),
]


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts real executions of every Ring Errand step (the functions stay the same)."""
    counter: Counter[str] = Counter()

    def counting(name: str, original: Any) -> Any:
        @functools.wraps(original)  # keeps the annotations results are rebuilt from
        def counted(*args: Any, **kw: Any) -> Any:
            counter[name] += 1
            return original(*args, **kw)

        return counted

    for name in STEPS:
        definition = getattr(example, name)
        monkeypatch.setattr(definition, "fn", counting(name, definition.fn))
    return counter


def fail_times(
    monkeypatch: pytest.MonkeyPatch, definition: Any, times: int, exc: Callable[[int], Exception]
) -> list[int]:
    """Make ``definition`` raise ``exc(n)`` on its first ``times`` calls (all if < 0)."""
    seen: list[int] = []
    original = definition.fn

    @functools.wraps(original)
    def flaky(*args: Any, **kw: Any) -> Any:
        seen.append(len(seen) + 1)
        if times < 0 or len(seen) <= times:
            raise exc(len(seen))
        return original(*args, **kw)

    monkeypatch.setattr(definition, "fn", flaky)
    return seen


def to_council(mesh: sm.Mesh, factory: MeshFactory, payload: dict[str, Any] = PAYLOAD) -> Any:
    """Start a run and take it to the council vote (sleep fired, pause unblocked)."""
    run = mesh.start_run(example.ring_errand, payload, trigger="leave_shire")
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason) == (sm.RunStatus.RUNNING, "waiting_for_timer")
    assert why.details["wake_at"] == at(5)
    factory.clock.advance(4)
    assert mesh.drain() == 0  # Gandalf is late
    factory.clock.advance(1)
    assert mesh.drain() == 1
    why = mesh.explain_run(run.id)
    assert (why.status, why.reason, why.step) == (
        sm.RunStatus.PAUSED,
        "paused_for_manual_action",
        "hide_at_prancing_pony",
    )
    assert why.details["reason"] == "wait for Strider"
    mesh.unblock_run(run.id, actor="strider", comment="pipeweed restocked")
    why = mesh.explain_run(run.id)
    assert (why.reason, why.step) == ("paused_for_approval", "council_vote")
    return run


def history(mesh: sm.Mesh, run_id: Any) -> sm.Run:
    run = mesh.inspect_run(run_id, include_history=True)
    assert run.step_runs is not None and run.audit_events is not None and run.steps is not None
    return run


def step_run(run: sm.Run, name: str) -> sm.StepRun:
    assert run.step_runs is not None
    (found,) = [s for s in run.step_runs if s.name == name]
    return found


def test_happy_path(mesh_factory: MeshFactory, calls: Counter[str]) -> None:
    mesh = mesh_factory([example.ring_errand])
    run = to_council(mesh, mesh_factory)
    mesh.approve_run(run.id, actor="gandalf", comment="fly, you fools", metadata={"votes": 9})

    done = history(mesh, run.id)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result == "Frodo crossed Moria on 11 lembas"
    assert done.payload["snack_count"] == 11 and done.payload["fellowship"] == ["Sam"]
    assert "started_on" in done.payload  # default resolved once, at creation
    assert calls == Counter({n: 1 for n in STEPS if n != "walk_home"})

    assert done.step_runs is not None
    assert [(s.kind, s.name) for s in done.step_runs] == HAPPY
    golden = json.loads(GOLDEN.read_text())
    assert [(s.kind, s.name) for s in done.step_runs] == [
        (e["kind"], e["name"]) for e in golden["entries"]
    ]
    assert [s.seq for s in done.step_runs] == list(range(len(HAPPY)))
    assert all(s.status == "completed" for s in done.step_runs)
    starts = [s.started_at for s in done.step_runs]
    assert all(isinstance(s, str) for s in starts) and starts == sorted(starts)  # type: ignore[type-var]
    assert step_run(done, "pack_lembas").output == {"lembas": 11, "packed_by": "Frodo"}
    assert step_run(done, "pack_lembas").input == {"bearer": "Frodo", "snack_count": 11}
    assert step_run(done, "march_to_gate").output == "1000 soldiers at the Black Gate"
    assert step_run(done, "march_to_gate").parent == 8
    assert step_run(done, "council_vote").output["actor"] == "gandalf"
    for s in done.step_runs:
        if s.kind == "step":
            (attempt,) = s.attempts
            assert (attempt.number, attempt.status, attempt.error) == (1, "completed", None)
        else:
            assert s.attempts == ()
    assert step_run(done, "pack_lembas").attempts[0].started_at == at(0)
    assert step_run(done, "cross_moria").attempts[0].started_at == at(5)

    assert done.steps is not None
    assert [(d.name, d.kind, d.status) for d in done.steps] == [
        (name, kind, "completed") for kind, name in HAPPY if kind not in ("log", "join")
    ]

    assert done.audit_events is not None
    reviews = [
        (e.type, e.step, e.actor, e.comment, e.metadata)
        for e in done.audit_events
        if e.type in ("paused", "unblocked", "approved")
    ]
    assert reviews == [
        ("paused", "hide_at_prancing_pony", None, None, None),
        ("unblocked", "hide_at_prancing_pony", "strider", "pipeweed restocked", None),
        ("paused", "council_vote", None, None, None),
        ("approved", "council_vote", "gandalf", "fly, you fools", {"votes": 9}),
    ]
    assert done.audit_events[0].type == "run_started"
    assert [e.at for e in done.audit_events] == sorted(e.at or "" for e in done.audit_events)

    why = mesh.explain_run(run.id)
    assert why.reason == "completed" and why.details["result"] == done.result
    assert why.details["replay"]["blocked_by"] == ["insult_sauron", "toss_ring"]
    assert why.next_actions == ("fork_run",)
    exported = mesh.export_history(run.id)
    assert replay(example.ring_errand, exported).outcome == "completed"


def test_reject_goes_home(mesh_factory: MeshFactory, calls: Counter[str]) -> None:
    mesh = mesh_factory([example.ring_errand])
    run = to_council(mesh, mesh_factory)
    mesh.reject_run(run.id, actor="elrond", comment="too dangerous", metadata={"votes": 1})
    done = history(mesh, run.id)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, "went home")
    assert [s.name for s in done.step_runs or ()][-1] == "walk_home"
    assert calls == Counter({"pack_lembas": 1, "walk_home": 1})
    decision = step_run(done, "council_vote").output
    assert (decision["approved"], decision["decision"]) == (False, "rejected")
    assert done.audit_events is not None
    (rejected,) = [e for e in done.audit_events if e.type == "rejected"]
    assert (rejected.actor, rejected.comment, rejected.metadata) == (
        "elrond",
        "too dangerous",
        {"votes": 1},
    )
    assert mesh.explain_run(run.id).next_actions == ("replay_run", "fork_run")


def test_moria_retries_with_backoff_then_succeeds(
    mesh_factory: MeshFactory, calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = mesh_factory([example.ring_errand])
    tries = fail_times(monkeypatch, example.cross_moria, 2, lambda n: RuntimeError(f"balrog {n}"))
    run = to_council(mesh, mesh_factory)
    mesh.approve_run(run.id, actor="gandalf")  # at T0+5: attempt 1 fails

    why = mesh.explain_run(run.id)
    assert (why.status, why.reason, why.step) == (
        sm.RunStatus.RETRYING,
        "waiting_for_retry",
        "cross_moria",
    )
    assert why.details["next_attempt_number"] == 2
    assert why.details["next_attempt_at"] == at(6)  # exponential: min * 2**0
    assert mesh.drain() == 0
    mesh_factory.clock.advance(1)
    assert mesh.drain() == 1  # attempt 2 fails: next one 2 s later
    why = mesh.explain_run(run.id)
    assert why.details["next_attempt_number"] == 3
    assert why.details["next_attempt_at"] == at(8)
    mesh_factory.clock.advance(1.5)
    assert mesh.drain() == 0
    mesh_factory.clock.advance(0.5)
    mesh.drain()

    done = history(mesh, run.id)
    assert done.status is sm.RunStatus.COMPLETED
    assert tries == [1, 2, 3]
    moria = step_run(done, "cross_moria")
    assert moria.status == "completed"
    assert [(a.number, a.status, a.started_at) for a in moria.attempts] == [
        (1, "failed", at(5)),
        (2, "failed", at(6)),
        (3, "completed", at(8)),
    ]
    assert moria.attempts[0].error is not None
    assert moria.attempts[0].error["message"] == "balrog 1"
    assert moria.error is None and done.error is None


def test_moria_fails_for_good_then_undo_and_walk_home(
    mesh_factory: MeshFactory, calls: Counter[str]
) -> None:
    mesh = mesh_factory([example.ring_errand])
    run = to_council(mesh, mesh_factory, {"ring_id": "one-ring", "snack_count": 0})
    mesh.approve_run(run.id, actor="gandalf")
    done = history(mesh, run.id)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, "retreated")
    assert calls == Counter({"pack_lembas": 1, "cross_moria": 1, "walk_home": 1})  # NonRetryable
    moria = step_run(done, "cross_moria")
    assert moria.status == "failed" and len(moria.attempts) == 1
    assert moria.error is not None and "without lembas" in moria.error["message"]
    lembas = step_run(done, "pack_lembas")
    assert lembas.compensation is not None
    assert (lembas.compensation["status"], lembas.compensation["output"]) == (
        "completed",
        "returned 0 lembas",
    )
    undo = step_run(done, "undo")
    assert undo.output == [
        {
            "step": "pack_lembas",
            "seq": 0,
            "status": "completed",
            "output": "returned 0 lembas",
            "error": None,
        }
    ]
    assert [(s.kind, s.name) for s in done.step_runs or ()][-3:] == [
        ("step", "cross_moria"),
        ("undo", "undo"),
        ("step", "walk_home"),
    ]
    types = [e.type for e in done.audit_events or ()]
    assert types.index("undo") < types.index("compensation_started") < types.index("compensated")


def test_moria_retries_exhausted_then_undo(
    mesh_factory: MeshFactory, calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = mesh_factory([example.ring_errand])
    tries = fail_times(monkeypatch, example.cross_moria, -1, lambda n: RuntimeError("balrog"))
    run = to_council(mesh, mesh_factory)
    mesh.approve_run(run.id, actor="gandalf")
    for _ in range(2):
        mesh_factory.clock.advance(2)
        mesh.drain()
    done = history(mesh, run.id)
    assert (done.status, done.result) == (sm.RunStatus.COMPLETED, "retreated")
    assert tries == [1, 2, 3]
    assert [a.status for a in step_run(done, "cross_moria").attempts] == ["failed"] * 3
    assert step_run(done, "pack_lembas").compensation["output"] == "returned 11 lembas"  # type: ignore[index]


def test_failure_compensates_in_reverse_completion_order(
    mesh_factory: MeshFactory, calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = mesh_factory([example.ring_errand])
    fail_times(monkeypatch, example.march_to_gate, -1, lambda n: sm.NonRetryable("orcs"))
    failures: list[Any] = []
    original = example.reserve_eagle.compensate
    assert original is not None

    @functools.wraps(original)  # same module:qualname, so the recorded ref finds it
    def spy(**kw: Any) -> Any:
        failures.append(kw["failure"])
        return original(**kw)

    monkeypatch.setattr(example, "cancel_ride", spy)
    monkeypatch.setattr(example.reserve_eagle, "compensate", spy)
    run = to_council(mesh, mesh_factory)
    mesh.approve_run(run.id, actor="gandalf")

    done = history(mesh, run.id)
    assert done.status is sm.RunStatus.FAILED
    assert done.error is not None and done.error["message"] == "orcs"
    why = mesh.explain_run(run.id)
    assert (why.reason, why.step) == ("step_failed", "march_to_gate"), why.details

    eagle, lembas = step_run(done, "reserve_eagle"), step_run(done, "pack_lembas")
    assert eagle.compensation is not None and lembas.compensation is not None
    assert (eagle.compensation["status"], eagle.compensation["output"]) == (
        "completed",
        "cancelled eagle-for-one-ring",
    )
    assert (lembas.compensation["status"], lembas.compensation["output"]) == (
        "completed",
        "returned 11 lembas",
    )
    for name in ("cross_moria", "insult_sauron", "march_to_gate"):
        assert step_run(done, name).compensation is None
    assert failures and failures[0]["message"] == "orcs"  # compensations see the failure
    assert calls["toss_ring"] == 0

    events = [e for e in done.audit_events or () if e.type.startswith("compensat")]
    assert [(e.type, e.step) for e in events] == [
        ("compensation_started", None),
        ("compensated", "reserve_eagle"),  # completed last, compensated first
        ("compensated", "pack_lembas"),
    ]
    assert (events[0].metadata or {})["plan"] == [eagle.seq, lembas.seq]
    assert [e.type for e in done.audit_events or ()][-1] == "compensated"
