"""Connecting to a Ray cluster, and the nodes redline may use in it."""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import dataclass
from types import ModuleType

from redline.errors import HarnessError, UserError

#: the custom resource a redline node advertises: one unit per trial that may run on it at once
NODE_RESOURCE = "redline"
#: seconds to wait for the cluster's port to answer at all
CONNECT_TIMEOUT_S = 10.0
#: what ``--cluster`` accepts besides ``auto``
ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
#: a Ray Client server that could not start the driver's server process yet (its node's runtime-env
#: agent still coming up, as on a freshly started or loaded node): asked again, after these waits
CLIENT_SERVER_NOT_READY = "Starting Ray client server failed"
CLIENT_RETRY_WAITS_S = (2.0, 5.0, 10.0)


def import_ray() -> ModuleType:
    """The ``ray`` module; a :class:`UserError` saying how to install it when it is missing."""
    try:
        import ray
    except ImportError as error:
        raise UserError("--cluster needs Ray: install redline with the ray extra "
                        "(pip install 'redline[ray]'; ./install.sh installs it)") from error
    return ray


def check_address(address: str) -> str:
    """``address`` if it is ``auto``, ``HOST:PORT`` (the cluster's GCS) or ``ray://HOST:PORT`` (Ray
    Client); otherwise a one-line :class:`UserError`."""
    if address == "auto" or ADDRESS.match(address):
        return address
    raise UserError(f"--cluster {address!r}: use auto (the cluster this machine belongs to), HOST:PORT "
                    "(its head's GCS address) or ray://HOST:PORT (Ray Client)")


def connect(address: str) -> ModuleType:
    """Join the cluster at ``address`` as a driver (once per process; later calls reuse the
    connection) and return ``ray``. :class:`UserError` when nothing answers there; a Ray Client
    server not ready yet (:data:`CLIENT_SERVER_NOT_READY`) is asked again first."""
    ray = import_ray()
    check_address(address)
    if ray.is_initialized():
        return ray
    if address != "auto":  # Ray itself keeps retrying for minutes when nothing listens
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as error:
            raise UserError(f"--cluster {address}: cannot connect to a Ray cluster there: "
                            f"{error.strerror or error}") from error
    for wait_s in CLIENT_RETRY_WAITS_S:
        try:
            return _init(ray, address)
        except UserError as error:  # Ray's own message (its head is cut in ours: a traceback can come first)
            if CLIENT_SERVER_NOT_READY not in str(error.__cause__ or error):
                raise
        time.sleep(wait_s)
    return _init(ray, address)


def _init(ray: ModuleType, address: str) -> ModuleType:
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=True, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(f"--cluster {address}: cannot connect to a Ray cluster there: "
                        f"{' '.join(str(error).split())[:300]}") from error
    return ray


@dataclass(frozen=True)
class ClusterNode:
    """One alive node that advertises :data:`NODE_RESOURCE`."""

    node_id: str
    address: str
    slots: int  # trials it may run at once (its ``redline`` resource)
    cpus: float
    gpus: float
    memory_bytes: float


def redline_nodes(ray: ModuleType) -> list[ClusterNode]:
    """The alive nodes of the connected cluster that advertise :data:`NODE_RESOURCE`, sorted by
    address; a :class:`HarnessError` when the cluster cannot be asked."""
    try:
        listed = ray.nodes()
    except Exception as error:  # noqa: BLE001 -- the cluster's failure, reported as the harness's
        raise HarnessError(f"cannot list the cluster's nodes: {error}") from error
    nodes = []
    for node in listed:
        resources = node.get("Resources") or {}
        if not node.get("Alive") or resources.get(NODE_RESOURCE, 0) < 1:
            continue
        nodes.append(ClusterNode(node_id=str(node["NodeID"]), address=str(node.get("NodeManagerAddress", "?")),
                                 slots=int(resources[NODE_RESOURCE]), cpus=float(resources.get("CPU", 0)),
                                 gpus=float(resources.get("GPU", 0)), memory_bytes=float(resources.get("memory", 0))))
    return sorted(nodes, key=lambda n: (n.address, n.node_id))


def on_node(node_id: str) -> object:
    """The scheduling strategy that runs a task on ``node_id`` and nowhere else."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
