"""``Run``: an unmanaged, read-only model over squidmesh's runs table, for the admin's
list of runs (filters, search, paging). Changes go through the Mesh, never the ORM; the
run's JSON columns are left out (the admin reads them through ``inspect_run``)."""

from __future__ import annotations

from django.db import models

from squidmesh.contrib.django.schema import runs_table
from squidmesh.types import RunStatus

__all__ = ["Run"]


class Run(models.Model):
    id = models.CharField(primary_key=True, max_length=36)
    workflow = models.TextField()
    trigger = models.TextField()
    status = models.TextField(choices=[(s.value, s.value) for s in RunStatus])
    reason = models.TextField(null=True)
    idempotency_key = models.TextField(null=True)
    replayed_from_run_id = models.CharField(max_length=36, null=True)
    forked_from_run_id = models.CharField(max_length=36, null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = runs_table()
        ordering = ("-created_at", "-id")
        verbose_name = "run"
        verbose_name_plural = "runs"

    def __str__(self) -> str:
        return f"{self.workflow} {self.id}"
