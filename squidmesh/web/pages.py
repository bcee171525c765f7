"""The console's pages (GET, no side effects): runs, one run, workflows, one workflow,
and the live endpoints their script polls.

Each page is built from live regions (``data-region``): the page renders them once and
its live endpoint renders them again, so the script can swap in whatever changed. All
Mesh reads run in the thread pool (the Mesh API blocks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from squidmesh.core.definition import CronTrigger, ManualTrigger, WorkflowDefinition
from squidmesh.errors import RunNotFoundError
from squidmesh.runtime.views import Explanation, Run
from squidmesh.storage.base import run_id_prefix
from squidmesh.types import RunStatus
from squidmesh.web import forms, graph, present, security
from squidmesh.web.base import Console, live_json, region_hash, version_of

__all__ = ["RunsQuery", "queues_regions", "run_regions", "runs_regions", "workflow_values"]

PAGE_SIZES = (20, 50, 100, 200)
SEARCH_FIELDS = {
    "any": "anything",
    "id": "run id prefix",
    "workflow": "workflow",
    "trigger": "trigger",
    "step": "current step",
    "key": "idempotency key",
}


# --------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class RunsQuery:
    """The runs page's filters, as given in its query string (bad values dropped)."""

    status: str | None = None
    workflow: str | None = None
    q: str = ""
    field: str = "any"
    size: int = 50
    before: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> tuple[RunsQuery, list[str]]:
        notes: list[str] = []
        status = params.get("status") or None
        if status is not None and status not in {s.value for s in RunStatus}:
            notes.append(f"Unknown status {status!r}: showing every status.")
            status = None
        field = params.get("field") or "any"
        if field not in SEARCH_FIELDS:
            field = "any"
        try:
            size = int(params.get("size") or 50)
        except ValueError:
            size = 50
        if size not in PAGE_SIZES:
            size = min(PAGE_SIZES, key=lambda s: abs(s - size))
        return (
            cls(
                status=status,
                workflow=(params.get("workflow") or "").strip() or None,
                q=(params.get("q") or "").strip()[:200],
                field=field,
                size=size,
                before=(params.get("before") or "").strip() or None,
            ),
            notes,
        )

    def link(self, **changes: Any) -> str:
        values = dataclasses.asdict(self)
        values.update(changes)
        if values["field"] == "any":
            values["field"] = None
        if values["size"] == 50:
            values["size"] = None
        if not values["q"]:
            values["field"] = None
        return Console.query(**values)


def _search(console: Console, query: RunsQuery, cursor: Run | None) -> list[Run]:
    """The runs of one page plus one (to tell whether there is another page)."""
    mesh = console.mesh
    common: dict[str, Any] = {
        "status": query.status,
        "workflow": query.workflow,
        "limit": query.size + 1,
        "before": cursor,
    }
    q = query.q
    if not q:
        return mesh.list_runs(**common)
    searches: list[dict[str, Any]] = []
    if query.field in ("any", "id") and run_id_prefix(q) is not None:
        searches.append({"id_prefix": q})
    if query.field in ("any", "workflow") and query.workflow in (None, q):
        searches.append({"workflow": q})
    for field, name in (("trigger", "trigger"), ("step", "step"), ("key", "idempotency_key")):
        if query.field in ("any", field):
            searches.append({name: q})
    found: dict[Any, Run] = {}
    for search in searches:  # each index-backed; the union keeps the keyset order
        for run in mesh.list_runs(**{**common, **search}):
            found[run.id] = run
    ordered = sorted(found.values(), key=lambda r: (r.created_at, str(r.id)), reverse=True)
    return ordered[: query.size + 1]


def runs_regions(
    console: Console, request: Request, query: RunsQuery, ctx: dict[str, Any]
) -> tuple[dict[str, str], list[str]]:
    """The live regions of the runs page (status counts; rows and pager)."""
    notes: list[str] = []
    cursor: Run | None = None
    if query.before is not None:
        try:
            cursor = console.mesh.inspect_run(query.before)
        except RunNotFoundError:
            notes.append("The page's starting run is gone: showing the newest runs.")
            query = dataclasses.replace(query, before=None)
    runs = _search(console, query, cursor)
    more = len(runs) > query.size
    runs = runs[: query.size]
    counts = console.mesh.count_runs(workflow=query.workflow, limit=console.count_limit + 1)
    limit = console.count_limit
    shown = {
        str(status): (f"{limit:,}+" if n > limit else f"{n:,}") for status, n in counts.items()
    }
    # "N+" means more than N: a capped status adds "more than the limit" to the total.
    total = sum(min(n, limit) for n in counts.values())
    capped = any(n > limit for n in counts.values())
    values = {
        **ctx,
        "query": query,
        "runs": runs,
        "counts": shown,
        "raw_counts": {str(s): n for s, n in counts.items()},
        "total": f"{total:,}" + ("+" if capped else ""),
        "next_link": query.link(before=str(runs[-1].id)) if more and runs else None,
        "first_link": query.link(before=None) if query.before else None,
    }
    regions = {
        "counts": console.render("runs/_counts.html", **values),
        "rows": console.render("runs/_rows.html", **values),
    }
    return regions, notes


async def runs_page(console: Console, request: Request) -> Response:
    who = await console.who(request)
    token, new = security.csrf_token(request)
    query, notes = RunsQuery.parse(request.query_params)
    ctx = console.context(request, who, token)

    def build() -> Response:
        regions, more_notes = runs_regions(console, request, query, ctx)
        values = {
            **ctx,
            "nav": "runs",
            "query": query,
            "notes": notes + more_notes,
            "fields": SEARCH_FIELDS,
            "sizes": PAGE_SIZES,
            "workflows": sorted(console.mesh.workflows),
            "regions": marked(regions),
            "live_url": f"{ctx['base']}/live/runs{query.link()}",
        }
        return console.page(request, "runs/page.html", values, token=token, new_token=new)

    return await run_in_threadpool(build)


async def runs_live(console: Console, request: Request) -> Response:
    who = await console.who(request)
    token, _ = security.csrf_token(request)
    query, _notes = RunsQuery.parse(request.query_params)
    ctx = console.context(request, who, token)

    def build() -> Response:
        regions, _ = runs_regions(console, request, query, ctx)
        version = region_hash("".join(regions.values()))
        return live_json(version, regions)

    return await run_in_threadpool(build)


def marked(regions: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Regions for a page template: the console's own markup, and its hash."""
    return {
        name: {"html": Markup(html), "hash": region_hash(html)} for name, html in regions.items()
    }


# --------------------------------------------------------------------------- one run


def _fork_choices(run: Run) -> list[tuple[int, str]]:
    """The seqs ``fork_run`` accepts for this run, each with what the fork re-runs."""
    steps = run.step_runs or ()
    choices: list[tuple[int, str]] = []
    for at in range(len(steps) + 1):
        if at < len(steps) and steps[at].parent is not None:
            continue
        before = steps[:at]
        if any(
            s.status not in ("completed", "failed") and s.kind not in ("join", "first")
            for s in before
        ):
            break
        what = f"{steps[at].kind} {steps[at].name}" if at < len(steps) else "after the last"
        choices.append((at, f"seq {at}: re-run from {what}"))
    return choices


#: A run page shows at most this many history entries (the latest ones).
HISTORY_LIMIT = 500


def _shown_entries(run: Run) -> dict[str, Any]:
    steps = run.step_runs or ()
    return {
        "shown": steps[-HISTORY_LIMIT:],
        "total": len(steps),
        "hidden": max(0, len(steps) - HISTORY_LIMIT),
    }


#: child runs listed on a run's page (a fan-out's are all in its history timeline)
_CHILDREN_SHOWN = 50


def _lineage(run: Run) -> list[tuple[str, str]]:
    """(label, run id) of the runs this one came from and the runs made from it."""
    links: list[tuple[str, str]] = []
    if run.parent_run_id is not None:
        links.append(("child of", str(run.parent_run_id)))
    if run.continued_from_run_id is not None:
        links.append(("continues", str(run.continued_from_run_id)))
    if run.continued_as_run_id is not None:
        links.append(("continued as", str(run.continued_as_run_id)))
    if run.replayed_from_run_id is not None:
        links.append(("replay of", str(run.replayed_from_run_id)))
    if run.forked_from_run_id is not None:
        links.append(("fork of", str(run.forked_from_run_id)))
    for event in run.audit_events or ():
        new = (event.metadata or {}).get("new_run_id")
        if new and event.type in ("replayed", "forked"):
            links.append(("replayed as" if event.type == "replayed" else "forked as", str(new)))
    return links


def offered_actions(why: Explanation, workflow: WorkflowDefinition | None) -> list[str]:
    offered = [a for a in present.OPERATOR_ACTIONS if a in why.next_actions]
    replay = why.details.get("replay") or {}
    if (
        "replay_run" not in offered
        and workflow is not None
        and replay.get("required_override") == "allow_irreversible"
    ):
        offered.append("replay_override")
    return offered


def run_regions(
    console: Console, request: Request, run_id: str, ctx: dict[str, Any]
) -> tuple[str, dict[str, str], Run]:
    """The version and live regions of a run's page."""
    mesh = console.mesh
    run = mesh.inspect_run(run_id, include_history=True)
    why = mesh.explain_run(run.id)
    workflow = mesh.workflows.get(run.workflow)
    drawing = None
    if workflow is not None:
        step_graph = console.graph(workflow)
        drawing = graph.layout(
            step_graph, graph.node_states(step_graph, run.steps, run.current_steps)
        )
    details = {k: v for k, v in why.details.items() if k != "replay"}
    values = {
        **ctx,
        "run": run,
        "why": why,
        "sentence": present.explanation_sentence(why, run.workflow),
        "details": details,
        "replay": why.details.get("replay"),
        "actions": offered_actions(why, workflow) if ctx["can_act"] else [],
        "waits": [present.WAIT_ACTIONS[a] for a in why.next_actions if a in present.WAIT_ACTIONS],
        "fork_choices": _fork_choices(run) if "fork_run" in why.next_actions else [],
        "lineage": _lineage(run),
        "drawing": drawing,
        "workflow_known": workflow is not None,
        "published": run.published,
        "children": (run.children or ())[:_CHILDREN_SHOWN],
        "children_total": len(run.children or ()),
        "entries": _shown_entries(run),
        "run_url": f"{ctx['base']}/runs/{run.id}",
    }
    regions = {
        name: console.render(f"run/_{name}.html", **values)
        for name in ("summary", "actions", "graph", "facts", "data", "history", "audit")
    }
    return version_of(run.updated_at, run.status.value), regions, run


async def run_page(console: Console, request: Request) -> Response:
    raw = request.path_params["run_id"]
    who = await console.who(request)
    token, new = security.csrf_token(request)
    ctx = console.context(request, who, token)

    def build() -> Response:
        try:
            version, regions, run = run_regions(console, request, raw, ctx)
        except RunNotFoundError as exc:
            matches = _by_prefix(console, raw)
            if len(matches) == 1:
                return RedirectResponse(f"{ctx['base']}/runs/{matches[0].id}", status_code=303)
            values = {**ctx, "nav": "runs", "message": str(exc), "matches": matches}
            return console.page(
                request, "missing.html", values, token=token, new_token=new, status_code=404
            )
        values = {
            **ctx,
            "nav": "runs",
            "run": run,
            "regions": marked(regions),
            "version": version,
            "done": present.DONE.get(request.query_params.get("done", "")),
            "live_url": f"{ctx['base']}/live/runs/{run.id}",
        }
        return console.page(request, "run/page.html", values, token=token, new_token=new)

    return await run_in_threadpool(build)


def _by_prefix(console: Console, text: str) -> list[Run]:
    if run_id_prefix(text) is None or len(text) < 4:
        return []
    return console.mesh.list_runs(id_prefix=text, limit=20)


async def run_live(console: Console, request: Request) -> Response:
    raw = request.path_params["run_id"]
    seen = request.query_params.get("v", "")
    who = await console.who(request)
    token, _ = security.csrf_token(request)
    ctx = console.context(request, who, token)

    def build() -> Response:
        try:
            current = console.mesh.inspect_run(raw)
        except RunNotFoundError:
            return Response(status_code=404)
        version = version_of(current.updated_at, current.status.value)
        if seen and seen == version:
            return live_json(version, {})  # nothing moved: one primary-key read
        version, regions, _ = run_regions(console, request, raw, ctx)
        return live_json(version, regions)

    return await run_in_threadpool(build)


# --------------------------------------------------------------------------- workflows


def _trigger_facts(workflow: WorkflowDefinition) -> list[dict[str, Any]]:
    facts = []
    for trigger in workflow.triggers:
        model = trigger.payload
        fact: dict[str, Any] = {
            "name": trigger.name,
            "kind": "cron" if isinstance(trigger, CronTrigger) else "manual",
            "model": model.__name__ if model is not None else None,
            "fields": forms.fields_of(model),
            "manual": isinstance(trigger, ManualTrigger),
            "schedule": None,
        }
        if isinstance(trigger, CronTrigger):
            fact["schedule"] = f"{trigger.expr} ({trigger.timezone}, catchup {trigger.catchup})"
        facts.append(fact)
    return facts


def _counts(console: Console, workflow: str) -> dict[str, str]:
    limit = console.count_limit
    counts = console.mesh.count_runs(workflow=workflow, limit=limit + 1)
    return {str(s): (f"{limit:,}+" if n > limit else f"{n:,}") for s, n in counts.items()}


async def workflows_page(console: Console, request: Request) -> Response:
    who = await console.who(request)
    token, new = security.csrf_token(request)
    ctx = console.context(request, who, token)

    def build() -> Response:
        rows = [
            {
                "name": name,
                "triggers": _trigger_facts(wf),
                "counts": _counts(console, name),
            }
            for name, wf in sorted(console.mesh.workflows.items())
        ]
        values = {**ctx, "nav": "workflows", "rows": rows, "live_url": ""}
        return console.page(request, "workflows.html", values, token=token, new_token=new)

    return await run_in_threadpool(build)


# --------------------------------------------------------------------------- queues


def _rate_text(rate: Mapping[str, float] | None) -> str | None:
    if rate is None:
        return None
    per = rate["per"]
    return f"{int(rate['limit']):,} per {int(per) if per == int(per) else per}s"


def queues_regions(console: Console, ctx: dict[str, Any]) -> dict[str, str]:
    """The live region of the queues page: ``mesh.queues()`` as a table."""
    rows = [
        {
            "state": state,
            "rate": _rate_text(state.rate),
            "keyed": any(k.key is not None for k in state.keys),
        }
        for state in console.mesh.queues()
    ]
    return {"queues": console.render("queues/_table.html", **ctx, rows=rows)}


async def queues_page(console: Console, request: Request) -> Response:
    who = await console.who(request)
    token, new = security.csrf_token(request)
    ctx = console.context(request, who, token)

    def build() -> Response:
        values = {
            **ctx,
            "nav": "queues",
            "regions": marked(queues_regions(console, ctx)),
            "live_url": f"{ctx['base']}/live/queues",
        }
        return console.page(request, "queues/page.html", values, token=token, new_token=new)

    return await run_in_threadpool(build)


async def queues_live(console: Console, request: Request) -> Response:
    who = await console.who(request)
    token, _ = security.csrf_token(request)
    ctx = console.context(request, who, token)

    def build() -> Response:
        regions = queues_regions(console, ctx)
        return live_json(region_hash("".join(regions.values())), regions)

    return await run_in_threadpool(build)


def workflow_values(
    console: Console, workflow: WorkflowDefinition, ctx: dict[str, Any]
) -> dict[str, Any]:
    step_graph = console.graph(workflow)
    return {
        **ctx,
        "nav": "workflows",
        "workflow": workflow,
        "triggers": _trigger_facts(workflow),
        "counts": _counts(console, workflow.name),
        "drawing": graph.layout(step_graph, graph.node_states(step_graph, None)),
        "live_url": "",
        "error": None,
        "field_errors": {},
        "entered": {},
        "entered_trigger": None,
    }


async def workflow_page(console: Console, request: Request) -> Response:
    name = request.path_params["name"]
    who = await console.who(request)
    token, new = security.csrf_token(request)
    ctx = console.context(request, who, token)
    workflow = console.mesh.workflows.get(name)
    if workflow is None:
        known = ", ".join(sorted(console.mesh.workflows)) or "none"
        values = {
            **ctx,
            "nav": "workflows",
            "message": f"This console's Mesh has no workflow {name!r} (registered: {known}).",
            "matches": [],
        }
        return console.page(
            request, "missing.html", values, token=token, new_token=new, status_code=404
        )
    found = workflow

    def build() -> Response:
        values = workflow_values(console, found, ctx)
        return console.page(request, "workflow.html", values, token=token, new_token=new)

    return await run_in_threadpool(build)
