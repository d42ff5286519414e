"""Where did a process's requests go? Its outgoing connections, seen by the kernel, without a race.

Sampling the socket table cannot see a connection that opens and closes between two samples
(an endpoint that answers in a millisecond). So while the judge drives a probe through an agent,
:class:`ConnectionTrace` traces every ``connect()`` system call of all the agent's threads with
``strace`` (ptrace: the kernel stops the thread at the call and shows its arguments; the process
cannot lie about them), and also samples the process's established sockets at the start and end
(a keep-alive connection opened before the probe makes no new ``connect``).

If the process cannot be traced (another tracer holds it, or it vanished), :attr:`traced` is
false with the reason, and only the socket-table samples are reported.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from redline.errors import HarnessError
from redline.judge.facts import Connection, Listener
from redline.sandbox import NoSuchProcess, ProcessInfo, Sandbox, SandboxError, procfs

ATTACH_TIMEOUT_S = 5.0
_INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sa_family=AF_INET6, sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"')
_UNIX = re.compile(r'sa_family=AF_UNIX, sun_path=(@?"[^"]*")')
#: the sending calls whose data strace shows; with ``-yy`` the first argument names the socket
_SENDS = ("sendto(", "sendmsg(", "write(", "writev(", "send(")
#: the receiving calls: what a server answered on a socket the task's request went out on
_RECEIVES = ("read(", "recvfrom(", "recvmsg(", "readv(", "recv(")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')  # a string argument, in strace's C escapes
_TCP_PEER = re.compile(r"<TCP(?:v6)?:\[.*->(\[[^\]]+\]|[^:\]]+):(\d+)\]>")
_TCP_INODE = re.compile(r"<TCP(?:v6)?:\[(\d+)\]>")  # strace cannot name the endpoints of another netns
_REQUEST_LINE = re.compile(r'(?:"|\\n)([A-Z]{3,7}) (/[^ "\\]*) HTTP/1\.[01]\\r\\n')  # in strace's escaped text
_RESULT = re.compile(r"\)\s*=\s*(-?\d+)(?:\s+(E[A-Z]+))?")
_CLONE = re.compile(r"^(\d+)\s+(<\.\.\. )?(clone3?|fork|vfork)\b(.*?)"
                    r"(?:=\s*\d+\s*/\* (\d+) in strace's PID NS \*/)?\s*$")


def strace_path() -> str:
    """The strace binary, or a :class:`HarnessError` saying how to get it."""
    path = shutil.which("strace")
    if path is None:
        raise HarnessError("strace is not installed (the judge traces agents' connections with it): run ./install.sh")
    return path


@dataclass(frozen=True)
class TracedCalls:
    """What strace saw a process's own threads do: their ``connect`` calls with results, and the
    remote TCP endpoints of the sockets on which they sent a given mark."""

    connects: list[tuple[Connection, str]]  # (address, "ok" | "pending" | error name)
    carried_mark: list[Connection]  # TCP peers the mark was sent to in a completion request
    mark_otherwise: list[str]  # request lines (or "no HTTP request") of other sends carrying the mark
    #: (peer, the bytes the process's threads read on that socket after sending it the mark in a
    #: completion request, up to its next send): the server's answer to the task's model request
    answers: list[tuple[Connection, bytes]] = field(default_factory=list)


def _socket(call: str) -> str:
    """The socket a traced send or receive used, as strace ``-yy`` names its first argument."""
    return call.split(",", 1)[0].partition("(")[2]


def _data(call: str) -> bytes:
    """The bytes of a traced call's first string argument (strace's C escapes undone; cut at
    strace's ``-s`` limit)."""
    found = _QUOTED.search(call)
    if found is None:
        return b""
    try:
        return codecs.escape_decode(found.group(1).encode("latin-1", errors="replace"))[0]
    except (ValueError, UnicodeError):
        return b""


def http_answer(data: bytes) -> tuple[int | None, object | None]:
    """(status, JSON body) of an HTTP/1.x response read off a socket (a chunked body is joined);
    ``(None, None)`` if ``data`` is no HTTP response, a ``None`` body if it holds no JSON."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
        return None, None
    if b"transfer-encoding: chunked" in head.lower():
        joined, rest = b"", body
        while rest:
            size_text, _, rest = rest.partition(b"\r\n")
            try:
                size = int(size_text.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                break
            joined, rest = joined + rest[:size], rest[size + 2:]
        body = joined
    try:
        return int(status_line[1]), json.loads(body)
    except ValueError:
        return int(status_line[1]), None


def _own_thread_lines(text: str, threads: set[int]) -> list[tuple[int, str]]:
    """(tid, line) of every traced line made by a thread of the process (``threads`` grows with
    each ``clone`` that has ``CLONE_THREAD``; a child process -- a command the agent runs -- is
    not the agent). Thread ids are the host's (strace's ``--pidns-translation``)."""
    pending_thread_clone: dict[int, bool] = {}  # tid -> its unfinished clone makes a thread
    own = []
    for line in text.splitlines():
        tid_text, _, rest = line.partition(" ")
        if not tid_text.isdigit():
            continue
        tid = int(tid_text)
        if clone := _CLONE.match(line):
            resumed, arguments, child = clone.group(2), clone.group(4), clone.group(5)
            makes_thread = pending_thread_clone.pop(tid, False) if resumed else "CLONE_THREAD" in arguments
            if "<unfinished" in arguments:
                pending_thread_clone[tid] = makes_thread
            elif child and tid in threads and makes_thread:
                threads.add(int(child))
            continue
        if tid in threads:
            own.append((tid, rest))
    return own


def is_completion_request(request_line: tuple[str, str] | None) -> bool:
    """True for an HTTP ``POST`` to a completion path (``/v1/chat/completions``, ``/completion``...)."""
    return request_line is not None and request_line[0] == "POST" and "complet" in request_line[1].lower()


def parse_trace(text: str, threads: set[int], mark: str | None = None) -> TracedCalls:
    """The ``connect`` calls (not datagram ones: a DNS lookup carries no request) and the sends
    carrying ``mark`` made by the threads of a process in strace ``-f -yy`` output. A send counts
    as carrying the mark to its peer only inside an HTTP completion request
    (:func:`is_completion_request`: the request line in the same send, or the latest one sent on
    that socket before it, when headers and body go in separate calls) -- a mark in a header of
    another request, or in bytes that are no request, asks no model anything."""
    connects, carried, otherwise = [], [], []
    by_inode: dict[str, Connection] = {}  # socket inode -> where its connect went
    requests: dict[str, tuple[str, str]] = {}  # socket (strace's name) -> its latest request line
    reading: dict[str, tuple[Connection, bytearray]] = {}  # socket -> (peer, its answer so far)
    answers: list[tuple[Connection, bytearray]] = []
    receiving: dict[int, str] = {}  # tid -> the socket of its unfinished receive (data comes when resumed)
    for tid, rest in _own_thread_lines(text, set(threads)):
        call = rest.lstrip()
        if mark and call.startswith(_RECEIVES):
            socket_part = _socket(call)
            if "<unfinished" in call:
                receiving[tid] = socket_part
                continue
        elif mark and call.startswith("<... ") and tid in receiving and call.split()[1] + "(" in _RECEIVES:
            socket_part = receiving.pop(tid)
        else:
            socket_part = None
        if socket_part is not None:
            results = _RESULT.findall(call)
            if socket_part in reading and results and int(results[-1][0]) > 0:
                reading[socket_part][1].extend(_data(call))
            continue
        if call.startswith("connect(") and "<UDP" not in call:
            results = _RESULT.findall(call)
            if "<unfinished" in call:
                result = "pending"
            elif not results:
                result = "error"
            else:
                code, name = results[-1]
                result = "ok" if code == "0" else "pending" if name == "EINPROGRESS" else (name or "error")
            if match := _INET.search(call):
                connects.append((Connection("ipv4", match.group(2), int(match.group(1)), "connect"), result))
            elif match := _INET6.search(call):
                connects.append((Connection("ipv6", match.group(2), int(match.group(1)), "connect"), result))
            elif match := _UNIX.search(call):
                connects.append((Connection("unix", match.group(1).replace('"', ""), None, "connect"), result))
            if (inode := _TCP_INODE.search(call.split(",", 1)[0])) and match and connects:
                by_inode[inode.group(1)] = connects[-1][0]
        elif mark and call.startswith(_SENDS):
            socket_part = _socket(call)
            reading.pop(socket_part, None)  # a new request on it: what it reads next answers that
            lines = _REQUEST_LINE.findall(call)
            if lines:
                requests[socket_part] = lines[-1]
            if mark not in call:
                continue
            if peer := _TCP_PEER.search(socket_part):
                address, port = peer.group(1).strip("[]"), int(peer.group(2))
                found = Connection("ipv6" if ":" in address else "ipv4", address, port, "sent the task")
            elif (inode := _TCP_INODE.search(socket_part)) and inode.group(1) in by_inode:
                target = by_inode[inode.group(1)]
                found = Connection(target.family, target.address, target.port, "sent the task")
            else:
                continue  # not TCP (its trace channel), or a socket whose connect was not seen
            request = requests.get(socket_part)
            if not is_completion_request(request):
                otherwise.append(" ".join(request) if request else "no HTTP request")
                continue
            if found not in carried:
                carried.append(found)
            reading[socket_part] = (found, bytearray())
            answers.append(reading[socket_part])
    return TracedCalls(connects, carried, otherwise, [(peer, bytes(data)) for peer, data in answers if data])


class ConnectionTrace:
    """Traces the outgoing connections of in-sandbox process ``pid`` while the ``with`` block runs.

    After the block: :attr:`connections` (what it connected to: traced ``connect`` calls, and
    sockets that appeared established during the block), :attr:`refused` (connects that failed),
    :attr:`carried_mark` (TCP peers its threads sent ``mark`` to in a completion request),
    :attr:`answers` (what its threads read back on those sockets), :attr:`mark_otherwise` (other
    requests that carried it), :attr:`traced`, :attr:`problem`.
    """

    def __init__(self, sandbox: Sandbox, pid: int, host_pid: int, mark: str | None = None) -> None:
        self.sandbox, self.pid, self.host_pid, self.mark = sandbox, pid, host_pid, mark
        self.connections: list[Connection] = []
        self.refused: list[Connection] = []
        self.carried_mark: list[Connection] = []
        self.mark_otherwise: list[str] = []
        self.answers: list[tuple[Connection, bytes]] = []
        self._threads: set[int] = {host_pid}
        self._before: set[Connection] = set()
        self.traced = False
        self.problem = ""
        self._process: subprocess.Popen | None = None
        self._directory = tempfile.mkdtemp(prefix="redline-strace-")
        self._output = os.path.join(self._directory, "connects.txt")
        self._listening_ports: set[int] = set()

    def _established(self) -> set[Connection]:
        try:
            return {Connection(c.family, c.remote_address, c.remote_port, "socket table")
                    for c in self.sandbox.tcp_connections(self.pid)
                    if c.local_port not in self._listening_ports}  # not clients of this process (the judge)
        except (NoSuchProcess, SandboxError, OSError):
            return set()

    def _attached(self, tracer: int) -> bool:
        tasks = Path(f"/proc/{self.host_pid}/task")
        try:
            for task in tasks.iterdir():
                self._threads.add(int(task.name))
                status = (task / "status").read_text()
                tracer_line = next((line for line in status.splitlines() if line.startswith("TracerPid:")), "")
                if tracer_line.split()[-1:] != [str(tracer)]:
                    return False
        except (OSError, IndexError):
            return False
        return True

    def __enter__(self) -> ConnectionTrace:
        self._listening_ports = {s.port for s in self.sandbox.listening_sockets() if self.pid in s.pids}
        self._before = self._established()
        with open(os.path.join(self._directory, "stderr.txt"), "wb") as errors:
            self._process = subprocess.Popen(
                [strace_path(), "-f", "-qq", "-yy", "--pidns-translation", "-e", "signal=none",
                 "-e", "trace=connect,clone,clone3,fork,vfork" + (
                     ",sendto,sendmsg,write,writev,read,recvfrom,recvmsg,readv" if self.mark else ""),
                 "-s", "65536" if self.mark else "256",
                 "-o", self._output, "-p", str(self.host_pid)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._attached(self._process.pid):
                self.traced = True
                return self
            time.sleep(0.005)
        self.problem = "its process could not be traced: " + (
            Path(self._directory, "stderr.txt").read_text(errors="replace").strip()[-300:] or "attach timed out")
        self._stop()
        return self

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()  # strace detaches from every thread and exits
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __exit__(self, *exc_info: object) -> None:
        appeared = self._established() - self._before  # a keep-alive socket opened before is no evidence
        self._stop()
        try:
            text = Path(self._output).read_text(errors="replace")
        except OSError:
            text = ""
        calls = parse_trace(text, self._threads, self.mark)
        for connection, result in calls.connects:
            target = self.connections if result in ("ok", "pending") else self.refused
            if connection not in target:
                target.append(connection)
        self.connections += sorted(appeared - set(self.connections), key=str)
        self.carried_mark = calls.carried_mark
        self.mark_otherwise = calls.mark_otherwise
        self.answers = calls.answers
        shutil.rmtree(self._directory, ignore_errors=True)


def _host_address(connection: Connection) -> str:
    """The IP address a connection went to, as this host's tables name it (IPv4-mapped unwrapped;
    the unspecified addresses, which the kernel routes to loopback, as loopback)."""
    address = connection.address.removeprefix("::ffff:")
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)


def on_this_host(connection: Connection, local: frozenset[str]) -> bool:
    """True if an IP connection went to an address of this host (loopback or one of ``local``)."""
    address = _host_address(connection)
    return address in local or address.startswith("127.")


def reached_listener(connection: Connection, listeners: list[Listener], local: frozenset[str]) -> Listener | None:
    """The listener of this host that ``connection`` reached, or ``None`` (another host, a Unix
    socket, nothing listening). A wildcard listener accepts on every local address of its family
    (an IPv6 wildcard also takes IPv4, as Linux's dual-stack sockets do); an IPv6 socket bound to
    an IPv4-mapped address (``::ffff:127.0.0.1``) is that IPv4 address's listener."""
    if connection.family == "unix" or connection.port is None:
        return None
    if not on_this_host(connection, local):
        return None
    address = _host_address(connection)
    family = "ipv6" if ":" in address else "ipv4"
    bound = {s: s.address.removeprefix("::ffff:") for s in listeners if s.port == connection.port}  # IPv4-mapped:
    exact = [s for s, at in bound.items() if at == address]  # an IPv6 socket bound to an IPv4 address takes IPv4
    wildcard = [s for s, at in bound.items() if (at == "0.0.0.0" and family == "ipv4") or at == "::"]
    for candidate in exact + wildcard:
        return candidate
    return None



#: How often :class:`OnwardConnections` samples. A model on CPU answers an oracle prompt in 0.2 s
#: or more (the bundled 135M model here; larger models take longer), so a connection held while
#: another process computes is sampled at least 3 times. Every wakeup of the sampler costs the
#: watched llama.cpp, whose threads spin in lockstep: at 10 ms its answers took 1.6x as long,
#: at 50 ms 1.05-1.1x (measured in reference trials, bench/trials.py).
ONWARD_SAMPLING_S = 0.05


class OnwardConnections:
    """Samples, while the ``with`` block runs, the TCP connections that processes ``pids`` -- and
    the processes they start meanwhile -- open as *clients* (not those accepted on their own
    listening ports): an LLM server that passes
    requests on to another process is seen holding that connection while the other side computes
    the answer. The interval is :data:`ONWARD_SAMPLING_S`."""

    def __init__(self, sandbox: Sandbox, processes: list[ProcessInfo], interval_s: float = ONWARD_SAMPLING_S) -> None:
        self.sandbox, self.interval_s = sandbox, interval_s
        self.pids = tuple(p.pid for p in processes)
        self.host_pids = tuple(p.host_pid for p in processes)
        self.seen: set[tuple[str, str, int]] = set()  # (family, remote address, remote port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="redline-onward")

    def _grow(self) -> None:
        """Add the processes the watched ones started since the last sample (their children)."""
        pending, found = list(self.host_pids), set(self.host_pids)
        while pending:
            for child in procfs.children(pending.pop()) - found:
                found.add(child)
                pending.append(child)
        new = found - set(self.host_pids)
        if new:
            inside = procfs.inside_pids(new)
            self.host_pids += tuple(h for h in sorted(new) if h in inside)
            self.pids += tuple(inside[h] for h in sorted(new) if h in inside)

    def _loop(self) -> None:
        listening = {s.port for s in self.sandbox.listening_sockets() if set(s.pids) & set(self.pids)}
        netns = self.host_pids[0] if self.host_pids else None
        while not self._stop.is_set():  # straight from /proc by host pid: cheap enough not to slow the server
            self._grow()
            inodes = {inode for host_pid in self.host_pids for inode in procfs.socket_inodes(host_pid)}
            for inode, connection in procfs.established_tcp(netns) if netns else ():
                if inode in inodes and connection.local_port not in listening:
                    self.seen.add((connection.family, connection.remote_address, connection.remote_port))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> OnwardConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def elsewhere(self, listeners: list[Listener], local: frozenset[str]) -> list[str]:
        """The onward connections that did not stay inside these processes: ``host:port`` of each
        reaching another process's listener or another host."""
        found = []
        for family, address, port in sorted(self.seen):
            target = reached_listener(Connection(family, address, port, "socket table"), listeners, local)
            if target is None or not set(target.pids) <= set(self.pids):
                found.append(f"{address}:{port}" + (f" (pids {list(target.pids)})" if target else ""))
        return found
