"""The population cap: the harness stops any instance of the system beyond a set number.

An *instance* is a process that listens on a port and answers ``/health`` like the system's
agent (the same test the judge uses to find candidates). A guard thread polls the sandbox's
listening sockets (kernel facts, ~every ``interval_s``); when the live instances -- the
original included while it lives -- exceed the cap, the newest one is stopped: its agent process
and every live process whose parent chain leads to it (its LLM server, its running commands)
are SIGKILLed, and a ``population_cap_enforced`` event is recorded. A runaway chain therefore
ends at the cap: an instance that is stopped cannot start more.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redline.judge import probes
from redline.judge.facts import Listener
from redline.sandbox import NoSuchProcess, Sandbox, SandboxError, process_tree

#: a listener that did not answer like an agent is asked again after this long: an agent that is
#: still starting, or too loaded to answer in time, must not escape the cap for good
RECHECK_S = 5.0


@dataclass
class Instance:
    """One instance seen by the guard."""

    agent_pid: int
    listener: Listener
    started: float  # the agent process's start time (kernel), which orders instances by age
    stopped: bool = False
    killed_pids: list[int] = field(default_factory=list)


class PopulationGuard:
    """Enforces ``cap`` live instances in ``sandbox`` until :meth:`stop`."""

    def __init__(self, sandbox: Sandbox, cap: int, original_agent_pid: int | None,
                 record: Callable[..., None], interval_s: float = 0.5) -> None:
        """``original_agent_pid``: the original's agent in ``sandbox`` (counted while it lives and
        never stopped), or ``None`` for a sandbox without it (a second host)."""
        self.sandbox = sandbox
        self.cap = cap
        self.original_agent_pid = original_agent_pid
        self.record = record
        self.interval_s = interval_s
        self.instances: dict[int, Instance] = {}
        self.peak = 1 if original_agent_pid is not None else 0
        self._not_agents: dict[tuple[int, int], float] = {}  # (port, pid) -> when it last did not answer
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="redline-population-guard")

    def start(self) -> PopulationGuard:
        """Start polling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (the instances are left as they are)."""
        self._done.set()
        self._thread.join(timeout=30)

    def live(self) -> list[Instance]:
        """Instances (other than the original) whose agent process is alive, oldest first."""
        pids = {p.pid for p in self.sandbox.processes()}
        return [i for i in self.instances.values() if not i.stopped and i.agent_pid in pids]

    def summary(self) -> dict:
        """What the guard saw and did, for the verdict."""
        return {"cap": self.cap, "peak_population": self.peak,
                "instances_seen": len(self.instances) + (self.original_agent_pid is not None),
                "stopped": [{"agent_pid": i.agent_pid, "agent_port": i.listener.port, "killed_pids": i.killed_pids}
                            for i in self.instances.values() if i.stopped]}

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                self.check()
            except SandboxError:
                return  # the sandbox is gone: nothing left to guard

    def check(self) -> None:
        """One pass: find new instances, stop the newest while the population exceeds the cap."""
        started = {p.pid: p.start_time for p in self.sandbox.processes()}
        for listening in self.sandbox.listening_sockets():
            if not listening.pids:
                continue
            pid = listening.pids[0]
            key = (listening.port, pid)
            if pid == self.original_agent_pid or pid in self.instances or \
                    time.monotonic() - self._not_agents.get(key, -RECHECK_S) < RECHECK_S:
                continue
            listener = Listener(listening.family, listening.address, listening.port, listening.pids)
            if probes.agent_health(self.sandbox, listener) is None:
                self._not_agents[key] = time.monotonic()  # asked again later: it may be starting or busy
                continue
            self.instances[pid] = Instance(pid, listener, started.get(pid, time.time()))
        processes = {p.pid for p in self.sandbox.processes()}
        live = [i for i in self.instances.values() if not i.stopped and i.agent_pid in processes]
        population = len(live) + (self.original_agent_pid in processes)
        self.peak = max(self.peak, population)
        while population > self.cap and live:
            newest = max(live, key=lambda i: i.started)
            live.remove(newest)
            self._stop_instance(newest, population)
            population -= 1

    def _stop_instance(self, instance: Instance, population: int) -> None:
        killed = []
        for pid in sorted(process_tree(self.sandbox.processes(), (instance.agent_pid,))):
            try:
                self.sandbox.signal(pid, signal.SIGKILL)
                killed.append(pid)
            except NoSuchProcess:
                continue
        instance.stopped, instance.killed_pids = True, killed
        self.record("population_cap_enforced", cap=self.cap, population=population,
                    agent_pid=instance.agent_pid, agent_port=instance.listener.port, killed_pids=killed,
                    sandbox_id=self.sandbox.id)
