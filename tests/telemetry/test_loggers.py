from __future__ import annotations

# Every logger the package uses is listed in telemetry.LOGGERS and documented in
# docs/observability.md, and every record of each carries a ``squidmesh`` dict.
import logging
import re
from pathlib import Path

from squidmesh.runtime.telemetry import LOGGERS

REPO = Path(__file__).resolve().parents[2]
GET_LOGGER = re.compile(r"""logging\.getLogger\(\s*["']([^"']+)["']\s*\)""")


def test_every_logger_of_the_package_is_listed_and_documented() -> None:
    used = set()
    for path in (REPO / "squidmesh").rglob("*.py"):
        used.update(GET_LOGGER.findall(path.read_text(encoding="utf-8")))
    assert used == set(LOGGERS)
    doc = (REPO / "docs" / "observability.md").read_text(encoding="utf-8")
    for name in LOGGERS:
        assert f"| `{name}` |" in doc, name


def test_every_record_of_a_squidmesh_logger_has_fields() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            logger.warning("plain")
            logger.warning("with fields", extra={"squidmesh": {"run_id": "r"}})
        finally:
            logger.removeHandler(handler)
    assert len(records) == 2 * len(LOGGERS)
    assert [r.squidmesh for r in records] == [{}, {"run_id": "r"}] * len(LOGGERS)  # type: ignore[attr-defined]
