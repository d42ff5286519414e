"""The bwrap backend: checks the host once, then creates :class:`BwrapSandbox` instances."""

from __future__ import annotations

import dataclasses
import threading

from redline.sandbox import netns, syscalls
from redline.sandbox.base import ContainmentItem, ContainmentReport
from redline.sandbox.bwrap import host, launch, state
from redline.sandbox.bwrap.sandbox import BwrapSandbox
from redline.sandbox.errors import WeakContainmentRefused
from redline.sandbox.spec import SandboxSpec, format_size


class BwrapBackend:
    """Factory of bubblewrap sandboxes. The first use checks the host and removes whatever a
    previously killed harness left behind."""

    name = "bwrap"

    def __init__(self) -> None:
        self._facts: host.HostFacts | None = None
        self._spawner: launch.Spawner | None = None
        self._lock = threading.Lock()
        #: weaker containment accepted for every sandbox of this process (a run's
        #: ``--allow-weaker-containment``, on its own machine or on a cluster node); recorded in
        #: each sandbox's report like the spec's own acceptance
        self.accept_weaker_containment = False

    def _ready(self) -> tuple[host.HostFacts, launch.Spawner]:
        with self._lock:
            if self._facts is None or self._spawner is None:
                facts = host.probe()
                state.clean_stale()
                self._facts, self._spawner = facts, launch.Spawner()
            return self._facts, self._spawner

    def containment(self, spec: SandboxSpec) -> ContainmentReport:
        """What a sandbox created from ``spec`` on this host would enforce."""
        facts, _ = self._ready()
        return _report(facts, spec)

    def create(self, spec: SandboxSpec) -> BwrapSandbox:
        """Create a sandbox. Raises :class:`WeakContainmentRefused` when the host cannot enforce
        part of the containment and neither ``spec`` nor this backend accepts weaker containment."""
        facts, spawner = self._ready()
        if self.accept_weaker_containment and not spec.accept_weaker_containment:
            spec = dataclasses.replace(spec, accept_weaker_containment=True)
        report = _report(facts, spec)
        if report.missing and not spec.accept_weaker_containment:
            gaps = "; ".join(f"{item.name} ({item.detail})" for item in report.missing)
            raise WeakContainmentRefused(
                f"this host cannot enforce: {gaps}. Fix the host, or accept weaker containment "
                "with --allow-weaker-containment (it is recorded in the results)"
            )
        return BwrapSandbox(spec, facts, report, spawner)


def _report(facts: host.HostFacts, spec: SandboxSpec) -> ContainmentReport:
    limits, cg = spec.limits, facts.cgroups
    via = cg.label if cg.version else (cg.problem or "no cgroups")

    def limit(name: str, ok: bool, value: str, controller: str) -> ContainmentItem:
        detail = (f"{value} ({via} {controller})" if ok else
                  f"no {controller} controller ({via}): enable it in the kernel (cgroup_enable={controller}) "
                  f"and mount it under /sys/fs/cgroup")
        return ContainmentItem(name, ok, detail)

    extra = ", ".join(inside for inside in sorted(spec.ro_paths.values()))
    hidden = f"; absent: {', '.join(spec.hidden_paths)}" if spec.hidden_paths else ""
    items = (
        ContainmentItem("user namespace", True,
                        f"uid {launch.INSIDE_UID} inside, its own unprivileged host uid (from "
                        f"{state.uid_base()}), no capabilities, no_new_privs, no nested user namespaces"),
        ContainmentItem("pid namespace", True, "own process tree; catatonit as pid 1; host processes invisible"),
        _network_item(spec),
        ContainmentItem("mount namespace", True,
                        "read-only /usr and selected /etc" + (f", {extra}" if extra else "")
                        + hidden + "; own /proc, minimal /dev; host /root, /home, /tmp and the harness invisible"),
        _devices_item(spec),
        ContainmentItem("ipc and uts namespaces", True, f"own System V IPC; hostname {spec.hostname!r}"),
        ContainmentItem("environment", True, "cleared; only the sandbox's own variables"),
        syscalls.containment_item(),
        limit("memory limit", cg.memory, format_size(limits.memory_bytes), "memory"),
        limit("process limit", cg.pids, f"{limits.max_processes} processes", "pids"),
        limit("cpu limit", cg.cpu, f"{limits.cpus:g} CPUs", "cpu"),
        ContainmentItem("wall-clock limit", True, f"{limits.wall_time_s:g} s, then the harness destroys the sandbox"),
        ContainmentItem("writable storage", True,
                        f"{launch.HOME} {format_size(limits.workspace_bytes)}, /tmp "
                        f"{format_size(limits.tmp_bytes)}, /dev/shm 64 MiB (memory-backed); root read-only"),
        ContainmentItem("teardown", cg.freeze,
                        "freeze then kill every process in the cgroup; dies with the harness; "
                        "stale sandboxes removed at next start" if cg.freeze else f"no freezer: {via}"),
    )
    return ContainmentReport(backend=f"bwrap ({facts.bwrap_version})", items=items,
                             weaker_accepted=spec.accept_weaker_containment and any(not i.enforced for i in items))


def _devices_item(spec: SandboxSpec) -> ContainmentItem:
    """The devices item: the host character devices passed into the minimal /dev (each checked
    to be one when the spec was made) and the driver paths bound read-only."""
    passed = ", ".join(inside if host == inside else f"{inside} (host {host})"
                       for host, inside in sorted(spec.devices.items(), key=lambda item: item[1]))
    detail = (f"passed in: {passed}; no other host device" if passed else
              "none passed: only the minimal /dev (null, zero, full, random, urandom, tty, a private pts)")
    drivers = ", ".join(sorted(spec.driver_paths.values()))
    return ContainmentItem("devices", True, detail + (f"; driver paths read-only: {drivers}" if drivers else ""))


def _network_item(spec: SandboxSpec) -> ContainmentItem:
    """The network item: fixed for ``loopback``; read from the kernel for ``attached``, and
    enforced only if the namespace is not the host's, belongs to the host (so the sandbox cannot
    reconfigure it) and has no route through a gateway."""
    path = spec.network.netns_path
    if path is None:
        return ContainmentItem("network namespace", True, "loopback only (interface lo), no route out")
    view = netns.inspect(path)
    interfaces = "; ".join(f"{name} {' '.join(addresses)}" for name, addresses in sorted(view.addresses.items()))
    problems = [text for bad, text in (
        (view.is_harness_namespace, "it is the host's own network namespace"),
        (not view.owned_by_harness, "it belongs to another user namespace, which may reconfigure it"),
        (bool(view.gateways), f"it routes beyond its links ({', '.join(view.gateways)})"),
    ) if bad]
    detail = (f"private virtual network {path}: {interfaces or 'no addresses'}; "
              f"routes {', '.join(view.routes) or 'none'}")
    if problems:
        return ContainmentItem("network namespace", False, detail + "; but " + "; ".join(problems))
    return ContainmentItem("network namespace", True,
                           detail + "; no gateway, so nothing beyond those links is reachable; "
                           "owned by the host, so the sandbox cannot change it")
