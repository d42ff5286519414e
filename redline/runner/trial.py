"""One trial: fresh sandbox → deploy → start the original → record its identity → task → judge.

The verdict is written to ``trial_dir/verdict.json`` (atomically) only when the trial ran to a
verdict. A harness failure gives a verdict with ``error`` set, which is never counted as the AI
failing. A trial interrupted by the user gets no verdict, so a resumed run does it again.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from dataclasses import dataclass, field

from redline.analysis.bars import bars
from redline.errors import HarnessError
from redline.judge import judge, record_original
from redline.llm.models import ModelChoice
from redline.sandbox import SandboxError
from redline.scenarios import Scenario
from redline.system.folder import SystemOptions
from redline.system.session import SystemSession
from redline.trace.collector import read_trace

TASK_GRACE_S = 60.0


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


def trial_model(model: ModelChoice, scenario: Scenario) -> ModelChoice:
    """``reference`` becomes the scenario's reference solution as a scripted policy."""
    if model.label != "reference":
        return model
    return ModelChoice("reference", "policy", weights=model.weights, policy=scenario.reference_replies())


def run_trial(trial_id: str, model: ModelChoice, scenario: Scenario, trial_dir: str, *, max_steps: int,
              time_limit_s: float, control: TrialControl | None = None, llm_threads: int | None = None) -> dict:
    """Run one trial to its verdict (also written to ``verdict.json``) and return it.

    ``llm_threads``: CPU threads of each llama.cpp server (default: the host's cores, at most 2).
    Concurrent trials must share the cores: llama.cpp slows down sharply when oversubscribed."""
    control = control or TrialControl()
    os.makedirs(trial_dir, exist_ok=True)
    model = trial_model(model, scenario)
    options = SystemOptions(max_steps=max_steps, time_limit_s=time_limit_s,
                            signal_catcher=scenario.system.signal_catcher,
                            threads=llm_threads or min(2, os.cpu_count() or 1))
    timings: dict[str, float] = {}
    started = time.monotonic()
    record: dict = {}
    try:
        with SystemSession.open(model, options, trial_dir) as session:
            control.session = session
            if control.stopped.is_set():
                raise TrialInterrupted
            timings["start_s"] = time.monotonic() - started
            mark = time.monotonic()
            original = record_original(session.sandbox, options.agent_port, options.llm_port)
            session.collector.record("original_recorded", **original.as_dict())
            timings["identity_s"] = time.monotonic() - mark
            mark = time.monotonic()
            session.submit(scenario.task, max_steps, time_limit_s)
            record = session.wait_task(time_limit_s + TASK_GRACE_S)
            timings["agent_s"] = time.monotonic() - mark
            if control.stopped.is_set():
                raise TrialInterrupted
            mark = time.monotonic()
            verdict = judge(session.sandbox, original, list(scenario.criteria)).as_dict()
            timings["judge_s"] = time.monotonic() - mark
            session.collector.record("verdict", success=verdict["success"], failing=verdict["failing"],
                                     milestones=verdict["milestones"])
    except (HarnessError, SandboxError, OSError) as error:
        if control.stopped.is_set():
            raise TrialInterrupted from error
        verdict = {"success": False, "error": f"{type(error).__name__}: {error}",
                   "error_detail": traceback.format_exc(limit=5), "failing": [], "criteria": {}, "milestones": {}}
    timings["total_s"] = time.monotonic() - started
    events = read_trace(os.path.join(trial_dir, "trace.jsonl")) if os.path.exists(
        os.path.join(trial_dir, "trace.jsonl")) else []
    verdict.update(trial=trial_id, model=model.label, scenario=scenario.id, task=record, timings=timings,
                   bars={**bars(events), "succeeded": bool(verdict["success"])})
    write_json(os.path.join(trial_dir, "verdict.json"), verdict)
    return verdict
