"""A run: N trials of one model on one scenario, concurrently, resumable.

Run directory (``--out``)::

    run.json                      what was asked: model (+ weights hash), scenario (+ file hash),
                                  trials, limits, versions, host
    trials/<id>/trace.jsonl       every event, appended and flushed as it happens
    trials/<id>/verdict.json      written once the trial has a verdict
    trials/<id>/status.json       "running" / "interrupted" while it has none
    results.json                  every verdict and the summary

Running again with the same ``--out`` finishes only the trials that have no verdict; a trial that
was in flight when the runner died is started again from scratch (its partial files are moved
to ``trials/<id>/attempt-<n>/``), so no trial is lost or counted twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass

from redline import __version__
from redline.errors import UserError
from redline.llm.models import ModelChoice
from redline.runner.summary import summarize
from redline.runner.trial import TrialControl, TrialInterrupted, run_trial, write_json
from redline.sandbox.bwrap import state
from redline.scenarios import Scenario


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for."""

    model: str
    scenario: str
    trials: int
    concurrency: int
    max_steps: int
    time_limit_s: float
    obstacles: tuple[str, ...] = ()
    #: run-time changes to the scenario (depth, population_cap, shutdown after_s / grace_s)
    overrides: tuple[tuple[str, object], ...] = ()


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


def prepare_run_dir(out_dir: str, request: RunRequest, model: ModelChoice, scenario: Scenario) -> dict:
    """Create ``run.json``, or check that an existing one describes the same run."""
    os.makedirs(os.path.join(out_dir, "trials"), exist_ok=True)
    path = os.path.join(out_dir, "run.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            existing = json.load(handle)
        asked = existing.get("request", {})
        current = json.loads(json.dumps(asdict(request)))
        for key in ("model", "scenario", "trials", "obstacles", "overrides"):
            if asked.get(key, current[key] if key in ("obstacles", "overrides") else None) != current[key]:
                raise UserError(f"{out_dir} holds a run with {key}={asked.get(key)!r}, not {current[key]!r}: "
                                "use another --out, or the same options to resume it")
        existing.setdefault("resumed", []).append(time.time())
        write_json(path, existing)
        return existing
    record = {
        "request": asdict(request),
        "model": {"label": model.label, "kind": model.kind, "weights": model.weights,
                  "weights_sha256": _sha256(model.weights) if model.weights else None,
                  "endpoint": model.endpoint_url, "endpoint_model": model.endpoint_model},
        "scenario": {"id": scenario.id, "file": scenario.path, "file_sha256": scenario.file_hash,
                     "criteria": list(scenario.criteria), "instructed": scenario.instructed,
                     "settings": scenario.model_dump(include={"shutdown", "chain", "second_host", "population_cap",
                                                              "system"})},
        "obstacles": list(request.obstacles),
        "seeds": {"judge_probes": "fresh per probe (secrets)", "model_temperature": 0.0},
        "versions": _versions(),
        "created": time.time(),
        "trial_ids": trial_ids(request.trials),
    }
    write_json(path, record)
    return record


def pending_trials(out_dir: str, ids: list[str]) -> list[str]:
    """The trials that have no verdict yet; their partial files are set aside."""
    pending = []
    for trial_id in ids:
        trial_dir = os.path.join(out_dir, "trials", trial_id)
        if os.path.exists(os.path.join(trial_dir, "verdict.json")):
            continue
        pending.append(trial_id)
        names = os.listdir(trial_dir) if os.path.isdir(trial_dir) else []
        leftovers = [name for name in names if not name.startswith("attempt-")]
        if leftovers:
            attempt = os.path.join(trial_dir, f"attempt-{len(names) - len(leftovers) + 1}")
            os.makedirs(attempt)
            for name in leftovers:
                shutil.move(os.path.join(trial_dir, name), os.path.join(attempt, name))
    return pending


def load_verdicts(out_dir: str, ids: list[str]) -> dict[str, dict]:
    """Every verdict written so far."""
    verdicts = {}
    for trial_id in ids:
        path = os.path.join(out_dir, "trials", trial_id, "verdict.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                verdicts[trial_id] = json.load(handle)
    return verdicts


def write_results(out_dir: str, run: dict) -> dict:
    """Write ``results.json`` (all verdicts + summary) and return it."""
    ids = run["trial_ids"]
    verdicts = load_verdicts(out_dir, ids)
    statuses = {}
    for trial_id in ids:
        if trial_id in verdicts:
            statuses[trial_id] = "error" if verdicts[trial_id].get("error") else "done"
        else:
            status_path = os.path.join(out_dir, "trials", trial_id, "status.json")
            status = "pending"
            if os.path.exists(status_path):
                with open(status_path, encoding="utf-8") as handle:
                    status = json.load(handle).get("status", "pending")
            statuses[trial_id] = status
    results = {"run": run, "summary": summarize(run, verdicts, statuses), "statuses": statuses,
               "verdicts": verdicts}
    write_json(os.path.join(out_dir, "results.json"), results)
    return results


class RunInterrupted(Exception):
    """The user stopped the run; in-flight trials were stopped and marked interrupted."""


def run_experiment(request: RunRequest, model: ModelChoice, scenario: Scenario, out_dir: str,
                   on_progress: Callable[[str, str, dict | None], None] | None = None) -> dict:
    """Run the pending trials of ``out_dir`` and return ``results.json``'s content.

    ``on_progress(trial_id, status, verdict)`` is called as trials start and end. A
    KeyboardInterrupt stops every in-flight trial (its sandbox is destroyed), marks it
    interrupted, writes results and raises :class:`RunInterrupted`.
    """
    state.clean_stale()  # sandboxes of a runner that was killed
    run = prepare_run_dir(out_dir, request, model, scenario)
    pending = pending_trials(out_dir, run["trial_ids"])
    notify = on_progress or (lambda *_: None)
    llm_threads = max(1, min(2, (os.cpu_count() or 1) // max(1, request.concurrency)))
    controls: dict[str, TrialControl] = {}
    lock = threading.Lock()

    def one(trial_id: str) -> dict:
        trial_dir = os.path.join(out_dir, "trials", trial_id)
        os.makedirs(trial_dir, exist_ok=True)
        write_json(os.path.join(trial_dir, "status.json"), {"status": "running", "started": time.time()})
        with lock:
            control = controls[trial_id]
        if control.stopped.is_set():
            raise TrialInterrupted
        notify(trial_id, "running", None)
        verdict = run_trial(trial_id, model, scenario, trial_dir, max_steps=request.max_steps,
                            time_limit_s=request.time_limit_s, control=control, llm_threads=llm_threads,
                            obstacles=request.obstacles)
        os.unlink(os.path.join(trial_dir, "status.json"))
        return verdict

    for trial_id in pending:
        controls[trial_id] = TrialControl()
    executor = ThreadPoolExecutor(max_workers=max(1, request.concurrency), thread_name_prefix="redline-trial")
    futures: dict[Future, str] = {executor.submit(one, trial_id): trial_id for trial_id in pending}
    try:
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                trial_id = futures[future]
                try:
                    verdict = future.result()
                    notify(trial_id, "error" if verdict.get("error") else "done", verdict)
                except TrialInterrupted:
                    notify(trial_id, "interrupted", None)
            if done:
                write_results(out_dir, run)
    except KeyboardInterrupt:
        for control in controls.values():
            control.stop()
        executor.shutdown(wait=True, cancel_futures=True)
        for trial_id in pending:
            trial_dir = os.path.join(out_dir, "trials", trial_id)
            if not os.path.exists(os.path.join(trial_dir, "verdict.json")):
                os.makedirs(trial_dir, exist_ok=True)
                write_json(os.path.join(trial_dir, "status.json"), {"status": "interrupted", "at": time.time()})
                notify(trial_id, "interrupted", None)
        write_results(out_dir, run)
        raise RunInterrupted from None
    executor.shutdown(wait=True)
    return write_results(out_dir, run)
