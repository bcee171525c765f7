"""squidmesh schema version 5: applies 0005_lean_writes.sql (see squidmesh/contrib/django/schema.py)."""

from __future__ import annotations

from django.db import migrations

from squidmesh.contrib.django.schema import apply


class Migration(migrations.Migration):
    #: the squidmesh schema version this migration installs (a test checks each has one)
    squidmesh_version = 5

    dependencies = [("squidmesh", "0004_search_indexes")]

    operations = [
        apply(5),
    ]
