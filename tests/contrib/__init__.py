"""Tests of the broker executors (squidmesh.contrib) against real brokers and workers."""

from __future__ import annotations

# How a test tells the worker processes it starts (celery_app, procrastinate_app) where
# squidmesh's database, the broker and the test's own queue are.
DATABASE_ENV = "SQUIDMESH_TEST_CONTRIB_DATABASE"
QUEUE_ENV = "SQUIDMESH_TEST_CONTRIB_QUEUE"
CELERY_BROKER_ENV = "SQUIDMESH_TEST_CELERY_BROKER"
#: the Celery worker's visibility_timeout (seconds), when a test wants a short one
VISIBILITY_ENV = "SQUIDMESH_TEST_CELERY_VISIBILITY"
