"""squidmesh schema version 3: applies 0003_exact_values_and_liveness.sql (see squidmesh/contrib/django/schema.py)."""

from __future__ import annotations

from django.db import migrations

from squidmesh.contrib.django.schema import apply


class Migration(migrations.Migration):
    #: the squidmesh schema version this migration installs (a test checks each has one)
    squidmesh_version = 3

    dependencies = [("squidmesh", "0002_write_function")]

    operations = [
        apply(3),
    ]
