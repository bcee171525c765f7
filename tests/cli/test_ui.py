from __future__ import annotations

# `squidmesh ui` as a newcomer uses it: `squidmesh demo`, then `squidmesh ui` in the same
# folder shows the demo's run; real processes, a real port, plain HTTP.
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="`squidmesh ui` needs the web extra: pip install -e '.[web]'")
pytest.importorskip(
    "starlette", reason="`squidmesh ui` needs the web extra: pip install -e '.[web]'"
)

REPO = Path(__file__).resolve().parents[2]


def squidmesh(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squidmesh.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUIDMESH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


@contextmanager
def serving(cwd: Path, *args: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "squidmesh.cli", *args, "--port", str(port)],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                get(base + "/static/console.css")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the console did not start"
                time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"operator console at {base}/" in err


def test_demo_then_ui_shows_the_demo_run(tmp_path: Path) -> None:
    demo = squidmesh(tmp_path, "demo")
    assert demo.returncode == 0, demo.stderr
    assert "database: sqlite:///squidmesh.db (kept" in demo.stdout
    assert "See it in the operator console: `squidmesh ui`" in demo.stdout
    assert (tmp_path / "squidmesh.db").is_file()
    run_id = re.search(r"run ([0-9a-f-]{36})", demo.stdout)
    assert run_id is not None

    with serving(tmp_path, "ui") as base:
        runs = get(base + "/")
        assert f'data-run-id="{run_id.group(1)}" data-status="completed"' in runs
        page = get(f"{base}/runs/{run_id.group(1)}")
        assert "walk_home" in page and "approved" in page  # the errand walked home
        assert 'data-action="' not in page  # no --actor: read-only
        assert "does not have workflow ring_errand registered" in page

    with serving(tmp_path, "--app", "squidmesh.demo:app", "ui", "--actor", "ana") as base:
        page = get(f"{base}/runs/{run_id.group(1)}")
        assert 'data-step="cross_moria" data-state="failed"' in page
        assert 'data-step="walk_home" data-state="completed"' in page
        assert 'data-action="replay_run"' in page  # no irreversible step completed
        assert "acting as <b data-actor>ana</b>" in page


def test_ui_errors_are_one_clear_line(tmp_path: Path) -> None:
    fresh = squidmesh(tmp_path, "ui", "--port", str(free_port()))
    assert fresh.returncode == 1
    assert fresh.stderr.startswith("squidmesh: error: ") and "squidmesh migrate" in fresh.stderr
    bad_port = squidmesh(tmp_path, "ui", "--port", "70000")
    assert bad_port.returncode == 2 and "between 1 and 65535" in bad_port.stderr

    squidmesh(tmp_path, "migrate")
    worker = squidmesh(tmp_path, "ui", "--worker")
    assert worker.returncode == 2 and "--app" in worker.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = squidmesh(tmp_path, "ui", "--port", str(port))
    assert busy.returncode == 1
    assert "is the port in use?" in busy.stderr.splitlines()[-1]
