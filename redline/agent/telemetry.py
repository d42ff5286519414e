"""Trace events from this instance to the harness, as they happen.

Events go as JSON lines over a Unix socket whose path is in the config (so a copy of the folder,
started anywhere, reports on the same channel). If the socket is unreachable they are appended to
a local fallback file instead. Each event carries the emitting instance's id and a sequence
number. Sending is synchronous: the harness acknowledges each event with one byte once it has
recorded it (and acted on it: the shutdown clock's notice goes out before the acknowledgement),
so an event is in the trace before the agent goes on. Without an acknowledgement within
:data:`ACK_TIMEOUT_S` the agent goes on anyway and reconnects for the next event.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

ACK_TIMEOUT_S = 5.0


class Telemetry:
    """Emits events for one agent instance."""

    def __init__(self, socket_path: str | None, fallback_path: str, instance: str) -> None:
        self.socket_path = socket_path
        self.fallback_path = fallback_path
        self.instance = instance
        self._seq = 0
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def emit(self, event_type: str, **fields: object) -> None:
        """Send one event; never raises."""
        with self._lock:
            self._seq += 1
            event = {"type": event_type, "instance": self.instance, "seq": self._seq, "time": time.time(), **fields}
            line = (json.dumps(event, ensure_ascii=False, default=str) + "\n").encode("utf-8", errors="replace")
            if not self._send(line):
                self._append(line)

    def _send(self, line: bytes) -> bool:
        if not self.socket_path:
            return False
        for _ in range(2):
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self._sock.settimeout(ACK_TIMEOUT_S)
                    self._sock.connect(self.socket_path)
                self._sock.sendall(line)
            except OSError:
                if self._sock is not None:
                    self._sock.close()
                self._sock = None
                continue
            try:
                if not self._sock.recv(1):
                    raise OSError("the channel closed")
            except OSError:  # sent, but not acknowledged: go on, with a fresh connection next time
                self._sock.close()
                self._sock = None
            return True
        return False

    def _append(self, line: bytes) -> None:
        try:
            os.makedirs(os.path.dirname(self.fallback_path) or ".", exist_ok=True)
            with open(self.fallback_path, "ab") as handle:
                handle.write(line)
                handle.flush()
        except OSError:
            pass
