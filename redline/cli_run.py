"""``redline run``, ``redline show`` and ``redline scenarios``."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from redline.errors import UserError
from redline.llm.models import resolve_model
from redline.obstacles import OBSTACLES
from redline.runner.run import RunRequest, run_experiment
from redline.scenarios import Scenario, list_scenarios, load_scenario


@dataclass(frozen=True)
class ScenarioOverrides:
    """``redline run`` options that change the scenario for this run."""

    depth: int | None = None
    population_cap: int | None = None
    shutdown_after: float | None = None
    grace: float | None = None

    def apply(self, scenario: Scenario) -> tuple[Scenario, tuple[tuple[str, object], ...]]:
        """The scenario with these changes, and the changes as recorded in run.json."""
        changes: dict[str, object] = {}
        if self.depth is not None:
            if scenario.chain is None:
                raise UserError(f"--depth applies to chain scenarios; {scenario.id} is not one")
            changes["chain"] = {"depth": self.depth}
        if self.population_cap is not None:
            changes["population_cap"] = self.population_cap
        if self.shutdown_after is not None or self.grace is not None:
            if scenario.shutdown is None:
                raise UserError("--shutdown-after and --grace apply to shutdown scenarios; "
                                f"{scenario.id} has no shutdown")
            plan = scenario.shutdown.model_dump()
            plan.update({k: v for k, v in (("after_s", self.shutdown_after), ("grace_s", self.grace)) if v is not None})
            changes["shutdown"] = plan
        recorded = tuple(sorted((key, value) for key, value in changes.items()))
        return (scenario.with_overrides(**changes) if changes else scenario), recorded


def _model_for(label: str):
    return resolve_model("bundled") if label == "reference" else resolve_model(label)


def run_command(console: Console, model_text: str, scenario_name: str, trials: int, concurrency: int,
                out_dir: str | None, max_steps: int | None, time_limit: float | None,
                obstacles: tuple[str, ...] = (), overrides: ScenarioOverrides | None = None) -> int:
    """Run the experiment with a live progress display; returns the exit code."""
    scenario, changes = (overrides or ScenarioOverrides()).apply(load_scenario(scenario_name))
    unknown = [name for name in obstacles if name not in OBSTACLES]
    if unknown:
        raise UserError(f"unknown obstacle {unknown[0]!r}: choose from {', '.join(OBSTACLES)}")
    model = _model_for(model_text)
    if model_text == "reference":
        model = type(model)("reference", "policy", weights=model.weights)
    safe_model = "".join(c if c.isalnum() or c in "-." else "_" for c in os.path.basename(model_text))[:40]
    out_dir = out_dir or os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario.id}-{safe_model}")
    request = RunRequest(model=model_text, scenario=scenario.id, trials=trials, concurrency=concurrency,
                         max_steps=max_steps or scenario.max_steps, time_limit_s=time_limit or scenario.time_limit_s,
                         obstacles=tuple(dict.fromkeys(obstacles)), overrides=changes)
    console.print(f"redline run: [bold]{escape(model_text)}[/bold] on [bold]{scenario.id}[/bold], {trials} trials, "
                  f"concurrency {concurrency}, ≤{request.max_steps} steps / {request.time_limit_s:g} s each")
    if request.obstacles:
        console.print(f"obstacles: {', '.join(request.obstacles)}")
    if not scenario.instructed:
        console.print("the task does not ask for replication")
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
    trials.add_column("why (first failing)", overflow="fold", max_width=34)
    for trial_id, status in results["statuses"].items():
        verdict = results["verdicts"].get(trial_id, {})
        milestones = ", ".join(name for name, reached in (verdict.get("milestones") or {}).items() if reached)
        failing = verdict.get("failing", [])
        why = ((verdict.get("criteria") or {}).get(failing[0]) or {}).get("reason", "") if failing else ""
        trials.add_row(trial_id, status, "yes" if verdict.get("success") else ("—" if not verdict else "no"),
                       escape(", ".join(failing) or (verdict.get("error") or "")[:60]), milestones,
                       str((verdict.get("task") or {}).get("steps", "")), escape(why[:90]))
    console.print(trials)
    if results["run"].get("scenario", {}).get("instructed") is False:
        console.print("The task did not ask for replication: any replica counted above was made unasked.")
    verdicts = results["verdicts"]
    _show_obstacles(console, verdicts)
    for trial_id, verdict in verdicts.items():
        chain = verdict.get("chain")
        if chain:
            console.print(f"{trial_id} lineage ({chain['lineage_source']}): generation {chain['reached']} of "
                          f"{chain['depth']} reached with every generation passing")
            console.print(lineage_tree(verdict))
        stopped = (verdict.get("population") or {}).get("stopped") or []
        if stopped:
            names = ", ".join(f"the instance on port {s['agent_port']} (pid {s['agent_pid']})" for s in stopped)
            console.print(f"{trial_id}: population cap {verdict['population']['cap']} enforced: stopped {names}")


def lineage_tree(verdict: dict) -> Tree:
    """Which instance made which, as a tree rooted at the original."""
    chain = verdict["chain"]
    original = verdict.get("original") or {}
    root = Tree(f"original: port {original.get('agent_port')}, pid {original.get('agent_pid')}, "
                f"{escape(str(original.get('folder')))}")
    nodes: dict[object, Tree] = {"original": root}
    pending = list(chain["instances"])
    while pending:
        placed = [i for i in pending if i["parent"] in nodes]
        if not placed:
            break
        for instance in placed:
            state = "[green]passes[/green]" if not instance["failing"] else \
                f"[red]fails {', '.join(instance['failing'])}[/red]"
            nodes[instance["agent_pid"]] = nodes[instance["parent"]].add(
                f"generation {instance['generation']}: port {instance['agent_port']}, pid {instance['agent_pid']}, "
                f"{escape(str(instance['folder']))} — {state}")
            pending.remove(instance)
    for instance in pending:
        root.add(f"[yellow]unknown parent[/yellow]: port {instance['agent_port']}, pid {instance['agent_pid']}, "
                 f"{escape(str(instance['folder']))}")
    return root


def _show_obstacles(console: Console, verdicts: dict[str, dict]) -> None:
    rows = [(trial_id, report) for trial_id, verdict in verdicts.items()
            for report in (verdict.get("obstacles") or {}).values()]
    if not rows:
        return
    table = Table(title="obstacles")
    for column in ("trial", "obstacle", "present", "met", "steps", "resolution"):
        table.add_column(column)
    for trial_id, report in rows:
        table.add_row(trial_id, report["name"], "yes" if report["present"] else "[red]no[/red]",
                      "yes" if report["met"] else "no", str(report["steps"]) if report["met"] else "",
                      escape(report["resolution"]))
    console.print(table)


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
    table.add_column("id", no_wrap=True)
    for column in ("title", "criteria", "steps", "time limit"):
        table.add_column(column)
    for scenario in list_scenarios():
        table.add_row(scenario.id, scenario.title, ", ".join(scenario.criteria), str(scenario.max_steps),
                      f"{scenario.time_limit_s:g} s")
    console.print(table)
    return 0
