from __future__ import annotations

from django.contrib import admin

from examples.django_project.pantry.models import Invoice

admin.site.register(Invoice)
