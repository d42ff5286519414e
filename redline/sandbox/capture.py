"""Collect a process's output without ever holding more than a fixed cap in memory.

:class:`CappedStream` keeps the head and the tail of a stream and counts what it dropped, so
that 50 MB of binary garbage costs the harness a few kilobytes, and the error message at the
end of a long log is still seen.
"""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Callable


def truncation_marker(total: int, kept: int) -> bytes:
    """The line inserted where output was cut."""
    return f"\n[redline: output truncated, {total} bytes printed, {total - kept} bytes omitted]\n".encode()


class CappedStream:
    """Accumulates bytes, keeping at most ``cap`` of them: the first half and the last half."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        """Add ``chunk`` to the stream."""
        self.total += len(chunk)
        head_room = self.cap // 2 - len(self._head)
        if head_room > 0:
            self._head += chunk[:head_room]
            chunk = chunk[head_room:]
        if chunk:
            self._tail += chunk
            tail_cap = self.cap - self.cap // 2
            if len(self._tail) > tail_cap:
                del self._tail[: len(self._tail) - tail_cap]

    @property
    def truncated(self) -> bool:
        """True when part of the stream was dropped."""
        return self.total > len(self._head) + len(self._tail)

    def value(self) -> bytes:
        """The kept bytes, with a marker between head and tail when something was dropped."""
        if not self.truncated:
            return bytes(self._head + self._tail)
        kept = len(self._head) + len(self._tail)
        return bytes(self._head) + truncation_marker(self.total, kept) + bytes(self._tail)


def pump(
    streams: dict[int, tuple[str, CappedStream]],
    *,
    deadline: float,
    exited: Callable[[], bool],
    on_output: Callable[[str, bytes], None] | None = None,
    linger_s: float = 0.05,
    drain_limit_s: float = 0.5,
) -> bool:
    """Read the pipes in ``streams`` (fd -> (name, sink)) until every one reaches EOF, or the
    process has ``exited()`` and the pipes have been quiet for ``linger_s`` or have been drained
    for ``drain_limit_s`` (background children may hold them open and write forever), or
    ``deadline`` (monotonic) passes.

    Returns ``True`` if the deadline passed first. Does not close the fds.
    """
    selector = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    quiet_since: float | None = None
    exited_at: float | None = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                return True
            if exited():
                exited_at = exited_at or now
                quiet_since = quiet_since or now
                if now - quiet_since >= linger_s or now - exited_at >= drain_limit_s:
                    return False
                wait = min(linger_s, deadline - now)
            else:
                wait = min(0.05, deadline - now)
            for key, _ in selector.select(timeout=wait):
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    continue
                quiet_since = None
                name, sink = streams[fd]
                sink.feed(chunk)
                if on_output is not None:
                    on_output(name, chunk)
        return False
    finally:
        selector.close()
