"""Typed results: ``x = yield from cmd`` has the precise static type, with no mypy plugin.

``sample_workflow.py`` yields every command with ``yield from``. mypy (``--strict``, no
configuration file, so no plugin of any kind) must reveal exactly the type written next
to each ``reveal_type`` and report exactly the errors the sample marks; then the same
workflow runs, and the values the runtime sends back have the types mypy promised.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from squidmesh.testing import WorkflowTester
from tests.typed import sample_workflow
from tests.typed.sample_workflow import typed

SAMPLE = Path(sample_workflow.__file__).resolve()
REPO = SAMPLE.parents[2]
NOTE = re.compile(r'^(?P<file>[^:]+):(?P<line>\d+): note: Revealed type is "(?P<type>.*)"$')
ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<text>.*)  \[(?P<code>[\w-]+)\]$")


def marked(marker: str) -> dict[int, str]:
    """line -> the text after ``# <marker>:`` on that line of the sample."""
    found = {}
    for number, line in enumerate(SAMPLE.read_text().splitlines(), start=1):
        match = re.search(rf"\S  # {marker}: (.+)$", line)  # after code, not in prose
        if match:
            found[number] = match.group(1).strip()
    return found


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    cache = tmp_path_factory.mktemp("mypy-cache")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            "",  # no configuration: in particular no plugin
            "--cache-dir",
            str(cache),
            "--show-error-codes",
            "--no-error-summary",
            "--hide-error-context",
            str(SAMPLE.relative_to(REPO)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.splitlines()


def test_every_command_reveals_its_precise_type(mypy_output: list[str]) -> None:
    expected = marked("T")
    assert len(expected) >= 20
    revealed: dict[int, str] = {}
    for line in mypy_output:
        match = NOTE.match(line)
        if match:
            revealed[int(match.group("line"))] = match.group("type")
    assert revealed == expected


def test_wrong_types_are_errors_and_nothing_else_is(mypy_output: list[str]) -> None:
    errors: dict[int, str] = {}
    for line in mypy_output:
        match = ERROR.match(line)
        if match:
            errors[int(match.group("line"))] = match.group("code")
        else:
            assert NOTE.match(line) or ": note: " in line, line
    assert errors == marked("E")


def test_the_runtime_sends_back_what_mypy_promised() -> None:
    tester = WorkflowTester(typed)
    run = tester.start()
    assert [str(w) for w in run.waiting_on] == ["sleep"]
    tester.advance(1)
    tester.approve(run, actor="elrond", comment="go")
    tester.send_event(run, "ping", {"n": 1})
    tester.unblock(run, "resume")
    assert run.status == "completed", run.error
    assert run.result == {
        "total": "int",
        "receipt": "Receipt",
        "rate": "float",
        "hello": "str",
        "patient": "Receipt",
        "done": "NoneType",
        "decision": "Decision",
        "event": "dict",
        "paused": "str",
        "pair": "tuple[int, Receipt]",
        "trio": "tuple[int, float, str]",
        "many": "tuple[int, int, int]",
        "soft": "tuple[int, Receipt]",
        "winner": "tuple[int, int]",
        "moment": "datetime",
        "token": "UUID",
        "dice": "float",
        "new_code": "bool",
        "undone": "list[]",
        "child": "Receipt",
        "by_name": "dict",
        "detached": "UUID",
        "capped": "tuple[Receipt, int]",
        "untyped": "int",
    }
