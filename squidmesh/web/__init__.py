"""The operator console: a web page the host mounts to see, approve and steer runs.

``squidmesh.web.console(mesh, actor=..., read_only=False, title="squidmesh")`` returns an
ASGI application (Starlette) to mount under any path of the host's application; the
host owns authentication and tells the console who acts through ``actor(request)``.
``squidmesh [--app ...] ui`` serves it locally. Needs the ``web`` extra
(``pip install 'squidmesh[web]'``). See docs/console.md.

Modules: ``app`` (the routes), ``base`` (what every page shares), ``pages`` (GET: runs,
run, workflows and the live endpoints), ``actions`` (POST: the run's next actions and
starting runs), ``security`` (headers, CSRF, origin checks), ``graph`` (the step graph's
layout), ``forms`` (payload models as forms), ``present`` (words, times and values);
templates, a hand-written script and a stylesheet ship in ``templates/`` and
``static/``: no CDN, no build step, nothing fetched at run time.
"""

from __future__ import annotations

try:
    import jinja2 as _jinja2  # noqa: F401
    import starlette as _starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"squidmesh.web needs the web extra ({exc.name} is missing): pip install 'squidmesh[web]'"
    ) from exc

from squidmesh.web.app import console

__all__ = ["console"]
