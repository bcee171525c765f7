"""Two endpoints: place an order (starts a run), and read where it is."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

import squidmesh as sm
from squidmesh.contrib.django import get_mesh


@login_required
@require_POST
def place_order(request: HttpRequest) -> HttpResponse:
    try:
        payload = json.loads(request.body or b"{}")
        run = get_mesh().start_run(
            "pantry_order",
            payload,
            idempotency_key=request.headers.get("Idempotency-Key"),
            actor=request.user.get_username(),
        )
    except json.JSONDecodeError:
        return JsonResponse({"error": "the body must be JSON"}, status=400)
    except sm.PayloadError as exc:
        return JsonResponse({"error": str(exc)}, status=422)
    return JsonResponse({"id": str(run.id), "status": run.status}, status=201)


@login_required
@require_GET
def order_status(request: HttpRequest, run_id: str) -> HttpResponse:
    mesh = get_mesh()
    try:
        run = mesh.inspect_run(run_id)
    except sm.RunNotFoundError:
        return JsonResponse({"error": "no such order"}, status=404)
    explanation = mesh.explain_run(run_id)
    return JsonResponse(
        {
            "id": str(run.id),
            "status": run.status,
            "reason": explanation.reason,
            "result": run.result,
        }
    )
