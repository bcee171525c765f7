"""Logging for the commands that run work: ``worker``, ``drain`` and ``ui``.

``--log-level`` (default ``info``) and ``--log-format text|json`` configure the root
logger, so the application's own loggers show beside squidmesh's (the package's loggers
are listed in ``squidmesh.runtime.telemetry.LOGGERS`` and docs/observability.md). Lines go
to stderr; stdout stays the command's output.

- ``text``: one line per record, as Celery's worker prints them:
  ``[2030-01-01 12:00:00,000: INFO/squidmesh-job_0] squidmesh.step: step ...``
- ``json``: one JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
  ``message``, ``process``, ``thread``, the record's ``squidmesh`` fields when it has
  any, and ``exception`` (the formatted traceback) when it carries one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "add_options", "configure"]

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(threadName)s] %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        fields = getattr(record, "squidmesh", None)
        if isinstance(fields, dict) and fields:
            data["squidmesh"] = fields
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, default=str, ensure_ascii=False)


class _Ours(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs (replaced, never stacked, when called again)."""


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send every log record of ``level`` and above to ``stream`` (stderr) as ``fmt``."""
    handler = _Ours(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Ours)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-level`` and ``--log-format`` to ``parser`` (a parent parser)."""
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default="info",
        type=str.lower,
        help="the least severe log records shown (on stderr)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text: one line per record, like Celery's worker; json: one object per line",
    )
