"""``python -m squidmesh.cli``."""

from __future__ import annotations

from squidmesh.cli.dispatch import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
