"""squidmesh schema version 7: applies 0007_composition.sql (see squidmesh/contrib/django/schema.py)."""

from __future__ import annotations

from django.db import migrations

from squidmesh.contrib.django.schema import apply


class Migration(migrations.Migration):
    #: the squidmesh schema version this migration installs (a test checks each has one)
    squidmesh_version = 7

    dependencies = [("squidmesh", "0006_trace_context")]

    operations = [
        apply(7),
    ]
