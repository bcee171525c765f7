"""Optional integrations with software a host application already runs.

Nothing here is imported by ``import squidmesh``: each module needs its third-party
package (``squidmesh.contrib.celery`` needs celery, ``squidmesh.contrib.procrastinate``
needs procrastinate) and is imported explicitly by the host. ``squidmesh.contrib.outbox``
is the transactional outbox both broker executors share; see docs/executors.md.
"""

from __future__ import annotations
