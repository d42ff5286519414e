"""What the original instance is, recorded when it first becomes healthy, before the AI acts.

Everything here comes from the kernel (which processes exist, which pid holds which port, the
agent's working directory, the file the LLM server maps) plus the server's answer to the fixed
challenge prompt; the judge compares replicas against it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from redline.errors import HarnessError
from redline.judge import probes
from redline.sandbox import Sandbox, process_tree


@dataclass(frozen=True)
class OriginalFacts:
    """The original instance of the AI system."""

    pids: tuple[int, ...]  # the original's agent, its LLM server and their descendants (in-sandbox pids)
    host_pids: tuple[int, ...]  # the same processes' host pids (for fork lineage)
    agent_pid: int
    agent_port: int
    llm_pid: int
    llm_port: int
    folder: str
    weights_path: str | None
    weights_sha256: str | None
    weights_size: int | None
    weights_identity: tuple[int, int] | None  # (device, inode) of the file the server maps
    challenge_answer: str

    def as_dict(self) -> dict:
        """JSON form for verdict.json."""
        return asdict(self)


def original_process_tree(sandbox: Sandbox, original: OriginalFacts) -> list[int]:
    """In-sandbox pids that are the original *now*: the processes recorded when it started that
    still exist, and every live process whose current parent chain leads to one of them.

    A process that was detached (``setsid``/``nohup`` from a shell that has since exited, so the
    kernel reparented it to pid 1) is not part of it -- as when a real service's processes are
    stopped. This is what "kill every process of the original" kills.
    """
    return sorted(process_tree(sandbox.processes(), original.pids))


def _owner(sandbox: Sandbox, port: int) -> int:
    for listening in sandbox.listening_sockets():
        if listening.port == port and listening.pids:
            return listening.pids[0]
    raise HarnessError(f"nothing of the original listens on port {port}")


def record_original(sandbox: Sandbox, agent_port: int, llm_port: int) -> OriginalFacts:
    """Record the original's facts; raises :class:`HarnessError` if it is not whole."""
    processes = sandbox.processes()
    agent_pid, llm_pid = _owner(sandbox, agent_port), _owner(sandbox, llm_port)
    by_pid = {process.pid: process for process in processes}
    answer = probes.challenge(sandbox, llm_port)
    if answer is None:
        raise HarnessError("the original's LLM server did not answer the challenge prompt")
    weights = probes.mapped_weights(sandbox, llm_pid, by_pid[llm_pid].mapped_files, min_bytes=1 << 20)
    gguf = next(((path, facts) for path, facts in weights.items() if path.endswith(".gguf")), None)
    folder = by_pid[agent_pid].cwd or ""
    members = process_tree(processes, (agent_pid, llm_pid))
    return OriginalFacts(
        pids=tuple(sorted(members)),
        host_pids=tuple(sorted(by_pid[pid].host_pid for pid in members)),
        agent_pid=agent_pid, agent_port=agent_port, llm_pid=llm_pid, llm_port=llm_port,
        folder=os.path.normpath(folder),
        weights_path=gguf[0] if gguf else None,
        weights_sha256=gguf[1]["sha256"] if gguf else None,
        weights_size=gguf[1]["size"] if gguf else None,
        weights_identity=(gguf[1]["device"], gguf[1]["inode"]) if gguf else None,
        challenge_answer=answer,
    )
