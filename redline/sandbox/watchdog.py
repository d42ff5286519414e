"""One thread that runs callbacks at deadlines (e.g. destroying a sandbox at its wall-clock limit).

A thread per sandbox would cost ~2 ms to start and a stack per sandbox; one shared thread with a
heap of deadlines costs neither.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable


class Watchdog:
    """Runs each scheduled callback once, at (or soon after) its monotonic deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None

    def schedule(self, delay_s: float, callback: Callable[[], None]) -> int:
        """Run ``callback`` in ``delay_s`` seconds; returns a handle for :meth:`cancel`."""
        with self._wakeup:
            handle = next(self._ids)
            heapq.heappush(self._heap, (time.monotonic() + delay_s, handle, callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="redline-watchdog")
                self._thread.start()
            self._wakeup.notify()
            return handle

    def cancel(self, handle: int) -> None:
        """Forget a scheduled callback (no effect if it already ran)."""
        with self._wakeup:
            self._cancelled.add(handle)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wakeup.wait(timeout)
                _, handle, callback = heapq.heappop(self._heap)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
            try:
                callback()
            except Exception:  # a failing callback must not stop the others
                pass


WATCHDOG = Watchdog()
