"""squidmesh schema version 1: applies 0001_initial.sql (see squidmesh/contrib/django/schema.py)."""

from __future__ import annotations

from django.db import migrations, models

from squidmesh.contrib.django.schema import apply, runs_table
from squidmesh.types import RunStatus

STATUSES = [(s.value, s.value) for s in RunStatus]


class Migration(migrations.Migration):
    #: the squidmesh schema version this migration installs (a test checks each has one)
    squidmesh_version = 1
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        apply(1),
        migrations.CreateModel(
            name="Run",
            fields=[
                ("id", models.CharField(max_length=36, primary_key=True, serialize=False)),
                ("workflow", models.TextField()),
                ("trigger", models.TextField()),
                ("status", models.TextField(choices=STATUSES)),
                ("reason", models.TextField(null=True)),
                ("idempotency_key", models.TextField(null=True)),
                ("replayed_from_run_id", models.CharField(max_length=36, null=True)),
                ("forked_from_run_id", models.CharField(max_length=36, null=True)),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
            ],
            options={
                "verbose_name": "run",
                "verbose_name_plural": "runs",
                "db_table": runs_table(),
                "ordering": ("-created_at", "-id"),
                "managed": False,
            },
        ),
    ]
