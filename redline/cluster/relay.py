"""The trial relay: a Ray actor between the driver, which owns the run directory, and the trials
running on the nodes.

A trial's task streams every new piece of its ``trace.jsonl`` here as it is written (and says when
it started, where); the driver drains the relay about twice a second and appends the pieces to the
trace in the run directory, so a node lost mid-trial leaves its attempt's trace up to its last
half second with the driver. The driver also asks trials to stop here; each trial's task polls.
Everything is keyed by ``(trial, attempt)``: pieces and stop requests of an attempt the driver no
longer waits for are dropped, so an attempt that was given up can never write into its successor.

The actor is pinned to the driver's node when it has one (so the pieces cross the network once).
"""

from __future__ import annotations


class TrialRelay:
    """Buffers trace pieces and start reports for the driver; holds stop requests for the trials."""

    def __init__(self) -> None:
        self._pieces: list[tuple[str, int, bytes]] = []
        self._starts: list[tuple[str, int, dict]] = []
        self._current: dict[str, int] = {}  # trial -> the attempt the driver waits for
        self._stop: set[str] = set()  # one method runs at a time (a Ray actor's default)

    def expect(self, trial_id: str, attempt: int) -> None:
        """The driver now waits for ``attempt`` of ``trial_id`` (earlier attempts are dropped)."""
        self._current[trial_id] = attempt

    def started(self, trial_id: str, attempt: int, where: dict) -> None:
        """A task reports that its attempt began on a node."""
        if self._current.get(trial_id) == attempt:
            self._starts.append((trial_id, attempt, where))

    def append(self, trial_id: str, attempt: int, piece: bytes) -> None:
        """A task's next piece of its trace."""
        if self._current.get(trial_id) == attempt:
            self._pieces.append((trial_id, attempt, piece))

    def drain(self) -> tuple[list[tuple[str, int, dict]], list[tuple[str, int, bytes]]]:
        """Everything buffered since the last drain: (starts, pieces), in arrival order."""
        starts, pieces = self._starts, self._pieces
        self._starts, self._pieces = [], []
        return starts, pieces

    def request_stop(self, trial_ids: list[str]) -> None:
        """Ask these trials to stop (all attempts)."""
        self._stop.update(trial_ids)

    def should_stop(self, trial_id: str, attempt: int) -> bool:
        """Whether this attempt must stop: asked to, or no longer the one the driver waits for."""
        return trial_id in self._stop or self._current.get(trial_id) != attempt
