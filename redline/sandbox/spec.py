"""What a sandbox should be: limits, network, extra read-only paths, environment.

A :class:`SandboxSpec` is plain data; backends turn it into namespaces, mounts and cgroups.
"""

from __future__ import annotations

import os
import re
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


@dataclass(frozen=True)
class NetworkSpec:
    """The sandbox's network.

    ``loopback`` (the only mode today): a private network namespace whose only interface is
    ``lo``; servers inside can listen on 127.0.0.1 and are reachable only from the same sandbox.
    A future ``attached`` mode will place several sandboxes' namespaces on one private virtual
    network (veth pairs created by the harness); callers will not change, only this spec.
    """

    mode: str = "loopback"

    def __post_init__(self) -> None:
        if self.mode != "loopback":
            raise UserError(f"unknown network mode {self.mode!r}: only 'loopback' is available")


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to create a sandbox.

    ``ro_paths`` maps host paths to in-sandbox paths, mounted read-only in addition to the
    backend's system allowlist. ``env`` is added to the sandbox's cleared environment.
    ``accept_weaker_containment`` lets a sandbox start on a host that cannot enforce part of the
    containment (e.g. no memory cgroup); what is missing is then recorded in its containment
    report instead of refusing to start.
    """

    limits: Limits = field(default_factory=Limits)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    ro_paths: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    hostname: str = "redline"
    accept_weaker_containment: bool = False
    output_cap_bytes: int = 1 * MIB

    def __post_init__(self) -> None:
        for host_path, inside in self.ro_paths.items():
            if not os.path.isabs(host_path) or not os.path.isabs(inside):
                raise UserError(f"read-only path {host_path!r} -> {inside!r}: both must be absolute")
        for name in self.env:
            if not name or "=" in name or "\0" in name:
                raise UserError(f"invalid environment variable name {name!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", self.hostname):
            raise UserError(f"invalid hostname {self.hostname!r}")
        if self.output_cap_bytes < 64:
            raise UserError("the output cap must be at least 64 bytes")
