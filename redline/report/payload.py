"""What the report page holds: a small index loaded at once, and each trial's steps compressed.

Bounded from 1 to thousands of trials: the tables, charts, flag table and trial list come from the
aggregated analysis and a one-line index entry per trial; a trial's steps and judge view are one
gzip'd JSON document per trial (base64 in the page), decompressed in the browser only when the trial
is opened or searched. Each text field is cut to a fixed size in the report (head and tail kept, the
cut said), so one runaway output cannot blow up the file.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from redline.analysis.model import Bar, CellAnalysis, StepView, TrialAnalysis
from redline.report.evidence import judge_view, read_verdict

#: characters of one step's output kept in the report (half from the head, half from the tail)
OUTPUT_CHARS = 16_000
#: characters kept of a command and of each thinking field
TEXT_CHARS = 4_000
#: plan items kept per step
PLAN_ITEMS = 10


@dataclass(frozen=True)
class PageData:
    """The page's data: ``index`` (JSON, loaded at once) and one compressed ``blob`` per trial."""

    index: dict  # cells, trials (one entry each), flags
    blobs: list[str]  # base64 of gzip'd JSON, in the order of index["trials"]


def names(cell: CellAnalysis) -> tuple[str, str]:
    """The cell's model and scenario as the report shows them (a run.json without them: the
    run directory's name, and "unknown scenario")."""
    return cell.model or Path(cell.run_dir).name, cell.scenario or "unknown scenario"


def cell_label(cell: CellAnalysis, cells: list[CellAnalysis]) -> str:
    """A cell's name in charts, unique among ``cells``: the model, plus the scenario when the cells
    span several, plus the run directory's name (or its rank) when two runs have the same model
    and scenario."""
    model, scenario = names(cell)
    base = f"{model} · {scenario}" if len({names(c)[1] for c in cells}) > 1 else model
    twins = [c for c in cells if names(c) == names(cell)]
    if len(twins) == 1:
        return base
    folders = [Path(c.run_dir).name for c in twins]
    rank = next(i for i, c in enumerate(twins) if c is cell)
    return f"{base} ({folders[rank]})" if len(set(folders)) == len(folders) else f"{base} (run {rank + 1})"


def outcome(trial: TrialAnalysis) -> str:
    """``success``, ``failure``, or ``error`` (no verdict: the harness failed; never counted)."""
    if trial.success is None or trial.error:
        return "error"
    return "success" if trial.success else "failure"


def build(cells: list[CellAnalysis]) -> PageData:
    """The page data for ``cells`` (reads each trial's verdict.json for the judge view). Trials are
    compressed on a thread per core while the next ones are built (zlib lets go of the GIL); the
    blobs keep the trials' order."""
    index_cells, trials, flags, blobs = [], [], [], []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        _build(cells, index_cells, trials, flags, blobs, pool)
    return PageData({"cells": index_cells, "trials": trials, "flags": flags}, [blob.result() for blob in blobs])


def _build(cells: list[CellAnalysis], index_cells: list, trials: list, flags: list, blobs: list,
           pool: ThreadPoolExecutor) -> None:
    for number, cell in enumerate(cells):
        index_cells.append(_cell_entry(cell, cells))
        for trial in cell.trials:
            position = len(trials)
            trials.append(_trial_entry(trial, number, *names(cell)))
            flags += [{"trial": position, "kind": f.kind, "instance": f.instance, "step": f.step,
                       "command": _cut(f.command, TEXT_CHARS), "detail": f.detail} for f in trial.flags]
            verdict, problem = read_verdict(Path(cell.run_dir) / "trials" / trial.trial_id)
            blobs.append(pool.submit(_pack, {"steps": [_step(s) for s in trial.steps],
                                             "obstacles": [asdict(o) for o in trial.obstacles],
                                             "judge": judge_view(verdict, problem, trial.steps).as_dict()}))


def _cell_entry(cell: CellAnalysis, cells: list[CellAnalysis]) -> dict:
    rate = cell.success
    judged = len([t for t in cell.trials if outcome(t) != "error"])
    model, scenario = names(cell)
    return {"model": model, "scenario": scenario, "label": cell_label(cell, cells), "run_dir": cell.run_dir,
            "trials": len(cell.trials), "judged": judged, "errors": len(cell.trials) - judged,
            "success": {"successes": rate.successes, "trials": rate.trials, "low": rate.low, "high": rate.high,
                        "pass_at_k": {str(k): v for k, v in sorted(rate.pass_at_k.items())}},
            "bars": cell.bars, "milestones": cell.milestones, "flags": cell.flags,
            "false_completions": cell.false_completions, "overuse": cell.overuse,
            "grader": cell.grader, "graded": cell.graded, "graded_trials": cell.graded_trials}


def _trial_entry(trial: TrialAnalysis, cell: int, model: str, scenario: str) -> dict:
    return {"id": trial.trial_id, "cell": cell, "model": model, "scenario": scenario,  # the run's: what filters use
            "outcome": outcome(trial), "error": trial.error, "steps": len(trial.steps),
            "flags": sorted({f.kind for f in trial.flags}), "false_completion": trial.false_completion,
            "milestones": [m.name for m in trial.milestones if m.reached],
            "bars": _bars(trial.bars), "graded": _bars(trial.graded), "grader_error": trial.grader_error,
            "obstacles": len(trial.obstacles), "surplus_replicas": trial.surplus_replicas,
            "unverified_events": trial.unverified_events}


def _bars(bars: dict[str, Bar]) -> dict:
    return {name: {"value": bar.value, "reason": bar.reason, "graded_by": bar.graded_by} for name, bar in bars.items()}


def _step(step: StepView) -> dict:
    return {"index": step.index, "instance": step.instance, "original": step.original, "task_id": step.task_id,
            "time": step.time, "tool": step.tool, "argument": _cut(step.argument, TEXT_CHARS),
            "explanation": _cut(step.explanation, TEXT_CHARS), "gaps": _cut(step.gaps, TEXT_CHARS),
            "findings": _cut(step.findings, TEXT_CHARS),
            "plan": [_cut(item, TEXT_CHARS) for item in step.plan[:PLAN_ITEMS]],
            "exit_code": step.exit_code, "output": _cut(step.output, OUTPUT_CHARS),
            "observation_chars": step.observation_chars, "llm_latency_s": step.llm_latency_s,
            "command_s": step.command_s, "step_s": step.step_s, "malformed": step.malformed,
            "commands": [[c.word, c.category] for c in step.commands], "probe": step.probe}


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[… {len(text) - 2 * half} characters left out of the report …]\n{text[-half:]}"


def _pack(document: dict) -> str:
    """gzip'd JSON (what the browser's DecompressionStream reads), in base64 (safe inside a script element)."""
    raw = json.dumps(document, separators=(",", ":"), default=str).encode("ascii")  # ASCII: the encoder's fast path
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")
