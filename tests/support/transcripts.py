"""Run the shell transcripts of the docs and compare what they print with what the docs say.

A command block of a Markdown file is a fenced ``console``/``bash``/``sh``/``shell`` block,
or a ``text`` block whose first line starts with ``$ ``. In ``$``-prompted blocks, each
``$ command`` line is followed by the output the docs claim for it (stdout and stderr as
a terminal interleaves them); ``bash`` blocks without prompts are commands only, whose
output is not shown. A block preceded by ``<!-- not run: REASON -->`` is not run (it
needs your application, a server of yours, or installs packages).

All runnable blocks of one file run in order in one sandbox, as a reader would type
them: a temporary working directory holding links to the checkout's ``squidmesh``,
``examples`` and ``tests`` (so paths print as they do from the root of a checkout, and
no file lands in the checkout), a clean environment (no ``SQUIDMESH_*``), and the
``export`` lines of the transcript applied to the following commands.

The comparison tolerates what differs on every run:

- run ids: each id the docs show stands for the id the real run printed at that place;
  the mapping is learned as outputs are compared and applied to later commands (full
  ids, and 8-character prefixes of them);
- ISO 8601 dates and timestamps;
- ``<placeholders>`` in the docs' output (``<temporary directory>``, ``<seconds>``,
  ``<checkout>``): any text on that line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["Command", "CommandBlock", "command_blocks", "run_transcript", "sandbox"]

REPO = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.*?)\s*-->$")
SHELL_LANGS = ("console", "bash", "sh", "shell")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Dates too: a payload default such as date.today() is the day the docs were written.
TIME = re.compile(r"\d{4}-\d\d-\d\d(?:T\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?)?")
PLACEHOLDER = re.compile(r"<[a-z][a-z ]*>")


@dataclasses.dataclass(frozen=True)
class Command:
    line: int  # 1-based line of the command in the Markdown file
    text: str
    #: the output the docs claim (None: not shown, only the exit status 0 is checked)
    output: tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class CommandBlock:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    commands: tuple[Command, ...]
    not_run: str | None  # the reason, when marked


def command_blocks(doc: Path) -> list[CommandBlock]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    found: list[CommandBlock] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, lang = match.group("indent"), match.group("lang")
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line
            for line in lines[index + 1 : end]
        ]
        first = next((line for line in body if line.strip()), "")
        prompted = first.startswith("$ ")
        if lang in SHELL_LANGS or (lang == "text" and prompted):
            above = index - 1
            while above >= 0 and not lines[above].strip():
                above -= 1
            marker = NOT_RUN.match(lines[above].strip()) if above >= 0 else None
            found.append(
                CommandBlock(
                    doc=doc,
                    line=index + 1,
                    lang=lang,
                    commands=tuple(_commands(body, index + 2, prompted)),
                    not_run=marker.group("reason") if marker else None,
                )
            )
        index = end + 1
    return found


def _commands(body: list[str], first_line: int, prompted: bool) -> Iterable[Command]:
    if not prompted:
        for offset, text in enumerate(body):
            if text.strip() and not text.lstrip().startswith("#"):
                yield Command(first_line + offset, text.strip(), None)
        return
    current: tuple[int, str] | None = None
    output: list[str] = []
    for offset, text in enumerate(body):
        if text.startswith("$ "):
            if current is not None:
                yield Command(current[0], current[1], _claimed(output))
            current, output = (first_line + offset, text[2:].strip()), []
        else:
            output.append(text.rstrip())
    if current is not None:
        yield Command(current[0], current[1], _claimed(output))


def _claimed(output: list[str]) -> tuple[str, ...] | None:
    """The output a prompted command claims; none shown means only success is claimed."""
    trimmed = _trim(output)
    return tuple(trimmed) if trimmed else None


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1]:
        lines.pop()
    return lines


def sandbox(root: Path) -> dict[str, str]:
    """Prepare ``root`` as a checkout-like working directory; returns the environment."""
    for name in ("squidmesh", "examples", "tests"):
        link = root / name
        if not link.exists():
            link.symlink_to(REPO / name, target_is_directory=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SQUIDMESH_", "PYTEST_"))
        and k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "PYTHONPATH")
    }
    # The linked package comes first, so tracebacks and recorded code locations name
    # squidmesh/... below the working directory, as they do in a checkout.
    env["PYTHONPATH"] = str(root)
    env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr interleave as in a terminal
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class Mismatch(AssertionError):
    pass


@dataclasses.dataclass
class _Ids:
    """Run ids of the docs -> the ids of this run."""

    known: dict[str, str] = dataclasses.field(default_factory=dict)

    def apply(self, command: str) -> str:
        for doc_id, real_id in self.known.items():
            command = command.replace(doc_id, real_id)
            command = re.sub(rf"\b{doc_id[:8]}\b", real_id[:8], command)
        return command

    def learn(self, expected: str, actual: str) -> None:
        for doc_id, real_id in zip(UUID.findall(expected), UUID.findall(actual), strict=False):
            if self.known.setdefault(doc_id, real_id) != real_id:
                raise Mismatch(f"run id {doc_id} of the docs stands for two different runs")


def _pattern(expected: str) -> re.Pattern[str]:
    parts: list[str] = []
    position = 0
    for match in re.finditer(f"{UUID.pattern}|{TIME.pattern}|{PLACEHOLDER.pattern}", expected):
        parts.append(re.escape(expected[position : match.start()]))
        token = match.group(0)
        if UUID.fullmatch(token):
            parts.append(UUID.pattern)
        elif TIME.fullmatch(token):
            parts.append(TIME.pattern)
        else:
            parts.append(".+?")
        position = match.end()
    parts.append(re.escape(expected[position:]))
    return re.compile("".join(parts))


def _compare(command: Command, actual: list[str], ids: _Ids, where: str) -> None:
    expected = list(command.output or ())
    if len(expected) != len(actual) or not all(
        _pattern(e).fullmatch(a) for e, a in zip(expected, actual, strict=False)
    ):
        raise Mismatch(
            f"{where}: `{command.text}` printed something else than the docs say.\n"
            "--- the docs\n" + "\n".join(expected) + "\n--- the real output\n" + "\n".join(actual)
        )
    for e, a in zip(expected, actual, strict=True):
        ids.learn(e, a)


def run_transcript(
    blocks: Iterable[CommandBlock], root: Path, env: Mapping[str, str], *, timeout: float = 120
) -> int:
    """Run every command of the (unmarked) blocks in order; returns how many ran."""
    environment = dict(env)
    ids = _Ids()
    ran = 0
    for block in blocks:
        if block.not_run is not None:
            continue
        for command in block.commands:
            where = f"{block.doc.name}:{command.line}"
            text = ids.apply(command.text)
            if text.startswith("export "):
                for assignment in shlex.split(text)[1:]:
                    name, _, value = assignment.partition("=")
                    environment[name] = value
                actual: list[str] = []
                code = 0
            else:
                done = subprocess.run(
                    ["bash", "-c", f"exec 2>&1\n{text}"],
                    cwd=root,
                    env=environment,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
                actual, code = _trim(done.stdout.rstrip("\n").splitlines()), done.returncode
            ran += 1
            if command.output is None:
                if code != 0:
                    raise Mismatch(f"{where}: `{command.text}` failed:\n" + "\n".join(actual))
                continue
            _compare(command, [line.rstrip() for line in actual], ids, where)
            if code != 0 and "exit $?" not in command.text:
                raise Mismatch(f"{where}: `{command.text}` exited {code}")
    return ran
