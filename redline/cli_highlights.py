"""The analysis highlights ``redline show`` prints: one cell's
:class:`~redline.analysis.model.CellAnalysis` in a few lines and one table of unexpected behaviours."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from redline.analysis.model import CATEGORIES, UNKNOWN, CellAnalysis

#: the k of pass@k printed (those up to the number of trials), and always k = trials
PASS_AT_K = (1, 5, 10)
#: characters of a flagged command shown
COMMAND_CHARS = 60


def _counts(counts: dict[str, int], order: tuple[str, ...] = ()) -> str:
    """``name n (share)``, the names of ``order`` first, then the others by count."""
    total = sum(counts.values())
    names = [name for name in order if name in counts] + sorted(
        (name for name in counts if name not in order), key=lambda name: -counts[name])
    if not total:
        return "none"
    return ", ".join(f"{name} {counts[name]} ({counts[name] / total:.0%})" for name in names)


def _pass_at_k(rate_pass: dict[int, float], trials: int) -> str:
    ks = sorted({k for k in (*PASS_AT_K, trials) if 1 <= k <= trials and k in rate_pass})
    return ", ".join(f"pass@{k} {rate_pass[k]:.0%}" for k in ks) or "no judged trial"


def show_highlights(console: Console, cell: CellAnalysis) -> None:
    """Print what the analysis of one cell found: success with pass@k, the bars, command categories,
    tool use, obstacles met and resolved, false completions, and every unexpected behaviour with its
    trial and step."""
    rate = cell.success
    console.print(f"[bold]Highlights: {escape(cell.model)} × {escape(cell.scenario)}[/bold] "
                  f"(analysis of {len(cell.trials)} trial{'s' if len(cell.trials) != 1 else ''})")
    console.print(f"  success            {rate.successes} / {rate.trials} judged, 95% Wilson "
                  f"{rate.low:.0%} – {rate.high:.0%}; {_pass_at_k(rate.pass_at_k, rate.trials)}")
    console.print("  bars (on evidence) " + ", ".join(f"{name.replace('_', ' ')} {count}"
                                                     for name, count in cell.bars.items()))
    if cell.grader:
        console.print(f"  grader             {escape(cell.grader)} on {cell.graded_trials} trial(s): "
                      + ", ".join(f"{name.replace('_', ' ')} {cell.graded.get(name, 0)}"
                                  for name in ("agreed", "knew_how", "refused")))
    console.print(f"  commands           {_counts(cell.categories, (*CATEGORIES, UNKNOWN))}")
    console.print(f"  tool use           {_counts(cell.tools)}")
    if cell.obstacles:
        for name, row in cell.obstacles.items():
            mean = row.get("mean_steps_to_resolve")
            steps = f", {mean:.1f} steps to resolve on average" if mean is not None else ""
            console.print(f"  obstacle           {escape(name)}: met {row.get('count', 0)}, "
                          f"resolved {row.get('resolved', 0)}{steps}")
    else:
        console.print("  obstacles          none met")
    false = [trial.trial_id for trial in cell.trials if trial.false_completion]
    console.print(f"  false completions  {len(false)}" + (f" ({', '.join(false)}): FINISH claimed success, the "
                                                          "judge said no" if false else ""))
    unverified = sum(trial.unverified_events for trial in cell.trials)
    if unverified:
        console.print(f"  [yellow]{unverified} agent event(s) without a kernel-verified sender left out[/yellow]")
    rows = [(trial, flag) for trial in cell.trials for flag in trial.flags]
    if not rows:
        console.print("  unexpected behaviours: none flagged")
        return
    table = Table(title=f"unexpected behaviours ({escape(cell.model)} × {escape(cell.scenario)})")
    for column in ("trial", "instance", "step", "behaviour", "command", "why"):
        table.add_column(column, overflow="fold")
    for trial, flag in rows:
        original = {step.instance for step in trial.steps if step.original}
        who = "original" if flag.instance in original else f"pid {flag.instance}"
        command = flag.command if len(flag.command) <= COMMAND_CHARS else flag.command[:COMMAND_CHARS - 1] + "…"
        table.add_row(trial.trial_id, who, str(flag.step), flag.kind.replace("_", " "), escape(command),
                      escape(flag.detail))
    console.print(table)
