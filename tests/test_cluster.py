"""Trials on a real Ray cluster: a head and a second worker node on this machine
(:class:`redline.cluster.local.LocalCluster`: ``redline cluster start-node`` processes with one
``redline`` slot each, inside a network namespace of their own, since Ray's servers listen on every
interface). The driver is ``redline run --cluster`` in the same namespace.

Checked: trials spread over both nodes; a worker node killed mid-trial is that attempt's harness
error, set aside, and the trial is run again on the other node and counted once; a run stopped
with ``redline stop`` has no sandbox left, verified from the kernel; the containment check of
every node; placement only on the nodes a run may use. Only what this test started is stopped
(by process group), and only its namespace is deleted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (the ray extra: pip install 'redline[ray]')")

from redline.cluster.connection import ClusterNode  # noqa: E402
from redline.cluster.local import GCS_PORT, LocalCluster  # noqa: E402
from redline.cluster.nodes import NodeCheck, usable_nodes  # noqa: E402
from redline.errors import UserError  # noqa: E402
from redline.sandbox.bwrap import state  # noqa: E402

REDLINE = os.path.join(os.path.dirname(sys.executable), "redline")


@dataclass
class Cluster:
    """The test's local cluster: a head and a worker node (the one the tests kill)."""

    local: LocalCluster
    worker: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return self.local.address

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.local.command([REDLINE, *args]), capture_output=True, timeout=timeout)

    def popen_cli(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.local.command([REDLINE, *args]), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)

    def start_worker(self) -> None:
        self.worker = self.local.add_node()

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.local.kill_node(self.worker)
        self.worker = None


def _probe_gcs(cluster: Cluster) -> bool:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {GCS_PORT}), 1)"
    return subprocess.run(cluster.local.command([sys.executable, "-c", probe]), capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as local:
        made = Cluster(local)
        made.start_worker()
        yield made


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _results(run: Path) -> dict:
    return _read(run / "results.json")


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def test_the_cluster_check_passes_on_every_node(cluster: Cluster) -> None:
    done = cluster.cli("cluster", "check", "--cluster", cluster.address, "--json")
    assert done.returncode == 0, done.stderr.decode()
    checks = json.loads(done.stdout)
    assert len(checks) == 2 and all(c["passed"] for c in checks)
    names = {o["name"] for o in checks[0]["observed"]}
    assert "syscall filter" in names and "network: loopback only" in names


def test_trials_spread_over_both_nodes_and_land_in_the_run_directory(cluster: Cluster, tmp_path) -> None:
    run = tmp_path / "run"
    done = cluster.cli("run", "--model", "reference", "--trials", "2", "--cluster", cluster.address, "--out", str(run))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert f"on the Ray cluster {cluster.address}: 2 node(s), 2 slot(s)" in done.stdout.decode()
    results = _results(run)
    assert results["summary"]["successes"] == 2 and results["summary"]["errors"] == 0
    nodes = {_read(run / "trials" / t / "node.json")["node"] for t in ("t01", "t02")}
    assert len(nodes) == 2  # one trial on each node
    for trial in ("t01", "t02"):  # the whole trial came back: its trace, from the first event to the verdict
        lines = (run / "trials" / trial / "trace.jsonl").read_text().splitlines()
        events = [json.loads(line)["type"] for line in lines]
        assert events[0] == "sandbox_created" and "task_started" in events
    record = _read(run / "run.json")["executors"][-1]
    assert record["kind"] == "ray" and record["cluster"] == cluster.address
    assert len(record["nodes"]) == 2 and all(n["passed"] for n in record["nodes"])
    assert (run / "report.html").exists()


def test_a_run_through_ray_client_works_the_same(cluster: Cluster, tmp_path) -> None:
    run = tmp_path / "run"
    done = cluster.cli("run", "--model", "reference", "--trials", "1", "--cluster", cluster.local.client_address,
                       "--out", str(run))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert _results(run)["summary"]["successes"] == 1
    assert _read(run / "run.json")["executors"][-1]["cluster"] == cluster.local.client_address


def test_a_node_lost_mid_trial_is_that_attempts_harness_error_and_the_trial_runs_again(cluster: Cluster,
                                                                                       tmp_path) -> None:
    run = tmp_path / "run"
    assert cluster.worker is not None
    driver = cluster.popen_cli("run", "--model", "reference", "--trials", "2", "--cluster", cluster.address,
                               "--out", str(run))
    worker_pid = cluster.worker.pid
    on_worker = None
    deadline = time.monotonic() + 120
    while on_worker is None and time.monotonic() < deadline:  # the trial placed on the worker node, running
        for trial in ("t01", "t02"):
            try:
                status = _read(run / "trials" / trial / "status.json")
            except (OSError, ValueError):
                continue
            if status.get("status") == "running" and _descends_from(int(status.get("worker_pid", 0)), worker_pid):
                on_worker = trial
        time.sleep(0.1)
    assert on_worker is not None, "no trial started on the worker node"
    cluster.kill_worker()
    try:
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        cluster.start_worker()  # for the tests after this one
    assert driver.returncode == 0, stderr.decode()[-2000:]
    results = _results(run)
    assert results["statuses"] == {"t01": "done", "t02": "done"}
    assert results["summary"]["judged"] == results["summary"]["successes"] == 2  # counted once, never as the AI
    lost = _read(run / "trials" / on_worker / "attempt-1" / "lost.json")
    assert lost["counted"] is False and "lost with its node" in lost["error"]
    again = _read(run / "trials" / on_worker / "node.json")
    assert again["node"] != lost["node"]  # it ran again elsewhere


def test_a_run_whose_driver_was_killed_is_resumed_on_the_cluster(cluster: Cluster, tmp_path) -> None:
    run = tmp_path / "run"
    args = ("run", "--model", "reference", "--trials", "2", "--cluster", cluster.address, "--out", str(run))
    driver = cluster.popen_cli(*args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a trial is in flight
        if any((run / "trials" / t / "status.json").exists() for t in ("t01", "t02")):
            break
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    resumed = cluster.cli(*args)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    results = _results(run)
    assert results["statuses"] == {"t01": "done", "t02": "done"}
    assert results["summary"]["judged"] == results["summary"]["successes"] == 2
    assert len(_read(run / "run.json")["resumed"]) == 1


def test_stop_ends_every_instance_of_a_run_and_verifies_it(cluster: Cluster, tmp_path) -> None:
    run = tmp_path / "run"
    driver = cluster.popen_cli("run", "--model", "bundled", "--trials", "2", "--max-steps", "30",
                               "--cluster", cluster.address, "--out", str(run))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # both trials running, their sandboxes up
        states = []
        for trial in ("t01", "t02"):
            trace = run / "trials" / trial / "trace.jsonl"
            states.append(trace.exists() and b'"task_started"' in trace.read_bytes())
        if all(states):
            break
        time.sleep(0.2)
    assert all(states), "the trials did not start"
    run_id = _read(run / "run.json")["id"]
    started = time.monotonic()
    stopped = cluster.cli("stop", str(run), timeout=120)
    took = time.monotonic() - started
    assert stopped.returncode == 0, stopped.stderr.decode()
    assert "the runner (pid" in stopped.stdout.decode() and took < 60
    # process facts: no sandbox of this run is left on this machine (both nodes are on it)
    assert state.stop_run(run_id) == []
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr.decode()[:6000]
    statuses = _results(run)["statuses"]
    assert set(statuses.values()) == {"interrupted"}


def test_the_population_cap_holds_on_the_node_a_trial_runs_on(cluster: Cluster, tmp_path) -> None:
    """A chain that never stops by itself, run on the cluster: the trial's guard on its node stops
    it at the cap, verified from the kernel's facts the guard recorded, and nothing is left."""
    from redline.scenarios import load_scenario

    runaway = load_scenario("chain-of-replication").reference_replies({"depth": 99})
    for step in runaway:
        step["action"]["argument"] = step["action"]["argument"].replace("seq 1 120", "seq 1 20")
    policy = tmp_path / "runaway.json"
    policy.write_text(json.dumps(runaway))
    run = tmp_path / "run"
    done = cluster.cli("run", "--model", f"script:{policy}", "--scenario", "chain-of-replication",
                       "--population-cap", "3", "--trials", "1", "--cluster", cluster.address, "--out", str(run))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    verdict = _read(run / "trials" / "t01" / "verdict.json")
    assert verdict["error"] is None and verdict["population"]["cap"] == 3 and verdict["population"]["stopped"]
    enforced = [json.loads(line) for line in (run / "trials" / "t01" / "trace.jsonl").read_text().splitlines()
                if '"population_cap_enforced"' in line]
    assert enforced and all(e["population"] == 4 and e["killed_pids"] for e in enforced)
    assert state.stop_run(_read(run / "run.json")["id"]) == []  # no sandbox of the run is left


def test_trials_are_placed_only_on_the_nodes_a_run_may_use() -> None:
    node = ClusterNode("n1", "10.0.0.1", 1, 2.0, 0.0, 1e9)
    other = ClusterNode("n2", "10.0.0.2", 1, 2.0, 0.0, 1e9)
    good = NodeCheck(node, "a", "bwrap", [{"name": "syscall filter", "enforced": True, "detail": "on"}],
                     [{"name": "x", "passed": True, "observed": "ok"}])
    weak = NodeCheck(other, "b", "bwrap", [{"name": "syscall filter", "enforced": False, "detail": "no seccomp"}],
                     [{"name": "x", "passed": True, "observed": "ok"}])
    silent = NodeCheck(other, problem="the check did not run: timeout")
    assert usable_nodes([good, weak], accept_weaker=False) == [good]
    assert usable_nodes([good, weak], accept_weaker=True) == [good, weak]
    assert usable_nodes([good, silent], accept_weaker=True) == [good]  # a node that did not answer: never
    with pytest.raises(UserError, match="syscall filter: no seccomp.*--allow-weaker-containment"):
        usable_nodes([weak], accept_weaker=False)


def test_a_ray_client_server_not_ready_yet_is_asked_again_and_other_failures_are_not(monkeypatch) -> None:
    """Ray's client server fails a driver's first connection while its node's runtime-env agent is
    still coming up (seen on a loaded machine): that one failure is retried; others are usage errors."""
    import socket
    from types import SimpleNamespace

    from redline.cluster import connection

    def fake_ray(failures: list[str]) -> SimpleNamespace:
        calls = []

        def init(**_: object) -> None:
            calls.append(1)
            if failures:
                raise RuntimeError(failures.pop(0))
        return SimpleNamespace(is_initialized=lambda: False, init=init, calls=calls)

    monkeypatch.setattr(connection, "CLIENT_RETRY_WAITS_S", (0.0, 0.0))
    not_ready = "Initialization failure from server: RuntimeError: Starting Ray client server failed. See logs."
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"ray://127.0.0.1:{server.getsockname()[1]}"
        ray = fake_ray([not_ready, not_ready])
        monkeypatch.setattr(connection, "import_ray", lambda: ray)
        assert connection.connect(address) is ray and len(ray.calls) == 3
        ray = fake_ray([not_ready] * 3)
        with pytest.raises(UserError, match="Starting Ray client server failed"):
            connection.connect(address)
        assert len(ray.calls) == 3  # two retries, then the error
        # the proxier's traceback comes first: the retry reads Ray's whole message, not our cut of it
        ray = fake_ray(["Initialization failure from server: Traceback " + "x" * 400 + " " + not_ready])
        monkeypatch.setattr(connection, "import_ray", lambda: ray)
        assert connection.connect(address) is ray and len(ray.calls) == 2
        ray = fake_ray(["version mismatch"])
        with pytest.raises(UserError, match="cannot connect to a Ray cluster there: version mismatch"):
            connection.connect(address)
        assert len(ray.calls) == 1


def test_cluster_usage_errors_come_before_anything_runs(tmp_path) -> None:
    for args, message in ((("--cluster", "not an address"), "use auto"),
                          (("--cluster", "127.0.0.1:9", "--model", "human"), "a person answers at this machine"),
                          (("--trial-cpus", "2"), "only with --cluster")):
        done = subprocess.run([REDLINE, "run", *args, "--out", str(tmp_path / "run")], capture_output=True,
                              timeout=120)
        assert done.returncode == 2 and message in done.stderr.decode(), done.stderr
        assert done.stderr.decode().strip().count("\n") == 0
    assert not (tmp_path / "run").exists()
    nobody = subprocess.run([REDLINE, "cluster", "check", "--cluster", "127.0.0.1:9"], capture_output=True,
                            timeout=120)
    assert nobody.returncode == 2 and "cannot connect to a Ray cluster" in nobody.stderr.decode()


def test_a_sandbox_cannot_reach_the_clusters_control_port(cluster: Cluster) -> None:
    """The GCS listens on every interface of the nodes' namespace; a sandbox created by a node has
    its own network namespace and reaches none of it."""
    script = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {GCS_PORT}), 2)\n    print('reached')\n"
              "except OSError as e:\n    print('refused', e)\n")
    probe = (f"from redline.sandbox import create_sandbox\nwith create_sandbox() as box:\n"
             f"    print(box.exec(['python3', '-c', {script!r}]).text())\n")
    done = subprocess.run(cluster.local.command([sys.executable, "-c", probe]), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert "refused" in done.stdout.decode() and "reached" not in done.stdout.decode()
    assert _probe_gcs(cluster)  # while the port is there, outside the sandbox
