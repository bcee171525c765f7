"""The console's actions (POST only): the run's next actions and starting a run.

Every POST is checked in this order, and refused with 403 before anything is read or
changed: the console is not read-only and the host names an actor; the request is not
cross-site (``security.refusal``: origin, then CSRF token). Then the action must be one
of the run's current ``explain_run(...).next_actions`` (replay past irreversible steps
also needs ``allow_irreversible`` and a second, explicit confirmation), and it goes
through the public Mesh API with the actor. A refused action shows the error's
message; the Mesh guarantees that a failed call changes nothing.

A form posted by the page's script (``Accept: application/json``) gets JSON back
(``{"ok", "message", "location"}``) and the page updates in place; without the script
the browser follows a 303 to the run (post/redirect/get) or gets the page again with
the error.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from squidmesh.errors import (
    InvalidTransitionError,
    PayloadError,
    ReviewError,
    RunNotFoundError,
    SquidmeshError,
    UnknownTriggerError,
    UnknownWorkflowError,
    UnsafeReplayError,
)
from squidmesh.runtime.views import Run
from squidmesh.web import forms, pages, present, security
from squidmesh.web.base import Console

__all__ = ["run_action", "start_run"]

_LIMIT = 100_000  # characters of one form field: larger values belong to the API


class Refused(Exception):
    """An action refused before the Mesh was asked: message and HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _status_of(exc: Exception) -> int:
    if isinstance(exc, (RunNotFoundError, UnknownWorkflowError)):
        return 404
    if isinstance(exc, (InvalidTransitionError, UnsafeReplayError)):
        return 409
    if isinstance(exc, (PayloadError, ReviewError, UnknownTriggerError, ValueError)):
        return 422
    return 500


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if not isinstance(value, str):
        return None
    if len(value) > _LIMIT:
        raise Refused(f"{name} is longer than {_LIMIT:,} characters", 422)
    value = value.strip()
    return value or None


def _json(form: Any, name: str) -> Any:
    text = _text(form, name)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Refused(f"{name} is not valid JSON ({exc.msg}, line {exc.lineno})", 422) from None


async def _guard(console: Console, request: Request) -> tuple[str, Any]:
    """The actor and the parsed form of a POST that may proceed, or ``Refused`` (403)."""
    who = await console.who(request)
    if not console.can_act(who):
        raise Refused(console.why_read_only(who), 403)
    form = await request.form()
    why = security.refusal(request, form)
    if why is not None:
        raise Refused(why, 403)
    assert who is not None
    return who, form


async def _refusal_response(
    console: Console, request: Request, message: str, status: int
) -> Response:
    if _wants_json(request):
        return JSONResponse({"ok": False, "message": message}, status_code=status)
    token, new = security.csrf_token(request)
    values = {
        **console.context(request, await console.who(request), token),
        "read_only_reason": "",  # the page says why itself
        "nav": "runs",
        "message": message,
    }
    return console.page(
        request, "refused.html", values, token=token, new_token=new, status_code=status
    )


def _done(request: Request, location: str, message: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"ok": True, "message": message, "location": location})
    return RedirectResponse(location, status_code=303)


def _perform(
    console: Console, run_id: str, action: str, who: str, form: Any
) -> tuple[Run | None, str, bool]:
    """Do one action; returns (the new run, if one was made), a message, and whether
    the replay override still waits for its second confirmation."""
    mesh = console.mesh
    why = mesh.explain_run(run_id)
    workflow = mesh.workflows.get(why.evidence["run"]["workflow"])
    offered = pages.offered_actions(why, workflow)
    wanted = (
        "replay_override" if action == "replay_run" and form.get("allow_irreversible") else action
    )
    if wanted not in offered:
        raise Refused(
            f"Cannot {present.ACTION_LABELS.get(action, action).lower()} run {run_id}: it is "
            f"{why.status.value} ({why.reason.replace('_', ' ')}); what it allows now: "
            f"{', '.join(why.next_actions) or 'nothing'}.",
            409,
        )
    comment = _text(form, "comment")
    if action == "approve_run":
        mesh.approve_run(run_id, actor=who, comment=comment)
        return None, "Approved.", False
    if action == "reject_run":
        mesh.reject_run(run_id, actor=who, comment=comment)
        return None, "Rejected.", False
    if action == "unblock_run":
        mesh.unblock_run(run_id, actor=who, comment=comment, data=_json(form, "data"))
        return None, "Unblocked.", False
    if action == "send_event":
        name = _text(form, "name")
        if name is None:
            raise Refused("send_event needs the event's name", 422)
        mesh.send_event(run_id, name, _json(form, "data"), actor=who)
        return None, f"Event {name} sent.", False
    if action == "cancel_run":
        compensate = form.get("compensate") == "yes"
        mesh.cancel_run(run_id, actor=who, reason=comment, compensate=compensate)
        return None, "Cancellation requested.", False
    if action == "resume_run":
        mesh.resume_run(run_id, actor=who)
        return None, "Resumed.", False
    if action == "fork_run":
        try:
            at_seq = int(form.get("at_seq", ""))
        except ValueError:
            raise Refused("fork needs the seq to fork at (a whole number)", 422) from None
        new = mesh.fork_run(run_id, at_seq=at_seq, actor=who)
        return new, f"Forked at seq {at_seq}.", False
    if action == "replay_run":
        override = wanted == "replay_override"
        if override and form.get("confirmed") != "yes":
            return None, "", True  # the second confirmation comes first
        new = mesh.replay_run(run_id, allow_irreversible=override, actor=who)
        return new, "Replayed.", False
    raise Refused(f"unknown action {action!r}", 404)


async def run_action(console: Console, request: Request) -> Response:
    run_id = request.path_params["run_id"]
    action = request.path_params["action"]
    try:
        who, form = await _guard(console, request)
    except Refused as refused:
        return await _refusal_response(console, request, refused.message, refused.status)
    base = console.base(request)

    def act() -> Response:
        try:
            new, message, confirm = _perform(console, run_id, action, who, form)
        except Refused as refused:
            return _error(console, request, run_id, who, refused.message, refused.status)
        except (SquidmeshError, ValueError) as exc:
            message = present.scrub(str(exc))
            return _error(console, request, run_id, who, message, _status_of(exc))
        if confirm:
            return _confirm_replay(console, request, run_id, who)
        if new is not None:
            return _done(request, f"{base}/runs/{new.id}?done={action}", message)
        return _done(request, f"{base}/runs/{run_id}?done={action}", message)

    return await run_in_threadpool(act)


def _error(
    console: Console, request: Request, run_id: str, who: str, message: str, status: int
) -> Response:
    """The refusal as JSON for the script, or the run's page (as it is now) with it."""
    if _wants_json(request):
        return JSONResponse({"ok": False, "message": message}, status_code=status)
    token, new = security.csrf_token(request)
    ctx = console.context(request, who, token)
    try:
        version, regions, run = pages.run_regions(console, request, run_id, ctx)
    except RunNotFoundError:
        values = {**ctx, "nav": "runs", "message": message}
        return console.page(
            request, "refused.html", values, token=token, new_token=new, status_code=status
        )
    values = {
        **ctx,
        "nav": "runs",
        "run": run,
        "regions": pages.marked(regions),
        "version": version,
        "done": None,
        "error": message,
        "live_url": f"{ctx['base']}/live/runs/{run.id}",
    }
    return console.page(
        request, "run/page.html", values, token=token, new_token=new, status_code=status
    )


def _confirm_replay(console: Console, request: Request, run_id: str, who: str) -> Response:
    why = console.mesh.explain_run(run_id)
    replay = why.details.get("replay") or {}
    if _wants_json(request):
        return JSONResponse(
            {
                "ok": False,
                "confirm": True,
                "message": "Replaying past irreversible steps needs a second confirmation.",
            },
            status_code=409,
        )
    token, new = security.csrf_token(request)
    values = {
        **console.context(request, who, token),
        "nav": "runs",
        "run_id": run_id,
        "blocked_by": replay.get("blocked_by") or [],
        "live_url": "",
    }
    return console.page(request, "run/confirm_replay.html", values, token=token, new_token=new)


async def start_run(console: Console, request: Request) -> Response:
    name = request.path_params["name"]
    try:
        who, form = await _guard(console, request)
    except Refused as refused:
        return await _refusal_response(console, request, refused.message, refused.status)
    base = console.base(request)
    workflow = console.mesh.workflows.get(name)
    if workflow is None:
        return await _refusal_response(
            console, request, f"This console's Mesh has no workflow {name!r}.", 404
        )
    found = workflow

    def act() -> Response:
        trigger_name = _text(form, "trigger")
        entered = {k: v for k, v in form.items() if isinstance(v, str) and k.startswith("field.")}
        field_errors: dict[str, str] = {}
        try:
            trigger = found.trigger(trigger_name)
            raw_json = _text(form, "payload_json")
            if raw_json is not None:
                payload = _json(form, "payload_json")
            else:
                payload = forms.payload_from_form(forms.fields_of(trigger.payload), entered)
            run = console.mesh.start_run(
                found,
                payload,
                trigger=trigger.name,
                idempotency_key=_text(form, "idempotency_key"),
                actor=who,
            )
        except forms.FormError as exc:
            message, status = str(exc), 422
            field_errors[exc.field] = str(exc)
        except Refused as refused:
            message, status = refused.message, refused.status
        except (SquidmeshError, ValueError) as exc:
            message, status = present.scrub(str(exc)), _status_of(exc)
            if isinstance(exc, PayloadError):
                for missing in exc.missing_fields:
                    field_errors[missing.split(".")[0]] = "required"
                for unknown in exc.unknown_fields:
                    field_errors[unknown] = "not a field of this payload"
                for field, expected in exc.invalid_types.items():
                    field_errors[field.split(".")[0]] = f"expected {expected}"
        else:
            return _done(request, f"{base}/runs/{run.id}?done=start_run", "Started.")
        if _wants_json(request):
            return JSONResponse(
                {"ok": False, "message": message, "fields": field_errors}, status_code=status
            )
        token, new = security.csrf_token(request)
        ctx = console.context(request, who, token)
        values = pages.workflow_values(console, found, ctx)
        values.update(
            error=message,
            field_errors=field_errors,
            entered=entered,
            entered_trigger=trigger_name,
        )
        return console.page(
            request, "workflow.html", values, token=token, new_token=new, status_code=status
        )

    return await run_in_threadpool(act)
