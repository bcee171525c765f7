"""Fixtures of the console tests: a Mesh on SQLite with inline execution and a
virtual clock, the console app on it, and a test client that knows its CSRF token."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the console needs the web extra: pip install -e '.[web]'")
pytest.importorskip("jinja2", reason="the console needs the web extra: pip install -e '.[web]'")
pytest.importorskip("multipart", reason="the console needs the web extra: pip install -e '.[web]'")

with warnings.catch_warnings():
    # Recent Starlette prefers the "httpx2" package for its TestClient and warns (an
    # error under this suite's filterwarnings) when it falls back to httpx.
    warnings.filterwarnings("ignore", message=r".*httpx2")
    from starlette.testclient import TestClient as TestClient

import squidmesh as sm
from squidmesh.web import console
from tests.runtime.support import VirtualClock
from tests.web import flows


class Console:
    """A console app on a fresh SQLite Mesh, and a client for it."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = VirtualClock()
        self.mesh = sm.Mesh(
            f"sqlite:///{tmp_path / 'console.db'}",
            workflows=flows.ALL,
            executor=sm.InlineExecutor(),
            clock=self.clock,
        )
        self.mesh.migrate()
        self.actor: str | None = "ana"
        self.clients: list[TestClient] = []

    def app(self, **options: Any) -> Any:
        options.setdefault("actor", lambda request: self.actor)
        return console(self.mesh, **options)

    def client(self, app: Any = None, **options: Any) -> TestClient:
        client = TestClient(app if app is not None else self.app(**options))
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.mesh.close()


@pytest.fixture(autouse=True)
def _flags() -> Iterator[None]:
    flows.FLAGS.clear()
    yield
    flows.FLAGS.clear()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Console]:
    made = Console(tmp_path)
    try:
        yield made
    finally:
        made.close()


def token(client: TestClient, path: str = "/") -> str:
    """The CSRF token the console gave this client (visiting ``path`` for it)."""
    if not client.cookies.get("squidmesh_csrf"):
        assert client.get(path).status_code in (200, 404)
    value = client.cookies.get("squidmesh_csrf")
    assert value
    return str(value)


def post(client: TestClient, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A same-origin form POST with the client's CSRF token."""
    body = {"csrf": token(client), **(data or {})}
    kwargs.setdefault("follow_redirects", False)
    return client.post(path, data=body, **kwargs)


Poster = Callable[..., Any]
