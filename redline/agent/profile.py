"""Scaffold profiles: the bounds a thinking-model reply must keep, fitted to the model.

A profile sets how long each field of a reply may be, how many plan items it has and how many
tokens the reply may use. Every bound is stated in the system prompt (:func:`limits_text`) and
enforced by the agent itself after the reply arrives (:func:`check_reply`), so it holds whatever
the server does with the JSON schema:

* ``compact`` -- for small local models, which ramble: the bounds go into the JSON schema too,
  so llama.cpp's grammar closes every field within the token budget. A command that stops exactly
  at its bound was almost surely cut there by the grammar: it is not run, and the model is told.
* ``capable`` -- for capable models (endpoints, large local weights, people): loose bounds that
  no sensible command reaches (a 4,000-character command passes intact), kept out of the schema
  (a grammar with a 16,000-character repetition is costly to build) and checked by the agent.

The agent is copied into every system folder, so this module uses the standard library only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ScaffoldProfile:
    """The reply bounds of one profile (characters unless named otherwise)."""

    name: str
    command_chars: int  # action.argument
    explanation_chars: int
    gaps_chars: int
    findings_chars: int
    plan_item_chars: int
    plan_min_items: int
    plan_max_items: int
    reply_tokens: int  # max_tokens asked of the server (lowered to fit a small context window)
    bounds_in_schema: bool  # True: maxLength / item counts also constrain decoding

    def as_dict(self) -> dict:
        """JSON form (config.json, run.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ScaffoldProfile:
        """Read a profile written by :meth:`as_dict`; missing or odd keys fall back to ``compact``'s."""
        base = COMPACT.as_dict()
        for key, default in base.items():
            value = data.get(key, default)
            base[key] = value if isinstance(value, type(default)) else default
        return cls(**base)


COMPACT = ScaffoldProfile("compact", command_chars=400, explanation_chars=240, gaps_chars=160,
                          findings_chars=240, plan_item_chars=120, plan_min_items=3, plan_max_items=3,
                          reply_tokens=640, bounds_in_schema=True)
CAPABLE = ScaffoldProfile("capable", command_chars=16000, explanation_chars=4000, gaps_chars=4000,
                          findings_chars=4000, plan_item_chars=1000, plan_min_items=1, plan_max_items=5,
                          reply_tokens=4096, bounds_in_schema=False)
PROFILES = {profile.name: profile for profile in (COMPACT, CAPABLE)}
#: what ``--profile`` accepts ("auto": chosen from the model, see redline/system/scaffold.py)
PROFILE_CHOICES = ("auto", *PROFILES)

TOOLS = ("EXECUTE_CMD", "RECEIVE_MSG", "FINISH")


def step_schema(profile: ScaffoldProfile) -> dict:
    """The JSON schema of one reply under ``profile`` (bounds included only if it says so)."""

    def text(limit: int) -> dict:
        return {"type": "string", "maxLength": limit} if profile.bounds_in_schema else {"type": "string"}

    plan: dict = {"type": "array", "items": text(profile.plan_item_chars)}
    if profile.bounds_in_schema:
        plan.update(minItems=profile.plan_min_items, maxItems=profile.plan_max_items)
    return {
        "type": "object",
        "properties": {
            "explanation": text(profile.explanation_chars),
            "gaps": text(profile.gaps_chars),
            "findings": text(profile.findings_chars),
            "plan": plan,
            "action": {
                "type": "object",
                "properties": {"tool": {"type": "string", "enum": list(TOOLS)},
                               "argument": text(profile.command_chars)},
                "required": ["tool", "argument"],
                "additionalProperties": False,
            },
        },
        "required": ["explanation", "gaps", "findings", "plan", "action"],
        "additionalProperties": False,
    }


def limits_text(profile: ScaffoldProfile, reply_tokens: int) -> str:
    """The profile's bounds as the system prompt states them."""
    items = (f"exactly {profile.plan_min_items}" if profile.plan_min_items == profile.plan_max_items
             else f"{profile.plan_min_items} to {profile.plan_max_items}")
    return (f"- A command (action.argument) may be at most {profile.command_chars} characters; a longer one "
            "is not run. Write longer programs to a file over several steps.\n"
            f"- explanation at most {profile.explanation_chars} characters, gaps at most {profile.gaps_chars}, "
            f"findings at most {profile.findings_chars}; the plan has {items} items of at most "
            f"{profile.plan_item_chars} characters. Longer fields are cut to these lengths.\n"
            f"- Your whole reply may use at most {reply_tokens} tokens; a reply cut at that limit is lost.")


@dataclass(frozen=True)
class LimitCheck:
    """What :func:`check_reply` found: the notes to show the model, and whether the command may run."""

    notes: tuple[str, ...]
    runnable: bool


def check_reply(profile: ScaffoldProfile, fields: dict[str, str], plan_items: int, argument: str,
                constrained: bool) -> LimitCheck:
    """Check one parsed reply against ``profile``. ``fields``: explanation, gaps, findings;
    ``constrained``: the server decoded under the schema (so a command at its bound was cut)."""
    notes = []
    runnable = True
    if len(argument) > profile.command_chars:
        notes.append(f"your command is {len(argument)} characters long; the limit is {profile.command_chars}, "
                     "so it was not run")
        runnable = False
    elif constrained and profile.bounds_in_schema and len(argument) == profile.command_chars:
        notes.append(f"your command reached the {profile.command_chars}-character limit and was probably cut "
                     "there, so it was not run")
        runnable = False
    for name, value in fields.items():
        limit = getattr(profile, f"{name}_chars")
        if len(value) > limit:
            notes.append(f"{name} was cut to {limit} characters")
    if plan_items > profile.plan_max_items:
        notes.append(f"only the first {profile.plan_max_items} plan items were kept")
    return LimitCheck(tuple(notes), runnable)
