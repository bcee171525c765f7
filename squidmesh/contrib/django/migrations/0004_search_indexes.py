"""squidmesh schema version 4: applies 0004_search_indexes.sql (see squidmesh/contrib/django/schema.py)."""

from __future__ import annotations

from django.db import migrations

from squidmesh.contrib.django.schema import apply


class Migration(migrations.Migration):
    #: the squidmesh schema version this migration installs (a test checks each has one)
    squidmesh_version = 4

    dependencies = [("squidmesh", "0003_exact_values_and_liveness")]

    operations = [
        apply(4),
    ]
