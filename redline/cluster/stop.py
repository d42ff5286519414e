"""``redline stop RUN_DIR``: the kill switch. Every instance of a run stops, on every node, within
seconds, and the stop is verified from process facts.

1. The runner (the run's driver) is told to stop: SIGINT to the process that ``status.json`` of
   a running trial names, after checking with the kernel that it is that same process (pid, start
   time, boot). It stops its trials and marks them interrupted, as on Ctrl-C; the same command
   resumes the run later.
2. On this machine, and -- when the run's last session ran on a Ray cluster -- on every node of
   that cluster (a Ray task pinned to each), every live sandbox labelled with the run's id is
   killed through its cgroups (:func:`redline.sandbox.bwrap.state.stop_run`), whether or not the
   runner answered; then its cgroups are read back and must be empty.

So nothing of the run keeps running even if its driver is wedged or gone; a node that cannot be
reached is reported as such.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from dataclasses import dataclass, field

from redline.errors import UserError
from redline.runner.run import read_run, run_id, runner_gone
from redline.sandbox.bwrap.state import StoppedSandbox, stop_run


@dataclass(frozen=True)
class NodeStop:
    """What the stop did on one machine."""

    where: str  # "this machine", or a node's address
    sandboxes: list[StoppedSandbox] = field(default_factory=list)
    problem: str = ""  # the node could not be asked

    @property
    def verified(self) -> bool:
        """Every sandbox of the run there is empty (no process left), and the node answered."""
        return not self.problem and all(s.empty for s in self.sandboxes)


@dataclass(frozen=True)
class RunStop:
    """The whole stop: the runner signalled (its pid, or ``None``), and each machine's part."""

    run_id: str
    runner_pid: int | None
    nodes: list[NodeStop]

    @property
    def verified(self) -> bool:
        return all(node.verified for node in self.nodes)


def _stop_here(identity: str) -> list[StoppedSandbox]:
    return stop_run(identity)


def _signal_runner(run_dir: str, run: dict) -> int | None:
    """SIGINT to the live runner of this machine that a running trial names; its pid, or None."""
    for trial_id in run.get("trial_ids", []):
        try:
            with open(os.path.join(run_dir, "trials", str(trial_id), "status.json"), encoding="utf-8") as handle:
                status = json.load(handle)
        except (OSError, ValueError):
            continue
        runner = status.get("runner") if isinstance(status, dict) and status.get("status") == "running" else None
        if (isinstance(runner, dict) and runner.get("pid") and runner.get("host") == socket.gethostname()
                and not runner_gone(runner) and int(runner["pid"]) != os.getpid()):
            os.kill(int(runner["pid"]), signal.SIGINT)
            return int(runner["pid"])
    return None


def _cluster_address(run: dict) -> str | None:
    sessions = [e for e in run.get("executors", []) if isinstance(e, dict)]
    last = sessions[-1] if sessions else {}
    return str(last["cluster"]) if last.get("kind") == "ray" and last.get("cluster") else None


def stop_run_everywhere(run_dir: str) -> RunStop:
    """Stop the run in ``run_dir`` (see the module docstring). :class:`UserError` if it is not a run
    directory, or if its cluster is named but Ray is not installed here."""
    if not os.path.isfile(os.path.join(run_dir, "run.json")):
        raise UserError(f"{run_dir} is not a run directory (no run.json): give what `redline run --out` wrote")
    run = read_run(run_dir)
    identity = run_id(run, run_dir)
    runner = _signal_runner(run_dir, run)
    nodes = [NodeStop("this machine", _stop_here(identity))]
    address = _cluster_address(run)
    if address:
        nodes += _stop_on_cluster(address, identity)
    return RunStop(identity, runner, nodes)


def _stop_on_cluster(address: str, identity: str) -> list[NodeStop]:
    from redline.cluster.connection import connect, on_node, redline_nodes

    ray = connect(address)
    task = ray.remote(_stop_here)
    nodes = redline_nodes(ray)
    refs = [(node, task.options(num_cpus=0, resources={"redline": 0.001}, max_retries=0,
                                scheduling_strategy=on_node(node.node_id)).remote(identity)) for node in nodes]
    stops = []
    for node, ref in refs:
        try:
            stops.append(NodeStop(f"node {node.address} ({node.node_id[:12]})", ray.get(ref, timeout=60)))
        except Exception as error:  # noqa: BLE001 -- that node's failure, reported
            stops.append(NodeStop(f"node {node.address}", problem=f"{type(error).__name__}: {error}"[:300]))
    return stops
