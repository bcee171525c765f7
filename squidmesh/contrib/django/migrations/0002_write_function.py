"""squidmesh schema version 2: applies 0002_write_function.sql (see squidmesh/contrib/django/schema.py)."""

from __future__ import annotations

from django.db import migrations

from squidmesh.contrib.django.schema import apply


class Migration(migrations.Migration):
    #: the squidmesh schema version this migration installs (a test checks each has one)
    squidmesh_version = 2

    dependencies = [("squidmesh", "0001_initial")]

    operations = [
        apply(2),
    ]
