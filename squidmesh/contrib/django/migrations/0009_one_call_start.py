"""squidmesh schema version 9: applies 0009_one_call_start.sql (see squidmesh/contrib/django/schema.py)."""

from __future__ import annotations

from django.db import migrations

from squidmesh.contrib.django.schema import apply


class Migration(migrations.Migration):
    #: the squidmesh schema version this migration installs (a test checks each has one)
    squidmesh_version = 9

    dependencies = [("squidmesh", "0008_flow_control")]

    operations = [
        apply(9),
    ]
