"""``squidmesh queues`` and ``explain`` of queued steps (flow control)."""

from __future__ import annotations

from pathlib import Path

from tests.cli import flow_app
from tests.cli.test_cli import cli

APP = "tests.cli.flow_app:mesh"


def test_queues_shows_running_waiting_limits_and_rate_per_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    mesh = flow_app.mesh(url)
    try:
        mesh.migrate()
        single = mesh.start_run(flow_app.one_mail)
        mesh.drain(limit=1)  # the activation: its call waits in the queue
        why = mesh.explain_run(single.id)
        assert why.reason == "queued"
        assert why.details["queue"] == "cli-mails" and why.details["key"] == "cy"
        assert why.details["limit"] == {
            "concurrency": 2,
            "key_concurrency": 1,
            "rate": {"limit": 100, "per": 60.0},
        }
        mesh.drain()
        run = mesh.start_run(flow_app.mailing)
        mesh.drain(limit=1)  # the activation: three queued calls now wait
        listed = cli(url, "queues", "--json", app=APP)
        assert listed.code == 0, listed.err
        (queue,) = listed.json()["queues"]
        assert queue == {
            "name": "cli-mails",
            "running": 0,
            "waiting": 3,
            "concurrency": 2,
            "key_concurrency": 1,
            "rate": {"limit": 100, "per": 60.0},
            "started_in_window": 1,
            "declared": True,
            "keys": [
                {"key": "ann", "running": 0, "waiting": 2},
                {"key": "bob", "running": 0, "waiting": 1},
            ],
        }
        human = cli(url, "queues", app=APP)
        assert human.code == 0, human.err
        assert (
            "cli-mails: 0 running, 3 waiting; concurrency 2, per key 1, rate 100/60s" in human.out
        )
        assert "  ann: 0 running, 2 waiting" in human.out
        mesh.drain()
        assert mesh.inspect_run(run.id).result == ["ann", "ann", "bob"]
        (state,) = [q for q in mesh.queues() if q.name == flow_app.MAILS.name]
        assert (state.waiting, state.started_in_window) == (0, 4)
    finally:
        mesh.close()
