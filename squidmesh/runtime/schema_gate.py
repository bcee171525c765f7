"""``SchemaGate``: checks once per Mesh that the store's schema is current before the
first call that needs it (embedded stores migrate themselves; on PostgreSQL the operator
decides when, with ``squidmesh migrate`` or ``mesh.migrate()``)."""

from __future__ import annotations

import threading

from squidmesh.errors import SchemaOutOfDateError
from squidmesh.storage.base import Store

__all__ = ["SchemaGate"]


class SchemaGate:
    def __init__(self, store: Store, *, auto_migrate: bool) -> None:
        self.store = store
        #: migrate instead of failing when the schema is missing or old
        self.auto_migrate = auto_migrate
        self._checked = threading.Event()

    @property
    def checked(self) -> bool:
        """Whether the schema was found (or made) current by this gate."""
        return self._checked.is_set()

    def ready(self) -> None:
        """Return once the schema is current; ``SchemaOutOfDateError`` (which says what
        to run) when it is not and this gate may not migrate."""
        if self._checked.is_set():
            return
        try:
            self.store.check_schema()
        except SchemaOutOfDateError:
            if not self.auto_migrate:
                raise
            self.store.migrate()
        self._checked.set()

    def migrate(self) -> list[str]:
        """Create or upgrade the schema; the migrations applied, oldest first."""
        applied = self.store.migrate()
        self._checked.set()
        return applied
