"""Read process and socket facts about a sandbox from the host's ``/proc``.

These readers run in the harness, outside the sandbox, so the AI cannot influence what they
report beyond what the kernel itself records (a process may rewrite its ``cmdline``, but not its
``exe``, ``cwd``, open files or memory maps). Processes may vanish while being read: every
reader tolerates that and skips them.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from redline.sandbox.base import ListeningSocket, ProcessInfo, TcpConnection

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_TCP_LISTEN = "0A"


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime line")


_BOOT_TIME = _boot_time()


def peer_host_pid(connection: socket.socket) -> int:
    """The host pid of the process at the other end of Unix socket ``connection`` (``SO_PEERCRED``)."""
    creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def pid_namespace(host_pid: int) -> str | None:
    """The pid-namespace identity of a host process (``pid:[N]``), or ``None`` if it is gone."""
    try:
        return os.readlink(f"/proc/{host_pid}/ns/pid")
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _status_fields(host_pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{host_pid}/status", encoding="utf-8", errors="replace") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def signal_disposition(host_pid: int, signal_number: int) -> str | None:
    """How process ``host_pid`` disposes of ``signal_number`` (from ``SigCgt``/``SigIgn`` in its
    status): ``"caught"`` (a handler), ``"ignored"``, ``"default"``; ``None`` if it is gone."""
    try:
        fields = _status_fields(host_pid)
        bit = 1 << (signal_number - 1)
        if int(fields["SigCgt"], 16) & bit:
            return "caught"
        return "ignored" if int(fields["SigIgn"], 16) & bit else "default"
    except (OSError, KeyError, ValueError):
        return None


def _open_files(host_pid: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    files, sockets = [], []
    try:
        names = os.listdir(f"/proc/{host_pid}/fd")
    except OSError:
        return (), ()
    for name in names:
        target = _readlink(f"/proc/{host_pid}/fd/{name}")
        if target is None:
            continue
        if target.startswith("socket:["):
            sockets.append(int(target[8:-1]))
        elif target.startswith("/"):
            files.append(target)
    return tuple(sorted(set(files))), tuple(sorted(set(sockets)))


def socket_inodes(host_pid: int) -> tuple[int, ...]:
    """Inodes of the sockets ``host_pid`` holds open."""
    return _open_files(host_pid)[1]


def _mapped_files(host_pid: int) -> tuple[str, ...]:
    return tuple(mapped_file_handles(host_pid))


def _start_time(start_ticks: int) -> float:
    return _BOOT_TIME + start_ticks / _CLOCK_TICKS


def start_time(host_pid: int) -> float | None:
    """When host process ``host_pid`` started (as :attr:`ProcessInfo.start_time`), ``None`` if gone."""
    try:
        with open(f"/proc/{host_pid}/stat", encoding="utf-8", errors="replace") as stat:
            return _start_time(int(stat.read().rpartition(")")[2].split()[19]))
    except (OSError, IndexError, ValueError):
        return None


def read_process(host_pid: int, inside_pid_of: dict[int, int]) -> ProcessInfo | None:
    """Facts about one host process; ``inside_pid_of`` maps host pids of the same sandbox to
    their in-sandbox pids (used to translate the parent). ``None`` if the process is gone."""
    try:
        status = _status_fields(host_pid)
        with open(f"/proc/{host_pid}/stat", encoding="utf-8", errors="replace") as stat_file:
            stat = stat_file.read()
        with open(f"/proc/{host_pid}/cmdline", "rb") as cmdline_file:
            raw_cmdline = cmdline_file.read()
        with open(f"/proc/{host_pid}/statm", encoding="ascii") as statm:
            rss_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    after_comm = stat[stat.rindex(")") + 2 :].split()
    state, host_ppid, start_ticks = after_comm[0], int(after_comm[1]), int(after_comm[19])
    open_files, socket_inodes = _open_files(host_pid)
    cmdline = tuple(arg.decode("utf-8", errors="replace") for arg in raw_cmdline.split(b"\0")[:-1])
    return ProcessInfo(
        pid=int(status["NSpid"].split()[-1]),
        host_pid=host_pid,
        ppid=inside_pid_of.get(host_ppid, 0),
        host_uid=int(status["Uid"].split()[0]),
        state=state,
        cmdline=cmdline,
        exe=_readlink(f"/proc/{host_pid}/exe"),
        cwd=_readlink(f"/proc/{host_pid}/cwd"),
        start_time=_start_time(start_ticks),
        rss_bytes=rss_pages * _PAGE_SIZE,
        open_files=open_files,
        mapped_files=_mapped_files(host_pid),
        socket_inodes=socket_inodes,
    )


@dataclass(frozen=True)
class ThreadState:
    """One thread of a host process: its scheduler state letter (``R``, ``S``, ``D``, ``T``,
    ``t``, ``Z``...) and the CPU time it has run, in nanoseconds (``schedstat``)."""

    tid: int
    state: str
    run_ns: int


def threads(host_pid: int) -> list[ThreadState]:
    """The threads of ``host_pid`` (empty when it is gone); a thread ending meanwhile is skipped."""
    found = []
    try:
        tids = os.listdir(f"/proc/{host_pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{host_pid}/task/{tid}/stat", encoding="utf-8", errors="replace") as stat:
                state = stat.read().rpartition(")")[2].split()[0]
            with open(f"/proc/{host_pid}/task/{tid}/schedstat", encoding="ascii") as schedstat:
                run_ns = int(schedstat.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue
        found.append(ThreadState(int(tid), state, run_ns))
    return found


def cpu_ticks(host_pid: int) -> int | None:
    """The CPU time (user + system, clock ticks) of the whole of process ``host_pid``, its ended
    threads included; ``None`` if it is gone."""
    try:
        with open(f"/proc/{host_pid}/stat", encoding="utf-8", errors="replace") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def host_parent(host_pid: int) -> int | None:
    """The host pid of ``host_pid``'s parent, ``None`` if it is gone."""
    try:
        with open(f"/proc/{host_pid}/stat", encoding="utf-8", errors="replace") as stat:
            return int(stat.read().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children(host_pid: int) -> set[int]:
    """Host pids of the current children of ``host_pid`` (of all its threads)."""
    found: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{host_pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{host_pid}/task/{tid}/children", encoding="ascii") as listed:
                found.update(int(pid) for pid in listed.read().split())
        except (OSError, ValueError):
            continue
    return found


def inside_pids(host_pids: Iterable[int]) -> dict[int, int]:
    """Map each live host pid to its pid in its innermost pid namespace."""
    mapping = {}
    for host_pid in host_pids:
        try:
            status = _status_fields(host_pid)
        except OSError:
            continue
        if "NSpid" in status:
            mapping[host_pid] = int(status["NSpid"].split()[-1])
    return mapping


def _decode_ipv4(hex_addr: str) -> str:
    return socket.inet_ntoa(struct.pack("<I", int(hex_addr, 16)))


def _decode_ipv6(hex_addr: str) -> str:
    """An address of /proc/net/tcp6 as text; an IPv4-mapped one as ``::ffff:a.b.c.d`` (as strace and
    the socket API write it, so it compares with their addresses)."""
    words = [struct.pack("<I", int(hex_addr[i : i + 8], 16)) for i in range(0, 32, 8)]
    address = ipaddress.IPv6Address(b"".join(words))
    return f"::ffff:{address.ipv4_mapped}" if address.ipv4_mapped is not None else str(address)


_TCP_ESTABLISHED = "01"


def _tcp_table(netns_host_pid: int, state: str) -> list[tuple[str, str, int, str, int, int]]:
    """``(family, local address, local port, remote address, remote port, inode)`` of TCP sockets
    in ``state``."""
    found = []
    for family, name, decode in (("ipv4", "tcp", _decode_ipv4), ("ipv6", "tcp6", _decode_ipv6)):
        try:
            with open(f"/proc/{netns_host_pid}/net/{name}", encoding="ascii") as table:
                next(table, None)
                for line in table:
                    parts = line.split()
                    if len(parts) < 10 or parts[3] != state:
                        continue
                    hex_addr, hex_port = parts[1].split(":")
                    remote_hex_addr, remote_hex_port = parts[2].split(":")
                    found.append((family, decode(hex_addr), int(hex_port, 16), decode(remote_hex_addr),
                                  int(remote_hex_port, 16), int(parts[9])))
        except OSError:
            continue
    return found


def listening_tcp(netns_host_pid: int) -> list[tuple[str, str, int, int]]:
    """``(family, address, port, inode)`` of every listening TCP socket in the network namespace
    of host process ``netns_host_pid``."""
    return [(family, address, port, inode)
            for family, address, port, _, _, inode in _tcp_table(netns_host_pid, _TCP_LISTEN)]


def established_tcp(netns_host_pid: int) -> list[tuple[int, TcpConnection]]:
    """``(inode, connection)`` of every established TCP socket in the namespace; a connection's
    ``peer_is_local`` is true when its other end is a socket of the same namespace (that endpoint
    appears in the table as a local one), false for a connection leaving it."""
    table = _tcp_table(netns_host_pid, _TCP_ESTABLISHED)
    local_ends = {(address, port) for _, address, port, _, _, _ in table}
    return [(inode, TcpConnection(family, local, remote_address, remote, (remote_address, remote) in local_ends))
            for family, _, local, remote_address, remote, inode in table]


def local_addresses(netns_host_pid: int) -> frozenset[str]:
    """The IPv4 and IPv6 addresses of the network namespace of ``netns_host_pid`` (from the
    kernel's local routing table and ``if_inet6``)."""
    found = {"127.0.0.1", "::1"}
    try:
        with open(f"/proc/{netns_host_pid}/net/fib_trie", encoding="ascii") as trie:
            last = None
            for line in trie:
                text = line.strip()
                if text.startswith(("|--", "+--")):
                    last = text.split()[1]
                elif "host LOCAL" in text and last:
                    found.add(last.split("/")[0])
    except OSError:
        pass
    try:
        with open(f"/proc/{netns_host_pid}/net/if_inet6", encoding="ascii") as table:
            for line in table:
                raw = line.split()[0]
                found.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    except (OSError, ValueError, IndexError):
        pass
    return frozenset(found)


def mapped_file_handles(host_pid: int) -> dict[str, str]:
    """In-sandbox path of each file mapped by ``host_pid`` -> a ``/proc/<pid>/map_files/...``
    path the host can open to read exactly that file (no path lookup inside the sandbox)."""
    handles: dict[str, str] = {}
    try:
        with open(f"/proc/{host_pid}/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    handles.setdefault(parts[5].rstrip("\n"), f"/proc/{host_pid}/map_files/{parts[0]}")
    except OSError:
        return {}
    return handles


def mapped_file_identities(host_pid: int) -> dict[str, tuple[int, int]]:
    """(device, inode) of each file ``host_pid`` maps, by its in-sandbox path, read through the
    kernel's handle on the mapping (a hard link elsewhere is still the same file)."""
    found = {}
    for path, handle in mapped_file_handles(host_pid).items():
        try:
            stat = os.stat(handle)
        except OSError:
            continue
        found[path] = (stat.st_dev, stat.st_ino)
    return found


def listening_sockets(netns_host_pid: int, processes: Iterable[ProcessInfo]) -> list[ListeningSocket]:
    """Listening sockets of a network namespace with the in-sandbox pids that hold each one."""
    holders: dict[int, list[int]] = {}
    for process in processes:
        for inode in process.socket_inodes:
            holders.setdefault(inode, []).append(process.pid)
    return [
        ListeningSocket(family, address, port, inode, tuple(sorted(holders.get(inode, ()))))
        for family, address, port, inode in sorted(listening_tcp(netns_host_pid), key=lambda s: (s[2], s[0]))
    ]
