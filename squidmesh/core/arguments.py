"""Checking the arguments of public calls that are not about a run's data.

One place for what a count (a ``limit``, a ``batch_size``, a number of threads) may be,
so every call refuses the same things with the same words: not a bool, an ``int`` of
at least 1, and no larger than a database integer (SQLite and PostgreSQL both refuse
anything past 64 bits, and the driver's error would not say which argument it was).
"""

from __future__ import annotations

from typing import Any

from squidmesh.errors import InvalidArgumentError, shown

__all__ = ["MAX_COUNT", "count", "optional_count"]

#: the largest count a database takes (a signed 64-bit integer)
MAX_COUNT = 2**63 - 1


def count(value: Any, *, what: str) -> int:
    """``value`` if it is a positive integer a database can take; else
    ``InvalidArgumentError`` naming ``what`` (e.g. "list_runs limit")."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise InvalidArgumentError(f"{what} must be a positive integer, got {shown(value)}")
    return value


def optional_count(value: Any, *, what: str) -> int | None:
    """Like ``count``, and None (no limit) is allowed too."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise InvalidArgumentError(f"{what} must be a positive integer or None, got {shown(value)}")
    return value
