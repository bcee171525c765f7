from __future__ import annotations

from django.apps import AppConfig


class PantryConfig(AppConfig):
    name = "examples.django_project.pantry"
    label = "pantry"
    default_auto_field = "django.db.models.BigAutoField"
