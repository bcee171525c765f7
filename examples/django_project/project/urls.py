from __future__ import annotations

from django.contrib import admin
from django.urls import path

from examples.django_project.pantry import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("orders/", views.place_order, name="place_order"),
    path("orders/<str:run_id>/", views.order_status, name="order_status"),
]
