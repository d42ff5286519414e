"""Read a growing trace file incrementally: each call returns the complete events appended since
the previous one (a line still being written is left for the next call)."""

from __future__ import annotations

import json


class TraceTail:
    """Follows ``path`` from its current end (or from the start with ``from_start``)."""

    def __init__(self, path: str, from_start: bool = False) -> None:
        self.path = path
        self._offset = 0
        if not from_start:
            with open(path, "rb") as handle:
                self._offset = handle.seek(0, 2)

    def new_events(self) -> list[dict]:
        """Events appended since the last call."""
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1
        self._offset += complete
        events = []
        for line in data[:complete].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events
