"""Storage behind the ``Store`` port: in-memory, SQLite and PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from squidmesh.storage.base import Store

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["DEFAULT_URL", "open_store"]

#: The embedded default: a SQLite file in the working directory.
DEFAULT_URL = "sqlite:///squidmesh.db"


def open_store(
    url: str | None = None, *, engine: sa.Engine | None = None, schema: str = "squidmesh"
) -> Store:
    """The store for a database URL, or for a host's SQLAlchemy ``engine``.

    ``None`` is the embedded SQLite file ``./squidmesh.db``; ``memory://`` keeps
    everything in memory; ``postgresql://`` and ``postgres://`` use psycopg 3. A host's
    engine is shared, never disposed by ``close()``.
    """
    if engine is not None:
        if url is not None:
            raise ValueError("pass either a database URL or an engine, not both")
        from squidmesh.storage.sql import SqlStore

        return SqlStore(engine, schema=schema)
    url = DEFAULT_URL if url is None else url
    if url == "memory://" or url == "memory:":
        from squidmesh.storage.memory import InMemoryStore

        return InMemoryStore()
    from squidmesh.storage.sql import SqlStore, create_engine

    return SqlStore(create_engine(url), schema=schema, owns_engine=True)
