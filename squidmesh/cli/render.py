"""What the commands print: JSON encoding, aligned tables and run/step/audit views."""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from squidmesh.runtime.views import Explanation, Run

__all__ = [
    "audit_table",
    "cell",
    "clip",
    "compact",
    "dumps",
    "explanation_json",
    "explanation_text",
    "facts",
    "run_detail",
    "run_facts",
    "run_json",
    "runs_table",
    "step_runs_table",
    "table",
    "to_jsonable",
    "when",
]


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: dataclasses -> dicts, UUIDs -> str, datetimes -> ISO 8601."""
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return value


def dumps(value: Any) -> str:
    """Stable JSON: sorted keys, two-space indent."""
    return json.dumps(to_jsonable(value), sort_keys=True, indent=2, ensure_ascii=False)


def compact(value: Any) -> str:
    """One-line JSON for table cells (strings stay bare)."""
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable(value), sort_keys=True, ensure_ascii=False)


def when(value: Any) -> str:
    """A timestamp to the second (ISO 8601), or ``-``."""
    if value is None or value == "":
        return "-"
    moment: Any = value
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return str(value)
    if isinstance(moment, datetime):
        return moment.isoformat(timespec="seconds")
    return str(moment)


def clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cell(value: Any) -> str:
    if value is None or value == "" or value == () or value == []:
        return "-"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return compact(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, indent: str = "") -> str:
    """Aligned columns, two spaces apart; ``None`` and empty values print as ``-``."""
    body = [[cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = [
        indent + "  ".join(text.ljust(widths[i]) for i, text in enumerate(row)).rstrip()
        for row in [list(headers), *body]
    ]
    return "\n".join(lines)


def facts(pairs: Sequence[tuple[str, Any]], *, indent: str = "") -> str:
    """``key   value`` lines with the values aligned."""
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{indent}{k.ljust(width)}  {cell(v)}".rstrip() for k, v in pairs)


def run_json(run: Run) -> dict[str, Any]:
    """A run as JSON; the history keys only when the run was read with its history."""
    data: dict[str, Any] = to_jsonable(run)
    for key in ("steps", "step_runs", "audit_events"):
        if data.get(key) is None:
            data.pop(key, None)
    return data


def explanation_json(run_id: str, explanation: Explanation) -> dict[str, Any]:
    data: dict[str, Any] = to_jsonable(explanation)
    data["run_id"] = run_id
    return data


def run_detail(run: Run) -> str:
    """What a run is doing or how it ended, in a few words."""
    if run.status.value == "completed":
        return "result " + clip(compact(run.result), 50)
    if run.error and run.status.value in ("failed", "suspended", "retrying"):
        return clip(f"{run.error.get('type', 'error')}: {run.error.get('message', '')}", 60)
    if run.current_steps:
        return "waiting on " + ", ".join(run.current_steps)
    return "-"


def runs_table(runs: Sequence[Run]) -> str:
    return table(
        ("ID", "WORKFLOW", "STATUS", "CREATED", "DETAIL"),
        [(str(r.id), r.workflow, r.status.value, when(r.created_at), run_detail(r)) for r in runs],
    )


def run_facts(run: Run) -> str:
    pairs: list[tuple[str, Any]] = [
        ("run", str(run.id)),
        ("workflow", run.workflow),
        ("trigger", run.trigger),
        ("status", run.status.value),
        ("reason", run.reason),
        ("created", when(run.created_at)),
        ("updated", when(run.updated_at)),
        ("payload", run.payload),
        ("result", run.result),
        ("error", _error_line(run.error)),
        ("waiting on", ", ".join(run.current_steps)),
    ]
    for label, value in (
        ("replayed from", run.replayed_from_run_id),
        ("forked from", run.forked_from_run_id),
        ("idempotency key", run.idempotency_key),
        ("schedule", run.schedule),
    ):
        if value is not None:
            pairs.append((label, str(value) if isinstance(value, uuid.UUID) else value))
    return facts(pairs)


def _error_line(error: dict[str, Any] | None) -> str | None:
    if not error:
        return None
    return f"{error.get('type', 'error')}: {' '.join(str(error.get('message', '')).split())}"


def step_runs_table(run: Run) -> str:
    rows: list[Sequence[Any]] = []
    notes: dict[int, list[str]] = {}
    for s in run.step_runs or ():
        attempts = ",".join(f"{a.number}:{a.status}" for a in s.attempts)
        name = s.name if s.parent is None else f"  {s.name}"
        rows.append(
            (s.seq, s.kind, name, s.status, attempts, when(s.started_at), when(s.completed_at))
        )
        lines = notes.setdefault(s.seq, [])
        if s.kind == "log" and isinstance(s.input, dict):
            fields = s.input.get("fields") or {}
            lines.append(
                f"{s.input.get('level', 'info')}: {s.input.get('message')}"
                + "".join(f" {k}={compact(v)}" for k, v in sorted(fields.items()))
            )
        for a in s.attempts:
            if a.error:
                lines.append(f"attempt {a.number} {a.status}: {_error_line(a.error)}")
        if s.error and not s.attempts:
            lines.append(f"error: {_error_line(s.error)}")
        if s.compensation:
            comp = s.compensation
            lines.append(
                f"compensation {comp.get('status')}: "
                + (compact(comp.get("output")) if comp.get("output") is not None else "")
                + (f" {_error_line(comp.get('error'))}" if comp.get("error") else "")
            )
    if not rows:
        return "  (no commands recorded yet)"
    text = table(
        ("SEQ", "KIND", "NAME", "STATUS", "ATTEMPTS", "STARTED", "COMPLETED"), rows, indent="  "
    ).splitlines()
    out = [text[0]]
    for line, row in zip(text[1:], rows, strict=True):
        out.append(line)
        out.extend(f"        {clip(n, 120)}" for n in notes.get(int(row[0]), []))
    return "\n".join(out)


def audit_table(run: Run) -> str:
    events = run.audit_events or ()
    if not events:
        return "  (none)"
    return table(
        ("AT", "TYPE", "STEP", "ACTOR", "COMMENT", "METADATA"),
        [(when(e.at), e.type, e.step, e.actor, e.comment, e.metadata) for e in events],
        indent="  ",
    )


def explanation_text(run_id: str, explanation: Explanation) -> str:
    pairs: list[tuple[str, Any]] = [
        ("run", run_id),
        ("status", explanation.status.value),
        ("reason", explanation.reason),
        ("step", explanation.step),
        ("next actions", ", ".join(explanation.next_actions) or "(none)"),
    ]
    lines = [facts(pairs), "details"]
    if explanation.details:
        lines.append(facts(sorted(explanation.details.items()), indent="  "))
    else:
        lines.append("  (none)")
    evidence = explanation.evidence
    step_run = evidence.get("step_run")
    attempt = evidence.get("attempt")
    lines.append("evidence")
    ev: list[tuple[str, Any]] = [("run", f"{evidence['run']['status']}")]
    if step_run:
        ev.append(
            (
                "step run",
                f"seq {step_run['seq']} {step_run['kind']} {step_run['name']} {step_run['status']}",
            )
        )
    if attempt:
        ev.append(("attempt", f"{attempt['number']} {attempt['status']}"))
    lines.append(facts(ev, indent="  "))
    return "\n".join(lines)
