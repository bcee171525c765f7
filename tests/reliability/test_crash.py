"""Crash safety (SPEC section 11): SIGKILLed workers lose nothing and change nothing.

Three ``squidmesh worker`` processes (2 s leases) run ~60 runs of the mixed workload of
``harness.py`` while a chaos loop SIGKILLs a random worker every 0.5-1.5 s and starts a
replacement. A single worker that is never killed runs the same workload on a second
database. At the end every run is terminal and its status, result, error, step outputs
and compensation order equal both the crash-free reference and the outcome computed from
the workload's definition; the host rows of the ``transaction=True`` step exist exactly
once; every completed step ran at least once; the jobs table is empty.

``scripts/crash_soak.py`` runs the same campaign for longer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.chaos import Campaign


@pytest.mark.timeout(175)  # CI size: about 40 s; every wait inside is bounded
def test_sigkill_chaos_changes_no_outcome(pg_server_url: str, tmp_path: Path) -> None:
    campaign = Campaign(
        pg_server_url, tmp_path / "logs", runs=63, start_over=20.0, settle_timeout=60.0
    )
    report = campaign.run()
    print("\n" + report.summary())
    assert report.ok, report.problems() + "\n" + report.worker_logs
    assert report.statuses == {"completed": 54, "failed": 9}  # the nine sagas fail on purpose
    assert report.kills >= 5, "the chaos loop barely ran: the test proves nothing"
    assert report.tx_steps == report.tx_rows == 9
