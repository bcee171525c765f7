"""Database errors become ``StorageError`` at the edge of every SQL store method."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import sqlalchemy as sa

from squidmesh.errors import ConcurrentChangeError, StorageError

__all__ = ["driver_error", "storage_error", "translated"]

_F = TypeVar("_F", bound=Callable[..., Any])


def storage_error(action: str, exc: BaseException) -> StorageError:
    """A ``StorageError`` saying what failed; raise it ``from driver_error(exc)``."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = detail[0] if detail else type(exc).__name__
    if getattr(driver_error(exc), "sqlstate", None) == "40001":
        return ConcurrentChangeError(f"could not {action}: {reason}")
    return StorageError(f"could not {action}: {reason}")


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
            except (TypeError, ValueError) as exc:
                # psycopg serializes JSON parameters itself, so a value that is not JSON
                # fails inside the driver without being wrapped by SQLAlchemy.
                raise storage_error(action, exc) from exc

        return cast(_F, wrapper)

    return decorate
