"""Beacon Watch: Squid Mesh's cron example, written as a squidmesh generator.

Every night at 21:00 UTC the watch inspects the hilltops (a flaky step, retried up to five
times), lights the first beacon (compensated: extinguished again if the run fails later),
logs Gondor's call for aid and asks Rohan to ride. The cron trigger's payload has
defaults, so a scheduled run needs no payload at all; an operator may still start the
same workflow by hand with other values.

Schedulers start one run per tick (``mesh.worker()`` elects one), or a host that owns its
scheduling calls ``mesh.fire_cron(beacon_watch, "nightly_beacon_check", fire_time)``.
tests/examples/test_examples.py drives every path.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import squidmesh as sm

#: More orcs than this and Rohan will not ride: the run fails and the beacon goes out.
ROHAN_LIMIT = 10_000


class BeaconCheck(BaseModel):
    """The payload of both triggers; a cron tick uses the defaults."""

    steward_mood: str = "dramatic"
    orc_count: int = 9001


class HilltopReport(BaseModel):
    hilltop: str
    orcs_seen: int


class Beacon(BaseModel):
    beacon: str
    lit_by: str


@sm.step(retry=sm.Retry(max_attempts=5, backoff=sm.Backoff.exponential(min=1, max=30)))
def inspect_hilltops(orc_count: int) -> HilltopReport:
    # A real watch would call the scouts here; a ConnectionError is retried with backoff.
    return HilltopReport(hilltop="Amon Dîn", orcs_seen=orc_count)


def extinguish_beacon(
    input: dict[str, Any], output: dict[str, Any], failure: dict[str, Any] | None
) -> str:
    """Compensation for ``light_first_beacon``: put the fire out again."""
    return f"extinguished {output['beacon']}"


@sm.step(compensate=extinguish_beacon)
def light_first_beacon(hilltop: str, mood: str) -> Beacon:
    return Beacon(beacon=f"beacon on {hilltop}", lit_by=f"a {mood} steward")


@sm.step
def call_rohan(orcs_seen: int) -> str:
    if orcs_seen > ROHAN_LIMIT:
        raise sm.NonRetryable(f"{orcs_seen} orcs: Rohan will not ride")
    return "Rohan will answer"


@sm.workflow(
    triggers=[
        sm.cron("0 21 * * *", name="nightly_beacon_check", timezone="Etc/UTC", payload=BeaconCheck),
        sm.manual("light_now", payload=BeaconCheck),
    ]
)
def beacon_watch(check: BeaconCheck):
    report = yield from inspect_hilltops(check.orc_count)
    beacon = yield from light_first_beacon(report.hilltop, mood=check.steward_mood)
    yield sm.log("Gondor calls for aid", level="info", beacon=beacon.beacon)
    answer = yield from call_rohan(report.orcs_seen)  # fails for too many orcs: the beacon goes out
    return f"{beacon.beacon} lit; {answer}"
