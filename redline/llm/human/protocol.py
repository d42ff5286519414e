"""What a human model's step source is given and gives back (protocol in :mod:`redline.llm.human`).

The step request (:class:`StepRequest`: its :class:`Sender`, task and messages, and the
:class:`StepLimits` its schema sets), the :class:`Answer`, the check that a reply keeps those
limits (:func:`reply_problem`), the source interface (:class:`HumanStepSource`) with the ways it
fails (:class:`HumanUnavailable`, :class:`Withdrawn`), and the protocol's limits and timings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass

from redline.agent.protocol import TOOLS
from redline.errors import HarnessError

#: the longest one step may wait for its person or controller; the system's LLM server and agent
#: wait longer (config.json), so the harness is always the side that gives up
STEP_TIMEOUT_S = 1800.0
#: how long after the harness began to listen a controller may connect
CONNECT_TIMEOUT_S = 120.0
#: the longest answer line a controller may send
MAX_LINE_BYTES = 1024 * 1024
POLL_S = 0.25
REPLY_FIELDS = ("explanation", "gaps", "findings", "plan", "action")


class HumanUnavailable(HarnessError):
    """The person or controller can no longer answer (gone, silent, broken protocol): the trial
    cannot go on, and it is not the AI's failure."""


class Withdrawn(Exception):
    """A question no longer needs an answer: the instance that asked is gone, or the trial is over."""


@dataclass(frozen=True)
class Sender:
    """The process that sent a step request, from the kernel (``SO_PEERCRED``, ``/proc``), never
    from the sender's word. ``parent_*``: its parent -- the instance's agent when the instance was
    started with ``start.sh``; ``folder``: its working directory as seen inside; ``original``: its
    current parent chain leads to the original's agent (it is the original's LLM server, or one the
    original started and did not detach)."""

    host_pid: int
    pid: int | None
    parent_host_pid: int | None
    parent_pid: int | None
    folder: str | None
    original: bool

    def as_dict(self) -> dict:
        """JSON form (protocol, trace)."""
        return asdict(self)

    def label(self) -> str:
        """One line for a person."""
        who = "the original" if self.original else "not the original"
        return f"LLM server pid {self.pid} (parent pid {self.parent_pid}) in {self.folder or '?'}: {who}"


def json_object(value: object) -> dict:
    """``value`` if it is a JSON object (a dict), else an empty one."""
    return value if isinstance(value, dict) else {}


def _bound(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class StepLimits:
    """The bounds a reply must keep as the request's JSON schema states them (``None``: no bound
    there). ``max_chars`` has explanation, gaps, findings, plan (each item) and argument."""

    tools: tuple[str, ...]
    max_chars: dict[str, int | None]
    plan_items: tuple[int | None, int | None]  # (min, max)

    @classmethod
    def from_schema(cls, schema: object) -> StepLimits:
        """Read a step schema; what it does not say is unbounded (tools: the agent's three)."""
        properties = json_object(json_object(schema).get("properties"))
        action = json_object(json_object(properties.get("action")).get("properties"))
        plan = json_object(properties.get("plan"))
        enum = json_object(action.get("tool")).get("enum")
        tools = tuple(tool for tool in enum if isinstance(tool, str)) if isinstance(enum, list) else ()
        max_chars = {name: _bound(json_object(properties.get(name)).get("maxLength"))
                     for name in ("explanation", "gaps", "findings")}
        max_chars["plan"] = _bound(json_object(plan.get("items")).get("maxLength"))
        max_chars["argument"] = _bound(json_object(action.get("argument")).get("maxLength"))
        return cls(tools or TOOLS, max_chars, (_bound(plan.get("minItems")), _bound(plan.get("maxItems"))))

    def as_dict(self) -> dict:
        """JSON form (protocol)."""
        return {"tools": list(self.tools), "max_chars": dict(self.max_chars), "plan_items": list(self.plan_items)}


@dataclass(frozen=True)
class StepRequest:
    """One step request, as put to a person or controller."""

    sender: Sender
    task_id: str | None
    messages: list[dict]  # {"role": str, "content": str}
    limits: StepLimits

    def protocol_line(self) -> dict:
        """The request as the controller protocol sends it."""
        line = {"type": "step", "instance_pid": self.sender.pid, "instance": self.sender.as_dict(),
                "messages": self.messages, "limits": self.limits.as_dict()}
        if self.task_id is not None:
            line["task_id"] = self.task_id
        return line


@dataclass(frozen=True)
class Answer:
    """A reply text, verbatim, and who gave it (``terminal: fields``, ``controller pid 123`` ...)."""

    text: str
    by: str


def reply_problem(value: object, limits: StepLimits) -> str | None:
    """What keeps ``value`` from being a reply the schema allows; ``None`` if it is one."""
    if not isinstance(value, dict):
        return f"a reply is a JSON object, not a {type(value).__name__}"
    missing = [name for name in REPLY_FIELDS if name not in value]
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    extra = [str(name) for name in value if name not in REPLY_FIELDS]
    if extra:
        return f"unknown field(s): {', '.join(extra)}"
    for name in ("explanation", "gaps", "findings"):
        problem = _text_problem(name, value[name], limits.max_chars[name])
        if problem:
            return problem
    plan = value["plan"]
    if not isinstance(plan, list):
        return "plan is a list of strings"
    low, high = limits.plan_items
    if (low is not None and len(plan) < low) or (high is not None and len(plan) > high):
        return f"plan has {len(plan)} items; it must have {_count_text(low, high)}"
    for index, item in enumerate(plan):
        problem = _text_problem(f"plan item {index + 1}", item, limits.max_chars["plan"])
        if problem:
            return problem
    action = value["action"]
    if not isinstance(action, dict) or set(action) != {"tool", "argument"}:
        return 'action is an object with exactly "tool" and "argument"'
    if action["tool"] not in limits.tools:
        return f"action.tool must be one of {', '.join(limits.tools)}"
    problem = _text_problem("action.argument", action["argument"], limits.max_chars["argument"])
    if problem:
        return problem
    if action["tool"] == "EXECUTE_CMD" and not action["argument"].strip():
        return "EXECUTE_CMD needs a command in action.argument"
    return None


def _count_text(low: int | None, high: int | None) -> str:
    if low == high:
        return f"exactly {low}"
    return f"at least {low}" if high is None else f"at most {high}" if low is None else f"{low} to {high}"


def _text_problem(name: str, value: object, limit: int | None) -> str | None:
    if not isinstance(value, str):
        return f"{name} is a string"
    if limit is not None and len(value) > limit:
        return f"{name} has {len(value)} characters; at most {limit}"
    return None


class HumanStepSource(ABC):
    """Where a human model's steps come from. :meth:`answer` is called for one request at a time."""

    @abstractmethod
    def describe(self) -> str:
        """What answers, for the trace (``terminal``, ``controller on PATH``)."""

    @abstractmethod
    def answer(self, request: StepRequest, withdrawn: Callable[[], str | None]) -> Answer:
        """The reply to ``request``. ``withdrawn()`` says why the question no longer needs an
        answer (``None``: it still does); a source may poll it and raise :class:`Withdrawn`.
        Raises :class:`HumanUnavailable` when it cannot answer this or any later request."""

    @abstractmethod
    def close(self) -> None:
        """Stop: a pending :meth:`answer` raises :class:`Withdrawn` soon after."""
