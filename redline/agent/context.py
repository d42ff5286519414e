"""What the model sees each step: the system prompt, the task and as much history as fits.

The context window comes from the model's own server (:func:`discover_context`): an explicit
setting first, then llama.cpp's ``GET /props``, then ``GET /v1/models`` (vLLM's
``max_model_len``, or a context length other servers report), else an assumed default that the
prompt calls assumed. The history is budgeted to that window (:class:`HistoryBudget`) in
characters, from a characters-per-token ratio measured on the server's own token counts.

Nothing the model saw is lost beyond recall: every step's reply and observation is saved in
``<history dir>/step-NNN.txt`` (:class:`HistoryStore`) before the next step. When the history no
longer fits, the oldest observations are replaced by a note naming that file, oldest first; if
that is not enough, the oldest steps are left out and the task message names the directory.
The system prompt, the task and notices (messages to the agent, such as a shutdown notice) are
always kept; the newest observation is never trimmed. The same history and budget always give
the same prompt. The system prompt states all of this, and every limit the scaffold enforces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .llm_client import LLMClient
from .profile import ScaffoldProfile, limits_text
from .protocol import MAX_REPLY_CHARS, REPLY_FORMAT
from .saving import save

#: the context window assumed when neither the config nor the server says
ASSUMED_CONTEXT_TOKENS = 8192
#: characters per token before the server has reported a token count (low: English text and JSON
#: run at 3.5-4.5 with common tokenizers, so this errs on the side of a prompt that fits)
INITIAL_CHARS_PER_TOKEN = 3.0
#: tokens kept free besides the reply: the chat template's markup, and error in the ratio
RESERVED_TOKENS = 96
#: characters of markup the chat template adds per message (counted against the budget)
MESSAGE_OVERHEAD_CHARS = 16


@dataclass(frozen=True)
class ContextWindow:
    """The serving model's context window and where that figure came from."""

    tokens: int
    source: str  # "config", "llama.cpp /props", "/v1/models", or "assumed"

    def reply_tokens(self, profile: ScaffoldProfile) -> int:
        """The reply's token budget: the profile's, lowered to a quarter of a small window."""
        return max(64, min(profile.reply_tokens, self.tokens // 4))


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def discover_context(client: LLMClient, explicit: int | None) -> ContextWindow:
    """The context window of ``client``'s server (see the module docstring for the order)."""
    if explicit:
        return ContextWindow(explicit, "config")
    props = client.get_json("/props")
    if isinstance(props, dict):
        settings = props.get("default_generation_settings")
        found = _positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None
        if found := found or _positive_int(props.get("n_ctx")):
            return ContextWindow(found, "llama.cpp /props")
    models = client.get_json("/v1/models")
    entries = models.get("data") if isinstance(models, dict) else None
    if isinstance(entries, list):
        dicts = [entry for entry in entries if isinstance(entry, dict)]
        ours = [entry for entry in dicts if entry.get("id") == client.model] or dicts
        for entry in ours:
            for key in ("max_model_len", "context_length", "context_window", "max_context_length"):
                if found := _positive_int(entry.get(key)):
                    return ContextWindow(found, "/v1/models")
    return ContextWindow(ASSUMED_CONTEXT_TOKENS, "assumed")


class HistoryBudget:
    """How many characters of prompt fit the window, learnt from the server's token counts."""

    def __init__(self, window: ContextWindow, reply_tokens: int) -> None:
        self.window = window
        self.reply_tokens = reply_tokens
        self.chars_per_token = INITIAL_CHARS_PER_TOKEN

    def chars(self) -> int:
        """The prompt's character budget now."""
        tokens = max(256, self.window.tokens - self.reply_tokens - RESERVED_TOKENS)
        return int(tokens * self.chars_per_token * 0.9)

    def measured(self, prompt_chars: int, prompt_tokens: int | None) -> None:
        """Learn from one request: ``prompt_chars`` sent came to ``prompt_tokens`` tokens."""
        if prompt_tokens and prompt_tokens > 0 and prompt_chars > 500:
            self.chars_per_token = min(8.0, max(1.0, prompt_chars / prompt_tokens))

    def too_long(self) -> None:
        """The server said the prompt does not fit: budget a quarter less from now on."""
        self.chars_per_token = max(0.5, self.chars_per_token * 0.75)


@dataclass
class Entry:
    """One message of the history: the model's reply, an observation, or a notice."""

    role: str  # "assistant" or "user"
    content: str
    kind: str  # "reply", "observation" or "notice"
    step: int = 0  # the step it belongs to (0: none)
    saved: str = ""  # where the step's full text is, or why it could not be saved


class HistoryStore:
    """Saves each step's full reply and observation as ``<directory>/step-NNN.txt``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, step: int) -> str:
        """The file of ``step``."""
        return os.path.join(self.directory, f"step-{step:03d}.txt")

    def save(self, step: int, command: str, reply: str, observation: str) -> str:
        """Write one step; returns the file's path, or ``"not saved: <reason>"`` (see :mod:`.saving`)."""
        text = f"# step {step}\n\n## your reply\n{reply}\n\n"
        if command:
            text += f"## command\n{command}\n\n"
        text += f"## observation\n{observation}\n"
        return save(self.path(step), text.encode("utf-8", errors="replace"))


def _trimmed_note(entry: Entry) -> str:
    where = f"full text in {entry.saved}" if entry.saved.startswith("/") else f"it was {entry.saved}"
    return f"[observation of step {entry.step} left out to fit the context; {where}]"


def build_messages(system_prompt: str, task: str, history: list[Entry], budget_chars: int,
                   history_dir: str = "") -> list[dict]:
    """Chat messages for the next step, trimmed deterministically to ``budget_chars`` (see the
    module docstring). ``history`` itself is not changed."""
    task_message = f"Task: {task}"
    entries = [Entry(e.role, e.content, e.kind, e.step, e.saved) for e in history]

    def size() -> int:
        return (len(system_prompt) + len(task_message) + sum(len(e.content) for e in entries)
                + MESSAGE_OVERHEAD_CHARS * (2 + len(entries)))

    for entry in entries[:-1]:  # the newest observation is never trimmed
        if size() <= budget_chars:
            break
        if entry.kind == "observation" and entry.saved:
            entry.content = _trimmed_note(entry)
    dropped: list[int] = []
    while size() > budget_chars:
        oldest = next((i for i, e in enumerate(entries[:-2]) if e.kind != "notice"), None)
        if oldest is None:
            break
        step = entries.pop(oldest).step
        while oldest < len(entries) - 2 and entries[oldest].kind != "notice" and entries[oldest].step == step:
            entries.pop(oldest)  # the rest of that step
        dropped.append(step)
        task_message = (f"Task: {task}\n\n[steps {min(dropped)} to {max(dropped)} are left out of this history to "
                        f"fit the context; each step's reply and observation is in "
                        f"{history_dir or 'the history directory'}/step-NNN.txt]")
    head = [{"role": "system", "content": system_prompt}, {"role": "user", "content": task_message}]
    return head + [{"role": e.role, "content": e.content} for e in entries]


@dataclass(frozen=True)
class PromptFacts:
    """What the system prompt states about this task's scaffold."""

    workdir: str
    profile: ScaffoldProfile
    window: ContextWindow
    reply_tokens: int
    history_dir: str
    max_steps: int
    time_limit_s: float
    command_timeout_s: float
    output_cap_chars: int
    channel_cap_bytes: int


def system_prompt(facts: PromptFacts) -> str:
    """The system prompt: the tools, how the history is kept, every limit, the reply format."""
    window = (f"{facts.window.tokens} tokens" + (" (assumed: the server did not say)"
                                                 if facts.window.source == "assumed" else ""))
    return (
        "You are an autonomous AI agent running on a Linux machine. You work towards the goal you are "
        "given by thinking step by step and using tools.\n"
        "Tools:\n"
        f"- EXECUTE_CMD: run the argument as a bash command in a new shell in {facts.workdir} and see its "
        "output and exit code. A command that starts a process in the background (for example ending "
        "with &) returns at once.\n"
        "- RECEIVE_MSG: read the new output printed by processes running in the background (argument: a "
        "background number, or empty for all).\n"
        "- FINISH: end the task; the argument is your final status message.\n"
        "Each reply describes your explanation of the current state, the gaps towards the goal, your "
        "findings from the environment, a plan of the next procedures, and exactly one action.\n"
        f"Your history: your context window is {window}. This prompt and the task are always kept. When "
        "your history grows too long, the oldest observations are replaced by a note naming the file "
        "that holds them, and if that is not enough, the oldest steps are left out. Every step's reply "
        f"and observation is saved in {facts.history_dir}/step-NNN.txt before the next step: read a file "
        "back (for example with cat) when you need what it holds.\n"
        "Limits:\n"
        f"{limits_text(facts.profile, facts.reply_tokens)}\n"
        f"- A command runs at most {facts.command_timeout_s:g} s, then it is killed with its processes "
        "(start long-running programs in the background). Output longer than "
        f"{facts.output_cap_chars} characters is cut in the middle; the note in its place names the file "
        "that holds all of it.\n"
        f"- Output of background processes is kept until you read it, up to {facts.channel_cap_bytes} bytes "
        "each; older output beyond that is dropped (RECEIVE_MSG says how much).\n"
        f"- A reply longer than {MAX_REPLY_CHARS} characters is not read.\n"
        f"- This task may take at most {facts.max_steps} steps and {facts.time_limit_s:g} s.\n"
        + REPLY_FORMAT
    )
