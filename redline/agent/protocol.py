"""The thinking model: what the LLM must answer each step, and how a reply is read.

Each step the model answers with five fields -- explanation, gaps, findings, plan (the next
three procedures) and action (tool + argument) -- as one JSON object. Servers that support
JSON-schema constrained decoding receive the profile's schema (:mod:`.profile`); replies from
other servers are parsed tolerantly (code fences, surrounding prose, capitalised keys). A reply that still cannot
be read is a :class:`MalformedReply` whose ``reason`` is shown to the model; it never crashes the
agent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .profile import TOOLS

MAX_REPLY_CHARS = 64 * 1024

REPLY_FORMAT = (
    'Reply with one JSON object and nothing else: {"explanation": "your understanding of the current '
    'state", "gaps": "what is still missing to reach the goal", "findings": "what you learned from the '
    'environment", "plan": ["next procedure", "the one after", "the third"], "action": {"tool": '
    '"EXECUTE_CMD" | "RECEIVE_MSG" | "FINISH", "argument": "..."}}'
)


@dataclass(frozen=True)
class Step:
    """A well-formed reply."""

    explanation: str
    gaps: str
    findings: str
    plan: tuple[str, ...]
    tool: str
    argument: str
    missing_fields: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        """The fields as the trace records them."""
        return {"explanation": self.explanation, "gaps": self.gaps, "findings": self.findings,
                "plan": list(self.plan), "action": {"tool": self.tool, "argument": self.argument},
                "missing_fields": list(self.missing_fields)}


@dataclass(frozen=True)
class MalformedReply:
    """A reply the agent could not read; ``reason`` tells the model what was wrong."""

    reason: str


def _extract_object(text: str) -> object:
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[text.find("\n") + 1:] if "\n" in text else text
    try:
        return json.loads(text)
    except ValueError:
        pass
    start = text.find("{")
    if start < 0:
        raise ValueError("the reply contains no JSON object")
    decoder = json.JSONDecoder()
    try:
        value, _ = decoder.raw_decode(text[start:])
        return value
    except ValueError as error:
        raise ValueError(f"the JSON object in the reply is invalid ({error.msg} at char {error.pos})") from None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "\n".join(_text(item) for item in value)
    return json.dumps(value, ensure_ascii=False)


def _plan(value: object) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(_text(item) for item in value)
    if isinstance(value, str) and value.strip():
        return tuple(line.strip() for line in value.splitlines() if line.strip())
    return ()


def parse_reply(raw: str) -> Step | MalformedReply:
    """Read one model reply. Never raises."""
    if not raw or not raw.strip():
        return MalformedReply("the reply was empty")
    if len(raw) > MAX_REPLY_CHARS:
        return MalformedReply(f"the reply was {len(raw)} characters long; keep it under {MAX_REPLY_CHARS}")
    try:
        value = _extract_object(raw)
    except ValueError as error:
        return MalformedReply(str(error))
    except RecursionError:
        return MalformedReply("the JSON object in the reply is nested too deeply")
    if not isinstance(value, dict):
        return MalformedReply(f"the reply is a JSON {type(value).__name__}, not an object")
    fields = {str(key).strip().lower(): item for key, item in value.items()}
    action = fields.get("action")
    if isinstance(action, str):  # {"action": "EXECUTE_CMD", "argument": "ls"}
        action = {"tool": action, "argument": fields.get("argument", fields.get("arguments", ""))}
    if not isinstance(action, dict):
        return MalformedReply('the reply has no "action" object with "tool" and "argument"')
    action = {str(key).strip().lower(): item for key, item in action.items()}
    tool = _text(action.get("tool", action.get("name", ""))).strip().upper()
    if tool not in TOOLS:
        return MalformedReply(f'action.tool must be one of {", ".join(TOOLS)}, not {tool!r}')
    argument = _text(action.get("argument", action.get("arguments", action.get("args", ""))))
    if tool == "EXECUTE_CMD" and not argument.strip():
        return MalformedReply("EXECUTE_CMD needs a command in action.argument")
    missing = tuple(name for name in ("explanation", "gaps", "findings", "plan") if not fields.get(name))
    return Step(
        explanation=_text(fields.get("explanation")), gaps=_text(fields.get("gaps")),
        findings=_text(fields.get("findings")), plan=_plan(fields.get("plan")),
        tool=tool, argument=argument, missing_fields=missing,
    )
