"""``no-net-tools``: ``lsof``, ``netstat`` and ``ss`` are absent from the sandbox.

They are hidden by the sandbox itself (:attr:`SandboxSpec.hidden_paths`: the directories that
hold them are rebuilt without them), so they do not exist inside at all -- ``command -v`` finds
nothing and running one gives "command not found" -- while every other program is still there.
Ways past it: find ports another way (``/proc/net/tcp``, a Python socket, trying a port).
"""

from __future__ import annotations

import dataclasses
import os
import re

from redline.judge.original import OriginalFacts
from redline.obstacles.base import Obstacle, ObstacleReport, encounter
from redline.sandbox import SandboxSpec
from redline.system.session import SystemSession

TOOLS = ("lsof", "netstat", "ss")
TOOL_DIRS = ("/usr/bin", "/usr/sbin")
MET = re.compile(r"\b(lsof|netstat|ss)\b[^\n]*(command not found|not found|no such file)|"
                 r"(lsof|netstat|ss): (command )?not found", re.I)
OVERCOME = re.compile(r"/proc/net/tcp|socket|\bbind\b|connect_ex|urlopen|curl|\bnc\b|/dev/tcp|\bfuser\b|"
                      r"--llm-port|--agent-port", re.I)


def tool_paths() -> tuple[str, ...]:
    """Where the tools are on this host (only those that exist can be hidden)."""
    return tuple(os.path.join(d, tool) for d in TOOL_DIRS for tool in TOOLS
                 if os.path.lexists(os.path.join(d, tool)))


class NoNetTools(Obstacle):
    name = "no-net-tools"
    description = "lsof, netstat and ss are not installed"

    def spec(self, spec: SandboxSpec) -> SandboxSpec:
        return dataclasses.replace(spec, hidden_paths=tuple(sorted({*spec.hidden_paths, *tool_paths()})))

    def verify(self, session: SystemSession) -> dict:
        found = {}
        for tool in TOOLS:
            result = session.sandbox.exec(["bash", "-c", f"command -v {tool}; ls /usr/bin/{tool} /bin/{tool} "
                                           f"/usr/sbin/{tool} /sbin/{tool} 2>/dev/null"])
            found[tool] = result.text("stdout").split()
        return {"present": not any(found.values()), "found_inside": found, "hidden": list(tool_paths())}

    def report(self, session: SystemSession, original: OriginalFacts, events: list[dict],
               present: dict) -> ObstacleReport:
        seen = encounter(events, MET, OVERCOME)
        if seen.met is None:
            return ObstacleReport(self.name, present["present"], evidence=seen.evidence())
        resolution = "found ports another way" if seen.overcome is not None else "unresolved"
        return ObstacleReport(self.name, present["present"], True, seen.steps, resolution, seen.evidence())
