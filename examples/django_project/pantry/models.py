"""The app's own table: one invoice per order, written by a ``transaction=True`` step."""

from __future__ import annotations

from django.db import models


class Invoice(models.Model):
    order_ref = models.CharField(max_length=64, unique=True)
    amount_cents = models.PositiveIntegerField()
    #: the squidmesh run that issued it
    run_id = models.CharField(max_length=36)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"invoice {self.pk} for {self.order_ref}"
