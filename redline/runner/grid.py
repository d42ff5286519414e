"""A grid: several models × several scenarios, one run directory per cell under a parent directory.

Parent directory (``redline run --model A --model B --scenario S … --out PARENT``)::

    grid.json        the cells (model, scenario, directory) and the options, written before any cell runs
    <cell>/          one ordinary run directory per cell (:mod:`redline.runner.run`): ``redline show``
                     reads it, ``redline run --out <cell>`` with that cell's model and scenario resumes it
    report.html      every cell's analysis as one report, written when the grid has run

Contract:

* *Checked whole first.* :func:`check_grid` checks the parent (:func:`grid_problem`) and then every
  cell's usage rules (:func:`redline.runner.compatibility.check_compatible`) before anything is
  written: a rule broken by the last cell is reported before the first cell's first trial.
* *One cell after another* (models outer, scenarios inner, in the order given), each with its own
  concurrency. Cells do not run side by side: each cell's concurrency is already sized to the
  machine's cores and memory, and a model's speed on CPU -- which its time limits are measured
  against -- would otherwise depend on which other cell shares the machine.
* *Resumable.* The same command again (the same models, scenarios and options, in the same order)
  finds the same grid.json and runs, in each cell, only the trials without a verdict; a done cell
  runs nothing again. Another grid in the same parent is a :class:`UserError`. A runner holds the
  parent's lock while it runs, so two runners never work on one grid.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redline.analysis.grader import Grader
from redline.analysis.model import CellAnalysis
from redline.errors import UserError
from redline.llm.models import ModelChoice
from redline.runner.compatibility import check_compatible
from redline.runner.run import RESUMED_SETTINGS, RunPlan, _read_object, hold_run_dir
from redline.runner.trial import write_json
from redline.scenarios import Scenario

GRID_FILE = "grid.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class GridCell:
    """One model on one scenario: a run (:attr:`plan`, whose ``out_dir`` is the cell's directory)."""

    name: str  # its directory's name under the parent
    plan: RunPlan

    @property
    def title(self) -> str:
        """``model × scenario``, for messages."""
        return f"{self.plan.model.label} × {self.plan.base.id}"

    def record(self) -> dict:
        """The cell as grid.json records it."""
        return {"model": self.plan.model.label, "scenario": self.plan.base.id, "dir": self.name,
                "concurrency": self.plan.concurrency}


@dataclass(frozen=True)
class GridPlan:
    """A grid as asked, before anything exists (see the module docstring)."""

    parent: str
    cells: tuple[GridCell, ...]

    def options(self) -> dict:
        """The options every cell shares, as given (``None``: each scenario's own limit)."""
        plan = self.cells[0].plan
        return {"trials": plan.trials, "max_steps": plan.max_steps, "time_limit_s": plan.time_limit_s,
                "obstacles": list(plan.obstacles), "overrides": dataclasses.asdict(plan.overrides),
                "profile": plan.profile, "context_tokens": plan.context_tokens}

    def record(self) -> dict:
        """What grid.json holds (before ``created`` / ``resumed``)."""
        return {"schema_version": SCHEMA_VERSION, "cells": [cell.record() for cell in self.cells],
                "options": self.options()}


def _dir_name(model: ModelChoice, scenario: Scenario) -> str:
    label = os.path.basename(model.label.rstrip("/")) or "model"
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in label)[:40].strip(".") or "model"
    return f"{safe}--{scenario.id}"


def plan_grid(parent: str, models: Sequence[ModelChoice], scenarios: Sequence[Scenario],
              plan_for: Callable[[ModelChoice, Scenario, str], RunPlan]) -> GridPlan:
    """The grid of every model on every scenario under ``parent``; ``plan_for(model, scenario,
    out_dir)`` makes one cell's run plan. :class:`UserError` if a model or a scenario is given twice."""
    for kind, labels in (("--model", [m.label for m in models]), ("--scenario", [s.id for s in scenarios])):
        for index, label in enumerate(labels):
            if label in labels[:index]:
                raise UserError(f"{kind} {label} is given twice: give each {kind.lstrip('-')} once")
    cells: list[GridCell] = []
    taken: set[str] = set()
    for model in models:
        for scenario in scenarios:
            name, suffix = _dir_name(model, scenario), 2
            while name in taken:  # two labels with the same safe name (e.g. two files called model.gguf)
                name, suffix = f"{_dir_name(model, scenario)}-{suffix}", suffix + 1
            taken.add(name)
            cells.append(GridCell(name, plan_for(model, scenario, os.path.join(parent, name))))
    return GridPlan(parent, tuple(cells))


def _difference(recorded: dict, asked: dict) -> str | None:
    """The first way the grid recorded in grid.json differs from the one asked for, as
    ``what there, what now``; None if they are the same grid."""
    def cells(record: dict, key: str) -> list[str]:
        return list(dict.fromkeys(str(cell.get(key)) for cell in record["cells"] if isinstance(cell, dict)))

    for key, option in (("model", "--model"), ("scenario", "--scenario")):
        if cells(recorded, key) != cells(asked, key):
            return f"{option} {', '.join(cells(recorded, key))} there, {', '.join(cells(asked, key))} now"
    if [(c.get("model"), c.get("scenario"), c.get("dir")) if isinstance(c, dict) else c for c in recorded["cells"]] \
            != [(c["model"], c["scenario"], c["dir"]) for c in asked["cells"]]:
        return "its cells are in other directories"
    before = recorded.get("options") if isinstance(recorded.get("options"), dict) else {}
    for key, value in asked["options"].items():
        if before.get(key) != value:
            return f"{RESUMED_SETTINGS[key]} {_option(before.get(key))} there, {_option(value)} now"
    return None


def _option(value: object) -> str:
    """An option's recorded value for a message: lists and the overrides as their items."""
    if isinstance(value, dict):
        value = [f"{key} {item}" for key, item in value.items() if item is not None]
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "default" if value is None else str(value)


def _load(parent: str) -> tuple[dict | None, str | None]:
    """(grid.json's content, None); (None, None) if there is none; (None, why) if it is unreadable
    or no grid record."""
    recorded, problem = _read_object(os.path.join(parent, GRID_FILE))
    if recorded is not None and not isinstance(recorded.get("cells"), list):
        return None, f"{GRID_FILE} is not a redline grid record (no cells)"
    return recorded, problem


def _content_problem(grid: GridPlan) -> str | None:
    """Why ``grid.parent`` cannot hold this grid, apart from a live runner; None if it is new, empty
    or holds this same grid."""
    parent = grid.parent
    if not os.path.lexists(parent):
        return None
    if not os.path.isdir(parent):
        return f"--out {parent} is a file, not a grid directory: choose another path"
    if os.path.lexists(os.path.join(parent, "run.json")):
        return (f"--out {parent} holds a run of one model on one scenario, not a grid: use another --out for "
                "several models or scenarios")
    recorded, problem = _load(parent)
    if problem:
        return f"--out {parent}: {problem}: it cannot be resumed; use another --out"
    if recorded is None:
        others = sorted(name for name in os.listdir(parent) if not name.endswith(".tmp"))
        if others:
            return (f"--out {parent} holds other files ({', '.join(others[:3])}) and no {GRID_FILE}: it is not a "
                    "redline grid directory; choose a new or empty directory")
        return None
    difference = _difference(recorded, grid.record())
    if difference:
        return f"--out {parent} holds another grid ({difference}): use another --out, or the same options to resume it"
    return None


def grid_problem(grid: GridPlan) -> str | None:
    """Why ``grid.parent`` cannot hold this grid now (see :func:`_content_problem`; also: another
    runner is running a grid there), or None."""
    problem = _content_problem(grid)
    if problem is not None or not os.path.isdir(grid.parent):
        return problem
    try:
        os.close(hold_run_dir(grid.parent))
    except UserError as error:
        return str(error)
    return None


def check_grid(grid: GridPlan) -> None:
    """Return if the whole grid can run; otherwise raise :class:`UserError` with the first problem:
    the parent's, then each cell's first broken usage rule, named by its cell. Writes nothing."""
    problem = grid_problem(grid)
    if problem:
        raise UserError(problem)
    for cell in grid.cells:
        try:
            check_compatible(cell.plan)
        except UserError as error:
            raise UserError(f"{cell.title}: {error}") from None


def read_grid(parent: str) -> dict | None:
    """grid.json of ``parent``, or None if it has none; :class:`UserError` if it cannot be read."""
    recorded, problem = _load(parent)
    if problem:
        raise UserError(f"{parent}: {problem}")
    return recorded


def run_grid(grid: GridPlan, run_cell: Callable[[GridCell], dict]) -> list[dict]:
    """Write grid.json (or record the resume), then run the cells one after another with
    ``run_cell(cell)`` (which runs ``cell.plan`` and returns its results.json content), holding the
    parent's lock; return every cell's results, in order. Call :func:`check_grid` first.
    :class:`UserError` if the parent holds another grid or another runner is using it."""
    problem = _content_problem(grid)
    if problem:
        raise UserError(problem)
    os.makedirs(grid.parent, exist_ok=True)
    held = hold_run_dir(grid.parent)
    try:
        problem = _content_problem(grid)  # again, holding it
        if problem:
            raise UserError(problem)
        path = os.path.join(grid.parent, GRID_FILE)
        recorded = read_grid(grid.parent)
        record = {**grid.record(), "created": time.time()} if recorded is None else \
            {**recorded, "resumed": [*recorded.get("resumed", []), time.time()]}
        write_json(path, record)
        return [run_cell(cell) for cell in grid.cells]
    finally:
        os.close(held)


def every_trial_failed(results: Sequence[dict]) -> bool:
    """True when every trial of every cell failed in the harness (none was judged)."""
    trials = sum(r["summary"]["trials"] for r in results)
    return trials > 0 and sum(r["summary"]["errors"] for r in results) == trials


def write_grid_report(grid: GridPlan, grader: Grader | None = None) -> tuple[str, list[CellAnalysis]]:
    """Analyse every cell (with ``grader``'s bars, if given; each cell's ``analysis.json`` is
    written), write their report to ``<parent>/report.html``; return its path and the analyses."""
    from redline.report import REPORT_FILE, report_runs

    path = os.path.join(grid.parent, REPORT_FILE)
    return path, report_runs([cell.plan.out_dir for cell in grid.cells], path, grader, store_analysis=True)
