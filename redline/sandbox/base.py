"""The sandbox interface every backend implements, and the facts it reports.

A sandbox is an isolated environment in which the AI system under test runs. The harness
creates it from a :class:`~redline.sandbox.spec.SandboxSpec`, runs commands in it, starts
background processes, moves files in and out, inspects it from the outside (processes,
listening sockets) and finally destroys it.

Facts about processes and sockets are read by the harness from the kernel, outside the
sandbox: nothing the AI prints or writes can change them. They are the judge's eyes.

Whose fault: methods raise :class:`~redline.sandbox.errors.SandboxError` (a harness failure)
when the sandbox machinery fails. A command that fails, hangs or floods output is *not* an
error: it is reported in :class:`ExecResult`.
"""

from __future__ import annotations

import abc
import signal as signal_module
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from redline.sandbox.spec import SandboxSpec

#: Receives ``("stdout" | "stderr", chunk)`` as output arrives, before any cap is applied.
OutputCallback = Callable[[str, bytes], None]


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one command run to completion (or until its timeout).

    ``stdout``/``stderr`` hold at most the output cap: when more was printed, the beginning and
    the end are kept and a marker line ``[redline: output truncated ...]`` stands between them;
    ``*_truncated`` is then true and ``*_bytes`` tells how much was printed in all.
    ``exit_code`` follows the shell convention (128+N when killed by signal N) and is ``None``
    when the command was killed because it ran past its timeout (``timed_out`` is then true).
    """

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    duration_s: float
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_bytes: int = 0
    stderr_bytes: int = 0

    @property
    def ok(self) -> bool:
        """True when the command finished by itself with exit code 0."""
        return self.exit_code == 0 and not self.timed_out

    def text(self, stream: str = "stdout") -> str:
        """The captured stream decoded as UTF-8, invalid bytes replaced."""
        return getattr(self, stream).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ProcessInfo:
    """One process of a sandbox, as the kernel reports it to the host.

    ``pid`` and ``ppid`` are the ids seen inside the sandbox (``ppid`` is 0 when the parent is
    outside it, e.g. the harness's entry helper). ``host_pid`` is the id on the host.
    ``cmdline`` can be rewritten by the process itself; ``exe``, ``cwd``, ``open_files`` and
    ``mapped_files`` cannot. Paths are as seen inside the sandbox.
    """

    pid: int
    host_pid: int
    ppid: int
    host_uid: int
    state: str
    cmdline: tuple[str, ...]
    exe: str | None
    cwd: str | None
    start_time: float
    rss_bytes: int
    open_files: tuple[str, ...] = ()
    mapped_files: tuple[str, ...] = ()
    socket_inodes: tuple[int, ...] = field(default=(), repr=False)



def descendants(parents: Mapping[int, int | None], roots: Iterable[int]) -> set[int]:
    """The ids of ``roots`` that are keys of ``parents`` (id -> its parent's id) and of every id
    whose parent chain leads to one of them."""
    members = {pid for pid in roots if pid in parents}
    grown = bool(members)
    while grown:
        grown = False
        for pid, parent in parents.items():
            if pid not in members and parent in members:
                members.add(pid)
                grown = True
    return members


def process_tree(processes: Iterable[ProcessInfo], roots: Iterable[int]) -> set[int]:
    """The pids of ``roots`` that exist in ``processes`` and of every process whose *current*
    parent chain (``ppid``) leads to one of them."""
    return descendants({process.pid: process.ppid for process in processes}, roots)


@dataclass(frozen=True)
class ListeningSocket:
    """A TCP socket in LISTEN state inside the sandbox's network namespace."""

    family: str  # "ipv4" or "ipv6"
    address: str
    port: int
    inode: int
    pids: tuple[int, ...]  # in-sandbox pids of the processes holding it


@dataclass(frozen=True)
class TcpConnection:
    """One established TCP connection of a process."""

    family: str  # "ipv4" or "ipv6"
    local_port: int
    remote_address: str
    remote_port: int
    peer_is_local: bool  # the other end is a socket of the same network namespace


@dataclass(frozen=True)
class ContainmentItem:
    """One property of the containment: whether it is in force, and how."""

    name: str
    enforced: bool
    detail: str


@dataclass(frozen=True)
class ContainmentReport:
    """What isolation and limits a sandbox (or a host) actually enforces."""

    backend: str
    items: tuple[ContainmentItem, ...]
    weaker_accepted: bool = False

    @property
    def missing(self) -> tuple[ContainmentItem, ...]:
        """The items that are not enforced."""
        return tuple(item for item in self.items if not item.enforced)

    @property
    def complete(self) -> bool:
        """True when every item is enforced."""
        return not self.missing

    def enforces(self, name: str) -> bool:
        """True when the item called ``name`` is there and enforced."""
        return any(item.name == name and item.enforced for item in self.items)

    def to_dict(self) -> dict:
        """A JSON-ready form, for run records."""
        return {
            "backend": self.backend,
            "complete": self.complete,
            "weaker_accepted": self.weaker_accepted,
            "items": [item.__dict__ for item in self.items],
        }


@dataclass(frozen=True)
class ResourceUsage:
    """What a sandbox consumed, read from its cgroups (``None`` where the host cannot tell)."""

    memory_peak_bytes: int | None
    oom_kills: int | None
    process_limit_hits: int | None
    cpu_seconds: float | None


class SandboxProcess(abc.ABC):
    """A process started in the background with :meth:`Sandbox.spawn`.

    Its combined stdout and stderr are collected by the harness as they are printed;
    :meth:`read_output` returns what arrived since the previous call.
    """

    @property
    @abc.abstractmethod
    def pid(self) -> int:
        """The process's pid inside the sandbox."""

    @abc.abstractmethod
    def read_output(self) -> bytes:
        """New output since the last call. If more than the output cap piled up unread, the
        oldest part is dropped and a ``[redline: ... bytes dropped]`` marker says so."""

    @abc.abstractmethod
    def poll(self) -> int | None:
        """The exit code (shell convention) once the process has ended, else ``None``."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds for the end; return :meth:`poll`'s answer."""

    @abc.abstractmethod
    def signal(self, sig: int = signal_module.SIGTERM) -> None:
        """Send ``sig`` to the process (no-op once it has ended)."""


class Sandbox(abc.ABC):
    """One isolated environment. Use as a context manager to guarantee :meth:`destroy`."""

    #: Backend name, e.g. ``"bwrap"``.
    backend: str
    #: Unique id of this sandbox on this host.
    id: str
    #: The spec it was created from.
    spec: SandboxSpec
    #: Home directory (and default working directory) of the user inside.
    home: str = "/home/agent"

    @property
    @abc.abstractmethod
    def containment(self) -> ContainmentReport:
        """The isolation and limits in force for this sandbox."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """True until the sandbox is destroyed or collapses."""

    @property
    @abc.abstractmethod
    def destroyed_reason(self) -> str | None:
        """Why the sandbox ended (``"destroyed"``, ``"wall-clock limit"``, ...), else ``None``."""

    @abc.abstractmethod
    def exec(
        self,
        command: Sequence[str],
        *,
        timeout: float = 60.0,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
        output_cap: int | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        """Run ``command`` (argv, no shell) inside the sandbox and wait for it.

        ``stdin``: bytes fed to the command, then closed; when ``None`` the command's stdin is a
        pipe that stays open, so a command that reads it waits (and times out) as on a terminal.
        ``timeout``: seconds; then the command and everything in its process group is killed.
        The call returns when the command exits, even if processes it put in the background
        still hold its output open. ``env`` adds to the sandbox environment; ``cwd`` defaults to
        :attr:`home`. Output is capped at ``output_cap`` bytes per stream (default
        ``spec.output_cap_bytes``).
        """

    def shell(self, script: str, **kwargs) -> ExecResult:
        """Run ``script`` with ``/bin/sh -c``; keyword arguments as for :meth:`exec`."""
        return self.exec(["/bin/sh", "-c", script], **kwargs)

    @abc.abstractmethod
    def spawn(
        self,
        command: Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        output_cap: int | None = None,
    ) -> SandboxProcess:
        """Start ``command`` in the background and return at once."""

    @abc.abstractmethod
    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create or replace the file at in-sandbox ``path`` (parents created), owned by the user
        inside. Raises :class:`SandboxError` if it cannot be written."""

    @abc.abstractmethod
    def read_file(self, path: str, max_bytes: int = 64 * 1024 * 1024) -> bytes:
        """Return the content of in-sandbox ``path`` (at most ``max_bytes``; more is an error).
        Raises :class:`FileNotFoundError` if it does not exist."""

    @abc.abstractmethod
    def processes(self) -> list[ProcessInfo]:
        """Every process in the sandbox, ordered by pid, read from the host kernel."""

    @abc.abstractmethod
    def host_pids(self) -> list[int]:
        """The host pids of the sandbox's processes, and nothing else about them: a cheap listing
        for watching the sandbox closely (:meth:`processes` reads every open file and mapping)."""

    @abc.abstractmethod
    def listening_sockets(self) -> list[ListeningSocket]:
        """Every listening TCP socket in the sandbox's network namespace, with owning pids."""

    @abc.abstractmethod
    def signal(self, pid: int, sig: int = signal_module.SIGTERM) -> None:
        """Send ``sig`` to in-sandbox ``pid``. Raises :class:`NoSuchProcess` if it is not ours."""

    @abc.abstractmethod
    def tcp_connections(self, pid: int) -> list[TcpConnection]:
        """The established TCP connections that in-sandbox process ``pid`` holds right now, read
        from the kernel, each marked whether its other end is a socket of the same network
        namespace (a port number alone never names a server on another host)."""

    @abc.abstractmethod
    def local_addresses(self) -> frozenset[str]:
        """The IP addresses of the sandbox's own network namespace (loopback and interfaces)."""

    @abc.abstractmethod
    def open_mapped_file(self, pid: int, path: str):
        """A binary file object reading the file that in-sandbox process ``pid`` has mapped at
        in-sandbox ``path`` (through the kernel's handle, not a path lookup the AI could redirect).
        Raises :class:`FileNotFoundError` if it is not mapped (any more)."""

    @abc.abstractmethod
    def connect_tcp(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
        """A TCP connection, made by the harness, to ``host:port`` *inside* the sandbox's network
        (e.g. to a server listening on the sandbox's loopback). Raises :class:`OSError` if nothing
        accepts it. What comes back over it is untrusted: read it with limits."""

    @abc.abstractmethod
    def usage(self) -> ResourceUsage:
        """Resources consumed so far (peak memory, OOM kills, CPU time)."""

    @abc.abstractmethod
    def destroy(self) -> None:
        """End every process of the sandbox (daemons included) and remove everything it left on
        the host: cgroups, state files. Idempotent; never raises for an already-gone sandbox."""

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()
