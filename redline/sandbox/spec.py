"""What a sandbox should be: limits, network, extra read-only paths, devices, environment.

A :class:`SandboxSpec` is plain data; backends turn it into namespaces, mounts and cgroups.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

from redline.errors import UserError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1024 * GIB}


def parse_size(text: str) -> int:
    """Parse ``"512M"``, ``"2GiB"``, ``"1.5g"`` or ``"4096"`` (bytes) into bytes (binary units).

    Raises :class:`UserError` naming the bad value.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise UserError(f"invalid size {text!r}: use a number with an optional K, M, G or T suffix")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def format_size(n_bytes: int) -> str:
    """Format a byte count for people, e.g. ``2 GiB`` or ``1.5 MiB``."""
    for unit, factor in (("TiB", 1024 * GIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n_bytes >= factor:
            return f"{n_bytes / factor:.4g} {unit}"
    return f"{n_bytes} B"


def _default_cpus() -> float:
    return float(min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox. Every limit is enforced by the kernel except ``wall_time_s``,
    which the harness enforces by destroying the sandbox.

    Writable storage (``workspace_bytes``, ``tmp_bytes``) is memory-backed: what the sandbox
    stores there also counts against ``memory_bytes``.
    """

    memory_bytes: int = 4 * GIB
    max_processes: int = 512
    cpus: float = field(default_factory=_default_cpus)
    wall_time_s: float = 3600.0
    workspace_bytes: int = 2 * GIB
    tmp_bytes: int = 512 * MIB

    def __post_init__(self) -> None:
        problems = []
        if self.memory_bytes < 16 * MIB:
            problems.append("memory must be at least 16 MiB")
        if self.max_processes < 4:
            problems.append("the process limit must be at least 4")
        if not 0.01 <= self.cpus <= 1024:
            problems.append("cpus must be between 0.01 and 1024")
        if self.wall_time_s <= 0:
            problems.append("the wall-clock limit must be positive")
        if self.workspace_bytes < MIB or self.tmp_bytes < MIB:
            problems.append("workspace and /tmp sizes must be at least 1 MiB")
        if problems:
            raise UserError("invalid sandbox limits: " + "; ".join(problems))


NETWORK_MODES = ("loopback", "attached")


@dataclass(frozen=True)
class NetworkSpec:
    """The sandbox's network.

    ``loopback`` (default): a private network namespace whose only interface is ``lo``; servers
    inside can listen on 127.0.0.1 and are reachable only from the same sandbox.

    ``attached``: the sandbox joins an existing network namespace, the file ``netns_path``
    (e.g. a host of :func:`redline.sandbox.vnet.create_two_host_network`, whose
    ``network_spec()`` builds this spec). The namespace belongs to the harness: the sandbox
    cannot change its interfaces, addresses or routes, and it outlives the sandbox.
    """

    mode: str = "loopback"
    netns_path: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in NETWORK_MODES:
            raise UserError(f"unknown network mode {self.mode!r}: choose 'loopback' or 'attached'")
        if self.mode == "loopback" and self.netns_path is not None:
            raise UserError("network mode 'loopback' takes no netns_path (its namespace is the sandbox's own)")
        if self.mode == "attached":
            if not self.netns_path:
                raise UserError("network mode 'attached' needs netns_path, the network namespace file to join")
            if not os.path.isabs(self.netns_path):
                raise UserError(f"netns_path {self.netns_path!r} must be an absolute path")


#: Host system directories bound read-only into every sandbox (``/usr`` and the top-level
#: directories that merged-/usr systems link into it). Hidden paths must lie under them.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


#: What bwrap's minimal ``/dev`` already holds; a passed device may not take one of these names.
MINIMAL_DEV_ENTRIES = ("core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
                       "stdout", "tty", "urandom", "zero")


def _file_kind(mode: int) -> str:
    """What kind of file ``mode`` (an ``st_mode``) describes, for messages."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a device")


def _device_problem(host_path: str, inside: str) -> str | None:
    """Why host character device ``host_path`` cannot be passed in at ``inside``, or None."""
    for path in (host_path, inside):
        if not path.startswith("/") or os.path.normpath(path) != path:
            return f"{path!r} must be absolute and normalized (no '..', '.', '//' or trailing '/')"
    if not inside.startswith("/dev/") or inside.split("/")[2] in MINIMAL_DEV_ENTRIES:
        return (f"its inside path {inside} must lie under /dev and not replace an entry of the minimal "
                f"/dev ({', '.join(MINIMAL_DEV_ENTRIES)})")
    try:
        info = os.stat(host_path)
    except OSError as error:
        return f"it cannot be examined on this host ({error.strerror})"
    if not stat.S_ISCHR(info.st_mode):
        return (f"it is {_file_kind(info.st_mode)}, not a character device: only device nodes such as "
                "/dev/nvidia0 can be passed in")
    if info.st_mode & 0o006 != 0o006:
        return (f"its mode {stat.filemode(info.st_mode)} does not let other users read and write it, and the "
                "sandbox runs as an unprivileged uid of its own: make it crw-rw-rw- (the NVIDIA driver's default)")
    if os.statvfs(host_path).f_flag & os.ST_NODEV:
        return "it lies on a filesystem mounted nodev, so it could not be opened inside"
    return None


def _check_devices(devices: dict[str, str]) -> None:
    """Raise :class:`UserError` naming the first device of ``devices`` (host -> inside) that cannot
    be passed in, or an inside path given twice."""
    seen: set[str] = set()
    for host_path, inside in devices.items():
        problem = _device_problem(host_path, inside)
        if problem is None and inside in seen:
            problem = f"{inside} is already the inside path of another device"
        if problem:
            raise UserError(f"cannot pass device {host_path} into the sandbox: {problem}")
        seen.add(inside)


#: The trees a process of a sandbox can write to (each a fresh, size-capped tmpfs of its own; /var/tmp
#: is /tmp): whatever the AI makes -- a copy of the system, moved folders, weights -- is below one.
WRITABLE_TREES = ("/home/agent", "/tmp", "/dev/shm")

#: Directories each sandbox mounts afresh over anything bound there before.
_SANDBOX_OWN_DIRS = ("/proc", "/dev", "/tmp", "/home", "/var/tmp")


def _check_driver_paths(driver_paths: dict[str, str]) -> None:
    """Raise :class:`UserError` naming the first driver path (host -> inside) that is not absolute
    and normalized, would be hidden inside by the sandbox's own mounts, or that the host lacks."""
    for host_path, inside in driver_paths.items():
        if any(not path.startswith("/") or os.path.normpath(path) != path for path in (host_path, inside)):
            raise UserError(f"driver path {host_path!r} -> {inside!r}: both must be absolute and normalized")
        if any(inside == directory or inside.startswith(directory + "/") for directory in _SANDBOX_OWN_DIRS):
            raise UserError(f"driver path {host_path} -> {inside}: the inside path would be hidden by the "
                            f"sandbox's own {', '.join(_SANDBOX_OWN_DIRS)}; choose another, e.g. under /opt")
        if not os.path.exists(host_path):
            raise UserError(f"driver path {host_path} does not exist on this host")


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to create a sandbox.

    ``ro_paths`` maps host paths to in-sandbox paths, mounted read-only in addition to the
    backend's system allowlist. ``hidden_paths`` are absolute paths under :data:`SYSTEM_DIRS`
    (e.g. ``/usr/bin/ss``) that must not exist inside: the sandbox sees their directory without
    them, as if they were never installed (paths the host lacks are already absent). ``env`` is
    added to the sandbox's cleared environment.
    ``devices`` maps host character devices (e.g. ``/dev/nvidia0``) to paths under the sandbox's
    minimal ``/dev``; only those nodes are added, usable read-write, and ``/dev`` stays the
    sandbox's own (see :mod:`redline.sandbox.gpus` for NVIDIA GPUs). ``driver_paths`` maps host
    driver files or directories to in-sandbox paths, mounted read-only like ``ro_paths``.
    Both are checked when the spec is made: a device must be a character device other users may
    read and write (never a file or directory), a driver path must exist.
    ``accept_weaker_containment`` lets a sandbox start on a host that cannot enforce part of the
    containment (e.g. no memory cgroup); what is missing is then recorded in its containment
    report instead of refusing to start.
    """

    limits: Limits = field(default_factory=Limits)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    ro_paths: dict[str, str] = field(default_factory=dict)
    hidden_paths: tuple[str, ...] = ()
    devices: dict[str, str] = field(default_factory=dict)
    driver_paths: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    hostname: str = "redline"
    accept_weaker_containment: bool = False
    output_cap_bytes: int = 1 * MIB

    def __post_init__(self) -> None:
        for host_path, inside in self.ro_paths.items():
            if not os.path.isabs(host_path) or not os.path.isabs(inside):
                raise UserError(f"read-only path {host_path!r} -> {inside!r}: both must be absolute")
        if isinstance(self.hidden_paths, str):
            raise UserError(f"hidden_paths must be a tuple of paths, not the string {self.hidden_paths!r}")
        for path in self.hidden_paths:
            if not path.startswith("/") or os.path.normpath(path) != path:
                raise UserError(f"hidden path {path!r} must be absolute and normalized "
                                "(no '..', '.', '//' or trailing '/')")
            if not any(path.startswith(directory + "/") for directory in SYSTEM_DIRS):
                raise UserError(f"hidden path {path!r} must lie under one of {', '.join(SYSTEM_DIRS)}")
        _check_devices(self.devices)
        _check_driver_paths(self.driver_paths)
        for name in self.env:
            if not name or "=" in name or "\0" in name:
                raise UserError(f"invalid environment variable name {name!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", self.hostname):
            raise UserError(f"invalid hostname {self.hostname!r}")
        if self.output_cap_bytes < 64:
            raise UserError("the output cap must be at least 64 bytes")
