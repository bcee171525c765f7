"""lint: determinism hazards and silent bugs, each at the right file:line."""

from __future__ import annotations

import importlib
import inspect
import re
from collections import Counter
from typing import Any

import pytest

import squidmesh as sm
from examples import ring_errand as example
from squidmesh.analysis import CODES, Finding, lint
from tests.analysis import tricky

EXPECT = re.compile(r"# expect: (SM\d{3}(?:, SM\d{3})*)\s*$")


def expected_findings() -> Counter[tuple[int, str]]:
    """(line, code) pairs declared by `# expect:` comments in tests/analysis/tricky.py."""
    wanted: Counter[tuple[int, str]] = Counter()
    for number, line in enumerate(tricky.SOURCE.read_text().splitlines(), start=1):
        match = EXPECT.search(line)
        if match:
            for code in match.group(1).split(", "):
                wanted[(number, code)] += 1
    return wanted


def test_every_hazard_is_found_at_its_line() -> None:
    findings = lint(tricky.hazardous)
    got = Counter((f.lineno, f.code) for f in findings)
    assert got == expected_findings()
    assert all(f.file == str(tricky.SOURCE) for f in findings)
    assert findings == sorted(findings, key=lambda f: (f.file, f.lineno, f.code))
    # Every documented hazard code is exercised.
    assert {f.code for f in findings} == set(CODES) - {"SM100"}


def test_findings_carry_a_one_line_fix() -> None:
    by_code: dict[str, Finding] = {}
    for finding in lint(tricky.hazardous):
        by_code.setdefault(finding.code, finding)
    assert by_code["SM102"].hint == "use `yield from sm.now()`"
    assert by_code["SM103"].hint == "use `yield from sm.random()`"
    assert by_code["SM104"].hint == "use `yield from sm.uuid4()`"
    sleep = next(f for f in lint(tricky.hazardous) if "time.sleep" in f.message)
    assert sleep.hint == "use `yield sm.sleep(seconds=...)`"
    assert by_code["SM111"].message.startswith("`walk_home(...)` is called without `yield`")
    assert by_code["SM111"].hint == "write `yield walk_home(...)`"
    for finding in lint(tricky.hazardous):
        assert finding.hint and "\n" not in finding.hint and "\n" not in finding.message
        text = str(finding)
        assert text.startswith(f"{finding.file}:{finding.lineno}: {finding.code} ")


def test_module_docstring_documents_every_code() -> None:
    # `squidmesh.analysis.lint` the attribute is the function; the module is in sys.modules.
    doc = importlib.import_module("squidmesh.analysis.lint").__doc__ or ""
    for code in CODES:
        assert code in doc


@pytest.mark.parametrize(
    "workflow",
    [
        example.ring_errand,
        tricky.deceptively_clean,
        tricky.aliases,
        tricky.stacked,
        tricky.control,
        tricky.helpers,
        tricky.closure_flow,
    ],
    ids=lambda w: w.name,
)
def test_clean_workflows_have_no_findings(workflow: sm.WorkflowDefinition) -> None:
    assert lint(workflow) == []


def test_runtime_test_flows_are_clean() -> None:
    from tests.runtime import flows

    for flow in [v for v in vars(flows).values() if isinstance(v, sm.WorkflowDefinition)]:
        assert [f for f in lint(flow) if f.code != "SM110"] == [], flow.name


def test_a_yield_of_a_hazard_is_still_a_hazard() -> None:
    (finding,) = lint(tricky.runtime_choice)
    assert (finding.code, finding.lineno) == ("SM103", tricky.line_of("dynamic_not_a_command"))


def test_nested_definitions_are_not_linted() -> None:
    # deceptively_clean has `datetime.now()`, `os.environ` and `open()` in a nested def.
    assert lint(tricky.deceptively_clean) == []


def test_helper_generators_are_linted_with_their_own_names() -> None:
    helper_line = next(
        n
        for n, line in enumerate(tricky.SOURCE.read_text().splitlines(), start=1)
        if "if time.time() > 0:" in line
    )
    assert Finding(
        "SM101",
        "`time.time()` reads the clock or blocks the worker",
        str(tricky.SOURCE),
        helper_line,
        "use `yield from sm.now()`",
    ) in lint(tricky.hazardous)


def test_lint_accepts_plain_generator_functions() -> None:
    assert [f.code for f in lint(tricky.noisy_helper)] == ["SM101"]


def test_local_imports_and_shadowing() -> None:
    def shadowed(payload: Any):
        import time as clock

        random = payload.random  # a local: unknowable, so not flagged
        yield sm.sleep(seconds=clock.monotonic())
        return random()

    findings = lint(shadowed)
    assert [(f.code, f.message) for f in findings] == [
        ("SM101", "`clock.monotonic()` reads the clock or blocks the worker")
    ]


def test_an_assigned_step_call_never_yielded_is_found() -> None:
    from examples.ring_errand import toss_ring, walk_home

    def helper() -> Any:
        call = walk_home("helper")  # returned to the caller, which may yield it
        return call
        yield  # a generator

    def flow(payload: Any) -> Any:
        home = walk_home("Sam")  # <home>
        receipt = toss_ring("r")  # <returned>
        ready = walk_home("later")
        also = yield from helper()
        yield ready
        yield also
        return {"home": home.name, "receipt": receipt}

    found = [(f.code, f.lineno, f.message, f.hint) for f in lint(flow)]
    lines = {
        marker: flow.__code__.co_firstlineno + n
        for n, text in enumerate(inspect.getsource(flow).splitlines())
        for marker in ("home", "returned")
        if text.endswith(f"# <{marker}>")
    }
    assert found == [
        (
            "SM111",
            lines["home"],
            "`home = walk_home(...)` is never yielded: the step does not run and `home` is "
            "a command, not its result",
            "write `home = yield from walk_home(...)`",
        ),
        (
            "SM111",
            lines["returned"],
            "`receipt = toss_ring(...)` is never yielded: the step does not run and "
            "`receipt` is a command, not its result",
            "write `receipt = yield from toss_ring(...)`",
        ),
    ]


def test_composition_commands_called_without_yield_are_found() -> None:
    from tests.runtime import family

    def flow(payload: Any) -> Any:
        sm.child(family.kid, {"n": 1})  # <bare-child>
        sm.publish("progress", 1)  # <bare-publish>
        sm.continue_as_new()  # <bare-continue>
        result = yield from sm.child(family.kid, {"n": 2})
        return result

    lines = {
        marker: flow.__code__.co_firstlineno + n
        for n, text in enumerate(inspect.getsource(flow).splitlines())
        for marker in ("bare-child", "bare-publish", "bare-continue")
        if text.endswith(f"# <{marker}>")
    }
    found = [(f.code, f.lineno) for f in lint(flow)]
    assert found == [("SM111", lines[m]) for m in ("bare-child", "bare-publish", "bare-continue")]
