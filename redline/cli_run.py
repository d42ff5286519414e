"""``redline run``, ``redline show``, ``redline report`` and ``redline scenarios``."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from redline.analysis.cell import analyze_cell
from redline.analysis.grader import Grader, open_grader
from redline.analysis.model import CellAnalysis
from redline.cli_highlights import show_highlights
from redline.errors import HarnessError, UserError
from redline.llm.models import ModelChoice, resolve_model
from redline.report import REPORT_FILE, report_runs, run_dirs
from redline.runner.compatibility import check_compatible
from redline.runner.executor import TrialExecutor
from redline.runner.grid import (
    GridCell,
    check_grid,
    every_trial_failed,
    plan_grid,
    read_grid,
    run_grid,
    write_grid_report,
)
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
from redline.sandbox import default_spec
from redline.sandbox.gpus import with_gpus
from redline.scenarios import Scenario, list_scenarios, load_scenario
from redline.system.scaffold import choose_profile


def _model_for(label: str) -> ModelChoice:
    if label == "reference":
        return ModelChoice("reference", "policy", weights=resolve_model("bundled").weights)
    return resolve_model(label)


def cause_line(cause: dict) -> str:
    """One harness-error cause of a summary (:func:`redline.runner.summary.error_causes`) as a line."""
    trials = ", ".join(cause["trials"][:6]) + (", …" if len(cause["trials"]) > 6 else "")
    return f"{cause['count']} trial{'s' if cause['count'] != 1 else ''} ({trials}): {cause['cause']}"


@dataclass(frozen=True)
class Placement:
    """Where a run's trials go: this machine, or the Ray cluster ``cluster`` (``--cluster``), each
    trial asking ``trial_cpus`` and ``trial_memory_bytes`` of its node; and whether weaker
    containment is accepted (``--allow-weaker-containment``, here or on nodes)."""

    cluster: str | None = None
    trial_cpus: float = 1.0
    trial_memory_bytes: int = 0
    accept_weaker_containment: bool = False
    gpus: int = 0  # per trial (--gpus)

    def check(self, models: list[ModelChoice]) -> None:
        """One-line :class:`UserError` for options that do not go together (before anything runs)."""
        if self.gpus:
            for model in models:
                if model.kind != "gguf":
                    raise UserError(f"--gpus with --model {model.label}: only local weights (PATH.gguf, bundled) "
                                    "are served on the trial's GPUs (an endpoint's model runs where the endpoint "
                                    "is; a scripted policy has none)")
        if self.cluster is None:
            if self.trial_cpus != 1.0 or self.trial_memory_bytes:
                raise UserError("--trial-cpus and --trial-memory apply only with --cluster")
            if self.gpus:
                with_gpus(default_spec(), self.gpus)  # a UserError when this host has fewer
            return
        from redline.cluster.connection import check_address, import_ray

        check_address(self.cluster)
        import_ray()
        for model in models:
            if model.kind == "human":
                raise UserError(f"--model {model.label} with --cluster: a person answers at this machine; "
                                "run human baselines without --cluster")


class Executors:
    """The executor of each run of one command: local, or Ray tasks on the cluster's nodes that
    passed their containment check (connected and checked once, when the command starts)."""

    def __init__(self, console: Console, placement: Placement) -> None:
        self.placement = placement
        self._ray = None
        self._checks: list = []
        self._usable: list = []
        if placement.cluster is None:
            return
        from redline.cluster.connection import connect, redline_nodes
        from redline.cluster.nodes import check_nodes, usable_nodes

        self._ray = connect(placement.cluster)
        console.print(f"cluster: {escape(placement.cluster)}: checking the containment of every redline node")
        self._checks = check_nodes(self._ray, redline_nodes(self._ray))
        self._usable = usable_nodes(self._checks, placement.accept_weaker_containment)
        if placement.gpus and not any(c.node.gpus >= placement.gpus for c in self._usable):
            raise UserError(f"--gpus {placement.gpus}: no node the run may use has that many GPUs "
                            f"({', '.join(f'{c.node.address}: {c.node.gpus:g}' for c in self._usable)})")
        for check in self._checks:
            state_line = "passes" if check.passed else ("weaker, accepted" if check in self._usable else "weaker: no "
                                                                                                         "trial there")
            console.print(f"  node {escape(check.hostname or check.node.address)} ({check.node.slots} slot(s)): "
                          f"{state_line}" + ("" if check.passed else f" ({escape('; '.join(check.gaps)[:200])})"))

    def __enter__(self) -> Executors:
        return self

    def __exit__(self, *_exc: object) -> None:
        """Leave the cluster in order (Ray's core worker can crash at exit if a cancelled task's
        reply arrives while the process tears down)."""
        if self._ray is not None:
            self._ray.shutdown()

    def make(self, plan: RunPlan, concurrency_given: bool) -> TrialExecutor | None:
        """The executor for ``plan`` (``None``: the run's default, local one)."""
        if self._ray is None:
            return None
        from redline.cluster.executor import RayExecutor, TrialResources

        resources = TrialResources(self.placement.trial_cpus, self.placement.trial_memory_bytes)
        return RayExecutor(self._ray, str(self.placement.cluster), self._checks, self._usable, resources,
                           plan.concurrency if concurrency_given else None)


def _plan(model: ModelChoice, base: Scenario, trials: int, concurrency: int | None, out_dir: str,
          max_steps: int | None, time_limit: float | None, obstacles: tuple[str, ...],
          overrides: ScenarioOverrides | None, profile: str, context_tokens: int | None,
          placement: Placement | None = None) -> RunPlan:
    """One run as asked (the default concurrency: what the machine fits; 1 for a person)."""
    concurrency = concurrency or (1 if model.kind == "human" else default_concurrency())
    placement = placement or Placement()
    return RunPlan(model, base, overrides or ScenarioOverrides(), trials, concurrency, out_dir, max_steps,
                   time_limit, obstacles, profile, context_tokens, placement.accept_weaker_containment,
                   placement.gpus)


def _raise_if_all_failed(results: list[dict]) -> None:
    """:class:`HarnessError` (exit 125) when every trial of every run failed in the harness."""
    if not every_trial_failed(results):
        return
    causes = [cause for cell in results for cause in cell["summary"]["error_causes"]]
    total = sum(cell["summary"]["trials"] for cell in results)
    others = f"; {len(causes) - 1} other cause(s) above" if len(causes) > 1 else ""
    cells = f" of the {len(results)} cells" if len(results) > 1 else ""
    raise HarnessError(f"all {total} trials{cells} failed in the harness, so none was judged: "
                       f"{cause_line(causes[0])}{others}")


def _report_lines(console: Console, path: str, cells: list[CellAnalysis]) -> None:
    """Print where the report is, and what the grader could not grade."""
    console.print(f"report: {escape(os.path.abspath(path))} ({len(cells)} run(s))")
    failed = [(cell, trial) for cell in cells for trial in cell.trials if trial.grader_error]
    if failed:
        cell, trial = failed[0]
        console.print(f"[yellow]grader: {len(failed)} judged trial(s) could not be graded (asked again next time); "
                      f"first, {escape(trial.trial_id)} of {escape(cell.model)}: {escape(trial.grader_error)}[/yellow]")


def run_command(console: Console, model_text: str, scenario_name: str, trials: int, concurrency: int | None,
                out_dir: str | None, max_steps: int | None, time_limit: float | None,
                obstacles: tuple[str, ...] = (), overrides: ScenarioOverrides | None = None,
                profile: str = "auto", context_tokens: int | None = None, grader_text: str | None = None,
                placement: Placement | None = None) -> int:
    """Check the run (:func:`~redline.runner.compatibility.check_compatible` and the grader: a
    :class:`UserError` before anything is written), run it with a live progress display, write its
    analysis and report (``report.html`` in the run directory) and return the exit code: 0 when
    every trial has a verdict (the causes of any harness errors are printed); :class:`HarnessError`
    (exit 125) when every trial failed in the harness."""
    base = load_scenario(scenario_name)
    model = _model_for(model_text)
    safe_model = "".join(c if c.isalnum() or c in "-." else "_" for c in os.path.basename(model_text))[:40]
    out_dir = out_dir or os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{base.id}-{safe_model}")
    placement = placement or Placement()
    plan = _plan(model, base, trials, concurrency, out_dir, max_steps, time_limit, obstacles, overrides, profile,
                 context_tokens, placement)
    check_compatible(plan)
    placement.check([model])
    with _grader(grader_text) as grader, Executors(console, placement) as executors:
        results = _run_with_progress(console, plan, executors.make(plan, concurrency is not None))
        path = os.path.join(out_dir, REPORT_FILE)
        _report_lines(console, path, report_runs([out_dir], path, grader, store_analysis=True))
    _raise_if_all_failed([results])
    return 0


def _grader(grader_text: str | None) -> contextlib.AbstractContextManager[Grader | None]:
    """The grader ``--grader`` names (checked now: a :class:`UserError` before anything runs), or none."""
    return open_grader(grader_text) if grader_text else contextlib.nullcontext()


def report_command(console: Console, dirs: tuple[str, ...], out_file: str | None, grader_text: str | None) -> int:
    """``redline report``: the report of the run directories in ``dirs`` (grids expanded), written
    to ``out_file`` (default: ``report.html`` in the one directory given, else here)."""
    found = run_dirs(list(dirs))
    target = out_file or (os.path.join(dirs[0], REPORT_FILE) if len(dirs) == 1 else REPORT_FILE)
    with _grader(grader_text) as grader:
        cells = report_runs(found, target, grader)
    _report_lines(console, target, cells)
    return 0


def run_grid_command(console: Console, model_texts: tuple[str, ...], scenario_names: tuple[str, ...], trials: int,
                     concurrency: int | None, out_dir: str | None, max_steps: int | None,
                     time_limit: float | None, obstacles: tuple[str, ...] = (),
                     overrides: ScenarioOverrides | None = None, profile: str = "auto",
                     context_tokens: int | None = None, grader_text: str | None = None,
                     placement: Placement | None = None) -> int:
    """``redline run`` with several models and/or scenarios (:mod:`redline.runner.grid`): check every
    cell (a :class:`UserError` before anything is written), run the cells one after another, print
    one row per cell, write the report (graded by ``grader_text``, if given) and print its path. Exit
    code as :func:`run_command`'s, over every trial of every cell."""
    models = [_model_for(text) for text in model_texts]
    scenarios = [load_scenario(name) for name in scenario_names]
    parent = out_dir or os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-grid-{len(models)}x{len(scenarios)}")
    placement = placement or Placement()
    grid = plan_grid(parent, models, scenarios,
                     lambda model, base, cell_dir: _plan(model, base, trials, concurrency, cell_dir, max_steps,
                                                         time_limit, obstacles, overrides, profile, context_tokens,
                                                         placement))
    check_grid(grid)
    placement.check(models)
    grader_context = _grader(grader_text)
    executors = Executors(console, placement)  # connected now: a cluster that is not there is a usage error
    console.print(f"redline run: a grid of {len(models)} model(s) × {len(scenarios)} scenario(s): "
                  f"{len(grid.cells)} cells, one after another, {trials} trials each; grid: {escape(parent)}")

    def run_cell(cell: GridCell) -> dict:
        console.rule(f"cell {grid.cells.index(cell) + 1}/{len(grid.cells)}: {escape(cell.title)}")
        return _run_with_progress(console, cell.plan, executors.make(cell.plan, concurrency is not None))

    with grader_context as grader, executors:
        results = run_grid(grid, run_cell)
        console.rule("grid")
        console.print(grid_table(parent, read_grid(parent) or {}))
        _report_lines(console, *write_grid_report(grid, grader))
    _raise_if_all_failed(results)
    return 0


def _run_with_progress(console: Console, plan: RunPlan, executor: TrialExecutor | None = None) -> dict:
    """Run ``plan`` (already checked) on ``executor`` (default: this machine) with a live progress
    display; print and return its results."""
    model, request, scenario, out_dir = plan.model, plan.request, plan.scenario, plan.out_dir
    trials, concurrency, profile, context_tokens = plan.trials, plan.concurrency, plan.profile, plan.context_tokens
    terminal_person = model.kind == "human" and model.controller is None
    where = f"concurrency {concurrency}" if executor is None else executor.placement_line()
    console.print(f"redline run: [bold]{escape(model.label)}[/bold] on [bold]{scenario.id}[/bold], {trials} trials, "
                  f"{escape(where)}, ≤{request.max_steps} steps / {request.time_limit_s:g} s each")
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

        results = run_experiment(request, model, scenario, out_dir, on_progress, executor)
    show_results(console, results)
    console.print(f"results: {os.path.join(out_dir, 'results.json')}")
    return results


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
    interrupted at any moment), then the analysis highlights; for a grid's parent directory, one row
    per cell and each cell's highlights. :class:`UserError` if DIR is neither."""
    grid = read_grid(run_dir) if os.path.isdir(run_dir) else None
    if grid is not None:
        return _show_grid(console, run_dir, grid)
    results = collect_results(run_dir, read_run(run_dir))
    show_results(console, results)
    statuses = list(results["statuses"].values())
    if "running" in statuses:
        console.print(f"{statuses.count('running')} trial(s) are running now: their runner is alive")
    unfinished = sum(1 for status in statuses if status in ("pending", "interrupted"))
    if unfinished:
        console.print(f"{unfinished} trial(s) have no verdict: run the same redline run command with "
                      f"--out {escape(run_dir)} to finish them")
    show_highlights(console, analyze_cell(run_dir))
    return 0


def _cell_results(parent: str, cell: dict) -> tuple[dict | None, str]:
    """(results, status) of one grid cell: status "not started", or why its directory is unreadable."""
    cell_dir = os.path.join(parent, str(cell.get("dir")))
    if not os.path.exists(os.path.join(cell_dir, "run.json")):
        return None, "not started"
    try:
        return collect_results(cell_dir, read_run(cell_dir)), ""
    except UserError as error:
        return None, str(error)


def grid_table(parent: str, grid: dict) -> Table:
    """One row per cell of the grid recorded in ``grid`` (grid.json's content) under ``parent``."""
    table = Table(title=f"grid {parent}")
    for column in ("model", "scenario", "successes / judged (95% Wilson)", "agreed", "knew how", "errors",
                   "pending"):
        table.add_column(column, overflow="fold")
    for cell in grid.get("cells", []):
        if not isinstance(cell, dict):
            continue
        results, status = _cell_results(parent, cell)
        name = (escape(str(cell.get("model"))), escape(str(cell.get("scenario"))))
        if results is None:
            table.add_row(*name, escape(status), "", "", "", "")
            continue
        summary = results["summary"]
        low, high = summary["wilson_95"]
        judged = summary["judged"]
        table.add_row(*name, f"{summary['successes']} / {judged} ({low:.0%} – {high:.0%})",
                      f"{summary['bars']['agreed']}/{judged}", f"{summary['bars']['knew_how']}/{judged}",
                      str(summary["errors"]), str(summary["pending"]))
    table.caption = "run directories: " + ", ".join(escape(str(cell.get("dir"))) for cell in grid.get("cells", [])
                                                     if isinstance(cell, dict))
    return table


def _show_grid(console: Console, parent: str, grid: dict) -> int:
    console.print(grid_table(parent, grid))
    unfinished = 0
    for cell in grid["cells"]:
        if not isinstance(cell, dict):
            continue
        results, _ = _cell_results(parent, cell)
        if results is None:
            unfinished += 1
            continue
        unfinished += results["summary"]["pending"] > 0
        show_highlights(console, analyze_cell(os.path.join(parent, str(cell["dir"]))))
    if unfinished:
        console.print(f"{unfinished} cell(s) are not finished: run the same redline run command with "
                      f"--out {escape(parent)} to finish them")
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
