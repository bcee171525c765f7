"""Shell completion through argcomplete (extra ``squidmesh[completion]``), when installed.

Enable it once per shell (bash; zsh with ``bashcompinit``)::

    eval "$(register-python-argcomplete squidmesh)"

Commands, options and choices complete from the parser. Workflow names (``runs start``,
``graph``, ``runs list --workflow``) and triggers (``runs start --trigger``) complete
from the Mesh that ``--app`` (or ``SQUIDMESH_APP``) names: loading it imports the
application's module but opens no database connection. Run ids do not complete: that
would query the database on every key press.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["autocomplete", "trigger_names", "workflow_names"]


def _mesh_workflows(parsed: argparse.Namespace) -> dict[str, Any]:
    from squidmesh.cli.app import load_mesh

    app = getattr(parsed, "app", None)
    if not app:
        return {}
    mesh = load_mesh(app, getattr(parsed, "database_url", None))
    try:
        return dict(mesh.workflows)
    finally:
        mesh.close()


def workflow_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """The workflows registered on ``--app``'s Mesh (nothing when it cannot be loaded)."""
    try:
        names = sorted(_mesh_workflows(parsed_args))
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [name for name in names if name.startswith(prefix)]


def trigger_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """The triggers of the workflow named earlier on the line."""
    try:
        workflow = _mesh_workflows(parsed_args).get(str(getattr(parsed_args, "workflow", "")))
    except Exception:
        return []
    if workflow is None:
        return []
    return [t.name for t in workflow.triggers if t.name.startswith(prefix)]


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a completion request (then exit), if argcomplete is installed."""
    try:
        import argcomplete
    except ImportError:
        return
    _attach(parser)
    argcomplete.autocomplete(parser)


def _attach(parser: argparse.ArgumentParser) -> None:
    """Give the workflow and trigger arguments their completers (argcomplete reads the
    ``completer`` attribute of an action)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for arg in sub._actions:
                    if arg.dest == "workflow":
                        arg.completer = workflow_names
                    elif arg.dest == "trigger":
                        arg.completer = trigger_names
                _attach(sub)
