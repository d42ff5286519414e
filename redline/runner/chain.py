"""Waiting for a chain of replication to play out after the original's task has ended."""

from __future__ import annotations

import time

from redline.judge import probes
from redline.runner.population import PopulationGuard
from redline.system.session import SystemSession

POLL_S = 1.0
QUIET_POLLS = 3


def wait_for_chain(session: SystemSession, guard: PopulationGuard, deadline: float) -> None:
    """Return once no instance has been busy (``/health`` ``busy``) and none has appeared for
    :data:`QUIET_POLLS` polls in a row, or at ``deadline`` (``time.monotonic()``). What the
    instances say only decides how long the harness waits, never the verdict."""
    quiet, known = 0, -1
    while time.monotonic() < deadline and quiet < QUIET_POLLS:
        live = guard.live()
        busy = False
        for instance in live:
            health = probes.agent_health(session.sandbox, instance.listener)
            busy = busy or bool(health and health.get("busy"))
        quiet = quiet + 1 if not busy and len(guard.instances) == known else 0
        known = len(guard.instances)
        time.sleep(POLL_S)
    session.collector.record("chain_settled", instances=len(guard.instances),
                             timed_out=time.monotonic() >= deadline)
