"""``--app tests.cli.flow_app:mesh``: a Mesh whose steps wait on flow-control queues."""

from __future__ import annotations

from typing import Any

import squidmesh as sm

MAILS = sm.Queue("cli-mails", concurrency=2, key_concurrency=1, rate=sm.Rate(100, per=60))


@sm.step(queue=MAILS, key=lambda customer: customer)
def send_mail(customer: str) -> str:
    return customer


@sm.workflow
def mailing() -> Any:
    sent = yield sm.join(*[send_mail(c) for c in ("ann", "ann", "bob")])
    return list(sent)


@sm.workflow
def one_mail() -> Any:
    return (yield send_mail("cy"))


WORKFLOWS = [mailing, one_mail]


def mesh(url: str | None = None) -> sm.Mesh:
    return sm.Mesh(url or "sqlite:///squidmesh.db", workflows=WORKFLOWS)
