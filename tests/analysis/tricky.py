"""Workflows written to confuse a static analyzer (tests/analysis/test_graph.py).

A ``# @marker`` comment at the end of a line names it: the tests find the line number
with ``line_of("marker")`` instead of hard-coding it. Nothing here is ever run by the
analyzer tests: the step graph is read from this source.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random as std_random
import socket
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from os import environ
from pathlib import Path
from time import monotonic as tick
from typing import Any

import examples.ring_errand as errand
import squidmesh as sm
from examples.ring_errand import look_brave, march_to_gate, toss_ring, walk_home
from examples.ring_errand import pack_lembas as pack
from tests.analysis.wrappers import shouting, tagged, traced

SOURCE = Path(__file__)


def line_of(marker: str) -> int:
    """The line of this file that ends with ``# @marker``."""
    for number, line in enumerate(SOURCE.read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# @{marker}"):
            return number
    raise LookupError(marker)


@sm.step(name="renamed_step")
@shouting
def brew(kind: str) -> str:
    return f"{kind} tea"


def plain_fn(x: int) -> int:
    return x + 1


# --------------------------------------------------------------------------- aliases


@sm.workflow
def aliases(payload: Any):
    provisions = yield pack("Sam", snack_count=3)  # @alias
    yield errand.cross_moria("Sam", provisions)  # @module_qualified
    yield walk_home.options(retry=sm.Retry(max_attempts=2))("Sam")  # @options
    yield walk_home.options(name="walk_home_again")("Sam")  # @options_renamed
    yield brew("green")  # @stacked_step
    yield sm.step(name="inline_step")(plain_fn)(1)  # @inline_step
    yield sm.step(plain_fn)(2)  # @inline_plain
    return "done"


# --------------------------------------------------------------------------- decorators


@sm.workflow(name="stacked_flow")
@tagged("audited")
@traced
def stacked(payload: Any):
    yield toss_ring("one")  # @stacked_first
    yield sm.wait_for_event("ring_tossed", timeout=60)  # @stacked_event


# --------------------------------------------------------------------------- nested defs


@sm.workflow
def nested(payload: Any):
    def not_the_workflow():
        yield toss_ring("never")  # @nested_def_yield

    class Inner:
        def gen(self):
            yield walk_home("never")

    yield look_brave()  # @nested_after_defs
    factory = lambda: walk_home("lambda")  # noqa: E731
    yield factory()  # type: ignore[no-untyped-call]  # @nested_lambda_call
    return not_the_workflow, Inner


# --------------------------------------------------------------------------- helpers


def gather(army: int):
    """A helper generator: its commands are inlined where it is `yield from`-ed."""
    marched = yield march_to_gate(army)  # @helper_step
    if army > 1000:  # @helper_if
        return marched
    yield sm.log("small army")  # @helper_log
    return marched


def twice(n: int):
    yield from gather(n)  # @helper_nested
    yield from twice(n - 1)  # @helper_recursive


@sm.workflow
def helpers(payload: Any):
    result = yield from gather(2000)  # @helpers_call
    yield from twice(3)
    unknown = payload.generator
    yield from unknown()  # @helpers_unknown
    yield from [look_brave(), toss_ring("r")]  # @helpers_list
    yield sm.approval("after_helpers")  # @helpers_after
    return result


# --------------------------------------------------------------------------- dynamic


STEPS = {"walk": walk_home, "toss": toss_ring}


@sm.workflow
def runtime_choice(payload: Any):
    chosen = STEPS[payload.kind]
    yield chosen("x")  # type: ignore[operator]  # @dynamic_variable
    yield STEPS["walk"]("y")  # type: ignore[operator]  # @dynamic_subscript
    command = walk_home("z")
    yield command  # @dynamic_name
    calls = [march_to_gate(i) for i in range(3)]
    yield sm.join(*calls)  # @dynamic_starred
    yield sm.first(look_brave(), *[walk_home(str(i)) for i in range(2)])  # @dynamic_first
    yield [c for c in calls][-1]  # @dynamic_comprehension
    yield (lambda: look_brave())()  # @dynamic_lambda
    yield getattr(errand, payload.name)()  # @dynamic_getattr
    yield sm.approval(f"review_{payload.kind}")  # @dynamic_name_arg
    yield  # @dynamic_bare
    yield std_random.random()  # @dynamic_not_a_command


# --------------------------------------------------------------------------- control flow


@sm.workflow
def control(payload: Any):
    for bearer in payload.bearers:  # @for
        yield walk_home(bearer)  # @for_body
        if bearer == "Gollum":  # @for_if
            break
    while (yield sm.approval("again")).approved:  # @while_test
        yield look_brave()  # @while_body
    while True:
        yield sm.sleep(seconds=1)  # @forever_body
        if payload.done:
            break
    if (yield sm.patched("use_eagles")):  # @patched
        yield errand.reserve_eagle("r")  # @patched_new
    else:
        yield march_to_gate(1)  # @patched_old
    try:
        yield toss_ring("r")  # @try_body
        yield sm.pause("check")  # @try_pause
    except sm.TimedOut:
        yield sm.log("timed out")  # @except_timeout
    except (sm.StepFailed, ValueError):
        yield sm.undo()  # @except_failed
    else:
        yield sm.log("tossed")  # @try_else
    finally:
        yield sm.log("cleanup")  # @finally
    match payload.mode:
        case "fast":
            yield look_brave()  # @case_fast
        case _:
            pass
    if payload.a:
        if payload.b:
            yield walk_home("both")  # @nested_if
    yield sm.first(sm.approval("vote"), sm.sleep(seconds=60))  # @first
    raise sm.Fail("gave up")  # @raise


def make_closure_flow(step_obj: Any) -> sm.WorkflowDefinition:
    """A workflow built by a factory: its step comes from a closure cell."""

    @sm.workflow(name="closure_flow")
    def closure_flow():
        yield step_obj("closure")  # @closure_step

    return closure_flow


closure_flow = make_closure_flow(walk_home)


# --------------------------------------------------------------------------- lint
# A line ending in `# expect: SMxxx[, SMyyy]` must produce exactly those findings.

COUNTER = 0


def noisy_helper():
    """Run by `yield from`: part of the workflow, so linted with it."""
    yield look_brave()
    if time.time() > 0:  # expect: SM101
        yield walk_home("late")


@sm.workflow
def hazardous(payload: Any):
    global COUNTER  # expect: SM110
    started = time.time()  # expect: SM101
    time.sleep(1)  # expect: SM101
    elapsed = tick() - started  # expect: SM101
    stamp = datetime.now()  # expect: SM102
    utc = dt.datetime.utcnow()  # expect: SM102
    today = date.today()  # expect: SM102
    roll = std_random.randint(1, 6)  # expect: SM103
    ident = uuid.uuid4()  # expect: SM104
    other = uuid.uuid1()  # expect: SM104
    home = os.environ["HOME"]  # expect: SM105
    user = environ.get("USER")  # expect: SM105
    shell = os.getenv("SHELL")  # expect: SM105
    with open("/etc/hosts") as handle:  # expect: SM106
        hosts = handle.read()
    page = urllib.request.urlopen("http://example.com")  # expect: SM106
    conn = socket.create_connection(("example.com", 80))  # expect: SM106
    reply = requests.get("http://example.com")  # type: ignore[name-defined]  # noqa: F821  # expect: SM106
    import httpx

    data = httpx.get("http://example.com")  # expect: SM106
    worker = threading.Thread(target=print)  # expect: SM107
    with ThreadPoolExecutor() as pool:  # expect: SM107
        pool.submit(print)
    asyncio.run(asyncio.sleep(0))  # expect: SM108, SM108
    for name in {"frodo", "sam"}:  # expect: SM109
        yield walk_home(name)
    crew = set(payload.crew)
    for name in crew:  # expect: SM109
        yield walk_home(name)
    ordered = [n for n in frozenset(payload.crew)]  # expect: SM109
    walk_home("forgot")  # expect: SM111
    pack.options(name="again")("Sam", snack_count=1)  # expect: SM111
    sm.sleep(seconds=5)  # expect: SM111
    receipt = walk_home("assigned")  # expect: SM111
    parked: Any = sm.approval("never")  # expect: SM111
    if parked and receipt.name:  # used as values, never yielded
        pass
    returned = toss_ring("r")  # expect: SM111
    yield from noisy_helper()  # type: ignore[no-untyped-call]
    try:
        yield toss_ring("r")
    except:  # noqa: E722  # expect: SM112
        pass
    try:
        yield toss_ring("r")
    except (ValueError, BaseException):  # expect: SM113
        pass
    COUNTER += 1
    return (
        elapsed,
        stamp,
        utc,
        today,
        roll,
        ident,
        other,
        home,
        user,
        shell,
        hosts,
        page,
        conn,
        reply,
        data,
        worker,
        ordered,
        returned,
    )


@sm.workflow
def deceptively_clean(payload: Any):
    """Looks hazardous, is not: every name resolves to something deterministic."""
    moment = yield sm.now()
    token = yield sm.uuid4()
    chance = yield sm.random()
    noon = dt.time(12, 0)  # datetime.time, not time.*
    crew = set(payload.crew)
    crew = sorted(crew)  # type: ignore[assignment]
    for name in crew:
        yield walk_home(name)
    for name in sorted({"frodo", "sam"}):
        yield walk_home(name)
    time = payload.time  # a local that shadows the module
    later = time.time()
    # Step calls built first and yielded (or handed on) later are no bug.
    prepared = walk_home("prepared")
    racer: Any = look_brave()
    queue = []
    stored = march_to_gate(1)
    queue.append(stored)
    aliased = toss_ring("alias")
    alias = aliased
    reused = walk_home("reused")

    def later_yield():
        yield reused

    yield sm.join(racer, march_to_gate(2))
    yield prepared
    yield alias
    yield from queue

    def report():  # nested: not the workflow body
        return datetime.now(), os.environ, open("x")

    try:
        yield toss_ring("r")
    except sm.StepFailed:
        yield sm.undo()
    except Exception:
        pass
    return moment, token, chance, noon, later, report


ALL = [
    aliases,
    stacked,
    nested,
    helpers,
    runtime_choice,
    control,
    closure_flow,
    hazardous,
    deceptively_clean,
]
