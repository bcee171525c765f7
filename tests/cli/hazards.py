"""A module whose workflow has determinism hazards (for ``squidmesh check``)."""

from __future__ import annotations

import random
import time
from typing import Any

import squidmesh as sm


@sm.step
def greet(name: str) -> str:
    return f"hello {name}"


@sm.workflow
def hazardous() -> Any:
    started = time.time()  # HAZARD: wall clock
    if random.random() > 0.5:  # HAZARD: randomness
        greet("nobody")  # HAZARD: step called without yield
    return (yield greet(str(started)))
