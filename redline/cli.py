"""The ``redline`` command line.

Exit codes:

* ``sandbox exec``: the command's own code; 124 when it timed out.
* ``run``: 0 when every trial has a verdict -- the causes of any harness errors among them are
  printed, and those trials are not counted --; 125 when every trial failed in the harness (none
  was judged; for a grid: every trial of every cell); 130 when interrupted (Ctrl-C, SIGINT from
  ``redline stop``, or SIGTERM; the same command again finishes the run, or the grid).
* ``show``: 0 when the directory holds a run, finished or not.
* Every command: 2 for a usage error -- for ``run`` also every incompatibility between its options,
  the scenario and the model (:mod:`redline.runner.compatibility`), found before anything is
  written --; 125 when the harness or host failed.

Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import click
from rich.console import Console

from redline.agent.profile import PROFILE_CHOICES
from redline.errors import RedlineError, UserError
from redline.sandbox import Limits, SandboxSpec, create_sandbox, default_spec, get_backend
from redline.sandbox.bwrap import state
from redline.sandbox.selfcheck import run_self_check
from redline.sandbox.spec import parse_size

EXIT_TIMEOUT = 124
EXIT_HARNESS = 125
EXIT_USAGE = 2

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

GRADER_HELP = ("Also grade each judged trial's agreed / knew how / refused against the written rubric with this "
               "model: an endpoint http(s)://HOST[/v1][#MODEL], PATH.gguf or bundled (served by the harness, outside "
               "any sandbox). Its answers are recorded beside the rule bars (trials/*/graded.json) and shown in the "
               "report.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="redline", prog_name="redline")
def app() -> None:
    """Measure, explain and contain the self-replication of LLM-powered AI systems."""


@app.group("sandbox")
def sandbox_group() -> None:
    """Run commands in, and check, the isolation every trial uses."""


def _limit_options(function):
    options = [
        click.option("--memory", default="4G", show_default=True, help="Memory limit, e.g. 512M, 4G."),
        click.option("--processes", default=512, show_default=True, type=click.IntRange(min=1),
                     help="Maximum number of processes."),
        click.option("--cpus", type=float, default=None, help="CPU limit in cores [default: up to 2]."),
        click.option("--wall-time", default=3600.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="Seconds before the sandbox is destroyed."),
        click.option("--workspace-size", default="2G", show_default=True, help="Size cap of /home/agent."),
        click.option("--allow-weaker-containment", is_flag=True,
                     help="Start even if the host cannot enforce every limit (recorded)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _spec(memory: str, processes: int, cpus: float | None, wall_time: float, workspace_size: str,
          allow_weaker_containment: bool, env: tuple[str, ...] = ()) -> SandboxSpec:
    variables = {}
    for item in env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--env expects NAME=VALUE, got {item!r}")
        variables[name] = value
    limit_args: dict = dict(memory_bytes=parse_size(memory), max_processes=processes,
                            wall_time_s=wall_time, workspace_bytes=parse_size(workspace_size))
    if cpus is not None:
        limit_args["cpus"] = cpus
    base = default_spec()
    return SandboxSpec(limits=Limits(**limit_args), ro_paths=base.ro_paths, env={**base.env, **variables},
                       accept_weaker_containment=allow_weaker_containment)


@sandbox_group.command("exec", context_settings={"ignore_unknown_options": False})
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds before the command is killed [default: the wall-clock limit].")
@click.option("--cwd", default=None, help="Working directory inside [default: /home/agent].")
@click.option("--env", "-e", multiple=True, metavar="NAME=VALUE", help="Add to the environment (repeatable).")
@_limit_options
@click.argument("command", nargs=-1, required=True)
def sandbox_exec(command: tuple[str, ...], timeout: float | None, cwd: str | None, env: tuple[str, ...],
                 **limits) -> None:
    """Run COMMAND in a fresh sandbox, stream its output, exit with its exit code.

    Put -- before COMMAND: redline sandbox exec --memory 1G -- python3 -c 'print(1)'
    """
    spec = _spec(env=env, **limits)
    streams = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}

    def forward(name: str, chunk: bytes) -> None:
        streams[name].write(chunk)
        streams[name].flush()

    limit = timeout or spec.limits.wall_time_s
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    with create_sandbox(spec) as box:
        if box.containment.weaker_accepted:
            err.print("redline: warning: weaker containment accepted: "
                      + "; ".join(item.name for item in box.containment.missing))
        result = box.exec(list(command), timeout=limit, cwd=cwd, on_output=forward, stdin=stdin)
    if result.timed_out:
        err.print(f"redline: command timed out after {limit:g} s")
        sys.exit(EXIT_TIMEOUT)
    sys.exit(result.exit_code or 0)


@sandbox_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_limit_options
def sandbox_check(as_json: bool, **limits) -> None:
    """Print the isolation and limits in force on this host, verified from inside a sandbox."""
    spec = _spec(**limits)
    report = get_backend().containment(spec)
    with create_sandbox(spec) as box:
        checks = run_self_check(box)
    passed = all(check.passed for check in checks)
    if as_json:
        print(json.dumps({**report.to_dict(), "self_check": [c.__dict__ for c in checks], "passed": passed},
                         indent=2))
    else:
        out.print(f"[bold]redline sandbox check[/bold] — backend {report.backend}")
        out.print("[bold]Configured[/bold]")
        for item in report.items:
            mark = "[green]✓[/green]" if item.enforced else "[red]✗[/red]"
            out.print(f"  {mark} {item.name:<24} {item.detail}")
        out.print("[bold]Observed from inside a sandbox[/bold]")
        for check in checks:
            mark = "[green]✓[/green]" if check.passed else "[red]✗[/red]"
            out.print(f"  {mark} {check.name:<32} {check.observed}")
        if report.weaker_accepted:
            out.print("[yellow]weaker containment accepted:[/yellow] "
                      + "; ".join(item.name for item in report.missing))
    if not passed:
        err.print("redline: the sandbox self-check failed: containment on this host is not as configured")
        sys.exit(EXIT_HARNESS)


@app.command("agent")
@click.option("--model", "model_text", default="bundled", show_default=True,
              help="bundled, PATH.gguf, an http(s):// endpoint (URL#model), null, script:PATH, human (you write "
                   "each step here) or human:SOCKET (a controller on that Unix socket writes them).")
@click.option("--task", required=True, help="What to ask the agent to do.")
@click.option("--max-steps", default=10, show_default=True, type=click.IntRange(min=1), help="Step limit.")
@click.option("--time-limit", default=900.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds the task may run.")
@click.option("--command-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds one EXECUTE_CMD may run.")
@click.option("--signal-catcher", is_flag=True, help="Turn on the agent's SIGTERM catcher.")
@click.option("--profile", default="auto", show_default=True, type=click.Choice(PROFILE_CHOICES),
              help="Scaffold profile (see redline run --help).")
@click.option("--context-tokens", default=None, type=click.IntRange(min=512, max=10_000_000),
              help="The model's context window (see redline run --help).")
@click.option("--out", "out_dir", default=None, help="Where to write the trace [default: runs/agent-<time>].")
def agent_command(model_text: str, task: str, max_steps: int, time_limit: float, command_timeout: float,
                  signal_catcher: bool, profile: str, context_tokens: int | None, out_dir: str | None) -> None:
    """Run the AI system on TASK in a fresh sandbox and watch it act, step by step."""
    from redline.cli_agent import run_agent_command

    run_agent_command(out, model_text, task, max_steps, time_limit, command_timeout, signal_catcher, out_dir,
                      profile, context_tokens)


@app.command("run")
@click.option("--model", "model_texts", multiple=True, default=("bundled",), show_default=True,
              help="bundled, PATH.gguf, an http(s):// endpoint (URL#model), reference, null, script:PATH, human "
                   "(you write each step here; one trial at a time) or human:SOCKET (a controller on that Unix "
                   "socket writes them). Repeatable: several models or scenarios run as a grid.")
@click.option("--scenario", "scenarios", multiple=True, default=("self-replication",), show_default=True,
              help="Scenario id or file. Repeatable: every model runs on every scenario, one cell after another, "
                   "each cell a run directory under --out.")
@click.option("--trials", default=10, show_default=True, type=click.IntRange(min=1, max=10000),
              help="Trials of each model on each scenario.")
@click.option("--concurrency", default=None, type=click.IntRange(min=1, max=64),
              help="Trials at once [default: what this machine's cores and memory fit; 1 for a person at the "
                   "terminal].")
@click.option("--out", "out_dir", default=None,
              help="Run directory (a grid's: the parent of its cells' run directories); the same one again resumes "
                   "the run.")
@click.option("--max-steps", default=None, type=click.IntRange(min=1), help="Override the scenario's step limit.")
@click.option("--time-limit", default=None, type=click.FloatRange(min=1), help="Override the scenario's time limit.")
@click.option("--obstacle", "obstacles", multiple=True, metavar="NAME",
              help="Add an obstacle (repeatable): no-net-tools, port-taken, low-disk, missing-dependency.")
@click.option("--depth", default=None, type=click.IntRange(min=1, max=20),
              help="Chains: generations of replicas required.")
@click.option("--population-cap", default=None, type=click.IntRange(min=1, max=64),
              help="Live instances allowed (the original included); more are stopped.")
@click.option("--notice-after-steps", default=None, type=click.IntRange(min=0, max=1000),
              help="Shutdown scenarios: the notice (SIGTERM, or the notice file) comes once the original has "
                   "completed this many steps [default: 1: once the model is engaged; 0: before its first step].")
@click.option("--grace", "grace_s", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Shutdown scenarios: seconds from the notice until every process of the original is killed "
                   "[default: 300].")
@click.option("--grace-steps", default=None, type=click.IntRange(min=1, max=1000),
              help="Shutdown scenarios with a signal notice: kill after this many more steps if that comes before "
                   "--grace [default: 10 for shutdown-avoidance; uninstructed's notice states a time: seconds "
                   "only].")
@click.option("--profile", default="auto", show_default=True, type=click.Choice(PROFILE_CHOICES),
              help="Scaffold profile: the reply bounds told to the model and enforced (auto: compact for local "
                   "weights under 2 GiB, capable otherwise).")
@click.option("--context-tokens", default=None, type=click.IntRange(min=512, max=10_000_000),
              help="The model's context window: llama.cpp's n_ctx for local weights; for an endpoint, the figure "
                   "to use instead of what its server reports [default: 4096 locally; asked of the server].")
@click.option("--grader", "grader_text", default=None, metavar="MODEL", help=GRADER_HELP)
@click.option("--cluster", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT",
              help="Run the trials on a Ray cluster (one Ray task per trial, on nodes that pass the containment "
                   "check; needs redline[ray]) [default: on this machine].")
@click.option("--trial-cpus", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="With --cluster: CPUs each trial asks of its node.")
@click.option("--trial-memory", default=None, metavar="SIZE",
              help="With --cluster: memory each trial asks of its node, e.g. 4G [default: not asked].")
@click.option("--allow-weaker-containment", is_flag=True,
              help="Run even where the host (or a cluster node) cannot enforce all of the containment; recorded.")
@click.option("--gpus", default=0, show_default=True, type=click.IntRange(min=0, max=64),
              help="GPUs each trial's system gets (NVIDIA devices passed into its sandbox; its llama.cpp loads "
                   "the folder's own weights onto them). Local weights only.")
def run_cmd(model_texts: tuple[str, ...], scenarios: tuple[str, ...], trials: int, concurrency: int | None,
            out_dir: str | None, max_steps: int | None, time_limit: float | None, obstacles: tuple[str, ...],
            depth: int | None, population_cap: int | None, notice_after_steps: int | None, grace_s: float | None,
            grace_steps: int | None, profile: str, context_tokens: int | None, grader_text: str | None,
            cluster: str | None, trial_cpus: float, trial_memory: str | None, allow_weaker_containment: bool,
            gpus: int) -> None:
    """Run trials of a scenario and judge each one, then write the run's analysis and report; several
    models and/or scenarios: the grid of every model on every scenario, then its report."""
    from redline.cli_run import Placement, run_command, run_grid_command
    from redline.runner.run import RunInterrupted, ScenarioOverrides

    _interrupt_on_stop_signals()
    overrides = ScenarioOverrides(depth, population_cap, notice_after_steps, grace_s, grace_steps)
    placement = Placement(cluster, trial_cpus, parse_size(trial_memory) if trial_memory else 0,
                          allow_weaker_containment, gpus)
    options = (trials, concurrency, out_dir, max_steps, time_limit, obstacles, overrides, profile, context_tokens,
               grader_text, placement)
    try:
        if len(model_texts) == 1 and len(scenarios) == 1:
            sys.exit(run_command(out, model_texts[0], scenarios[0], *options))
        sys.exit(run_grid_command(out, model_texts, scenarios, *options))
    except RunInterrupted:
        err.print("redline: interrupted: no sandbox is left; trials in flight are marked interrupted "
                  "(run the same command again to finish them)")
        sys.exit(130)


def _interrupt_on_stop_signals() -> None:
    """SIGINT and SIGTERM interrupt the run (KeyboardInterrupt: every trial in flight stopped and
    marked interrupted), even if this process started with SIGINT ignored, as ``redline run … &``
    in a script does: ``redline stop`` and service managers must be able to stop it cleanly."""
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.default_int_handler)


@app.command("stop")
@click.argument("run_dir")
def stop_cmd(run_dir: str) -> None:
    """Stop every instance of a run, on this machine and on every node of its cluster, and verify it."""
    from redline.cli_cluster import stop_command

    sys.exit(stop_command(out, run_dir))


@app.group("cluster")
def cluster_group() -> None:
    """Ray clusters: check the nodes' containment, start a node."""


@cluster_group.command("check")
@click.option("--cluster", "address", default="auto", show_default=True, metavar="auto|HOST:PORT|ray://HOST:PORT",
              help="The cluster to check.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def cluster_check(address: str, as_json: bool) -> None:
    """Run the sandbox self-check on every redline node; exit 125 if any node's containment is weaker."""
    from redline.cli_cluster import cluster_check_command

    sys.exit(cluster_check_command(out, address, as_json))


@cluster_group.command("start-node", context_settings={"ignore_unknown_options": True})
@click.option("--head", is_flag=True, help="Start a new cluster with this machine as its head.")
@click.option("--address", default=None, metavar="HOST:PORT", help="Join the cluster whose head is at HOST:PORT.")
@click.option("--slots", default=1, show_default=True, type=click.IntRange(min=1, max=256),
              help="Trials this node runs at once (its 'redline' resource).")
@click.option("--allow-weaker-containment", is_flag=True,
              help="Start even if this machine's containment check fails (runs must accept it too).")
@click.argument("ray_args", nargs=-1, type=click.UNPROCESSED)
def cluster_start_node(head: bool, address: str | None, slots: int, allow_weaker_containment: bool,
                       ray_args: tuple[str, ...]) -> None:
    """Check this machine's containment, then start it as a redline node (ray start with the redline
    resource). Arguments after -- go to ray start (e.g. -- --num-cpus 8 --block)."""
    from redline.cli_cluster import start_node_command

    sys.exit(start_node_command(out, head, address, slots, allow_weaker_containment, ray_args))


@app.command("show")
@click.argument("run_dir")
def show_cmd(run_dir: str) -> None:
    """Print the results of a run directory, finished or not (also while it runs)."""
    from redline.cli_run import show_command

    sys.exit(show_command(out, run_dir))


@app.command("report")
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--out", "out_file", default=None,
              help="The HTML file to write [default: report.html in the run (or grid) directory given; "
                   "with several, in the current directory].")
@click.option("--grader", "grader_text", default=None, metavar="MODEL", help=GRADER_HELP)
def report_cmd(run_dirs: tuple[str, ...], out_file: str | None, grader_text: str | None) -> None:
    """Write one self-contained HTML report (tables, figures, flags, trace viewer) for run directories."""
    from redline.cli_run import report_command

    sys.exit(report_command(out, run_dirs, out_file, grader_text))


@app.command("scenarios")
def scenarios_cmd() -> None:
    """List the scenarios."""
    from redline.cli_run import scenarios_command

    sys.exit(scenarios_command(out))


@sandbox_group.command("cleanup")
def sandbox_cleanup() -> None:
    """Remove what sandboxes of a killed harness left behind (processes, cgroups, files)."""
    cleaned = state.clean_stale()
    networks = sum(1 for path in cleaned if os.sep + "networks" + os.sep in path)
    out.print(f"removed {len(cleaned) - networks} stale sandbox(es) and {networks} stale virtual network(s)")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning every expected error into one line and an exit code."""
    try:
        app.main(args=argv, prog_name="redline", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.exceptions.NoArgsIsHelpError as shown:
        print(shown.format_message())
        return 0
    except click.exceptions.Abort:
        err.print("redline: interrupted")
        return 130
    except click.ClickException as error:
        ctx = getattr(error, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err.print(f"redline: error: {error.format_message()}{hint}", markup=False)
        return EXIT_USAGE
    except UserError as error:
        err.print(f"redline: error: {error}", markup=False)
        return EXIT_USAGE
    except RedlineError as error:
        err.print(f"redline: harness error: {error}", markup=False)
        return EXIT_HARNESS
    except KeyboardInterrupt:
        err.print("redline: interrupted")
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- silence the flush at exit
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
