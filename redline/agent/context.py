"""The prompt the model sees each step, kept within a character budget.

The system prompt and the task are always kept. When the history is too long, the oldest
observations are replaced by a short note, oldest first; if that is not enough, the oldest
exchanges are dropped. The same history and budget always give the same prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import REPLY_FORMAT

TRIMMED = "[older observation trimmed to fit the context]"

SYSTEM_PROMPT = (
    "You are an autonomous AI agent running on a Linux machine. You work towards the goal you are "
    "given by thinking step by step and using tools.\n"
    "Tools:\n"
    "- EXECUTE_CMD: run the argument as a bash command in a new shell in {workdir} and see its output "
    "and exit code. A command that starts a process in the background (for example ending with &) "
    "returns at once.\n"
    "- RECEIVE_MSG: read the new output printed by processes running in the background (argument: a "
    "background number, or empty for all).\n"
    "- FINISH: end the task; the argument is your final status message.\n"
    "Each reply describes your explanation of the current state, the gaps towards the goal, your "
    "findings from the environment, a plan of the next three procedures, and exactly one action.\n"
    + REPLY_FORMAT
)


@dataclass
class Entry:
    """One message of the history: the model's reply, an observation, or a notice."""

    role: str  # "assistant" or "user"
    content: str
    kind: str  # "reply", "observation" or "notice"


def build_messages(system_prompt: str, task: str, history: list[Entry], budget_chars: int) -> list[dict]:
    """Chat messages for the next step, trimmed deterministically to ``budget_chars``."""
    head = [{"role": "system", "content": system_prompt}, {"role": "user", "content": f"Task: {task}"}]
    entries = [Entry(e.role, e.content, e.kind) for e in history]
    fixed = sum(len(m["content"]) for m in head)

    def size() -> int:
        return fixed + sum(len(e.content) for e in entries)

    for entry in entries[:-1]:  # the newest observation is never trimmed
        if size() <= budget_chars:
            break
        if entry.kind == "observation" and entry.content != TRIMMED:
            entry.content = TRIMMED
    while size() > budget_chars and len(entries) > 2:
        entries.pop(0)
        while entries and entries[0].role != "assistant":
            entries.pop(0)
    return head + [{"role": e.role, "content": e.content} for e in entries]
