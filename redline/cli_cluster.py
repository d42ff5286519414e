"""``redline cluster check``, ``redline cluster start-node`` and ``redline stop``."""

from __future__ import annotations

import json
import os
import shutil
import sys

from rich.console import Console
from rich.markup import escape

from redline.cluster.nodes import NodeCheck
from redline.errors import HarnessError, UserError


def _show_check(console: Console, check: NodeCheck) -> None:
    node = check.node
    name = (f"{check.hostname or '?'} ({node.address}, node {node.node_id[:12]}, {node.slots} slot(s), "
            f"{node.cpus:g} CPU, {node.gpus:g} GPU)")
    mark = "[green]✓ passes[/green]" if check.passed else "[red]✗ weaker[/red]"
    console.print(f"{mark} {escape(name)}" + (f" — {escape(check.backend)}" if check.backend else ""))
    for gap in check.gaps:
        console.print(f"    [red]✗[/red] {escape(gap)}")


def cluster_check_command(console: Console, address: str, as_json: bool) -> int:
    """Check every redline node of the cluster at ``address``; exit 0 when all pass, 125 otherwise."""
    from redline.cluster.connection import connect, redline_nodes
    from redline.cluster.nodes import check_nodes

    ray = connect(address)
    checks = check_nodes(ray, redline_nodes(ray))
    if not checks:
        raise UserError(f"the cluster at {address} has no node that advertises the 'redline' resource: start "
                        "nodes with 'redline cluster start-node'")
    if as_json:
        print(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        console.print(f"[bold]redline cluster check[/bold] — {len(checks)} node(s) at {escape(address)}")
        for check in checks:
            _show_check(console, check)
    failed = [c for c in checks if not c.passed]
    if failed:
        raise HarnessError(f"{len(failed)} of {len(checks)} node(s) have weaker containment: no trial is placed "
                           "on them unless a run accepts it with --allow-weaker-containment")
    return 0


def start_node_command(console: Console, head: bool, address: str | None, slots: int, allow_weaker: bool,
                       ray_args: tuple[str, ...]) -> int:
    """Check this machine's containment (a failure is refused unless ``allow_weaker``), then become
    a redline node: ``ray start`` with the ``redline`` resource (``slots`` trials at once). Does
    not return when it works (it becomes ``ray start``)."""
    from redline.cluster.connection import NODE_RESOURCE, check_address, import_ray
    from redline.cluster.nodes import check_here

    import_ray()
    if head == bool(address):
        raise UserError("give either --head (start a cluster) or --address HOST:PORT (join one)")
    if address:
        check_address(address)
    found = check_here()
    gaps = [f"{i['name']}: {i['detail']}" for i in found["items"] if not i["enforced"]] + \
           [f"{o['name']} (observed: {o['observed']})" for o in found["observed"] if not o["passed"]]
    for gap in gaps:
        console.print(f"[red]✗[/red] {escape(gap)}")
    if gaps and not allow_weaker:
        raise HarnessError("this machine's containment is weaker than redline's: fix it (redline sandbox check), "
                           "or start the node with --allow-weaker-containment (runs must then accept it too)")
    console.print(f"containment: {'weaker, accepted' if gaps else 'all checks pass'} on {escape(found['hostname'])}")
    ray = shutil.which("ray", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if ray is None:
        raise UserError("the ray command is not installed next to redline: pip install 'redline[ray]'")
    argv = [ray, "start", *(["--head"] if head else [f"--address={address}"]),
            f"--resources={json.dumps({NODE_RESOURCE: slots})}", "--disable-usage-stats", *ray_args]
    console.print("starting: " + escape(" ".join(argv)))
    sys.stdout.flush()
    os.execv(ray, argv)
    return 0  # not reached


def stop_command(console: Console, run_dir: str) -> int:
    """``redline stop RUN_DIR`` (a run directory, or a grid's parent: every cell): exit 0 when the
    stop is verified everywhere, 125 otherwise."""
    from redline.cluster.stop import stop_run_everywhere
    from redline.runner.grid import read_grid

    grid = read_grid(run_dir) if os.path.isdir(run_dir) else None
    cells = [os.path.join(run_dir, str(cell.get("dir"))) for cell in (grid or {}).get("cells", [])
             if isinstance(cell, dict)] if grid else [run_dir]
    verified = True
    for cell in cells:
        if grid and not os.path.isfile(os.path.join(cell, "run.json")):
            continue  # a cell that has not started has nothing to stop
        stopped = stop_run_everywhere(cell)
        runner = f"the runner (pid {stopped.runner_pid}) was told to stop" if stopped.runner_pid else \
            "no live runner of this run on this machine"
        console.print(f"redline stop: run {stopped.run_id} ({escape(cell)}): {runner}")
        for node in stopped.nodes:
            if node.problem:
                console.print(f"  [red]✗[/red] {escape(node.where)}: could not be asked: {escape(node.problem)}")
                continue
            killed = sum(len(s.killed_pids) for s in node.sandboxes)
            mark = "[green]✓[/green]" if node.verified else "[red]✗[/red]"
            console.print(f"  {mark} {escape(node.where)}: {len(node.sandboxes)} sandbox(es) stopped, {killed} "
                          f"process(es) killed" + ("" if node.verified else ", but processes are left"))
        verified = verified and stopped.verified
    if not verified:
        raise HarnessError("the stop could not be verified everywhere (see above)")
    return 0
