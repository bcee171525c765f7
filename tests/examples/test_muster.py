from __future__ import annotations

# examples/muster.py, smaller: the same command line, on a throwaway SQLite file with
# real worker threads, and the figures its docstring reports checked on the way.
import pytest

from examples import muster
from squidmesh.testing import WorkflowTester


def test_a_small_muster_runs_capped_and_reports_its_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = muster.main(["--riders", "60", "--limit", "5", "--threads", "3"])
    assert figures.status == "completed"
    assert figures.result == "60 riders and 120 spears stand at Edoras"
    assert figures.riders_completed == 60
    assert figures.most_in_flight == 5
    # publish, join, one entry per rider, publish, the final count
    assert figures.muster_entries == 60 + 4
    assert figures.rider_entries == (2,) * 60
    assert figures.history_rows == 64 + 120
    printed = capsys.readouterr().out
    assert "most riders in flight  5 (limit 5)" in printed
    assert "muster history         64 entries" in printed


def test_the_muster_in_memory_with_riders_stubbed() -> None:
    tester = WorkflowTester(muster.muster_of_rohan, children={muster.muster_rider: 2})
    run = tester.start({"riders": 7, "limit": 3})
    assert run.result == "7 riders and 14 spears stand at Edoras"
    assert run.published == {"muster": {"called": 7, "arrived": 7}}
    assert [c.result for c in run.children] == [2] * 7
