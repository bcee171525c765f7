"""pytest plugin: with ``SQUIDMESH_REQUIRE_SERVICES=1`` every skip becomes a failure.

CI sets the variable so that a missing service (PostgreSQL, Redis, RabbitMQ, an
optional dependency, ...) can never turn into a silently green run.  Registered by
``tests/conftest.py``; load it elsewhere with ``-p tests.support.skips``.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

ENV_REQUIRE = "SQUIDMESH_REQUIRE_SERVICES"


def services_required() -> bool:
    return os.environ.get(ENV_REQUIRE, "").strip() == "1"


def _skip_reason(longrepr: object) -> str:
    # Skip reports carry (path, lineno, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{ENV_REQUIRE}=1 turns skips into failures; skipped because: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # xfail outcomes are reported as "skipped" with a `wasxfail` attribute: leave them.
    if services_required() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    # Module-level pytest.skip(..., allow_module_level=True) / pytest.importorskip.
    if services_required() and report.skipped:
        _as_failure(report)
    return report
