"""What the commands print: JSON encoding, aligned tables and run/step/audit views.

Human views follow :mod:`squidmesh.cli.style`: statuses in colour on a terminal, free
text (the last column of a table, notes under step runs, explanation details) wrapped to
the terminal's width; with neither (a pipe, or a library caller) the text is plain and
each record stays on one line.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import textwrap
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from squidmesh.cli import style
from squidmesh.runtime.views import Explanation, Run

__all__ = [
    "audit_table",
    "cell",
    "clip",
    "compact",
    "dumps",
    "error_line",
    "explanation_json",
    "explanation_text",
    "facts",
    "relative_paths",
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


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    indent: str = "",
    colours: Mapping[int, Callable[[str], str]] | None = None,
    wrap: Sequence[int] | None = None,
) -> str:
    """Aligned columns, two spaces apart; ``None`` and empty values print as ``-``.

    ``colours`` maps a column index to a function that colours its (padded) cells.
    ``wrap`` names the free-text columns (default: the last one): when the table is
    wider than the terminal, the widest of them narrow, and their text wraps within
    the column, until the table fits (or they are down to a minimum width).
    """
    body = [[cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    wrappable = list(wrap) if wrap is not None else [len(headers) - 1]
    _narrow(widths, wrappable, len(indent), style.current.width)
    lines = [style.paint(_row(indent, headers, widths).rstrip(), "bold")]
    for row in body:
        pieces = [_fit(text, widths[i]) if i in wrappable else [text] for i, text in enumerate(row)]
        for n in range(max(len(p) for p in pieces)):
            cells = [p[n] if n < len(p) else "" for p in pieces]
            lines.append(_row(indent, cells, widths, colours if n == 0 else None).rstrip())
    return "\n".join(lines)


def _narrow(widths: list[int], wrappable: Sequence[int], indent: int, limit: int | None) -> None:
    """Shrink the widest wrappable column, repeatedly, until the row fits ``limit``."""
    if limit is None:
        return
    floor = style.MIN_WRAP
    while indent + sum(widths) + 2 * (len(widths) - 1) > limit:
        candidates = [i for i in wrappable if widths[i] > floor]
        if not candidates:
            return
        widest = max(candidates, key=lambda i: widths[i])
        excess = indent + sum(widths) + 2 * (len(widths) - 1) - limit
        others = [widths[i] for i in candidates if i != widest]
        target = max(floor, widths[widest] - excess, max(others, default=floor))
        widths[widest] = target if target < widths[widest] else widths[widest] - 1


def _row(
    indent: str,
    cells: Sequence[str],
    widths: Sequence[int],
    colours: Mapping[int, Callable[[str], str]] | None = None,
) -> str:
    out = []
    for i, text in enumerate(cells):
        padded = text.ljust(widths[i])
        colour = (colours or {}).get(i)
        out.append(colour(padded) if colour else padded)
    return indent + "  ".join(out)


def _fit(text: str, room: int) -> list[str]:
    """``text`` cut into lines of at most ``room`` characters, at spaces where possible."""
    if len(text) <= room:
        return [text]
    return textwrap.wrap(text, width=room, break_long_words=True, break_on_hyphens=False) or [""]


def facts(pairs: Sequence[tuple[str, Any]], *, indent: str = "") -> str:
    """``key   value`` lines with the values aligned (long values wrap under themselves)."""
    width = max(len(k) for k, _ in pairs)
    lines: list[str] = []
    for key, value in pairs:
        text = cell(value)
        if key == "status":
            text = style.status(text)
        head = f"{indent}{key.ljust(width)}  "
        wrapped = style.wrap(text, indent=head, hanging="")
        lines.append(wrapped[0].rstrip())
        lines.extend((" " * len(head) + line[len(head) :]).rstrip() for line in wrapped[1:])
    return "\n".join(lines)


def relative_paths(text: str) -> str:
    """``text`` with the working directory's prefix dropped from the paths it names."""
    return text.replace(os.path.join(os.getcwd(), ""), "")


def run_json(run: Run) -> dict[str, Any]:
    """A run as JSON; the history keys only when the run was read with its history."""
    data: dict[str, Any] = to_jsonable(run)
    for key in ("steps", "step_runs", "audit_events", "children", "published"):
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
        colours={2: style.status},
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
        ("parent run", run.parent_run_id),
        ("continued from", run.continued_from_run_id),
        ("continued as", run.continued_as_run_id),
        ("replayed from", run.replayed_from_run_id),
        ("forked from", run.forked_from_run_id),
        ("idempotency key", run.idempotency_key),
        ("schedule", run.schedule),
    ):
        if value is not None:
            pairs.append((label, str(value) if isinstance(value, uuid.UUID) else value))
    return facts(pairs)


def published_facts(run: Run) -> str:
    """The run's published state (``sm.publish``), one name a line."""
    if not run.published:
        return "  (nothing published)"
    return facts([(name, value) for name, value in run.published.items()])


def children_table(run: Run) -> str:
    """The runs this run started (``sm.child``, ``sm.start_child``)."""
    if not run.children:
        return "  (no child runs)"
    return table(
        ("SEQ", "RUN", "WORKFLOW", "STATUS", "REASON", "MODE"),
        [
            (
                c.seq if c.seq is not None else "-",
                str(c.run_id),
                c.workflow,
                c.status.value,
                c.reason or "-",
                "detached" if c.detached else "attached",
            )
            for c in run.children
        ],
        colours={3: style.status},
    )


def _error_line(error: dict[str, Any] | None) -> str | None:
    return error_line(error) if error else None


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
        ("SEQ", "KIND", "NAME", "STATUS", "ATTEMPTS", "STARTED", "COMPLETED"),
        rows,
        indent="  ",
        colours={3: style.status},
    ).splitlines()
    out = [text[0]]
    for line, row in zip(text[1:], rows, strict=True):
        out.append(line)
        for note in notes.get(int(row[0]), []):
            if style.current.width is None:
                out.append(f"        {clip(note, 120)}")
            else:
                out.extend(style.wrap(" ".join(note.split()), indent="        "))
    return "\n".join(out)


def audit_table(run: Run) -> str:
    events = run.audit_events or ()
    if not events:
        return "  (none)"
    # COMMENT is the free text; METADATA (JSON) stays last and wraps when it must.
    return table(
        ("AT", "TYPE", "STEP", "ACTOR", "COMMENT", "METADATA"),
        [(when(e.at), e.type, e.step, e.actor, e.comment, e.metadata) for e in events],
        indent="  ",
        wrap=(4, 5),
    )


#: How many lines of a traceback the human explanation shows (JSON has all of them).
TRACEBACK_LINES = 6


def explanation_text(run_id: str, explanation: Explanation) -> str:
    pairs: list[tuple[str, Any]] = [
        ("run", run_id),
        ("status", explanation.status.value),
        ("reason", explanation.reason),
        ("step", explanation.step),
        ("next actions", ", ".join(explanation.next_actions) or "(none)"),
    ]
    lines = [facts(pairs), "details"]
    evidence = explanation.evidence
    step_run = evidence.get("step_run")
    attempt = evidence.get("attempt")
    attempt_error = (attempt or {}).get("error") or {}
    if explanation.details:
        # A step's failure keeps its traceback on the attempt: show that one too.
        fallback = None
        if attempt and attempt_error.get("traceback"):
            fallback = (f"attempt {attempt['number']}", str(attempt_error["traceback"]))
        # Nondeterminism names both sides with file:line (expected, recorded); its
        # traceback would only show where squidmesh noticed it.
        show = explanation.reason != "nondeterminism"
        lines.extend(_details(explanation.details, fallback, tracebacks=show))
    else:
        lines.append("  (none)")
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


def _is_error(value: Any) -> bool:
    return isinstance(value, dict) and "type" in value and "message" in value


def _details(
    details: Mapping[str, Any],
    fallback: tuple[str, str] | None = None,
    *,
    tracebacks: bool = True,
) -> list[str]:
    """The explanation's details in words: errors as ``Type: message`` with the last
    lines of their traceback, the replay verdict as a sentence, the rest as JSON."""
    pairs: list[tuple[str, Any]] = []
    found: list[tuple[str, str]] = []
    for key, value in sorted(details.items()):
        if _is_error(value):
            pairs.append((key, relative_paths(error_line(value))))
            if value.get("traceback"):
                found.append((key, str(value["traceback"])))
        elif key == "replay" and isinstance(value, dict) and "allowed" in value:
            pairs.append((key, _replay_words(value)))
        elif key == "failures" and isinstance(value, list):
            pairs.append(
                (
                    key,
                    "; ".join(
                        f"{f.get('step')} (seq {f.get('seq')}): {error_line(f.get('error'))}"
                        for f in value
                        if isinstance(f, dict)
                    ),
                )
            )
        else:
            pairs.append((key, relative_paths(cell(value))))
    lines = [facts(pairs, indent="  ")]
    if not found and fallback is not None and any(_is_error(v) for v in details.values()):
        found.append(fallback)
    for key, text in found if tracebacks else ():
        # Python 3.11+ underlines expressions with ^^^ lines: noise in a short tail.
        tb = [
            line
            for line in relative_paths(text).splitlines()
            if line.strip() and line.strip().strip("^~") != ""
        ]
        shown = tb[-TRACEBACK_LINES:]
        more = f", last {len(shown)} of {len(tb)} lines" if len(shown) < len(tb) else ""
        lines.append(f"  traceback ({key}{more}; --json has it all)")
        for line in shown:
            lines.extend(style.wrap(line.rstrip(), indent="    ", hanging="    "))
    return lines


def _replay_words(replay: Mapping[str, Any]) -> str:
    if replay.get("allowed"):
        return "allowed"
    if replay.get("workflow_definition") == "unavailable":
        return "not allowed: this Mesh does not have the workflow"
    blocked = ", ".join(replay.get("blocked_by") or ())
    override = replay.get("required_override")
    return f"not allowed: the run completed {blocked}" + (
        f" (needs {override})" if override else ""
    )


def error_line(error: Any) -> str:
    """``Type: message`` of a stored error dict, on one line."""
    if not isinstance(error, dict):
        return cell(error)
    return f"{error.get('type', 'error')}: {' '.join(str(error.get('message', '')).split())}"
