from __future__ import annotations

from django.apps import AppConfig


class DjangoAppConfig(AppConfig):
    name = "tests.contrib.djangoapp"
    label = "djangoapp"
    default_auto_field = "django.db.models.BigAutoField"
