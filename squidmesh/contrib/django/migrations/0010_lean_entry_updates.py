"""squidmesh schema version 10: applies 0010_lean_entry_updates.sql (see squidmesh/contrib/django/schema.py)."""

from __future__ import annotations

from django.db import migrations

from squidmesh.contrib.django.schema import apply


class Migration(migrations.Migration):
    #: the squidmesh schema version this migration installs (a test checks each has one)
    squidmesh_version = 10

    dependencies = [("squidmesh", "0009_one_call_start")]

    operations = [
        apply(10),
    ]
