"""``yield cmd`` and ``x = yield from cmd``: how a command hands its result back, typed.

A workflow may yield a command in two ways, and the interpreter cannot tell them apart:

- ``x = yield cmd``: the generator yields ``cmd``; the value sent back is ``x``. Python
  types the value of a ``yield`` expression by the workflow's *send* type, the same for
  every command, so ``x`` is ``Any`` to a type checker.
- ``x = yield from cmd``: ``iter(cmd)`` yields ``cmd`` itself, once, and returns the value
  sent back. Type checkers read the result of ``yield from`` from the iterator's
  ``Generator[..., ..., T]`` return type, and every command declares its own ``T``
  (``StepCall[T]`` the step's return type, ``Approval`` a ``Decision``...), so ``x`` gets
  the precise type under ``mypy --strict`` with no plugin.

The iterator is deliberately not a generator but an object with ``__next__`` and
``send`` only. PEP 380 then gives ``yield from`` exactly the behaviour of ``yield``:
an exception thrown into the workflow (``StepFailed``, ``TimedOut``, ``RunCancelled``,
``GeneratorExit``) is raised at the workflow's own ``yield from`` line, since the
iterator has no ``throw``/``close`` to delegate to; tracebacks show no squidmesh frame;
and ``gi_yieldfrom`` chains (followed to find the file:line of a yield) end at the
workflow's frame, not in squidmesh. Its static type is ``Generator``, which is what it
behaves as for ``yield from``, the only use it has.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Generic, TypeVar, cast

from typing_extensions import Self

__all__ = ["Yieldable"]

T_co = TypeVar("T_co", covariant=True)


class Yieldable(Generic[T_co]):
    """Base of every command a workflow yields; ``T_co`` is what the yield evaluates to."""

    __slots__ = ()

    def __iter__(self) -> Generator[Self, Any, T_co]:
        return cast("Generator[Self, Any, T_co]", _YieldOnce(self))


class _YieldOnce:
    """Yields one command, then returns (``StopIteration``) the value sent back for it."""

    __slots__ = ("_command",)

    def __init__(self, command: object) -> None:
        self._command: object | None = command

    def __iter__(self) -> _YieldOnce:
        return self

    def __next__(self) -> object:
        return self.send(None)

    def send(self, value: Any) -> object:
        command = self._command
        if command is not None:
            self._command = None
            return command
        raise StopIteration(value)

    def __repr__(self) -> str:
        return f"<yield from {self._command!r}>"
