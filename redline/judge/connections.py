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

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from redline.errors import HarnessError
from redline.judge.facts import Connection, Listener
from redline.sandbox import NoSuchProcess, Sandbox, SandboxError

ATTACH_TIMEOUT_S = 5.0
_INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sa_family=AF_INET6, sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"')
_UNIX = re.compile(r'sa_family=AF_UNIX, sun_path=(@?"[^"]*")')
_RESULT = re.compile(r"\)\s*=\s*(-?\d+)(?:\s+(E[A-Z]+))?")
_CLONE = re.compile(r"^(\d+)\s+(<\.\.\. )?(clone3?|fork|vfork)\b(.*?)"
                    r"(?:=\s*\d+\s*/\* (\d+) in strace's PID NS \*/)?\s*$")


def strace_path() -> str:
    """The strace binary, or a :class:`HarnessError` saying how to get it."""
    path = shutil.which("strace")
    if path is None:
        raise HarnessError("strace is not installed (the judge traces agents' connections with it): run ./install.sh")
    return path


def parse_connects(text: str, pid: int) -> list[tuple[Connection, str]]:
    """Each ``connect`` call traced in strace output (``-f``, one line per call, prefixed by the
    thread id) that was made by a *thread of process* ``pid`` -- not by a child process it
    started (a command the agent runs is not the agent): (the address, its result: "ok",
    "pending" or the error name). Threads are told from children by ``CLONE_THREAD``; thread ids
    are the host's (strace's ``--pidns-translation``)."""
    threads = {pid}
    pending_thread_clone: dict[int, bool] = {}  # tid -> its unfinished clone makes a thread
    found = []
    for line in text.splitlines():
        tid_text, _, rest = line.partition(" ")
        if not tid_text.isdigit():
            continue
        if clone := _CLONE.match(line):
            tid, resumed, arguments, child = int(clone.group(1)), clone.group(2), clone.group(4), clone.group(5)
            makes_thread = pending_thread_clone.pop(tid, False) if resumed else "CLONE_THREAD" in arguments
            if "<unfinished" in arguments:
                pending_thread_clone[tid] = makes_thread
            elif child and tid in threads and makes_thread:
                threads.add(int(child))
            continue
        if "connect(" not in rest or int(tid_text) not in threads or "<UDP" in rest:
            continue  # datagram "connects" (a DNS lookup) carry no request
        results = _RESULT.findall(line)
        if "<unfinished" in line:
            result = "pending"
        elif not results:
            result = "error"
        else:
            code, name = results[-1]
            result = "ok" if code == "0" else "pending" if name == "EINPROGRESS" else (name or "error")
        if match := _INET.search(rest):
            found.append((Connection("ipv4", match.group(2), int(match.group(1)), "connect"), result))
        elif match := _INET6.search(rest):
            found.append((Connection("ipv6", match.group(2), int(match.group(1)), "connect"), result))
        elif match := _UNIX.search(rest):
            found.append((Connection("unix", match.group(1).replace('"', ""), None, "connect"), result))
    return found


class ConnectionTrace:
    """Traces the outgoing connections of in-sandbox process ``pid`` while the ``with`` block runs.

    After the block: :attr:`connections` (what it connected to, and established sockets seen),
    :attr:`refused` (connects that failed), :attr:`traced` and :attr:`problem`.
    """

    def __init__(self, sandbox: Sandbox, pid: int, host_pid: int) -> None:
        self.sandbox, self.pid, self.host_pid = sandbox, pid, host_pid
        self.connections: list[Connection] = []
        self.refused: list[Connection] = []
        self.traced = False
        self.problem = ""
        self._process: subprocess.Popen | None = None
        self._directory = tempfile.mkdtemp(prefix="redline-strace-")
        self._output = os.path.join(self._directory, "connects.txt")
        self._listening_ports: set[int] = set()

    def _sample(self) -> None:
        try:
            for connection in self.sandbox.tcp_connections(self.pid):
                if connection.local_port in self._listening_ports:
                    continue  # a client connected to this process (e.g. the judge), not one it made
                found = Connection(connection.family, connection.remote_address, connection.remote_port,
                                   "socket table")
                if found not in self.connections:
                    self.connections.append(found)
        except (NoSuchProcess, SandboxError, OSError):
            pass

    def _attached(self, tracer: int) -> bool:
        tasks = Path(f"/proc/{self.host_pid}/task")
        try:
            for task in tasks.iterdir():
                status = (task / "status").read_text()
                tracer_line = next((line for line in status.splitlines() if line.startswith("TracerPid:")), "")
                if tracer_line.split()[-1:] != [str(tracer)]:
                    return False
        except (OSError, IndexError):
            return False
        return True

    def __enter__(self) -> ConnectionTrace:
        self._listening_ports = {s.port for s in self.sandbox.listening_sockets() if self.pid in s.pids}
        self._sample()
        with open(os.path.join(self._directory, "stderr.txt"), "wb") as errors:
            self._process = subprocess.Popen(
                [strace_path(), "-f", "-qq", "-yy", "--pidns-translation",
                 "-e", "trace=connect,clone,clone3,fork,vfork", "-e", "signal=none", "-s", "256",
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
        self._sample()
        self._stop()
        try:
            text = Path(self._output).read_text(errors="replace")
        except OSError:
            text = ""
        for connection, result in parse_connects(text, self.host_pid):
            target = self.connections if result in ("ok", "pending") else self.refused
            if connection not in target:
                target.append(connection)
        shutil.rmtree(self._directory, ignore_errors=True)


def reached_listener(connection: Connection, listeners: list[Listener], local: frozenset[str]) -> Listener | None:
    """The listener of this host that ``connection`` reached, or ``None`` (another host, a Unix
    socket, nothing listening). A wildcard listener accepts on every local address of its family
    (an IPv6 wildcard also takes IPv4, as Linux's dual-stack sockets do)."""
    if connection.family == "unix" or connection.port is None:
        return None
    address = connection.address.removeprefix("::ffff:")
    if address not in local and not address.startswith("127."):
        return None
    family = "ipv6" if ":" in address else "ipv4"
    exact = [s for s in listeners if s.port == connection.port and s.address == address]
    wildcard = [s for s in listeners if s.port == connection.port and (
        (s.address == "0.0.0.0" and family == "ipv4") or s.address == "::")]
    for candidate in exact + wildcard:
        return candidate
    return None

