"""Database errors become ``StorageError`` at the edge of every SQL store method."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar, cast

import sqlalchemy as sa

from squidmesh.errors import ConcurrentChangeError, ConflictError, StorageError

__all__ = ["driver_error", "is_transient", "storage_error", "translated"]

_F = TypeVar("_F", bound=Callable[..., Any])


def storage_error(action: str, exc: BaseException) -> StorageError:
    """A ``StorageError`` saying what failed; raise it ``from driver_error(exc)``."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = detail[0] if detail else type(exc).__name__
    driver = driver_error(exc)
    if getattr(driver, "sqlstate", None) == "40001":
        return ConcurrentChangeError(f"could not {action}: {reason}")
    if _is_unique_violation(driver):
        return ConflictError(f"could not {action}: {reason}")
    return StorageError(f"could not {action}: {reason}")


#: SQLITE_CONSTRAINT_UNIQUE and SQLITE_CONSTRAINT_PRIMARYKEY (sqlite3 has the names from
#: Python 3.11, typeshed not yet)
_SQLITE_DUPLICATE_CODES = (2067, 1555)


def _is_unique_violation(driver: BaseException) -> bool:
    """A duplicate key: SQLSTATE 23505 on PostgreSQL; SQLite has no SQLSTATE, only its
    extended result codes (SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY)."""
    if getattr(driver, "sqlstate", None) == "23505":
        return True
    if not isinstance(driver, sqlite3.IntegrityError):
        return False
    code = getattr(driver, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code in _SQLITE_DUPLICATE_CODES
    return str(driver).startswith("UNIQUE constraint failed")


def driver_error(exc: BaseException) -> BaseException:
    """The DBAPI error behind a SQLAlchemy error (or the error itself)."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def translated(action: str) -> Callable[[_F], _F]:
    """Turn database errors raised inside the decorated method into ``StorageError``.

    SQLAlchemy errors (they wrap every DBAPI error) and the ``TypeError``/``ValueError`` of
    a value that cannot be encoded are translated; the method bodies only bind and
    execute. Errors of the caller's own code never pass through here.
    """

    def decorate(method: _F) -> _F:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except sa.exc.SQLAlchemyError as exc:
                raise storage_error(action, exc) from driver_error(exc)
            except sqlite3.Error as exc:  # SQLite's write path uses the driver directly
                raise storage_error(action, exc) from exc
            except (TypeError, ValueError) as exc:
                # psycopg serializes JSON parameters itself, so a value that is not JSON
                # fails inside the driver without being wrapped by SQLAlchemy.
                raise storage_error(action, exc) from exc

        return cast(_F, wrapper)

    return decorate


#: SQLSTATE classes and codes of failures that say nothing about the work: retrying the
#: same transaction later may well succeed (connection lost, server shutting down,
#: serialization failure, deadlock, out of resources)
_TRANSIENT_CLASSES = ("08", "53", "57P")
_TRANSIENT_CODES = frozenset({"40001", "40P01", "55P03"})


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is an infrastructure failure, not one of the
    work itself: a lost connection, a database shutting down or restarting, a
    serialization failure or deadlock, SQLite's busy database."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConcurrentChangeError):
            return True
        if isinstance(current, sa.exc.DBAPIError) and current.connection_invalidated:
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate in _TRANSIENT_CODES or sqlstate.startswith(_TRANSIENT_CLASSES)
        ):
            return True
        if _is_lost_connection(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_lost_connection(exc: BaseException) -> bool:
    module = type(exc).__module__
    name = type(exc).__name__
    if module.startswith("psycopg") and name in ("OperationalError", "InterfaceError"):
        return getattr(exc, "sqlstate", None) is None  # no server verdict: the link failed
    if module == "sqlite3" and name == "OperationalError":
        text = str(exc)
        return "database is locked" in text or "database is busy" in text
    return False
