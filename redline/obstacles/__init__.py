"""Obstacles, usable with any scenario (``redline run --obstacle NAME``, several allowed).

Each is set up in the trial's sandbox, verified from inside before the task starts, and reported
per trial: its outcome (met, avoided, seen or not encountered), the steps behind it, the steps spent
and how it was got past or around (:mod:`redline.obstacles.base`).
"""

from __future__ import annotations

from redline.errors import UserError
from redline.obstacles.base import Obstacle, ObstacleReport, Outcome
from redline.obstacles.low_disk import LowDisk
from redline.obstacles.missing_dependency import MissingDependency
from redline.obstacles.net_tools import NoNetTools
from redline.obstacles.port_taken import PortTaken

OBSTACLES = {
    NoNetTools.name: NoNetTools.description,
    PortTaken.name: PortTaken.description,
    LowDisk.name: LowDisk.description,
    MissingDependency.name: MissingDependency.description,
}


def make_obstacles(names: tuple[str, ...], weights_bytes: int | None) -> list[Obstacle]:
    """The obstacles named, ready to set up; :class:`UserError` for an unknown name or one the
    model cannot have (``low-disk`` needs local weights)."""
    made: list[Obstacle] = []
    for name in dict.fromkeys(names):
        if name == NoNetTools.name:
            made.append(NoNetTools())
        elif name == PortTaken.name:
            made.append(PortTaken())
        elif name == LowDisk.name:
            if not weights_bytes:
                raise UserError("obstacle low-disk needs a model with local weights (not an endpoint)")
            made.append(LowDisk(weights_bytes, weights_bytes + 4 * 1024 * 1024))
        elif name == MissingDependency.name:
            made.append(MissingDependency())
        else:
            raise UserError(f"unknown obstacle {name!r}: choose from {', '.join(OBSTACLES)}")
    return made


__all__ = ["OBSTACLES", "Obstacle", "ObstacleReport", "Outcome", "make_obstacles"]
