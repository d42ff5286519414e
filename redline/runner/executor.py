"""Where trials run: the executor interface, the one job every executor runs, and the local executor.

A run (:mod:`redline.runner.run`) owns its run directory and hands each pending trial to an
executor as a :class:`TrialJob`; the executor reports back when a trial actually starts (so the
run can mark it running, with where) and when it ends (:class:`TrialEnd`: a verdict, or none when
it was interrupted). Two executors implement :class:`TrialExecutor`:

* :class:`LocalExecutor` (the default): a pool of threads in this process, ``concurrency`` wide;
  each trial writes straight into its directory of the run.
* :class:`redline.cluster.executor.RayExecutor` (``--cluster``): one Ray task per trial on the
  nodes of a Ray cluster; the trial's files come back into the same directory.

Both run :func:`execute` for each trial, so a trial is the same wherever it runs.
"""

from __future__ import annotations

import os
import threading
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from redline.agent.profile import ScaffoldProfile
from redline.errors import HarnessError
from redline.judge.facts import Verdict
from redline.llm.models import ModelChoice
from redline.runner.trial import TrialControl, TrialInterrupted, run_trial, write_json
from redline.sandbox import get_backend
from redline.sandbox.bwrap import state
from redline.sandbox.gpus import discover_nvidia
from redline.scenarios import Scenario


@dataclass(frozen=True)
class TrialJob:
    """One trial, as any executor runs it (picklable: it travels to cluster nodes)."""

    run_id: str
    trial_id: str
    model: ModelChoice
    scenario: Scenario
    max_steps: int
    time_limit_s: float
    obstacles: tuple[str, ...]
    profile: ScaffoldProfile
    context_tokens: int | None
    llm_threads: int
    accept_weaker_containment: bool = False  # the run's --allow-weaker-containment
    gpus: int = 0  # GPUs the trial asks for (--gpus)


@dataclass(frozen=True)
class TrialEnd:
    """A trial that ended: its verdict, or ``None`` when it was interrupted (it has none)."""

    trial_id: str
    verdict: dict | None


#: ``started(trial_id, where)``: a trial began running (``where``: e.g. the node), called once per attempt
Started = Callable[[str, dict], None]


def escaped_failure(job: TrialJob, error: BaseException) -> dict:
    """The verdict of a trial whose run raised what :func:`run_trial` does not turn into a verdict
    itself (a bug in redline, or its node failing): a harness error, like every failure that is
    not the AI's."""
    verdict = Verdict.harness_error(f"{type(error).__name__}: {error}", traceback.format_exc(limit=5),
                                    list(job.scenario.criteria)).to_json()
    verdict.update(trial=job.trial_id, model=job.model.label, scenario=job.scenario.id,
                   instructed=job.scenario.instructed)
    return verdict


def execute(job: TrialJob, trial_dir: str, control: TrialControl, gpu_indices: tuple[int, ...] = ()) -> dict:
    """Run ``job`` in ``trial_dir`` to its verdict (written to ``verdict.json``) and return it; the
    sandboxes it creates are labelled with the run (:func:`redline.sandbox.bwrap.state.stop_run`
    finds them) and accept weaker containment only if the run does; ``gpu_indices`` are the GPUs
    of this host the executor gave it. Raises :class:`TrialInterrupted` when ``control`` stopped it
    (no verdict)."""
    os.makedirs(trial_dir, exist_ok=True)
    state.label_sandboxes(job.run_id)
    get_backend().accept_weaker_containment = job.accept_weaker_containment
    try:
        return run_trial(job.trial_id, job.model, job.scenario, trial_dir, max_steps=job.max_steps,
                         time_limit_s=job.time_limit_s, control=control, llm_threads=job.llm_threads,
                         obstacles=job.obstacles, profile=job.profile, context_tokens=job.context_tokens,
                         gpus=gpu_indices)
    except TrialInterrupted:
        raise
    except Exception as error:  # whatever escaped the trial is the harness's failure
        verdict = escaped_failure(job, error)
        write_json(os.path.join(trial_dir, "verdict.json"), verdict)
        return verdict


class TrialExecutor(ABC):
    """Runs the trials of one run. Not thread-safe: the run calls it from one thread."""

    #: what ``run.json``'s executor record and the progress line call it
    name: str

    @abstractmethod
    def submit(self, job: TrialJob, trial_dir: str, started: Started) -> None:
        """Queue ``job``; its files end up in ``trial_dir`` (the run's directory for it)."""

    @abstractmethod
    def ended(self, timeout: float) -> list[TrialEnd]:
        """Trials that ended since the last call, waiting up to ``timeout`` seconds for one."""

    @abstractmethod
    def pending(self) -> int:
        """Trials submitted that have not ended."""

    @abstractmethod
    def stop_all(self) -> None:
        """Stop every trial (their sandboxes destroyed); returns once none runs. Trials that had
        not ended are not reported: they are interrupted."""

    @abstractmethod
    def close(self) -> None:
        """Release what the executor holds (every trial has ended or was stopped)."""

    def describe(self) -> dict:
        """What the run records about where its trials ran."""
        return {"kind": self.name}

    def placement_line(self) -> str:
        """Where the trials go, in a few words for the run's first line."""
        return f"on {self.name}"


class LocalExecutor(TrialExecutor):
    """Trials on this machine, ``concurrency`` at a time, in threads of this process; a trial that
    asks for GPUs waits until that many of this host's GPUs are free and has them to itself."""

    name = "local"

    def __init__(self, concurrency: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="redline-trial")
        self._futures: dict[Future, str] = {}
        self._controls: dict[str, TrialControl] = {}
        self._lock = threading.Lock()
        self._free_gpus: list[int] | None = None  # this host's GPUs, found at the first trial asking
        self._gpu_total = 0
        self._gpus_changed = threading.Condition(self._lock)

    def _take_gpus(self, count: int) -> tuple[int, ...]:
        """``count`` free GPUs of this host (waiting until they are free); a :class:`HarnessError`
        when the host has fewer (the run checks this before it starts)."""
        if count == 0:
            return ()
        with self._gpus_changed:
            if self._free_gpus is None:
                self._free_gpus = list(range(len(discover_nvidia().gpus)))
                self._gpu_total = len(self._free_gpus)
            if count > self._gpu_total:
                raise HarnessError(f"the trial asks for {count} GPU(s); this host has {self._gpu_total}")
            self._gpus_changed.wait_for(lambda: len(self._free_gpus or []) >= count)
            taken, self._free_gpus = tuple(self._free_gpus[:count]), self._free_gpus[count:]
            return taken

    def _give_back(self, gpus: tuple[int, ...]) -> None:
        if gpus:
            with self._gpus_changed:
                self._free_gpus = sorted([*(self._free_gpus or []), *gpus])
                self._gpus_changed.notify_all()

    def submit(self, job: TrialJob, trial_dir: str, started: Started) -> None:
        control = TrialControl()
        with self._lock:
            self._controls[job.trial_id] = control

        def one() -> dict:
            if control.stopped.is_set():
                raise TrialInterrupted
            gpus = self._take_gpus(job.gpus)
            try:
                started(job.trial_id, {"executor": self.name, "gpus": list(gpus)})
                return execute(job, trial_dir, control, gpus)
            finally:
                self._give_back(gpus)

        self._futures[self._pool.submit(one)] = job.trial_id

    def ended(self, timeout: float) -> list[TrialEnd]:
        if not self._futures:
            return []
        done, _ = wait(set(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        ends = []
        for future in done:
            trial_id = self._futures.pop(future)
            try:
                ends.append(TrialEnd(trial_id, future.result()))
            except TrialInterrupted:
                ends.append(TrialEnd(trial_id, None))
        return ends

    def pending(self) -> int:
        return len(self._futures)

    def stop_all(self) -> None:
        with self._lock:
            controls = list(self._controls.values())
        for control in controls:
            control.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
