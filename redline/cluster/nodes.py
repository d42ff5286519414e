"""The containment of every node: ``redline cluster check``, and where a run may place trials.

Each node runs the same check as ``redline sandbox check`` (:func:`check_here`), in a Ray task
pinned to it: what its sandbox backend would enforce (the containment report) and what a process
inside a real sandbox observes (the self-check). A node *passes* when every item is enforced and
every observation holds. A run places trials only on nodes that pass, unless the user accepts
weaker containment (``--allow-weaker-containment``), which the run records per node.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field
from types import ModuleType

from redline.cluster.connection import ClusterNode, on_node
from redline.errors import HarnessError, UserError

CHECK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class NodeCheck:
    """One node's check: its containment items and self-check observations, or why it failed."""

    node: ClusterNode
    hostname: str = ""
    backend: str = ""
    items: list[dict] = field(default_factory=list)  # name, enforced, detail
    observed: list[dict] = field(default_factory=list)  # name, passed, observed
    problem: str = ""  # the check could not run there

    @property
    def passed(self) -> bool:
        """Every item enforced and every observation held."""
        return (not self.problem and bool(self.items) and all(i["enforced"] for i in self.items)
                and all(o["passed"] for o in self.observed))

    @property
    def gaps(self) -> list[str]:
        """What is weaker on this node, one line each."""
        if self.problem:
            return [self.problem]
        return ([f"{i['name']}: {i['detail']}" for i in self.items if not i["enforced"]]
                + [f"{o['name']} (observed: {o['observed']})" for o in self.observed if not o["passed"]])

    def as_dict(self) -> dict:
        """JSON form (for ``run.json``'s executor record)."""
        return {**asdict(self), "passed": self.passed}


def check_here() -> dict:
    """On the node this runs on: the containment report and the self-check of a fresh sandbox
    with the default spec (accepting weaker containment so that the check can observe it)."""
    from redline.sandbox import create_sandbox, default_spec, get_backend
    from redline.sandbox.selfcheck import run_self_check

    spec = default_spec(accept_weaker_containment=True)
    report = get_backend().containment(spec)
    with create_sandbox(spec) as box:
        observed = [asdict(check) for check in run_self_check(box)]
    return {"hostname": socket.gethostname(), "backend": report.backend,
            "items": [asdict(item) for item in report.items], "observed": observed}


def check_nodes(ray: ModuleType, nodes: list[ClusterNode]) -> list[NodeCheck]:
    """:func:`check_here` on every node at once (a failure on one node is that node's ``problem``)."""
    task = ray.remote(check_here)
    refs = {node.node_id: task.options(num_cpus=0, resources={"redline": 0.001}, max_retries=0,
                                       scheduling_strategy=on_node(node.node_id)).remote() for node in nodes}
    checks = []
    for node in nodes:
        try:
            found = ray.get(refs[node.node_id], timeout=CHECK_TIMEOUT_S)
            checks.append(NodeCheck(node, found["hostname"], found["backend"], found["items"], found["observed"]))
        except Exception as error:  # noqa: BLE001 -- recorded as that node's failure
            checks.append(NodeCheck(node, problem=f"the check did not run: {type(error).__name__}: "
                                                  f"{' '.join(str(error).split())[:300]}"))
    return checks


def usable_nodes(checks: list[NodeCheck], accept_weaker: bool) -> list[NodeCheck]:
    """The nodes a run may place trials on: those that pass, and with ``accept_weaker`` also those
    whose check ran but found weaker containment. A :class:`UserError` when none is left, naming
    what is weaker where."""
    usable = [c for c in checks if c.passed or (accept_weaker and not c.problem)]
    if usable:
        return usable
    if not checks:
        raise UserError("the cluster has no node that advertises the 'redline' resource: start nodes with "
                        "'redline cluster start-node'")
    reasons = "; ".join(f"{c.hostname or c.node.address}: {', '.join(c.gaps)[:200]}" for c in checks)
    hint = "" if accept_weaker else " (accept it with --allow-weaker-containment: it is recorded)"
    raise UserError(f"no node of the cluster may run trials: {reasons}{hint}")


def require_checked(checks: list[NodeCheck]) -> None:
    """A :class:`HarnessError` if no check ran at all (every node failed to answer)."""
    if checks and all(c.problem for c in checks):
        raise HarnessError("no node of the cluster answered its containment check: "
                           + "; ".join(f"{c.node.address}: {c.problem}" for c in checks))
