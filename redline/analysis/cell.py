"""One model on one scenario: :func:`analyze_cell` adds up every trial of a run directory, and
:func:`write_analysis` stores it as ``analysis.json`` beside ``run.json`` (what the report and
``redline show`` read).

Trials come from ``run.json``'s ``trial_ids`` (else every ``trials/*`` directory, sorted). As in
the run summary, only *judged* trials count -- those with a verdict and no harness error; the
others are listed in ``trials`` (``success`` ``None``) and counted nowhere else.

* ``success``: a :class:`Rate` (Wilson 95% interval, pass@k for k = 1..judged).
* ``bars``, ``milestones``, ``flags``: per name or kind, the judged trials where it holds.
* ``categories``, ``tools``: totals over the judged trials.
* ``information``: for ``"success"`` and ``"failure"`` trials, the mean observation characters at
  each step index of the original (index i averages the trials that have an i-th step).
* ``obstacles``: per ``"O2/busy port"`` (category code / subtype), ``count`` (episodes),
  ``resolved`` (the share resolved) and ``mean_steps_to_resolve`` (over resolved ones; ``None``
  if none was).
* ``false_completions``: judged trials with a false completion.
* ``overuse``: ``rate``, the share of judged trials with surplus replicas, and ``surplus``, their
  total (Agent Matrix's overuse rate and aggregate overuse count).
"""

from __future__ import annotations

import json
import os

from redline.analysis.grader import Grader
from redline.analysis.model import CATEGORIES, UNKNOWN, CellAnalysis, TrialAnalysis
from redline.analysis.stats import rate
from redline.analysis.trial import analyze_trial

ANALYSIS_FILE = "analysis.json"


def _run(run_dir: str) -> dict:
    path = os.path.join(run_dir, "run.json")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            run = json.load(handle)
    except (OSError, ValueError):
        return {}
    return run if isinstance(run, dict) else {}


def _trial_ids(run_dir: str, run: dict) -> list[str]:
    ids = run.get("trial_ids")
    if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        return [i for i in ids if os.path.isdir(os.path.join(run_dir, "trials", i))]
    trials = os.path.join(run_dir, "trials")
    return sorted(d for d in os.listdir(trials) if os.path.isdir(os.path.join(trials, d))) if os.path.isdir(trials) \
        else []


def _label(run: dict, key: str, field: str) -> str:
    value = run.get(key)
    return str(value.get(field) or "") if isinstance(value, dict) else ""


def _mean_curve(curves: list[list[int]]) -> list[float]:
    length = max((len(c) for c in curves), default=0)
    means = []
    for i in range(length):
        values = [c[i] for c in curves if len(c) > i]
        means.append(sum(values) / len(values))
    return means


def _count(trials: list[TrialAnalysis], names) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        for name in dict.fromkeys(names(trial)):  # each name once per trial, in a stable order
            counts[name] = counts.get(name, 0) + 1
    return counts


def analyze_cell(run_dir: str, grader: Grader | None = None) -> CellAnalysis:
    """Every trial of the run directory ``run_dir``, added up (see the module docstring); with
    ``grader``, each judged trial is also graded (:mod:`redline.analysis.grader`) and ``graded``
    counts its bars. A directory that is not there is a ``FileNotFoundError``."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"no run directory {run_dir}")
    run = _run(run_dir)
    trials = [analyze_trial(os.path.join(run_dir, "trials", i), grader) for i in _trial_ids(run_dir, run)]
    judged = [t for t in trials if t.success is not None]
    model = _label(run, "model", "label") or next((t.model for t in trials if t.model), "")
    scenario = _label(run, "scenario", "id") or next((t.scenario for t in trials if t.scenario), "")
    categories = dict.fromkeys((*CATEGORIES, UNKNOWN), 0)
    tools: dict[str, int] = {}
    for trial in judged:
        for name, n in trial.categories.items():
            categories[name] = categories.get(name, 0) + n
        for name, n in trial.tools.items():
            tools[name] = tools.get(name, 0) + n
    obstacles: dict[str, dict] = {}
    for trial in judged:
        for episode in trial.obstacles:
            row = obstacles.setdefault(f"{episode.category.split()[0]}/{episode.subtype}",
                                       {"count": 0, "resolved": 0, "steps": []})
            row["count"] += 1
            if episode.steps_to_resolve is not None:
                row["resolved"] += 1
                row["steps"].append(episode.steps_to_resolve)
    for row in obstacles.values():
        steps = row.pop("steps")
        row["resolved"] = row["resolved"] / row["count"]
        row["mean_steps_to_resolve"] = sum(steps) / len(steps) if steps else None
    bars = dict.fromkeys(("agreed", "knew_how", "succeeded"), 0)
    bars.update(_count(judged, lambda t: [name for name, bar in t.bars.items() if bar.value]))
    overused = [t for t in judged if t.surplus_replicas > 0]
    return CellAnalysis(
        model=model, scenario=scenario, run_dir=os.path.abspath(run_dir), trials=trials,
        success=rate(sum(1 for t in judged if t.success), len(judged)), bars=bars,
        milestones={**{m.name: 0 for t in judged for m in t.milestones},
                    **_count(judged, lambda t: [m.name for m in t.milestones if m.reached])},
        categories=categories, tools=tools,
        information={"success": _mean_curve([t.information for t in judged if t.success]),
                     "failure": _mean_curve([t.information for t in judged if not t.success])},
        obstacles=dict(sorted(obstacles.items())), flags=_count(judged, lambda t: [f.kind for f in t.flags]),
        false_completions=sum(1 for t in judged if t.false_completion),
        overuse={"rate": len(overused) / len(judged) if judged else 0.0,
                 "surplus": float(sum(t.surplus_replicas for t in judged))},
        graded=_count(judged, lambda t: [name for name, bar in t.graded.items() if bar.value]) if grader else {},
        grader=grader.label if grader else "", graded_trials=sum(1 for t in judged if t.graded))


def write_analysis(run_dir: str, grader: Grader | None = None) -> CellAnalysis:
    """Analyse ``run_dir`` (``grader``: see :func:`analyze_cell`), write ``analysis.json``
    (``CellAnalysis.as_dict()``) into it atomically, and return the analysis."""
    cell = analyze_cell(run_dir, grader)
    path = os.path.join(run_dir, ANALYSIS_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(cell.as_dict(), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)
    return cell
