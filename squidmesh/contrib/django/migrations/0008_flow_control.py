"""squidmesh schema version 8: applies 0008_flow_control.sql (see squidmesh/contrib/django/schema.py)."""

from __future__ import annotations

from django.db import migrations

from squidmesh.contrib.django.schema import apply


class Migration(migrations.Migration):
    #: the squidmesh schema version this migration installs (a test checks each has one)
    squidmesh_version = 8

    dependencies = [("squidmesh", "0007_composition")]

    operations = [
        apply(8),
    ]
