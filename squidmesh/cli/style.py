"""How human output looks on this terminal: colour and width.

Colour is on only when it can help and cannot hurt: stdout is a terminal (never when
piped or redirected, so files and ``grep`` see plain text), ``NO_COLOR`` is not set
(https://no-color.org: any non-empty value turns colour off) and ``TERM`` is not
``dumb``. ``FORCE_COLOR`` (non-empty) or ``--color always`` turn it on regardless;
``--color never`` turns it off. JSON output is never coloured.

Width: long free text (comments, error messages, tracebacks) wraps to the terminal's
width instead of running hundreds of characters wide. ``COLUMNS`` sets the width
explicitly; output that is not a terminal and has no ``COLUMNS`` is not wrapped, so one
record stays on one line for tools.

``main`` sets :data:`current` once per command; the renderers read it. The default
(no colour, no wrapping) is what library callers such as ``squidmesh.demo`` get.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import textwrap
from collections.abc import Mapping
from typing import TextIO

__all__ = ["Terminal", "colour_wanted", "configure", "current", "paint", "status", "wrap"]

#: The narrowest width worth wrapping to; below it, text is left as it is.
MIN_WRAP = 24

_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}

#: The colour of each run status (and of step statuses that share the word).
STATUS_COLOURS = {
    "completed": "green",
    "failed": "red",
    "suspended": "magenta",
    "cancelled": "dim",
    "cancelling": "yellow",
    "paused": "yellow",
    "retrying": "yellow",
    "running": "cyan",
    "pending": "cyan",
    "compensated": "blue",
}


@dataclasses.dataclass(frozen=True)
class Terminal:
    """``colour``: emit ANSI colours; ``width``: wrap free text to this many columns."""

    colour: bool = False
    width: int | None = None


current = Terminal()


def colour_wanted(
    stream: TextIO, choice: str = "auto", env: Mapping[str, str] | None = None
) -> bool:
    """Whether output to ``stream`` should be coloured (``choice``: auto, always, never)."""
    env = os.environ if env is None else env
    if choice == "never":
        return False
    if choice == "always":
        return True
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and env.get("TERM") != "dumb"


def _width(stream: TextIO, env: Mapping[str, str]) -> int | None:
    columns = env.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    isatty = getattr(stream, "isatty", None)
    if isatty and isatty():
        return shutil.get_terminal_size().columns
    return None


def configure(stream: TextIO, choice: str = "auto") -> Terminal:
    """Set :data:`current` for output to ``stream``; returns it."""
    global current
    current = Terminal(colour=colour_wanted(stream, choice), width=_width(stream, os.environ))
    return current


def paint(text: str, *styles: str) -> str:
    """``text`` in the given styles when colour is on; unchanged otherwise."""
    if not current.colour or not styles or not text:
        return text
    codes = ";".join(_CODES[s] for s in styles)
    return f"\033[{codes}m{text}\033[0m"


def status(text: str) -> str:
    """A status word in its colour (padding included in ``text`` stays outside)."""
    word = text.strip()
    colour = STATUS_COLOURS.get(word)
    if colour is None:
        return text
    return text.replace(word, paint(word, colour), 1)


def wrap(text: str, *, indent: str = "", hanging: str = "  ") -> list[str]:
    """``text`` as lines that fit :data:`current`'s width (one line when it has none)."""
    width = current.width
    if width is None or width - len(indent) < MIN_WRAP or len(indent) + len(text) <= width:
        return [indent + text]
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent + hanging,
        break_long_words=True,
        break_on_hyphens=False,
    ) or [indent]
