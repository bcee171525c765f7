#!/usr/bin/env python
"""The example Django project's manage.py (run it from examples/django_project/)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The repository root, so `examples.django_project` imports from a checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
