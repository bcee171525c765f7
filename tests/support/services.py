"""Helpers for tests that need an external service (Redis, RabbitMQ, ...)."""

from __future__ import annotations

import socket

import pytest


def service_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int, timeout: float = 2.0) -> None:
    """Skip the calling test unless a TCP connection to ``host:port`` succeeds.

    Under ``SQUIDMESH_REQUIRE_SERVICES=1`` the skip is reported as a failure
    (see ``tests/support/skips.py``).
    """
    if not service_reachable(host, port, timeout):
        pytest.skip(f"{name} not reachable at {host}:{port}")
