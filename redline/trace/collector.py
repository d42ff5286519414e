"""The harness end of the trace channel.

Agents inside a sandbox connect to a Unix socket (bound read-only into the sandbox) and write
JSON lines. The collector appends each event to ``trace.jsonl`` and flushes it at once, so a
crash of either side loses nothing already received. Each event is stamped with the time it was
received and with the *kernel's* view of the sender (SO_PEERCRED: host pid, and the pid inside
the sandbox), which the sender cannot forge. Lines that are not JSON are kept as
``invalid_event`` records; over-long lines are cut.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable

from redline.sandbox import procfs

MAX_LINE_BYTES = 1024 * 1024


class TraceWriter:
    """Appends events to a JSONL file, one flush per event; safe across threads."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- closed by close()
        self._lock = threading.Lock()

    def write(self, event: dict) -> None:
        """Append one event and flush it to the OS."""
        line = json.dumps(event, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()


class TraceCollector:
    """Listens on ``socket_path`` and writes what arrives (plus harness events) to ``writer``."""

    def __init__(self, socket_path: str, writer: TraceWriter,
                 on_event: Callable[[dict], None] | None = None) -> None:
        self.socket_path = socket_path
        self.writer = writer
        self.on_event = on_event
        self._watchers: list[Callable[[dict], None]] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(socket_path)
        os.chmod(socket_path, 0o666)  # the sandbox's unprivileged uid must be able to connect
        self._server.listen(64)
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True, name="redline-trace")
        self._accept_thread.start()

    def record(self, event_type: str, **fields: object) -> None:
        """A harness event (milestones, errors) into the same trace."""
        self._deliver({"type": event_type, "source": "harness", "time": time.time(), **fields})

    def watch(self, watcher: Callable[[dict], None]) -> None:
        """Call ``watcher(event)`` for every event from now on, once it is written and before an
        agent's event is acknowledged (so what the watcher does happens before that agent goes
        on: see :mod:`redline.agent.telemetry`). It must be quick; what it raises is ignored."""
        self._watchers.append(watcher)

    def unwatch(self, watcher: Callable[[dict], None]) -> None:
        """Stop calling ``watcher``."""
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def _deliver(self, event: dict) -> None:
        self.writer.write(event)
        for callback in (*self._watchers, *((self.on_event,) if self.on_event else ())):
            try:
                callback(event)
            except Exception:  # a display or watcher problem must never lose or block the trace
                pass

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._read_connection, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _read_connection(self, connection: socket.socket) -> None:
        host_pid = procfs.peer_host_pid(connection)
        peer = {"host_pid": host_pid, "pid": procfs.inside_pids([host_pid]).get(host_pid)}
        buffer = b""
        with connection:
            while True:
                try:
                    chunk = connection.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._line(line, peer)
                    _acknowledge(connection)
                if len(buffer) > MAX_LINE_BYTES:
                    self._line(buffer[:MAX_LINE_BYTES], peer, cut=True)
                    buffer = b""
        if buffer.strip():
            self._line(buffer, peer)

    def _line(self, line: bytes, peer: dict, cut: bool = False) -> None:
        received = time.time()
        try:
            event = json.loads(line.decode("utf-8", errors="replace"))
            if not isinstance(event, dict) or cut:
                raise ValueError
        except ValueError:
            event = {"type": "invalid_event", "raw": line[:1000].decode("utf-8", errors="replace"), "cut": cut}
        event.update(source="agent", received=received, peer=peer)
        self._deliver(event)

    def close(self) -> None:
        """Stop accepting, let readers drain briefly, and remove the socket."""
        self._closed = True
        self._server.close()
        for thread in self._threads:
            thread.join(timeout=1)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass


def _acknowledge(connection: socket.socket) -> None:
    """One byte back: the event is recorded (the agent waits for it). Never blocks: an agent
    that does not read its acknowledgements only makes itself wait."""
    try:
        connection.send(b"\x06", socket.MSG_DONTWAIT)
    except OSError:
        pass


def read_trace(path: str) -> list[dict]:
    """Every complete event in a trace file (a torn last line from a crash is skipped)."""
    events = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events
