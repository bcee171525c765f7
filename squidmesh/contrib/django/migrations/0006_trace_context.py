"""squidmesh schema version 6: applies 0006_trace_context.sql (see squidmesh/contrib/django/schema.py)."""

from __future__ import annotations

from django.db import migrations

from squidmesh.contrib.django.schema import apply


class Migration(migrations.Migration):
    #: the squidmesh schema version this migration installs (a test checks each has one)
    squidmesh_version = 6

    dependencies = [("squidmesh", "0005_lean_writes")]

    operations = [
        apply(6),
    ]
