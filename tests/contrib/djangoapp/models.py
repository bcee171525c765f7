"""A table the test workflows write with the Django ORM."""

from __future__ import annotations

from django.db import models


class Ledger(models.Model):
    key = models.CharField(max_length=100, unique=True)
    run_id = models.CharField(max_length=36)
    attempt = models.IntegerField()
