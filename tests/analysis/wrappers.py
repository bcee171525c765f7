"""Decorators for tests/analysis/tricky.py, kept in another module on purpose.

A wrapper's ``__globals__`` are this module's, not the workflow's: the analyzer must
peel wrappers off (``__wrapped__``) before it resolves names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import Any

Flow = Callable[..., Generator[Any, Any, Any]]


def traced(fn: Flow) -> Flow:
    """A generator-preserving decorator, as a tracing library would write one."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        return (yield from fn(*args, **kwargs))

    return wrapper


def tagged(tag: str) -> Callable[[Flow], Flow]:
    """A decorator factory that only annotates the function."""

    def wrap(fn: Flow) -> Flow:
        fn.__dict__.setdefault("tags", []).append(tag)
        return fn

    return wrap


def shouting(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A plain-function decorator placed under ``@sm.step``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return str(fn(*args, **kwargs)).upper()

    return wrapper
