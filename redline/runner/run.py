"""A run: N trials of one model on one scenario, concurrently, resumable.

Run directory (``--out``)::

    run.json                      what was asked: model (+ weights hash), scenario (+ file hash),
                                  trials, limits, versions, host; written first, before any trial
    trials/<id>/trace.jsonl       every event, appended and flushed as it happens
    trials/<id>/verdict.json      written once the trial has a verdict
    trials/<id>/status.json       "running" (with the runner's pid, start time and boot id) or
                                  "interrupted" while it has none
    trials/<id>/attempt-<n>/      the files of an attempt that ended without a verdict
    results.json                  every verdict and the summary (rewritten as trials end)

Every JSON file is replaced atomically (:func:`~redline.runner.trial.write_json`), so a runner
killed at any moment leaves each file whole or absent. The directory can then be read without
results.json (:func:`collect_results`, the one definition of what results.json holds), and a
trial marked "running" whose runner the kernel shows gone is *interrupted*. A verdict.json or
status.json that is nonetheless unreadable (a damaged disk, a hand edit) is ignored: the trial
counts as pending and, on resume, is run again with the bad file moved aside with the others.

Running again with the same ``--out`` and the same options finishes only the trials that have no
verdict; a trial that was in flight when the runner died is started again from scratch (its
partial files are moved to ``trials/<id>/attempt-<n>/``), so no trial is lost or counted twice.
While it runs, a runner holds a lock on the directory (released by the kernel when it dies), so
two runners never share one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from redline import __version__
from redline.errors import HarnessError, RedlineError, UserError
from redline.llm.models import ModelChoice
from redline.runner.executor import LocalExecutor, TrialExecutor, TrialJob
from redline.runner.summary import summarize
from redline.runner.trial import write_json
from redline.sandbox.bwrap import state
from redline.scenarios import Scenario
from redline.system.scaffold import choose_profile


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for (recorded in run.json; see :data:`RESUMED_SETTINGS`)."""

    model: str
    scenario: str
    trials: int
    concurrency: int
    max_steps: int
    time_limit_s: float
    obstacles: tuple[str, ...] = ()
    #: run-time changes to the scenario (depth, population_cap, the shutdown clock)
    overrides: tuple[tuple[str, object], ...] = ()
    #: the scaffold profile asked for ("auto" or a profile name) and the context window, if set
    profile: str = "auto"
    context_tokens: int | None = None
    #: --allow-weaker-containment: sandboxes may start where part of the containment is missing
    accept_weaker_containment: bool = False
    #: --gpus: GPUs each trial's system sandbox gets (its llama.cpp offloads every layer)
    gpus: int = 0


#: the request's settings a resumed run must repeat, each with the option that sets it
RESUMED_SETTINGS = {
    "model": "--model", "scenario": "--scenario", "trials": "--trials", "max_steps": "--max-steps",
    "time_limit_s": "--time-limit", "obstacles": "--obstacle",
    "overrides": "--depth / --population-cap / --notice-after-steps / --grace / --grace-steps",
    "profile": "--profile", "context_tokens": "--context-tokens",
}


@dataclass(frozen=True)
class ScenarioOverrides:
    """``redline run`` options that change the scenario for this run. Which of them apply to which
    scenario is a usage rule (:mod:`redline.runner.compatibility`), checked before they are applied."""

    depth: int | None = None
    population_cap: int | None = None
    notice_after_steps: int | None = None
    grace_s: float | None = None
    grace_steps: int | None = None

    def shutdown_changes(self) -> dict[str, object]:
        """The shutdown clock's fields these options set."""
        given = (("notice_after_steps", self.notice_after_steps), ("grace_s", self.grace_s),
                 ("grace_steps", self.grace_steps))
        return {key: value for key, value in given if value is not None}

    def apply(self, scenario: Scenario) -> tuple[Scenario, tuple[tuple[str, object], ...]]:
        """The scenario with these changes, and the changes as recorded in run.json."""
        changes: dict[str, object] = {}
        if self.depth is not None:
            changes["chain"] = {"depth": self.depth}
        if self.population_cap is not None:
            changes["population_cap"] = self.population_cap
        if self.shutdown_changes():
            plan = scenario.shutdown.model_dump() if scenario.shutdown is not None else {}
            changes["shutdown"] = {**plan, **self.shutdown_changes()}
        recorded = tuple(sorted((key, value) for key, value in changes.items()))
        return (scenario.with_overrides(**changes) if changes else scenario), recorded


@dataclass(frozen=True)
class RunPlan:
    """A ``redline run`` as asked, before anything exists: checked whole by
    :func:`redline.runner.compatibility.check_compatible`, then run as :attr:`request` on
    :attr:`scenario` (the loaded scenario with the overrides applied)."""

    model: ModelChoice
    base: Scenario  # the scenario as loaded, before the overrides
    overrides: ScenarioOverrides
    trials: int
    concurrency: int
    out_dir: str
    max_steps: int | None = None  # None: the scenario's
    time_limit_s: float | None = None  # None: the scenario's
    obstacles: tuple[str, ...] = ()  # as given, repeats included
    profile: str = "auto"  # --profile
    context_tokens: int | None = None  # --context-tokens
    accept_weaker_containment: bool = False  # --allow-weaker-containment
    gpus: int = 0  # --gpus

    @functools.cached_property
    def _applied(self) -> tuple[Scenario, tuple[tuple[str, object], ...]]:
        return self.overrides.apply(self.base)

    @property
    def scenario(self) -> Scenario:
        """The scenario this run uses."""
        return self._applied[0]

    @functools.cached_property
    def request(self) -> RunRequest:
        """What run.json records."""
        scenario, changes = self._applied
        return RunRequest(model=self.model.label, scenario=scenario.id, trials=self.trials,
                          concurrency=self.concurrency, max_steps=self.max_steps or scenario.max_steps,
                          time_limit_s=self.time_limit_s or scenario.time_limit_s, obstacles=self.obstacles,
                          overrides=changes, profile=self.profile, context_tokens=self.context_tokens,
                          accept_weaker_containment=self.accept_weaker_containment, gpus=self.gpus)


def default_concurrency() -> int:
    """Trials at once that fit this machine: a bundled-model trial wants ~2 cores and ~2 GiB."""
    cores = os.cpu_count() or 1
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            total_gib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1]) / (1 << 20)
    except (OSError, StopIteration, ValueError):
        total_gib = 4
    return max(1, min(cores // 2, int(total_gib // 2), 8))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _versions() -> dict:
    bwrap = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    return {"redline": __version__, "python": platform.python_version(), "bubblewrap": bwrap,
            "kernel": platform.release(), "host_cpus": os.cpu_count()}


def trial_ids(count: int) -> list[str]:
    """``t01``, ``t02``, ... (wide enough for ``count``)."""
    width = max(2, len(str(count)))
    return [f"t{n:0{width}d}" for n in range(1, count + 1)]


# -- the runner, as the kernel knows it -------------------------------------------------------

def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
        return handle.read().strip()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of ``pid``, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[19])


def runner_identity() -> dict:
    """This process as status.json records it: host, boot id, pid and the pid's start time."""
    stat = _stat(os.getpid())
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "start_ticks": stat[1] if stat else None}


def runner_gone(identity: dict) -> bool:
    """True when the kernel shows the recorded runner has ended: this host has rebooted since, or its
    pid is gone, a zombie, or now another process (another start time). False while it runs, and
    when the record cannot be checked here (another host, or no identity recorded)."""
    if not identity.get("pid") or identity.get("host") != socket.gethostname():
        return False
    if identity.get("boot_id") != _boot_id():
        return True
    stat = _stat(int(identity["pid"]))
    return stat is None or stat[0] in ("Z", "X") or stat[1] != identity.get("start_ticks")


def hold_run_dir(out_dir: str) -> int:
    """Lock ``out_dir`` for this process (the kernel releases the lock when the process ends) and
    return the lock's descriptor; close it to release. :class:`UserError` if another process holds it."""
    fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise UserError(f"--out {out_dir} is in use by another redline run right now: wait for it to end, "
                            "or use another --out") from error
        raise
    return fd


# -- reading a run directory ------------------------------------------------------------------

def _read_object(path: str) -> tuple[dict | None, str | None]:
    """(content, None) for a JSON object file; (None, None) if it does not exist; (None, why) if it
    cannot be read as one."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
        return None, f"{os.path.basename(path)} is unreadable ({reason})"
    if not isinstance(content, dict):
        return None, f"{os.path.basename(path)} is not a JSON object"
    return content, None


def read_run(run_dir: str) -> dict:
    """``run.json`` of ``run_dir``; :class:`UserError` saying why ``run_dir`` is not a run directory."""
    if not os.path.isdir(run_dir):
        what = "does not exist" if not os.path.lexists(run_dir) else "is not a directory"
        raise UserError(f"{run_dir} {what}: give a run directory (the --out of redline run)")
    run, problem = _read_object(os.path.join(run_dir, "run.json"))
    if problem:
        raise UserError(f"{run_dir}: {problem}: it cannot be shown or resumed; start the run again with another --out")
    if run is None:
        raise UserError(f"{run_dir} has no run.json: it is not a redline run directory (or its run was stopped "
                        "before it wrote anything: run it again)")
    if not isinstance(run.get("trial_ids"), list) or not isinstance(run.get("request"), dict):
        raise UserError(f"{run_dir}/run.json is not a redline run record (no request or trial_ids)")
    return run


@dataclass(frozen=True)
class TrialState:
    """What a trial's directory says about it."""

    #: "done" / "error" (a verdict, from the judge / the harness failed), "running" (its runner is
    #: alive, or cannot be checked from here), "interrupted" (stopped, or its runner is gone),
    #: "pending" (nothing readable yet)
    status: str
    verdict: dict | None = None
    #: an unreadable verdict.json or status.json, ignored (the trial counts as pending)
    problem: str | None = None


def trial_state(trial_dir: str) -> TrialState:
    """The state of one trial from its files (see :class:`TrialState`)."""
    verdict, problem = _read_object(os.path.join(trial_dir, "verdict.json"))
    if verdict is not None and "success" in verdict:
        return TrialState("error" if verdict.get("error") else "done", verdict)
    if verdict is not None:
        problem = "verdict.json has no 'success'"
    status, status_problem = _read_object(os.path.join(trial_dir, "status.json"))
    problem = problem or status_problem
    recorded = (status or {}).get("status")
    if recorded == "running":
        runner = status.get("runner") if isinstance(status.get("runner"), dict) else {}
        return TrialState("interrupted" if runner_gone(runner) else "running", None, problem)
    if recorded == "interrupted":
        return TrialState("interrupted", None, problem)
    if status is not None:
        problem = problem or f"status.json says {recorded!r}"
    return TrialState("pending", None, problem)


def trial_states(out_dir: str, ids: list[str]) -> dict[str, TrialState]:
    """Every trial's state, in order."""
    return {trial_id: trial_state(os.path.join(out_dir, "trials", trial_id)) for trial_id in ids}


def collect_results(out_dir: str, run: dict) -> dict:
    """What results.json holds, computed from run.json and trials/ (nothing is written):
    ``run``, ``summary``, ``statuses``, ``verdicts`` and ``problems`` (trial -> unreadable file)."""
    states = trial_states(out_dir, run["trial_ids"])
    verdicts = {trial_id: s.verdict for trial_id, s in states.items() if s.verdict is not None}
    statuses = {trial_id: s.status for trial_id, s in states.items()}
    return {"run": run, "summary": summarize(run, verdicts, statuses), "statuses": statuses, "verdicts": verdicts,
            "problems": {trial_id: s.problem for trial_id, s in states.items() if s.problem}}


def write_results(out_dir: str, run: dict) -> dict:
    """Write ``results.json`` (:func:`collect_results`) and return it."""
    results = collect_results(out_dir, run)
    write_json(os.path.join(out_dir, "results.json"), results)
    return results


# -- starting or resuming ---------------------------------------------------------------------

def _setting(value: object) -> str:
    """A recorded request setting for a message: lists (obstacles, overrides) as their items."""
    if isinstance(value, list):
        items = [f"{item[0]} {json.dumps(item[1])}" if isinstance(item, list) and len(item) == 2 else str(item)
                 for item in value]
        return ", ".join(items) or "none"
    return repr(value)


def out_dir_problem(out_dir: str, request: RunRequest, scenario: Scenario) -> str | None:
    """Why ``out_dir`` cannot hold this run, or None (it is new, empty, or holds this same run).

    Not allowed: a file; a directory of other files without run.json (only ``*.tmp`` leftovers
    of an interrupted first write are allowed); a run whose :data:`RESUMED_SETTINGS` or scenario
    file differ from this one's."""
    if not os.path.lexists(out_dir):
        return None
    if not os.path.isdir(out_dir):
        return f"--out {out_dir} is a file, not a run directory: choose another path"
    if not os.path.lexists(os.path.join(out_dir, "run.json")):
        others = sorted(name for name in os.listdir(out_dir) if not name.endswith(".tmp"))
        if others:
            return (f"--out {out_dir} holds other files ({', '.join(others[:3])}) and no run.json: it is not a "
                    "redline run directory; choose a new or empty directory")
        return None
    try:
        recorded = read_run(out_dir)
    except UserError as error:
        return str(error)
    asked = recorded["request"]
    current = json.loads(json.dumps(asdict(request)))
    defaults = {f.name: f.default for f in dataclasses.fields(RunRequest) if f.default is not dataclasses.MISSING}
    for key, option in RESUMED_SETTINGS.items():
        before = asked.get(key, json.loads(json.dumps(defaults.get(key))))
        if before != current[key]:
            return (f"--out {out_dir} holds another run ({option} {_setting(before)} there, {_setting(current[key])} "
                    "now): use another --out, or the same options to resume it")
    digest = (recorded.get("scenario") or {}).get("file_sha256")
    if digest and scenario.file_hash and digest != scenario.file_hash:
        return (f"--out {out_dir} holds a run of scenario file {scenario.path} as it was before it changed: "
                "use another --out for the changed scenario")
    return None


def prepare_run_dir(out_dir: str, request: RunRequest, model: ModelChoice, scenario: Scenario,
                    executor: dict | None = None) -> dict:
    """Create ``run.json`` (then ``trials/``), or check that an existing one describes the same run
    (:func:`out_dir_problem`, :class:`UserError`) and record that it was resumed. ``executor``
    (:meth:`TrialExecutor.describe`) is appended to ``executors``: where each session ran."""
    problem = out_dir_problem(out_dir, request, scenario)
    if problem:
        raise UserError(problem)
    path = os.path.join(out_dir, "run.json")
    if os.path.exists(path):
        record = read_run(out_dir)
        record.setdefault("resumed", []).append(time.time())
    else:
        record = {
            "id": secrets.token_hex(8),
            "request": asdict(request),
            "model": {"label": model.label, "kind": model.kind, "weights": model.weights,
                      "weights_sha256": _sha256(model.weights) if model.weights else None,
                      "endpoint": model.endpoint_url, "endpoint_model": model.endpoint_model},
            "scenario": {"id": scenario.id, "file": scenario.path, "file_sha256": scenario.file_hash,
                         "criteria": list(scenario.criteria), "instructed": scenario.instructed,
                         "settings": scenario.model_dump(include={"shutdown", "chain", "second_host",
                                                                  "population_cap", "system"})},
            "obstacles": list(request.obstacles),
            "scaffold": {"profile": choose_profile(model, request.profile).as_dict(),
                         "context_tokens": request.context_tokens or "asked of the model's server"},
            "seeds": {"judge_probes": "fresh per probe (secrets)", "model_temperature": 0.0},
            "versions": _versions(),
            "created": time.time(),
            "trial_ids": trial_ids(request.trials),
        }
    record.setdefault("executors", []).append({"at": time.time(), **(executor or {"kind": "local"})})
    os.makedirs(out_dir, exist_ok=True)
    write_json(path, record)
    os.makedirs(os.path.join(out_dir, "trials"), exist_ok=True)
    return record


def pending_trials(out_dir: str, ids: list[str]) -> list[str]:
    """The trials that have no (readable) verdict yet; their files, readable or not, are set aside
    into ``attempt-<n>/``. Call only while holding the directory (:func:`hold_run_dir`)."""
    pending = []
    for trial_id, trial in trial_states(out_dir, ids).items():
        if trial.verdict is None:
            pending.append(trial_id)
            set_aside_attempt(os.path.join(out_dir, "trials", trial_id))
    return pending


def set_aside_attempt(trial_dir: str) -> str | None:
    """Move the files of an attempt that ended without a verdict into ``trial_dir/attempt-<n>/``
    (the next free n) and return that directory; ``None`` when there was nothing to move."""
    names = os.listdir(trial_dir) if os.path.isdir(trial_dir) else []
    leftovers = [name for name in names if not name.startswith("attempt-")]
    if not leftovers:
        return None
    attempt = os.path.join(trial_dir, f"attempt-{len(names) - len(leftovers) + 1}")
    os.makedirs(attempt)
    for name in leftovers:
        shutil.move(os.path.join(trial_dir, name), os.path.join(attempt, name))
    return attempt


class RunInterrupted(Exception):
    """The user stopped the run; in-flight trials were stopped and marked interrupted."""


def run_experiment(request: RunRequest, model: ModelChoice, scenario: Scenario, out_dir: str,
                   on_progress: Callable[[str, str, dict | None], None] | None = None,
                   executor: TrialExecutor | None = None) -> dict:
    """Run the pending trials of ``out_dir`` on ``executor`` (default: a :class:`LocalExecutor`
    ``request.concurrency`` wide; it is closed at the end) and return ``results.json``'s content.

    ``on_progress(trial_id, status, verdict)`` is called as trials start and end. Every trial ends
    with a verdict (a harness error if anything escaped it) unless the run is interrupted: a
    KeyboardInterrupt stops every in-flight trial (its sandbox is destroyed), marks it interrupted,
    writes results and raises :class:`RunInterrupted`; any other failure of the run itself (e.g. its
    disk) does the same and raises :class:`HarnessError`. :class:`UserError` if ``out_dir`` holds
    another run or another runner is using it.
    """
    problem = out_dir_problem(out_dir, request, scenario)
    if problem:
        raise UserError(problem)
    state.clean_stale()  # sandboxes of a runner that was killed
    os.makedirs(out_dir, exist_ok=True)
    held = hold_run_dir(out_dir)  # then prepare_run_dir checks the directory again, holding it
    executor = executor or LocalExecutor(request.concurrency)
    try:
        return _run_pending(request, model, scenario, out_dir, on_progress or (lambda *_: None), executor)
    finally:
        executor.close()
        os.close(held)


def run_id(run: dict, out_dir: str) -> str:
    """The id that labels the run's sandboxes on every node (``run.json``'s ``id``; a run directory
    from before ids: a digest of its path)."""
    return str(run.get("id") or hashlib.sha256(os.path.abspath(out_dir).encode()).hexdigest()[:16])


def _run_pending(request: RunRequest, model: ModelChoice, scenario: Scenario, out_dir: str,
                 notify: Callable[[str, str, dict | None], None], executor: TrialExecutor) -> dict:
    run = prepare_run_dir(out_dir, request, model, scenario, executor.describe())
    pending = pending_trials(out_dir, run["trial_ids"])
    runner = runner_identity()
    profile = choose_profile(model, request.profile).profile
    llm_threads = max(1, min(2, (os.cpu_count() or 1) // max(1, request.concurrency)))
    identity = run_id(run, out_dir)

    def started(trial_id: str, where: dict) -> None:
        os.makedirs(os.path.join(out_dir, "trials", trial_id), exist_ok=True)
        write_json(os.path.join(out_dir, "trials", trial_id, "status.json"),
                   {"status": "running", "started": time.time(), "runner": runner, **where})
        notify(trial_id, "running", None)

    try:
        for trial_id in pending:  # a trial's directory is made when it starts
            executor.submit(TrialJob(identity, trial_id, model, scenario, request.max_steps, request.time_limit_s,
                                     request.obstacles, profile, request.context_tokens, llm_threads,
                                     request.accept_weaker_containment, request.gpus),
                            os.path.join(out_dir, "trials", trial_id), started)
        while executor.pending():
            ends = executor.ended(timeout=0.5)
            for end in ends:
                trial_dir = os.path.join(out_dir, "trials", end.trial_id)
                if end.verdict is None:
                    notify(end.trial_id, "interrupted", None)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(trial_dir, "status.json"))
                notify(end.trial_id, "error" if end.verdict.get("error") else "done", end.verdict)
            if ends:
                write_results(out_dir, run)
    except BaseException as stopped:  # Ctrl-C, or the run itself failed (e.g. its disk): stop every trial
        executor.stop_all()
        for trial_id in pending:
            trial_dir = os.path.join(out_dir, "trials", trial_id)
            if not os.path.exists(os.path.join(trial_dir, "verdict.json")):
                os.makedirs(trial_dir, exist_ok=True)
                write_json(os.path.join(trial_dir, "status.json"), {"status": "interrupted", "at": time.time()})
                notify(trial_id, "interrupted", None)
        write_results(out_dir, run)
        if isinstance(stopped, KeyboardInterrupt):
            raise RunInterrupted from None
        if isinstance(stopped, Exception) and not isinstance(stopped, RedlineError):
            raise HarnessError(f"the run stopped ({type(stopped).__name__}: {stopped}); the trials in flight are "
                               "marked interrupted: run the same command again once the cause is fixed") from stopped
        raise
    return write_results(out_dir, run)
