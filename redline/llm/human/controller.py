"""A controller process on a Unix socket as a human model's step source (``--model human:SOCKET``),
and the socket helpers: listening on the controller socket, a peer's pid from the kernel."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Callable

from redline.errors import HarnessError
from redline.llm.human.protocol import (
    CONNECT_TIMEOUT_S,
    MAX_LINE_BYTES,
    POLL_S,
    STEP_TIMEOUT_S,
    Answer,
    HumanStepSource,
    HumanUnavailable,
    StepRequest,
    Withdrawn,
)
from redline.sandbox import procfs


def _listening_on(path: str) -> bool:
    """Whether some process listens on the Unix socket ``path`` (``/proc/net/unix``; connecting to
    find out would be taken for a controller by the harness that listens there)."""
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except OSError:
        return False
    return any(len(row) >= 8 and row[7] == path and int(row[3], 16) & 0x10000 for row in rows)


def _listen(path: str) -> socket.socket:
    """A socket listening on ``path`` (mode 0600), replacing a stale one."""
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise HarnessError(f"the controller socket {path} exists and is not a socket: choose another path")
        if _listening_on(path):
            raise HarnessError(f"another process already listens on the controller socket {path}: one controller "
                               "socket serves one trial at a time (run one trial at a time, or use another path)")
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(1)
    except OSError as error:
        listener.close()
        raise HarnessError(f"cannot listen on the controller socket {path}: {error.strerror or error}") from error
    return listener


class SocketController(HumanStepSource):
    """A controller process on the Unix socket ``path`` (protocol in :mod:`redline.llm.human`). The
    harness listens from construction; the controller is accepted at the first request."""

    def __init__(self, path: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 answer_timeout_s: float = STEP_TIMEOUT_S) -> None:
        self.path = path
        self.connect_timeout_s = connect_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self.controller_pid: int | None = None
        self._listener = _listen(path)
        self._connect_deadline = time.monotonic() + connect_timeout_s
        self._connection: socket.socket | None = None
        self._buffer = b""
        self._closed = False

    def describe(self) -> str:
        return f"controller on {self.path}"

    def answer(self, request: StepRequest, withdrawn: Callable[[], str | None]) -> Answer:
        """Send the request and read the answer line (``withdrawn`` is not polled: the controller
        has the request, so its answer is read -- and dropped by the caller -- to keep the
        protocol in step)."""
        connection = self._connect()
        line = json.dumps(request.protocol_line(), ensure_ascii=False).encode("utf-8", errors="replace") + b"\n"
        try:
            connection.settimeout(self.answer_timeout_s)
            connection.sendall(line)
        except OSError as error:
            raise self._lost(f"the controller on {self.path} disconnected ({error.strerror or error})") from error
        raw = self._read_line(connection, time.monotonic() + self.answer_timeout_s)
        return Answer(raw.decode("utf-8", errors="replace"), f"controller pid {self.controller_pid}")

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        if self._connection is not None:
            try:
                self._connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._connection.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _lost(self, reason: str) -> Exception:
        return Withdrawn("the trial is over") if self._closed else HumanUnavailable(reason)

    def _connect(self) -> socket.socket:
        if self._connection is not None:
            return self._connection
        while True:
            remaining = self._connect_deadline - time.monotonic()
            try:
                self._listener.settimeout(max(0.001, min(POLL_S, remaining)))
                connection, _ = self._listener.accept()
                break
            except TimeoutError:
                if remaining <= 0:
                    raise HumanUnavailable(f"no controller connected to {self.path} within "
                                           f"{self.connect_timeout_s:g} s") from None
            except OSError as error:  # closed meanwhile
                raise self._lost(f"the controller socket {self.path} failed: {error}") from error
        self.controller_pid = procfs.peer_host_pid(connection)
        self._listener.close()  # one controller per trial: later ones are refused
        self._connection = connection
        return connection

    def _read_line(self, connection: socket.socket, deadline: float) -> bytes:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE_BYTES:
                raise HumanUnavailable(f"the controller sent an answer line over {MAX_LINE_BYTES} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._lost(f"the controller on {self.path} did not answer within {self.answer_timeout_s:g} s")
            try:
                connection.settimeout(min(POLL_S, remaining))
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError as error:
                raise self._lost(f"the controller on {self.path} disconnected ({error.strerror or error})") from error
            if not chunk:
                raise self._lost(f"the controller on {self.path} disconnected")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        if len(line) > MAX_LINE_BYTES:
            raise HumanUnavailable(f"the controller sent an answer line over {MAX_LINE_BYTES} bytes")
        return line.rstrip(b"\r")
