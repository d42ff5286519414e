"""The Ray executor: one Ray task per trial, on nodes whose containment was checked.

Placement. The driver places each trial itself, on a node that passed its check
(:mod:`redline.cluster.nodes`) and has a free slot (its ``redline`` resource; the node with the
most free slots first), with a hard node-affinity strategy; the task also asks Ray for
:class:`TrialResources` (CPUs, memory, GPUs and one ``redline`` unit), so Ray holds it until they
are free. Placing it ourselves is what keeps trials off nodes that failed the check: Ray has no
"anywhere but" constraint.

A trial on a node. The task (:func:`run_on_node`) runs :func:`redline.runner.executor.execute` in
a fresh directory on the node, streams its trace through the relay as it is written (the driver
appends it to the run directory), polls the relay for a stop request, and returns the verdict
with every file of the trial directory, which the driver unpacks into the run directory. A
trial's sandboxes live in the task's worker process; if that process or its node dies, the
sandboxes die with it (bwrap ``--die-with-parent``, and the node's next start cleans their
cgroups).

A lost node. Ray retries nothing (``max_retries=0``): the driver does. When an attempt ends with
its node or worker gone (not with an error of the trial itself, which is a verdict), the attempt's
files are set aside as ``attempt-<n>/`` with ``lost.json`` (why, and where), the node is dropped
from the run, and the trial starts again on another node, up to :data:`MAX_ATTEMPTS` attempts;
then it ends with a harness-error verdict. So a lost node is never counted as the AI failing, and
an attempt that was given up cannot finish the trial: the driver no longer waits for it and the
relay drops what it sends.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from types import ModuleType

from redline.cluster.connection import NODE_RESOURCE, ClusterNode, on_node
from redline.cluster.nodes import NodeCheck
from redline.cluster.relay import TrialRelay
from redline.errors import HarnessError
from redline.judge.facts import Verdict
from redline.runner.executor import Started, TrialEnd, TrialExecutor, TrialJob, execute
from redline.runner.trial import TrialControl, TrialInterrupted, write_json

#: attempts of one trial before it ends with a harness error (each lost with its node)
MAX_ATTEMPTS = 3
#: seconds between two trace pieces a running trial sends, and between its stop polls
STREAM_INTERVAL_S = 0.5
#: seconds a stopped trial gets to end by itself before its task is cancelled
STOP_GRACE_S = 20.0


@dataclass(frozen=True)
class TrialResources:
    """What each trial asks of its node, besides one ``redline`` slot and its GPUs (``TrialJob.gpus``)."""

    cpus: float = 1.0
    memory_bytes: int = 0  # 0: not asked


def _pack(directory: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in sorted(os.listdir(directory)):
            archive.add(os.path.join(directory, name), arcname=name)
    return buffer.getvalue()


def unpack(data: bytes, directory: str) -> None:
    """Write the trial files in ``data`` (:func:`_pack`'s archive) into ``directory``: regular files
    and directories only, every name inside ``directory``; a :class:`HarnessError` otherwise."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = archive.getmembers()
        for member in members:
            target = os.path.realpath(os.path.join(directory, member.name))
            if not (member.isfile() or member.isdir()) or not target.startswith(os.path.realpath(directory) + os.sep):
                raise HarnessError(f"a trial's files from its node hold {member.name!r}, which is not a plain file")
        for member in members:
            target = os.path.join(directory, member.name)
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            with open(target + ".tmp", "wb") as handle:
                shutil.copyfileobj(source, handle)
            os.replace(target + ".tmp", target)


class _Streamer:
    """On the node: sends each new piece of the trial's trace to the relay, and stops the trial
    when the relay says so."""

    def __init__(self, ray: ModuleType, relay, job: TrialJob, attempt: int, trace: str, control: TrialControl) -> None:
        self._ray, self._relay, self._job, self._attempt = ray, relay, job, attempt
        self._trace, self._control = trace, control
        self._sent = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="redline-trace-stream")
        self._thread.start()

    def _send_new(self) -> None:
        try:
            with open(self._trace, "rb") as handle:
                handle.seek(self._sent)
                piece = handle.read()
        except FileNotFoundError:
            return
        cut = piece.rfind(b"\n") + 1  # whole lines only
        if cut:
            self._relay.append.remote(self._job.trial_id, self._attempt, piece[:cut])
            self._sent += cut

    def _loop(self) -> None:
        while not self._done.wait(STREAM_INTERVAL_S):
            self._send_new()
            try:
                stop = self._ray.get(self._relay.should_stop.remote(self._job.trial_id, self._attempt), timeout=10)
            except Exception:  # noqa: BLE001 -- the driver's relay is gone: the run has ended
                stop = True
            if stop:
                self._control.stop()

    def finish(self) -> None:
        self._done.set()
        self._thread.join()
        self._send_new()


def run_on_node(job: TrialJob, attempt: int, relay) -> tuple[dict | None, bytes]:
    """The Ray task of one attempt: the trial's verdict (``None``: it was stopped) and its files."""
    import ray

    where = {"executor": "ray", "node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
             "worker_pid": os.getpid(), "attempt": attempt, "gpus": [int(i) for i in ray.get_gpu_ids()]}
    relay.started.remote(job.trial_id, attempt, where)
    work = tempfile.mkdtemp(prefix=f"redline-{job.run_id}-{job.trial_id}-{attempt}-")
    write_json(os.path.join(work, "node.json"), where)  # where this attempt ran, kept with the trial
    control = TrialControl()
    streamer = _Streamer(ray, relay, job, attempt, os.path.join(work, "trace.jsonl"), control)
    try:
        gpus = tuple(int(i) for i in ray.get_gpu_ids())  # the GPUs Ray gave this task, by index
        try:
            verdict: dict | None = execute(job, work, control, gpus)
        except TrialInterrupted:
            verdict = None
        finally:
            streamer.finish()
        return verdict, _pack(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Attempt:
    job: TrialJob
    trial_dir: str
    started: Started
    number: int
    node: str = ""
    ref: object = None


class RayExecutor(TrialExecutor):
    """Trials on the nodes in ``checks`` that may run them (see the module docstring)."""

    name = "ray"

    def __init__(self, ray: ModuleType, address: str, checks: list[NodeCheck], usable: list[NodeCheck],
                 resources: TrialResources, concurrency: int | None = None) -> None:
        self._ray, self._address, self._checks, self._resources = ray, address, checks, resources
        self._nodes: dict[str, ClusterNode] = {c.node.node_id: c.node for c in usable}
        self._accepted_weaker = [c.node.node_id for c in usable if not c.passed]
        self._busy: dict[str, int] = dict.fromkeys(self._nodes, 0)
        self._concurrency = concurrency
        self._queue: list[_Attempt] = []
        self._running: dict[object, _Attempt] = {}
        self._task = ray.remote(run_on_node)
        here = ray.get_runtime_context().get_node_id()
        self._relay = ray.remote(TrialRelay).options(num_cpus=0, scheduling_strategy=on_node(here)).remote()

    def describe(self) -> dict:
        return {"kind": self.name, "cluster": self._address,
                "resources": {"cpus": self._resources.cpus, "memory_bytes": self._resources.memory_bytes},
                "nodes": [c.as_dict() for c in self._checks], "used": sorted(self._nodes),
                "weaker_containment_accepted_on": self._accepted_weaker}

    def placement_line(self) -> str:
        slots = sum(node.slots for node in self._nodes.values())
        cap = f", at most {self._concurrency} at once" if self._concurrency else ""
        return f"on the Ray cluster {self._address}: {len(self._nodes)} node(s), {slots} slot(s){cap}"

    # -- placing ------------------------------------------------------------------------------

    def submit(self, job: TrialJob, trial_dir: str, started: Started) -> None:
        threads = max(1, min(2, int(self._resources.cpus)))  # llama.cpp threads: the CPUs the trial asked for
        self._queue.append(_Attempt(dataclasses.replace(job, llm_threads=threads), trial_dir, started, 1))
        self._place()

    def _free_node(self) -> str | None:
        if self._concurrency is not None and len(self._running) >= self._concurrency:
            return None
        free = [(self._nodes[n].slots - busy, n) for n, busy in self._busy.items() if busy < self._nodes[n].slots]
        return max(free)[1] if free else None

    def _place(self) -> None:
        while self._queue:
            node = self._free_node()
            if node is None:
                return
            attempt = self._queue.pop(0)
            self._ray.get(self._relay.expect.remote(attempt.job.trial_id, attempt.number))
            resources = self._resources
            options = {"num_cpus": resources.cpus, "num_gpus": attempt.job.gpus, "max_retries": 0,
                       "resources": {NODE_RESOURCE: 1}, "scheduling_strategy": on_node(node)}
            if resources.memory_bytes:
                options["memory"] = resources.memory_bytes
            attempt.node, attempt.ref = node, self._task.options(**options).remote(attempt.job, attempt.number,
                                                                                   self._relay)
            self._running[attempt.ref] = attempt
            self._busy[node] += 1

    # -- collecting ---------------------------------------------------------------------------

    def _drain(self) -> None:
        starts, pieces = self._ray.get(self._relay.drain.remote())
        by_trial = {a.job.trial_id: a for a in self._running.values()}
        for trial_id, number, where in starts:
            attempt = by_trial.get(trial_id)
            if attempt is not None and attempt.number == number:
                attempt.started(trial_id, where)
        for trial_id, number, piece in pieces:
            attempt = by_trial.get(trial_id)
            if attempt is not None and attempt.number == number:
                with open(os.path.join(attempt.trial_dir, "trace.jsonl"), "ab") as handle:
                    handle.write(piece)
                    handle.flush()

    def ended(self, timeout: float) -> list[TrialEnd]:
        self._drain()
        if not self._running:
            return []
        ready, _ = self._ray.wait(list(self._running), num_returns=1, timeout=timeout)
        ends = []
        for ref in ready:
            attempt = self._running.pop(ref)
            self._busy[attempt.node] = max(0, self._busy.get(attempt.node, 1) - 1)
            self._drain_final(attempt)
            end = self._finish(attempt, ref)
            if end is not None:
                ends.append(end)
        self._place()
        return ends

    def _drain_final(self, attempt: _Attempt) -> None:
        self._running[attempt.ref] = attempt  # its last pieces are still its own
        try:
            self._drain()
        finally:
            self._running.pop(attempt.ref, None)

    def _finish(self, attempt: _Attempt, ref: object) -> TrialEnd | None:
        ray = self._ray
        try:
            verdict, files = ray.get(ref)
        except (ray.exceptions.NodeDiedError, ray.exceptions.TaskUnschedulableError) as lost:
            return self._lost(attempt, lost, node_gone=True)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.ActorDiedError, ray.exceptions.ObjectLostError,
                ray.exceptions.OwnerDiedError, ray.exceptions.TaskCancelledError,
                ray.exceptions.RaySystemError) as lost:
            return self._lost(attempt, lost, node_gone=not self._node_alive(attempt.node))
        except ray.exceptions.RayTaskError as error:  # redline's own code failed on the node
            verdict = _harness_verdict(attempt.job, f"the trial failed on node {attempt.node}: "
                                                    f"{' '.join(str(error).split())[:500]}")
            write_json(os.path.join(attempt.trial_dir, "verdict.json"), verdict)
            return TrialEnd(attempt.job.trial_id, verdict)
        unpack(files, attempt.trial_dir)
        return TrialEnd(attempt.job.trial_id, verdict)

    def _lost(self, attempt: _Attempt, lost: BaseException, node_gone: bool) -> TrialEnd | None:
        """Set the attempt aside, drop its node if it is gone, and start the trial again (or give up)."""
        from redline.runner.run import set_aside_attempt

        cause = f"{type(lost).__name__}: {' '.join(str(lost).split())[:400]}"
        folder = set_aside_attempt(attempt.trial_dir)
        if folder is not None:
            write_json(os.path.join(folder, "lost.json"),
                       {"error": f"the attempt was lost with its node or worker ({cause})", "node": attempt.node,
                        "attempt": attempt.number, "at": time.time(), "counted": False})
        if node_gone:
            self._nodes.pop(attempt.node, None)
            self._busy.pop(attempt.node, None)
        if attempt.number >= MAX_ATTEMPTS or not self._nodes:
            why = "no node is left to run it" if not self._nodes else f"{attempt.number} attempts were lost"
            verdict = _harness_verdict(attempt.job, f"the trial could not finish on the cluster: {why} "
                                                    f"(last: {cause})")
            os.makedirs(attempt.trial_dir, exist_ok=True)
            write_json(os.path.join(attempt.trial_dir, "verdict.json"), verdict)
            return TrialEnd(attempt.job.trial_id, verdict)
        self._queue.insert(0, _Attempt(attempt.job, attempt.trial_dir, attempt.started, attempt.number + 1))
        return None

    def _node_alive(self, node_id: str) -> bool:
        try:
            return any(n.get("NodeID") == node_id and n.get("Alive") for n in self._ray.nodes())
        except Exception:  # noqa: BLE001 -- cannot tell: treat it as gone
            return False

    def pending(self) -> int:
        return len(self._queue) + len(self._running)

    # -- stopping -----------------------------------------------------------------------------

    def stop_all(self) -> None:
        self._queue.clear()
        trials = [a.job.trial_id for a in self._running.values()]
        if not trials:
            return
        refs = list(self._running)
        unfinished = refs
        try:  # each trial stops itself (its sandboxes destroyed) once it polls the relay
            self._ray.get(self._relay.request_stop.remote(trials), timeout=10)
            _, unfinished = self._ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE_S)
        except Exception:  # noqa: BLE001 -- cancel what is left below in any case
            pass
        for ref in unfinished:  # only tasks still running: cancelling a finished one trips a Ray check
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 -- it ended meanwhile
                pass
        if unfinished:
            try:  # let the cancelled tasks' replies arrive before anything is torn down
                self._ray.wait(unfinished, num_returns=len(unfinished), timeout=10)
            except Exception:  # noqa: BLE001 -- nothing more to wait for
                pass
        self._running.clear()

    def close(self) -> None:
        try:
            self._ray.kill(self._relay)
        except Exception:  # noqa: BLE001 -- the cluster may be gone already
            pass


def _harness_verdict(job: TrialJob, message: str) -> dict:
    verdict = Verdict.harness_error(message, "", list(job.scenario.criteria)).to_json()
    verdict.update(trial=job.trial_id, model=job.model.label, scenario=job.scenario.id,
                   instructed=job.scenario.instructed)
    return verdict
