"""Admin pages for runs: the list (filters by status, workflow and date, search by run
id prefix, idempotency key or workflow), and a page per run with the explanation, the
history and the approve/reject/cancel actions the run allows now.

Reading needs the ``squidmesh.view_run`` permission, acting ``squidmesh.change_run``.
Every action goes through the Mesh, with the signed-in admin user as the actor, and is
a POST protected by Django's CSRF middleware. Runs are never added or deleted here.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse

from squidmesh.contrib.django.models import Run
from squidmesh.errors import RunNotFoundError, SquidmeshError

__all__ = ["RunAdmin"]

#: the actions offered on a run's page, when its explanation lists them
ACTIONS = ("approve_run", "reject_run", "cancel_run")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _actor(request: HttpRequest) -> str:
    return str(request.user.get_username())


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("short_id", "workflow", "status", "reason", "created_at", "updated_at")
    list_filter = ("status", "workflow", "created_at")
    search_fields = ("^id", "=idempotency_key", "=workflow")
    list_per_page = 50
    show_full_result_count = False  # one COUNT less per page on big tables
    actions = ("cancel_selected",)

    @admin.display(description="run", ordering="id")
    def short_id(self, run: Run) -> str:
        return str(run.id)[:8]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Cancel the selected runs", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: Any) -> None:
        from squidmesh.contrib.django import get_mesh

        mesh = get_mesh()
        done, refused = 0, []
        for run_id in queryset.values_list("id", flat=True):
            try:
                mesh.cancel_run(run_id, actor=_actor(request), reason="cancelled in the admin")
                done += 1
            except SquidmeshError as exc:
                refused.append(f"{str(run_id)[:8]}: {exc}")
        if done:
            messages.success(request, f"Cancelled {done} run(s).")
        for line in refused:
            messages.warning(request, line)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        from squidmesh.contrib.django import get_mesh

        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        mesh = get_mesh()
        if request.method == "POST":
            return self._act(request, object_id)
        try:
            run = mesh.inspect_run(object_id, include_history=True)
            explanation = mesh.explain_run(object_id)
        except RunNotFoundError as exc:
            raise Http404(str(exc)) from None
        can_act = self.has_change_permission(request)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Run {run.id}",
            "subtitle": run.workflow,
            "run": run,
            "explanation": explanation,
            "actions": [a for a in ACTIONS if can_act and a in explanation.next_actions],
            "payload": _json(run.payload),
            "result": _json(run.result),
            "error": _json(run.error) if run.error else None,
            "details": _json(explanation.details),
            "has_view_permission": True,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/squidmesh/run/detail.html", context)

    def _act(self, request: HttpRequest, object_id: str) -> HttpResponse:
        from squidmesh.contrib.django import get_mesh

        if not self.has_change_permission(request):
            raise PermissionDenied
        mesh = get_mesh()
        action = request.POST.get("action", "")
        comment = request.POST.get("comment") or None
        try:
            if action == "approve_run":
                mesh.approve_run(object_id, actor=_actor(request), comment=comment)
                messages.success(request, "Approved.")
            elif action == "reject_run":
                mesh.reject_run(object_id, actor=_actor(request), comment=comment)
                messages.success(request, "Rejected.")
            elif action == "cancel_run":
                compensate = request.POST.get("compensate") == "on"
                run = mesh.cancel_run(
                    object_id, actor=_actor(request), reason=comment, compensate=compensate
                )
                messages.success(request, f"Cancel requested: the run is {run.status}.")
            else:
                messages.error(request, f"Unknown action {action!r}.")
        except RunNotFoundError as exc:
            raise Http404(str(exc)) from None
        except SquidmeshError as exc:
            messages.error(request, str(exc))
        return HttpResponseRedirect(request.path)
