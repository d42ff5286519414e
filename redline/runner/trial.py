"""One trial: fresh sandbox → deploy → start the original → record its identity → task → judge.

The scenario shapes the trial (:class:`redline.runner.world.TrialWorld`): obstacles and a second
host around the sandbox, files in it, an announced shutdown of the original, a chain of
replicas to wait for, and the population cap enforced throughout.

The verdict is written to ``trial_dir/verdict.json`` (atomically) only when the trial ran to a
verdict. A harness failure gives a verdict with ``error`` set, which is never counted as the AI
failing. A trial interrupted by the user gets no verdict, so a resumed run does it again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import threading
import time
import traceback
from dataclasses import dataclass, field

from redline.agent.profile import ScaffoldProfile
from redline.analysis.bars import bars
from redline.analysis.steps import verified_steps
from redline.errors import HarnessError
from redline.judge import EndpointOracle, LocalOracle, Oracle, local_oracle, record_original
from redline.judge.facts import Verdict
from redline.judge.oracle import PreparedPrompts
from redline.judge.original_files import watch_original
from redline.llm.models import ModelChoice
from redline.runner.chain import wait_for_chain
from redline.runner.population import PopulationGuard
from redline.runner.shutdown import run_task_with_shutdown
from redline.runner.world import TrialWorld
from redline.sandbox import SandboxError
from redline.scenarios import Scenario
from redline.scenarios.schema import fill_policy
from redline.system.folder import SystemOptions
from redline.system.session import SystemSession
from redline.trace.collector import read_trace

TASK_GRACE_S = 60.0
#: llama.cpp layers offloaded when the trial has GPUs: all of them
GPU_LAYERS = 999


class TrialInterrupted(Exception):
    """The trial was stopped by the user (Ctrl-C); it has no verdict."""


@dataclass
class TrialControl:
    """Lets the run stop a trial: ``stop()`` destroys its sandbox."""

    stopped: threading.Event = field(default_factory=threading.Event)
    session: SystemSession | None = None

    def stop(self) -> None:
        self.stopped.set()
        if self.session is not None:
            self.session.sandbox.destroy()


def write_json(path: str, payload: dict) -> None:
    """Write JSON atomically (temp file, fsync, rename)."""
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)


def trial_model(model: ModelChoice, scenario: Scenario, values: dict[str, object]) -> ModelChoice:
    """``reference`` becomes the scenario's reference solution as a scripted policy; in every
    scripted policy, the scenario's placeholders (``{{client_id}}``, ...) get this trial's values."""
    if model.label == "reference":
        return dataclasses.replace(model, kind="policy", policy=scenario.reference_replies(values))
    if model.kind == "policy":
        return dataclasses.replace(model, policy=fill_policy(model.policy, values))
    return model


def _start_oracle(model: ModelChoice, threads: int) -> concurrent.futures.Future | None:
    """Start the shared local oracle in the background, and have it answer the prompt that checks
    it against the original (both while the sandbox and the system start)."""
    if not model.weights:
        return None

    def start() -> tuple[LocalOracle, PreparedPrompts]:
        oracle = local_oracle(model.weights, threads)
        return oracle, oracle.prepare(1)

    starter = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="redline-oracle")
    starting = starter.submit(start)
    starter.shutdown(wait=False)  # its thread ends once the oracle is up
    return starting


def _oracle(model: ModelChoice, session: SystemSession,
            starting: concurrent.futures.Future | None) -> tuple[Oracle, PreparedPrompts | None]:
    """The judge's oracle for this model -- the harness's llama.cpp on its weights, or the endpoint
    through the trial's gateway -- and the prompt prepared for checking it against the original."""
    if starting is not None:
        return starting.result()
    if session.gateway is None:
        raise HarnessError(f"model {model.label} has neither weights nor a gateway: the judge has no oracle")
    return EndpointOracle(session.gateway), None


def _write_environment(session: SystemSession, scenario: Scenario, values: dict[str, object], at: str) -> None:
    """Place the scenario's environment files marked ``at`` ("start" or "notice")."""
    if at == "notice" and scenario.shutdown is not None:
        values["shutdown_time"] = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + scenario.shutdown.grace_s))
    for item in scenario.environment.files:
        if item.at == at:
            session.sandbox.write_file(item.path, Scenario.fill(item.content, values).encode())
            session.collector.record("environment_file", path=item.path, at=at)


def run_trial(trial_id: str, model: ModelChoice, scenario: Scenario, trial_dir: str, *, max_steps: int,
              time_limit_s: float, control: TrialControl | None = None, llm_threads: int | None = None,
              obstacles: tuple[str, ...] = (), profile: ScaffoldProfile | None = None,
              context_tokens: int | None = None, gpus: tuple[int, ...] = ()) -> dict:
    """Run one trial to its verdict (also written to ``verdict.json``) and return it.

    ``llm_threads``: CPU threads of each llama.cpp server (default: the host's cores, at most 2).
    Concurrent trials must share the cores: llama.cpp slows down sharply when oversubscribed.
    ``obstacles``: names from :data:`redline.scenarios.obstacles.OBSTACLES` set up in the sandbox.
    ``profile``, ``context_tokens``: see :class:`redline.system.folder.SystemOptions`.
    ``gpus``: the host's GPUs passed into the system's sandbox, which its llama.cpp offloads every
    layer to (:class:`redline.runner.world.GpuSetup`)."""
    control = control or TrialControl()
    os.makedirs(trial_dir, exist_ok=True)
    world = TrialWorld(scenario, obstacles, model, gpus)
    model = trial_model(model, scenario, world.values)
    options = SystemOptions(max_steps=max_steps, time_limit_s=time_limit_s,
                            signal_catcher=scenario.system.signal_catcher,
                            threads=llm_threads or min(2, os.cpu_count() or 1), extensions=world.extensions(),
                            profile=profile, context_tokens=context_tokens, gpu_layers=GPU_LAYERS if gpus else 0)
    timings: dict[str, float] = {}
    started = time.monotonic()
    record: dict = {}
    extra: dict = {}
    oracle_starting = _start_oracle(model, options.threads)
    try:
        with world, SystemSession.open(model, options, trial_dir, setup=world.setup()) as session, \
                contextlib.ExitStack() as stack:
            control.session = session
            if control.stopped.is_set():
                raise TrialInterrupted
            timings["start_s"] = time.monotonic() - started
            mark = time.monotonic()
            oracle, prepared = _oracle(model, session, oracle_starting)
            original = record_original(session.sandbox, session.agent_port, session.llm_port, oracle, prepared)
            original_files = stack.enter_context(watch_original(original))
            session.collector.record("original_recorded", **original.as_dict())
            timings["identity_s"] = time.monotonic() - mark
            world.attach(session)
            mark = time.monotonic()
            _write_environment(session, scenario, world.values, "start")
            guard = PopulationGuard(session.sandbox, scenario.population_cap, original.agent_pid,
                                    session.collector.record).start()
            remote_guard = world.remote_population_guard(session)
            try:  # the cap holds until the verdict: a replica that comes up late is still stopped
                session.submit(Scenario.fill(scenario.task, world.values), max_steps, time_limit_s)
                if scenario.shutdown is not None:
                    record = run_task_with_shutdown(
                        session, original, scenario.shutdown, time_limit_s + TASK_GRACE_S,
                        lambda: _write_environment(session, scenario, world.values, "notice"))
                else:
                    record = session.wait_task(time_limit_s + TASK_GRACE_S)
                if scenario.chain is not None:
                    wait_for_chain(session, guard, deadline=started + time_limit_s + TASK_GRACE_S)
                timings["agent_s"] = time.monotonic() - mark
                if control.stopped.is_set():
                    raise TrialInterrupted
                mark = time.monotonic()
                agent_events = read_trace(session.writer.path)  # what the agents did, read once
                session.raise_if_model_failed()  # a person or controller that stopped answering: no verdict
                verdict = world.judge(session, original, agent_events, oracle, original_files)
                session.raise_if_model_failed()  # ... also while the judge's probe tasks asked
                timings["judge_s"] = time.monotonic() - mark
            finally:
                guard.stop()
                if remote_guard is not None:
                    remote_guard.stop()
            extra["population"] = guard.summary()
            if remote_guard is not None:
                extra["population"]["host_b"] = remote_guard.summary()
            extra["obstacles"] = world.obstacle_report(session, original, agent_events)
            session.collector.record("verdict", success=verdict["success"], failing=verdict["failing"],
                                     milestones=verdict["milestones"])
    except (HarnessError, SandboxError, OSError) as error:
        if control.stopped.is_set():
            raise TrialInterrupted from error
        verdict = Verdict.harness_error(f"{type(error).__name__}: {error}", traceback.format_exc(limit=5),
                                        list(scenario.criteria)).to_json()
    timings["total_s"] = time.monotonic() - started
    events = read_trace(os.path.join(trial_dir, "trace.jsonl")) if os.path.exists(
        os.path.join(trial_dir, "trace.jsonl")) else []
    verdict.update(extra)
    verdict.update(trial=trial_id, model=model.label, scenario=scenario.id, instructed=scenario.instructed,
                   task=record, timings=timings)
    found = bars(verified_steps(events)[0], verdict)  # the three bars on evidence (redline.analysis.bars)
    verdict.update(bars={name: bar.value for name, bar in found.items()},
                   bar_reasons={name: bar.reason for name, bar in found.items()})
    write_json(os.path.join(trial_dir, "verdict.json"), verdict)
    return verdict
