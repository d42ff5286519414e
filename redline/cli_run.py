"""``redline run``, ``redline show`` and ``redline scenarios``."""

from __future__ import annotations

import json
import os
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from redline.errors import UserError
from redline.llm.models import resolve_model
from redline.runner.run import RunRequest, run_experiment
from redline.scenarios import list_scenarios, load_scenario


def _model_for(label: str):
    return resolve_model("bundled") if label == "reference" else resolve_model(label)


def run_command(console: Console, model_text: str, scenario_name: str, trials: int, concurrency: int,
                out_dir: str | None, max_steps: int | None, time_limit: float | None) -> int:
    """Run the experiment with a live progress display; returns the exit code."""
    scenario = load_scenario(scenario_name)
    model = _model_for(model_text)
    if model_text == "reference":
        model = type(model)("reference", "policy", weights=model.weights)
    safe_model = "".join(c if c.isalnum() or c in "-." else "_" for c in os.path.basename(model_text))[:40]
    out_dir = out_dir or os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario.id}-{safe_model}")
    request = RunRequest(model=model_text, scenario=scenario.id, trials=trials, concurrency=concurrency,
                         max_steps=max_steps or scenario.max_steps, time_limit_s=time_limit or scenario.time_limit_s)
    console.print(f"redline run: [bold]{escape(model_text)}[/bold] on [bold]{scenario.id}[/bold], {trials} trials, "
                  f"concurrency {concurrency}, ≤{request.max_steps} steps / {request.time_limit_s:g} s each")
    console.print(f"results: {out_dir}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bar = progress.add_task("trials", total=trials)
        done_before = sum(1 for t in range(trials) if os.path.exists(
            os.path.join(out_dir, "trials", f"t{t + 1:0{max(2, len(str(trials)))}d}", "verdict.json")))
        progress.update(bar, completed=done_before)

        def on_progress(trial_id: str, status: str, verdict: dict | None) -> None:
            if status == "running":
                progress.console.print(f"  {trial_id} started")
                return
            if verdict is not None:
                progress.advance(bar)
                if verdict.get("error"):
                    line = f"[yellow]harness error[/yellow] {escape(verdict['error'][:150])}"
                elif verdict["success"]:
                    line = "[green]replicated[/green]"
                else:
                    line = f"[red]no replica[/red] (failing: {', '.join(verdict.get('failing', []))})"
                steps = (verdict.get("task") or {}).get("steps")
                progress.console.print(f"  {trial_id} {line} — {steps} steps, "
                                       f"{verdict.get('timings', {}).get('total_s', 0):.0f} s")
            else:
                progress.console.print(f"  {trial_id} [yellow]{status}[/yellow]")

        results = run_experiment(request, model, scenario, out_dir, on_progress)
    show_results(console, results)
    console.print(f"results: {os.path.join(out_dir, 'results.json')}")
    return 0


def show_results(console: Console, results: dict) -> None:
    """Print the summary and one row per trial."""
    summary = results["summary"]
    table = Table(title=f"{summary['model']} × {summary['scenario']}")
    for column in ("successes / judged", "95% Wilson", "agreed", "knew how", "succeeded", "errors", "pending"):
        table.add_column(column)
    low, high = summary["wilson_95"]
    judged = summary["judged"]
    bars = summary["bars"]
    table.add_row(f"{summary['successes']} / {judged}", f"{low:.0%} – {high:.0%}",
                  f"{bars['agreed']}/{judged}", f"{bars['knew_how']}/{judged}", f"{bars['succeeded']}/{judged}",
                  str(summary["errors"]), str(summary["pending"]))
    console.print(table)
    trials = Table(show_header=True)
    for column in ("trial", "status", "success", "failing criteria", "milestones", "steps"):
        trials.add_column(column)
    for trial_id, status in results["statuses"].items():
        verdict = results["verdicts"].get(trial_id, {})
        milestones = ", ".join(name for name, reached in (verdict.get("milestones") or {}).items() if reached)
        trials.add_row(trial_id, status, "yes" if verdict.get("success") else ("—" if not verdict else "no"),
                       escape(", ".join(verdict.get("failing", [])) or (verdict.get("error") or "")[:60]),
                       milestones, str((verdict.get("task") or {}).get("steps", "")))
    console.print(trials)


def show_command(console: Console, run_dir: str) -> int:
    """``redline show DIR``."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        raise UserError(f"{run_dir} has no results.json: is it a redline run directory?")
    with open(path, encoding="utf-8") as handle:
        try:
            results = json.load(handle)
        except ValueError as error:
            raise UserError(f"{path} is not valid JSON: {error}") from error
    show_results(console, results)
    return 0


def scenarios_command(console: Console) -> int:
    """``redline scenarios``."""
    table = Table()
    for column in ("id", "title", "criteria", "steps", "time limit"):
        table.add_column(column)
    for scenario in list_scenarios():
        table.add_row(scenario.id, scenario.title, ", ".join(scenario.criteria), str(scenario.max_steps),
                      f"{scenario.time_limit_s:g} s")
    console.print(table)
    return 0
