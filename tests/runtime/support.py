from __future__ import annotations

# Shared helpers of the runtime tests: a virtual clock, whole-database snapshots and the
# ``MeshFactory`` behind the ``mesh_factory`` fixtures (see conftest.py).
import dataclasses
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.storage.base import Store
from tests.support import postgres

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
FAR_FUTURE = datetime(9000, 1, 1, tzinfo=timezone.utc)

ALL_STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
SQL_STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
PG_ONLY = [pytest.param("postgres", marks=pytest.mark.postgres)]


class VirtualClock:
    """A clock the test moves by hand: ``clock()`` is now, ``advance(s)`` moves it."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now = self.now + timedelta(seconds=seconds)
        return self.now


class _Rollback(Exception):
    pass


def peek_jobs(store: Store) -> list[dict[str, Any]]:
    """Every queued job (leased or not), read by claiming them all and rolling back."""
    jobs: list[sm.Job] = []
    try:
        with store.transaction() as tx:
            jobs = tx.claim_jobs(
                now=FAR_FUTURE, limit=1_000_000, worker="snapshot", lease_until=FAR_FUTURE
            )
            raise _Rollback
    except _Rollback:
        pass
    rows = [job.to_json() for job in jobs]
    for row in rows:
        row["run_at"] = datetime.fromisoformat(row["run_at"]) if row["run_at"] else None
    return sorted(rows, key=lambda row: row["id"] or 0)


def snapshot(store: Store) -> dict[str, Any]:
    """The whole persisted state, as plain comparable values."""
    runs: dict[str, Any] = {}
    with store.transaction() as tx:
        for record in tx.list_runs(limit=1_000_000):
            runs[record.id] = {
                "run": dataclasses.asdict(record),
                "entries": [e.to_json() for e in tx.load_entries(record.id)],
                "attempts": {
                    seq: [dataclasses.asdict(a) for a in tries]
                    for seq, tries in tx.load_attempts(record.id).items()
                },
                "audit": [dataclasses.asdict(a) for a in tx.load_audit(record.id)],
                "events": [dataclasses.asdict(ev) for ev in tx.load_events(record.id)],
            }
    return {"runs": runs, "jobs": peek_jobs(store)}


def claim_all(store: Store, now: datetime) -> list[sm.Job]:
    """Claim every job due at ``now`` (what a worker would get), committed."""
    with store.transaction() as tx:
        return tx.claim_jobs(
            now=now, limit=1000, worker="test-worker", lease_until=now + timedelta(minutes=5)
        )


class MeshFactory:
    """Builds Meshes on one test database (see the module comment)."""

    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.url = url
        self.clock = VirtualClock()
        self.meshes: list[sm.Mesh] = []
        self._memory: Store | None = None
        self._probe: Store | None = None
        if kind == "memory":
            from squidmesh.storage.memory import InMemoryStore

            self._memory = InMemoryStore()

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    def open_store(self) -> Store:
        """A new store object on this test's database (the in-memory one is shared)."""
        if self._memory is not None:
            return self._memory
        from squidmesh.storage import open_store

        return open_store(self.url)

    def __call__(
        self,
        workflows: Iterable[sm.WorkflowDefinition] = (),
        *,
        executor: str | sm.Executor = "inline",
        clock: Any = None,
        **options: Any,
    ) -> sm.Mesh:
        if isinstance(executor, str):
            executor = {"inline": sm.InlineExecutor, "database": sm.DatabaseExecutor}[executor]()
        mesh = sm.Mesh(
            store=self.open_store(),
            workflows=list(workflows),
            executor=executor,
            clock=clock or self.clock,
            **options,
        )
        self.meshes.append(mesh)
        return mesh

    @property
    def probe(self) -> Store:
        if self._probe is None:
            self._probe = self.open_store()
        return self._probe

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.probe)

    def jobs(self) -> list[dict[str, Any]]:
        return peek_jobs(self.probe)

    def sqlalchemy_engine(self) -> Any:
        """A separate SQLAlchemy engine on the test database (host-side reads/writes)."""
        import sqlalchemy as sa

        assert self.url is not None
        if self.kind == "postgres":
            return sa.create_engine(postgres.sqlalchemy_url(self.url))
        return sa.create_engine(self.url)

    def close(self) -> None:
        for mesh in self.meshes:
            mesh.close()
        if self._probe is not None and self._probe is not self._memory:
            self._probe.close()


def crash(mesh: sm.Mesh) -> None:
    """Stand in for the process of ``mesh`` being killed: what it held alive (its leases,
    the attempts it ran) is lost to everyone else; nothing is closed or recorded."""
    mesh.runner.presence.abandon()


def fails_unchanged(
    factory: MeshFactory, exc_type: type[BaseException], fn: Any, *args: Any, **kwargs: Any
) -> Any:
    """Call ``fn``; assert it raises ``exc_type`` and that the database did not change."""
    before = factory.snapshot()
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    after = factory.snapshot()
    diff = differences(before, after)
    assert not diff, f"{getattr(fn, '__name__', fn)} changed the database:\n" + "\n".join(diff[:20])
    return info.value


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Human-readable paths where two snapshots differ (for assertion messages)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            if key not in before:
                found.append(f"{path}/{key}: added {after[key]!r}")
            elif key not in after:
                found.append(f"{path}/{key}: removed {before[key]!r}")
            else:
                found.extend(differences(before[key], after[key], f"{path}/{key}"))
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        found = []
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            found.extend(differences(old, new, f"{path}[{index}]"))
        return found
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    diff = differences(before, after)
    assert not diff, "the database changed:\n" + "\n".join(diff[:20])
