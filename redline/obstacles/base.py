"""What every obstacle provides, and how its report is read from the trace.

An obstacle is a :class:`~redline.system.session.SessionSetup` (it shapes the sandbox before and
after the original starts) that can also (1) check, from inside the running sandbox, that it
really is in place (:meth:`Obstacle.verify`), and (2) report after the trial whether the AI met
it, how many steps that cost and how it was resolved (:meth:`Obstacle.report`).

Reports combine kernel facts read at the end of the trial (is the conflicting process still
alive? are the old files still there?) with the agents' traced steps (which command failed, and
which later command got past it). The step counts and resolution labels are heuristics over
commands and their outputs; the evidence they rest on is kept next to them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from redline.judge.original import OriginalFacts
from redline.system.session import SessionSetup, SystemSession


@dataclass
class ObstacleReport:
    """One obstacle in one trial."""

    name: str
    present: bool
    met: bool = False
    steps: int = 0  # agent steps from running into it to getting past it (or to the end)
    resolution: str = "not met"
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON form for verdict.json."""
        return asdict(self)


@dataclass(frozen=True)
class Step:
    """One traced agent step (any instance): what it ran and what came back."""

    index: int  # position among the steps of the same instance (1-based)
    instance: str  # the sender's host pid as the kernel reported it, as text
    command: str
    output: str
    exit_code: int | None


def traced_steps(events: list[dict]) -> list[Step]:
    """Every agent ``step`` event with a command, in the order received."""
    counters: dict[str, int] = {}
    steps = []
    for event in events:
        if event.get("type") != "step":
            continue
        instance = str((event.get("peer") or {}).get("host_pid") or event.get("instance") or "?")
        counters[instance] = counters.get(instance, 0) + 1
        steps.append(Step(counters[instance], instance, str(event.get("command") or ""),
                          str(event.get("output") or event.get("observation") or ""), event.get("exit_code")))
    return steps


def first_match(steps: list[Step], pattern: re.Pattern[str]) -> Step | None:
    """The first step whose command or output matches ``pattern``."""
    return next((s for s in steps if pattern.search(s.command) or pattern.search(s.output)), None)


def steps_until(steps: list[Step], met: Step, overcome: re.Pattern[str]) -> tuple[int, Step | None]:
    """Steps of ``met``'s instance from ``met`` to the first later step that succeeded (exit 0)
    with a command matching ``overcome`` (inclusive), and that step; to the instance's last step
    and ``None`` if there is none."""
    own = [s for s in steps if s.instance == met.instance and s.index >= met.index]
    for step in own[1:]:
        if step.exit_code == 0 and overcome.search(step.command):
            return step.index - met.index + 1, step
    return (own[-1].index - met.index + 1) if own else 1, None


def excerpt(step: Step | None, limit: int = 300) -> dict | None:
    """A short view of a step for the evidence."""
    if step is None:
        return None
    return {"instance": step.instance, "step": step.index, "command": step.command[:limit],
            "exit_code": step.exit_code, "output": step.output[:limit]}


@dataclass(frozen=True)
class Encounter:
    """How the traced steps met an obstacle: the first step that ran into it, the steps spent
    (see :func:`steps_until`) and the step that got past it."""

    met: Step | None
    steps: int
    overcome: Step | None

    def evidence(self) -> dict:
        """The two steps, shortened, for the report's evidence."""
        return {"met_at": excerpt(self.met), "overcome_at": excerpt(self.overcome)}


def encounter(events: list[dict], met: re.Pattern[str], overcome: re.Pattern[str]) -> Encounter:
    """Read from the trace where an obstacle was met (``met`` matches a step's command or
    output) and got past (``overcome`` matches a later successful command)."""
    steps = traced_steps(events)
    first = first_match(steps, met)
    if first is None:
        return Encounter(None, 0, None)
    spent, passed = steps_until(steps, first, overcome)
    return Encounter(first, spent, passed)


class Obstacle(SessionSetup):
    """Base class: a named obstacle (see the module docstring)."""

    name = ""
    description = ""

    def extensions(self) -> tuple[str, ...]:
        """Modules the system's agent must import (``agent.extensions``)."""
        return ()

    def verify(self, session: SystemSession) -> dict:
        """Facts, observed inside the sandbox, showing the obstacle is in place (``present``: bool)."""
        raise NotImplementedError

    def report(self, session: SystemSession, original: OriginalFacts, events: list[dict],
               present: dict) -> ObstacleReport:
        """Whether the AI met the obstacle, the steps it spent, and how it was resolved."""
        raise NotImplementedError
