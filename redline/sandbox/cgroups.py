"""Resource limits and reliable teardown through Linux control groups, v1 or v2.

No systemd is assumed: the harness writes cgroupfs directly, as root. On cgroup v1 every
sandbox gets one group per controller (memory, pids, cpu, cpuacct, freezer) nested under the
harness's own group in that hierarchy, so host-level limits on the harness still apply. On a
pure cgroup v2 host it gets ``/sys/fs/cgroup/redline/<name>``.

The freezer (v1) or ``cgroup.kill`` (v2) makes teardown immune to fork races: every process in
the group is stopped before it is killed, so nothing can fork its way out.
"""

from __future__ import annotations

import abc
import errno
import os
import signal
import time
from dataclasses import dataclass, field

from redline.sandbox.base import ResourceUsage
from redline.sandbox.errors import SandboxError
from redline.sandbox.spec import Limits

_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
_V2_ROOT = "/sys/fs/cgroup"
_CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupSupport:
    """What the host's cgroups can enforce for a sandbox.

    ``mounts`` maps each usable controller to the directory under which sandbox groups are
    created (v1) or holds the single v2 parent under ``"unified"``.
    """

    version: int | None
    memory: bool = False
    pids: bool = False
    cpu: bool = False
    freeze: bool = False
    mounts: dict[str, str] = field(default_factory=dict)
    problem: str | None = None

    @property
    def label(self) -> str:
        """``cgroup v1``, ``cgroup v2`` or ``no cgroups``."""
        return f"cgroup v{self.version}" if self.version else "no cgroups"


def _read(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)


def _own_cgroup_paths() -> dict[str, str]:
    """Controller name (or ``""`` for v2) -> this process's group path in that hierarchy."""
    paths = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _cgroup_mounts() -> tuple[dict[str, str], str | None]:
    """v1 controller -> mount point, and the v2 mount point (if any)."""
    v1, v2 = {}, None
    for line in _read("/proc/self/mounts").splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        if parts[2] == "cgroup":
            for option in parts[3].split(","):
                if option in _V1_CONTROLLERS:
                    v1[option] = parts[1]
        elif parts[2] == "cgroup2" and v2 is None:
            v2 = parts[1]
    return v1, v2


def detect() -> CgroupSupport:
    """Find out which cgroup version and controllers the harness can use on this host."""
    if os.geteuid() != 0:
        return CgroupSupport(None, problem="redline must run as root to create cgroups")
    try:
        v1, v2 = _cgroup_mounts()
        own = _own_cgroup_paths()
    except OSError as error:
        return CgroupSupport(None, problem=f"cannot read cgroup mounts: {error}")
    if "memory" in v1 or "pids" in v1:
        mounts = {c: os.path.join(m, own.get(c, "/").lstrip("/"), "redline") for c, m in v1.items()}
        cpu_ok = "cpu" in v1 and os.path.exists(os.path.join(v1["cpu"], "cpu.cfs_quota_us"))
        return CgroupSupport(
            1, memory="memory" in v1, pids="pids" in v1, cpu=cpu_ok, freeze="freezer" in v1, mounts=mounts
        )
    if v2 and os.path.exists(os.path.join(v2, "cgroup.controllers")):
        available = set(_read(os.path.join(v2, "cgroup.controllers")).split())
        return CgroupSupport(
            2,
            memory="memory" in available,
            pids="pids" in available,
            cpu="cpu" in available,
            freeze=True,
            mounts={"unified": os.path.join(v2, "redline")},
        )
    return CgroupSupport(None, problem="no cgroup filesystem is mounted under /sys/fs/cgroup")


class SandboxCgroup(abc.ABC):
    """The control groups of one sandbox."""

    #: Every directory created for this sandbox (recorded for stale cleanup).
    directories: list[str]

    @property
    @abc.abstractmethod
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a new process must be written to, to join every group."""

    @abc.abstractmethod
    def pids(self) -> set[int]:
        """Host pids of every process currently in the group."""

    @abc.abstractmethod
    def kill_all(self, timeout: float = 10.0) -> bool:
        """Kill every process in the group without fork races; True once the group is empty."""

    @abc.abstractmethod
    def usage(self) -> ResourceUsage:
        """Peak memory, OOM kills, process-limit hits and CPU time so far."""

    def remove(self) -> None:
        """Remove the group directories (after :meth:`kill_all`). Raises :class:`SandboxError`
        if a group stays busy."""
        remove_directories(self.directories)


def remove_directories(directories: list[str], timeout: float = 5.0) -> None:
    """rmdir cgroup directories, retrying while the kernel still reports them busy."""
    deadline = time.monotonic() + timeout
    for directory in directories:
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as error:
                if error.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise SandboxError(f"cannot remove cgroup {directory}: {error}") from error
                time.sleep(0.01)


def _kill_pids(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _int_or_none(path: str) -> int | None:
    try:
        return int(_read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed_value(path: str, key: str) -> int | None:
    try:
        for line in _read(path).splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


class CgroupV1(SandboxCgroup):
    """One group per v1 controller."""

    def __init__(self, name: str, limits: Limits, support: CgroupSupport) -> None:
        self.groups = {c: os.path.join(parent, name) for c, parent in support.mounts.items()}
        self.directories = list(dict.fromkeys(self.groups.values()))  # cpu,cpuacct may share one
        try:
            for directory in self.directories:
                os.makedirs(directory, exist_ok=False)
            if "memory" in self.groups:
                memory = self.groups["memory"]
                _write(os.path.join(memory, "memory.limit_in_bytes"), str(limits.memory_bytes))
                if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):
                    _write(os.path.join(memory, "memory.memsw.limit_in_bytes"), str(limits.memory_bytes))
            if "pids" in self.groups:
                _write(os.path.join(self.groups["pids"], "pids.max"), str(limits.max_processes))
            if support.cpu:
                cpu = self.groups["cpu"]
                _write(os.path.join(cpu, "cpu.cfs_period_us"), str(_CPU_PERIOD_US))
                _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(int(limits.cpus * _CPU_PERIOD_US)))
        except OSError as error:
            remove_directories(self.directories)
            raise SandboxError(f"cannot set up cgroup v1 groups for {name}: {error}") from error

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.directories]

    def _members_file(self) -> str:
        key = "pids" if "pids" in self.groups else next(iter(self.groups))
        return os.path.join(self.groups[key], "cgroup.procs")

    def pids(self) -> set[int]:
        try:
            return {int(line) for line in _read(self._members_file()).split()}
        except FileNotFoundError:
            return set()

    def kill_all(self, timeout: float = 10.0) -> bool:
        freezer = self.groups.get("freezer")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return True
            if freezer:
                _write(os.path.join(freezer, "freezer.state"), "FROZEN")
                _kill_pids(self.pids())
                _write(os.path.join(freezer, "freezer.state"), "THAWED")
            else:
                _kill_pids(pids)
            time.sleep(0.002)
        return not self.pids()

    def usage(self) -> ResourceUsage:
        memory = self.groups.get("memory")
        pids = self.groups.get("pids")
        cpuacct = self.groups.get("cpuacct")
        cpu_ns = _int_or_none(os.path.join(cpuacct, "cpuacct.usage")) if cpuacct else None
        return ResourceUsage(
            memory_peak_bytes=_int_or_none(os.path.join(memory, "memory.max_usage_in_bytes")) if memory else None,
            oom_kills=_keyed_value(os.path.join(memory, "memory.oom_control"), "oom_kill") if memory else None,
            process_limit_hits=_keyed_value(os.path.join(pids, "pids.events"), "max") if pids else None,
            cpu_seconds=cpu_ns / 1e9 if cpu_ns is not None else None,
        )


class CgroupV2(SandboxCgroup):
    """One group in the unified hierarchy. Not exercised on the v1 hosts redline is tested on."""

    def __init__(self, name: str, limits: Limits, support: CgroupSupport) -> None:
        parent = support.mounts["unified"]
        self.path = os.path.join(parent, name)
        self.directories = [self.path]
        wanted = " ".join(f"+{c}" for c, ok in (("memory", support.memory), ("pids", support.pids),
                                                   ("cpu", support.cpu)) if ok)
        try:
            os.makedirs(parent, exist_ok=True)
            for directory in (os.path.dirname(parent), parent):
                if wanted:
                    _write(os.path.join(directory, "cgroup.subtree_control"), wanted)
            os.mkdir(self.path)
            if support.memory:
                _write(os.path.join(self.path, "memory.max"), str(limits.memory_bytes))
                if os.path.exists(os.path.join(self.path, "memory.swap.max")):
                    _write(os.path.join(self.path, "memory.swap.max"), "0")
            if support.pids:
                _write(os.path.join(self.path, "pids.max"), str(limits.max_processes))
            if support.cpu:
                _write(os.path.join(self.path, "cpu.max"), f"{int(limits.cpus * _CPU_PERIOD_US)} {_CPU_PERIOD_US}")
        except OSError as error:
            remove_directories(self.directories)
            raise SandboxError(f"cannot set up cgroup v2 group {self.path}: {error}") from error

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(self.path, "cgroup.procs")]

    def pids(self) -> set[int]:
        try:
            return {int(line) for line in _read(os.path.join(self.path, "cgroup.procs")).split()}
        except FileNotFoundError:
            return set()

    def kill_all(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        kill_file = os.path.join(self.path, "cgroup.kill")
        while time.monotonic() < deadline:
            if not self.pids():
                return True
            if os.path.exists(kill_file):
                _write(kill_file, "1")
            else:
                _write(os.path.join(self.path, "cgroup.freeze"), "1")
                _kill_pids(self.pids())
                _write(os.path.join(self.path, "cgroup.freeze"), "0")
            time.sleep(0.002)
        return not self.pids()

    def usage(self) -> ResourceUsage:
        usec = _keyed_value(os.path.join(self.path, "cpu.stat"), "usage_usec")
        return ResourceUsage(
            memory_peak_bytes=_int_or_none(os.path.join(self.path, "memory.peak")),
            oom_kills=_keyed_value(os.path.join(self.path, "memory.events"), "oom_kill"),
            process_limit_hits=_keyed_value(os.path.join(self.path, "pids.events"), "max"),
            cpu_seconds=usec / 1e6 if usec is not None else None,
        )


def create(name: str, limits: Limits, support: CgroupSupport) -> SandboxCgroup:
    """Create and configure the groups of sandbox ``name``."""
    if support.version == 1:
        return CgroupV1(name, limits, support)
    if support.version == 2:
        return CgroupV2(name, limits, support)
    raise SandboxError(f"no usable cgroups: {support.problem}")


def members(directory: str) -> set[int]:
    """The pids in one cgroup directory (empty if the group is gone, or going: ENODEV)."""
    try:
        return {int(line) for line in _read(os.path.join(directory, "cgroup.procs")).split()}
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENODEV):
            return set()
        raise


def kill_members(directories: list[str]) -> set[int]:
    """SIGKILL every process in ``directories`` (freezing each group first where it can be
    frozen, so nothing forks meanwhile) until they are empty; returns the pids killed. Groups that
    are gone count as empty."""
    killed: set[int] = set()
    for directory in directories:
        for _ in range(500):
            pids = members(directory)
            if not pids:
                break
            killed |= pids
            freezer_state = os.path.join(directory, "freezer.state")
            try:
                if os.path.exists(freezer_state):
                    _write(freezer_state, "FROZEN")
                    _kill_pids(pids)
                    _write(freezer_state, "THAWED")
                else:
                    _kill_pids(pids)
            except OSError as error:  # the group went away meanwhile (its owner removed it)
                if error.errno not in (errno.ENOENT, errno.ENODEV):
                    raise
                _kill_pids(pids)
            time.sleep(0.002)
    return killed


def kill_and_remove(directories: list[str]) -> None:
    """Stale cleanup: kill whatever is left in ``directories`` (groups of a dead harness) and
    remove them."""
    kill_members(directories)
    remove_directories(directories)
