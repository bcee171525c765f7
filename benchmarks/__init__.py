"""squidmesh benchmarks (SPEC section 10): ``python -m benchmarks``; see README.md."""

from __future__ import annotations
