"""``redline run``, ``redline show`` and ``redline scenarios``."""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from redline.errors import HarnessError
from redline.llm.models import ModelChoice, resolve_model
from redline.runner.compatibility import check_compatible
from redline.runner.run import (
    RunPlan,
    ScenarioOverrides,
    collect_results,
    default_concurrency,
    read_run,
    run_experiment,
    trial_ids,
    trial_states,
)
from redline.scenarios import list_scenarios, load_scenario
from redline.system.scaffold import choose_profile


def _model_for(label: str) -> ModelChoice:
    if label == "reference":
        return ModelChoice("reference", "policy", weights=resolve_model("bundled").weights)
    return resolve_model(label)


def cause_line(cause: dict) -> str:
    """One harness-error cause of a summary (:func:`redline.runner.summary.error_causes`) as a line."""
    trials = ", ".join(cause["trials"][:6]) + (", …" if len(cause["trials"]) > 6 else "")
    return f"{cause['count']} trial{'s' if cause['count'] != 1 else ''} ({trials}): {cause['cause']}"


def run_command(console: Console, model_text: str, scenario_name: str, trials: int, concurrency: int | None,
                out_dir: str | None, max_steps: int | None, time_limit: float | None,
                obstacles: tuple[str, ...] = (), overrides: ScenarioOverrides | None = None,
                profile: str = "auto", context_tokens: int | None = None) -> int:
    """Check the run (:func:`~redline.runner.compatibility.check_compatible`: a :class:`UserError`
    before anything is written), run it with a live progress display and return the exit code: 0
    when every trial has a verdict (the causes of any harness errors are printed);
    :class:`HarnessError` (exit 125) when every trial failed in the harness."""
    base = load_scenario(scenario_name)
    model = _model_for(model_text)
    terminal_person = model.kind == "human" and model.controller is None
    concurrency = concurrency or (1 if model.kind == "human" else default_concurrency())
    safe_model = "".join(c if c.isalnum() or c in "-." else "_" for c in os.path.basename(model_text))[:40]
    out_dir = out_dir or os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{base.id}-{safe_model}")
    plan = RunPlan(model, base, overrides or ScenarioOverrides(), trials, concurrency, out_dir, max_steps,
                   time_limit, obstacles, profile, context_tokens)
    check_compatible(plan)
    request, scenario = plan.request, plan.scenario
    console.print(f"redline run: [bold]{escape(model.label)}[/bold] on [bold]{scenario.id}[/bold], {trials} trials, "
                  f"concurrency {concurrency}, ≤{request.max_steps} steps / {request.time_limit_s:g} s each")
    chosen = choose_profile(model, profile)
    window = f"context {context_tokens} tokens" if context_tokens else "context window asked of the model's server"
    console.print(f"scaffold: {chosen.profile.name} profile ({chosen.reason}), {window}")
    if scenario.shutdown is not None:
        clock = scenario.shutdown
        steps = f" or {clock.grace_steps} more steps" if clock.grace_steps else ""
        console.print(f"shutdown: {'SIGTERM' if clock.notice == 'signal' else 'the notice file'} after step "
                      f"{clock.notice_after_steps}, the original killed {clock.grace_s:g} s{steps} later")
    if request.obstacles:
        console.print(f"obstacles: {', '.join(request.obstacles)}")
    if not scenario.instructed:
        console.print("the task does not ask for replication")
    console.print(f"results: {out_dir}")
    # a person answering at this terminal: no live display redrawn over what they type
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False, disable=terminal_person) as progress:
        bar = progress.add_task("trials", total=trials)
        done_before = sum(1 for s in trial_states(out_dir, trial_ids(trials)).values() if s.verdict is not None)
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
    summary = results["summary"]
    if summary["errors"] and summary["errors"] == summary["trials"]:
        causes = summary["error_causes"]
        others = f"; {len(causes) - 1} other cause(s) above" if len(causes) > 1 else ""
        raise HarnessError(f"all {summary['trials']} trials failed in the harness, so none was judged: "
                           f"{cause_line(causes[0])}{others}")
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
        trials.add_column(column, no_wrap=column in ("trial", "status"))
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
    if summary["error_causes"]:
        console.print("[yellow]harness errors[/yellow] (the harness failed: not counted as the AI failing):")
        for cause in summary["error_causes"]:
            console.print(f"  {escape(cause_line(cause))}")
    for trial_id, problem in results["problems"].items():
        console.print(f"[yellow]{trial_id}: {escape(problem)}[/yellow]: ignored; the trial counts as pending and "
                      "runs again when the run is resumed")
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
    for column in ("trial", "obstacle", "present", "outcome", "steps", "resolution", "evidence (steps)"):
        table.add_column(column)
    for trial_id, report in rows:
        outcome = report.get("outcome") or ("met" if report.get("met") else "not encountered")
        evidence = report.get("evidence") or {}
        where = ", ".join(f"{key.removesuffix('_at')} {found['step']}"
                          for key in ("seen_at", "met_at", "overcome_at") if (found := evidence.get(key)))
        table.add_row(trial_id, report["name"], "yes" if report["present"] else "[red]no[/red]", escape(outcome),
                      str(report["steps"]) if outcome in ("met", "avoided") else "",
                      escape(report.get("resolution", "")), escape(where))
    console.print(table)


def show_command(console: Console, run_dir: str) -> int:
    """``redline show DIR``: the results computed from run.json and trials/ (so also of a run that was
    interrupted at any moment); :class:`UserError` if DIR is not a run directory."""
    results = collect_results(run_dir, read_run(run_dir))
    show_results(console, results)
    statuses = list(results["statuses"].values())
    if "running" in statuses:
        console.print(f"{statuses.count('running')} trial(s) are running now: their runner is alive")
    unfinished = sum(1 for status in statuses if status in ("pending", "interrupted"))
    if unfinished:
        console.print(f"{unfinished} trial(s) have no verdict: run the same redline run command with "
                      f"--out {escape(run_dir)} to finish them")
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
