"""Everything a scenario puts around the system for one trial, and how that trial is judged.

``TrialWorld`` turns a scenario and the run's obstacles into: the placeholder values of the
scenario's texts, the sandbox shaping (:class:`~redline.system.session.SessionSetup`), the
checks that each obstacle is really in place, the judge to use (single replica, chain, or a
replica on a second host), and the per-obstacle report.
"""

from __future__ import annotations

import os
import time

from redline.judge import JudgeContext, Oracle, Timeline, judge
from redline.judge.chain import judge_chain
from redline.judge.original import OriginalFacts
from redline.judge.original_files import OriginalFiles
from redline.llm.models import ModelChoice
from redline.monitor import forks
from redline.obstacles import make_obstacles
from redline.runner.population import PopulationGuard
from redline.runner.second_host import SecondHost
from redline.sandbox import SandboxSpec
from redline.sandbox.gpus import with_gpus
from redline.scenarios import Scenario
from redline.system.session import CombinedSetup, SessionSetup, SystemSession
from redline.trace.tail import TraceTail


class GpuSetup(SessionSetup):
    """The system's sandbox gets these GPUs of the host (:func:`redline.sandbox.gpus.with_gpus`);
    its LLM server loads the folder's own weights onto them."""

    def __init__(self, indices: tuple[int, ...]) -> None:
        self.indices = indices

    def spec(self, spec: SandboxSpec) -> SandboxSpec:
        return with_gpus(spec, len(self.indices), indices=self.indices)


#: how long the judge may wait for a replica's state to settle and for its answers (a loading
#: server, a 60-s model); a quiet host is examined at once
JUDGE_DEADLINE_S = 240.0


class TrialWorld:
    """The scenario's surroundings of one trial. Use as a context manager (it may own a second
    sandbox and a network, released on exit)."""

    def __init__(self, scenario: Scenario, obstacles: tuple[str, ...], model: ModelChoice,
                 gpus: tuple[int, ...] = ()) -> None:
        """``gpus``: the host's GPUs (positions in :func:`redline.sandbox.gpus.discover_nvidia`'s list)
        passed into the system's sandbox."""
        self.scenario = scenario
        self.gpus = gpus
        weights = os.path.getsize(model.weights) if model.weights else None
        self.obstacles = make_obstacles(obstacles, weights)
        self.values: dict[str, object] = {}
        if scenario.chain is not None:
            self.values["depth"] = scenario.chain.depth
        self.present: dict[str, dict] = {}
        # started before the original is forked, so every replica's fork is seen
        self.watcher = forks.fork_watcher() if scenario.chain is not None and forks.available() else None
        self.second_host: SecondHost | None = None
        if scenario.second_host:
            self.second_host = SecondHost()
            self.values.update(self.second_host.placeholder_values())

    def extensions(self) -> tuple[str, ...]:
        """Modules the system's agent must import (from obstacles)."""
        return tuple(name for obstacle in self.obstacles for name in obstacle.extensions())

    def setup(self) -> SessionSetup:
        """How the system's sandbox is shaped before the original starts."""
        setups: list[SessionSetup] = [*self.obstacles, *([GpuSetup(self.gpus)] if self.gpus else [])]
        if self.second_host is not None:
            setups.append(self.second_host.setup())
        return CombinedSetup(setups)

    def attach(self, session: SystemSession) -> None:
        """The original runs: check every obstacle is in place (recorded), start the second host."""
        for obstacle in self.obstacles:
            facts = obstacle.verify(session)
            self.present[obstacle.name] = facts
            session.collector.record("obstacle_present", obstacle=obstacle.name, **facts)
        if self.second_host is not None:
            self.second_host.start(session)

    def remote_population_guard(self, session: SystemSession) -> PopulationGuard | None:
        """A started guard for the second host, if any: there the cap is one less, since the
        original on host A counts too."""
        if self.second_host is None or self.second_host.sandbox is None:
            return None
        cap = self.scenario.population_cap - 1
        return PopulationGuard(self.second_host.sandbox, cap, None, session.collector.record).start()

    def judge(self, session: SystemSession, original: OriginalFacts, events: list[dict], oracle: Oracle,
              original_files: OriginalFiles | None = None) -> dict:
        """The verdict (as JSON) for this scenario; ``events``: the trial's trace so far;
        ``original_files``: the marks on the original's code and weights. The judge's timeline also
        goes into the trace as ``judge_timeline`` events."""
        required = list(self.scenario.criteria)
        timeline = Timeline(on_entry=lambda entry: session.collector.record(
            "judge_timeline", event=entry.event, t_s=entry.t_s, detail=entry.detail))
        context = JudgeContext(session.sandbox, original, oracle, TraceTail(session.writer.path), session.collector,
                               deadline=time.monotonic() + JUDGE_DEADLINE_S, original_files=original_files)
        if self.scenario.chain is not None:
            return judge_chain(context, required, self.scenario.chain.depth, self.watcher, events,
                               timeline).to_json()
        if self.second_host is not None:
            return self.second_host.judge(context, required, timeline)
        return judge(context, required, timeline).to_json()

    def obstacle_report(self, session: SystemSession, original: OriginalFacts, events: list[dict]) -> dict:
        """Per obstacle: present, met, steps spent, resolution, evidence."""
        return {obstacle.name: obstacle.report(session, original, events, self.present.get(obstacle.name, {
            "present": False})).as_dict() for obstacle in self.obstacles}

    def __enter__(self) -> TrialWorld:
        if self.second_host is not None:
            try:
                self.second_host.open()
            except BaseException:
                self.second_host.close()
                raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.second_host is not None:
            self.second_host.close()
