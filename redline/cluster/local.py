"""A Ray cluster on this one machine, for trying ``--cluster`` out, the tests and the benchmarks.

Every node is a ``redline cluster start-node … -- --block`` process in a session of its own,
all inside a network namespace this creates (Ray's servers listen on every interface of their
host; in the namespace that is only its loopback, so nothing is exposed). Commands that talk to
the cluster run in the same namespace (:meth:`LocalCluster.command`). :meth:`LocalCluster.close`
kills the node processes it started, by process group, and deletes its namespace, and nothing else.

Usage::

    with LocalCluster(workdir) as cluster:
        cluster.add_node()                      # a second node (the head is the first)
        subprocess.run(cluster.command(["redline", "run", "--cluster", cluster.address, ...]))
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from redline.errors import HarnessError

#: the head's GCS port inside the cluster's own namespace (nothing else listens there)
GCS_PORT = 46390
#: the head's Ray Client server (``ray://``), also inside the namespace
CLIENT_PORT = 46391
START_TIMEOUT_S = 120.0


class LocalCluster:
    """A head node (and :meth:`add_node` more), each with ``slots`` redline slots and one CPU."""

    def __init__(self, workdir: str | os.PathLike, slots: int = 1) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.slots = slots
        self.namespace = f"redline-cluster-{os.getpid()}-{secrets.token_hex(3)}"
        self.nodes: list[subprocess.Popen] = []
        subprocess.run(["ip", "netns", "add", self.namespace], check=True)
        try:
            subprocess.run(self.command(["ip", "link", "set", "lo", "up"]), check=True)
            self.nodes.append(self._start(["--head"], 0))
            self._wait(lambda: self._reachable(), "the head did not start")
        except BaseException:
            self.close()
            raise

    @property
    def address(self) -> str:
        """What ``--cluster`` takes (the head's GCS)."""
        return f"127.0.0.1:{GCS_PORT}"

    @property
    def client_address(self) -> str:
        """The same cluster through Ray Client."""
        return f"ray://127.0.0.1:{CLIENT_PORT}"

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the cluster's namespace (``nsenter --net``: unlike ``ip netns exec``
        it keeps the host's /sys, so cgroups stay visible)."""
        return ["nsenter", f"--net=/run/netns/{self.namespace}", "--", *argv]

    def add_node(self) -> subprocess.Popen:
        """Start one more node and wait until the cluster counts it."""
        node = self._start(["--address", self.address], len(self.nodes))
        self.nodes.append(node)
        self.wait_for_nodes(len([n for n in self.nodes if n.poll() is None]))
        return node

    def kill_node(self, node: subprocess.Popen) -> None:
        """SIGKILL every process of ``node`` (its process group: raylet, workers, their sandboxes)."""
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=30)
        self.nodes.remove(node)

    def wait_for_nodes(self, count: int) -> None:
        """Until the cluster has ``count`` alive nodes with redline slots."""
        script = (f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); "
                  "print(sum(1 for n in ray.nodes() if n['Alive'] and n['Resources'].get('redline')))")

        def counted() -> bool:
            done = subprocess.run(self.command([sys.executable, "-c", script]), capture_output=True)
            return done.returncode == 0 and done.stdout.decode().split()[-1:] == [str(count)]

        self._wait(counted, f"the cluster did not reach {count} node(s)")

    def _start(self, role: list[str], index: int) -> subprocess.Popen:
        ports = 20000 + 1000 * index
        ray_args = ["--block", "--num-cpus", "1", "--object-store-memory", "80000000",
                    "--min-worker-port", str(ports + 100), "--max-worker-port", str(ports + 999),
                    "--dashboard-agent-listen-port", str(ports + 1)]
        if "--head" in role:
            ray_args += ["--port", str(GCS_PORT), "--include-dashboard", "false",
                         "--ray-client-server-port", str(CLIENT_PORT), "--temp-dir", str(self.workdir / "ray")]
        redline = os.path.join(os.path.dirname(sys.executable), "redline")
        with open(self.workdir / f"node-{index}.log", "wb") as log:
            return subprocess.Popen(self.command([redline, "cluster", "start-node", *role, "--slots", str(self.slots),
                                                  "--", *ray_args]),
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "RAY_ADDRESS": ""})

    def _reachable(self) -> bool:
        if self.nodes and self.nodes[0].poll() is not None:
            log = (self.workdir / "node-0.log").read_text(errors="replace")[-1500:]
            raise HarnessError(f"the head node exited: {log}")
        probe = (f"import socket; socket.create_connection(('127.0.0.1', {GCS_PORT}), 1); "
                 f"socket.create_connection(('127.0.0.1', {CLIENT_PORT}), 1)")
        return subprocess.run(self.command([sys.executable, "-c", probe]), capture_output=True).returncode == 0

    @staticmethod
    def _wait(condition, message: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise HarnessError(message)
            time.sleep(0.5)

    def close(self) -> None:
        """Kill the nodes this started and delete the namespace."""
        for node in list(self.nodes):
            self.kill_node(node)
        subprocess.run(["ip", "netns", "delete", self.namespace], check=False, capture_output=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
