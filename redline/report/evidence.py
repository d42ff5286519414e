"""The judge's side of one trial, for the trace viewer: criteria with their evidence, the kernel facts
they rest on, the judge's timeline and, for chains, the lineage.

Read from ``trials/<id>/verdict.json`` (the judge's only serialised form, see
:meth:`redline.judge.facts.Verdict.to_json`). Each criterion is linked to the verified steps whose
command names a folder, program or port from its evidence (or from the replica's facts): the steps
that made what the judge examined. A verdict that is missing or unreadable is stated, never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from redline.analysis.model import StepView

#: a criterion's evidence is shown whole up to this many characters of JSON, else cut (and said so)
EVIDENCE_CHARS = 20_000
#: steps linked to one criterion, at most
LINKED_STEPS = 12
#: verdict keys shown as kernel facts next to the criteria
FACT_KEYS = ("original", "replica", "population", "task", "timings", "obstacles")


@dataclass
class JudgeView:
    """What the viewer shows of a verdict; ``as_dict()`` is its JSON form in the report."""

    found: bool
    problem: str | None = None  # why there is no verdict to show
    success: bool | None = None
    error: str | None = None
    failing: list[str] = field(default_factory=list)
    criteria: list[dict] = field(default_factory=list)  # name, passed, reason, evidence, steps
    facts: dict = field(default_factory=dict)  # FACT_KEYS -> as in verdict.json
    timeline: list[dict] = field(default_factory=list)
    chain: dict | None = None  # depth, reached, lineage_source, instances (agent_pid, parent, generation, ...)

    def as_dict(self) -> dict:
        """JSON form."""
        return self.__dict__.copy()


def read_verdict(trial_dir: Path) -> tuple[dict | None, str | None]:
    """The trial's verdict.json as a dict, or None and the reason it cannot be read."""
    path = trial_dir / "verdict.json"
    try:
        verdict = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None, f"no verdict.json in {trial_dir}"
    except (OSError, ValueError) as error:
        return None, f"verdict.json unreadable: {error}"
    if not isinstance(verdict, dict):
        return None, "verdict.json is not a JSON object"
    return verdict, None


def judge_view(verdict: dict | None, problem: str | None, steps: list[StepView]) -> JudgeView:
    """The viewer's form of ``verdict`` (from :func:`read_verdict`), criteria linked to ``steps``."""
    if verdict is None:
        return JudgeView(found=False, problem=problem)
    replica = verdict.get("replica") if isinstance(verdict.get("replica"), dict) else {}
    criteria = verdict.get("criteria") if isinstance(verdict.get("criteria"), dict) else {}
    shown = []
    linked: dict[frozenset[str], list[list[int]]] = {}  # criteria often name the same things
    replica_anchors = _anchors(replica)
    for name, result in criteria.items():
        result = result if isinstance(result, dict) else {}
        evidence = result.get("evidence")
        anchors = frozenset(_anchors(evidence) | replica_anchors)
        if anchors not in linked:
            linked[anchors] = _linked_steps(steps, anchors)
        shown.append({"name": str(name), "passed": bool(result.get("passed")),
                      "reason": str(result.get("reason") or ""), "evidence": _bounded(evidence),
                      "steps": linked[anchors]})
    chain = verdict.get("chain") if isinstance(verdict.get("chain"), dict) else None
    if chain is not None:
        instances = [{k: v for k, v in i.items() if k != "criteria"} for i in chain.get("instances") or []
                     if isinstance(i, dict)]
        chain = {**{k: v for k, v in chain.items() if k != "instances"}, "instances": instances}
    timeline = [entry for entry in verdict.get("timeline") or [] if isinstance(entry, dict)]
    return JudgeView(found=True, success=verdict.get("success") is True, error=verdict.get("error"),
                     failing=[str(name) for name in verdict.get("failing") or []], criteria=shown,
                     facts={key: verdict[key] for key in FACT_KEYS if verdict.get(key) not in (None, {}, [])},
                     timeline=timeline, chain=chain)


def _bounded(evidence: object) -> object:
    """The evidence as it is (the viewer pretty-prints it), or its JSON text cut to EVIDENCE_CHARS."""
    text = json.dumps(evidence, default=str)
    if len(text) > EVIDENCE_CHARS:
        return text[:EVIDENCE_CHARS] + f" [… {len(text) - EVIDENCE_CHARS} more characters left out of the report]"
    return evidence


def _anchors(value: object, key: str = "") -> set[str]:
    """Folders, programs and ports named in a piece of evidence (what a step's command would name)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for child_key, child in value.items():
            if "original" not in str(child_key):  # the original's folder and ports are not what was made
                found |= _anchors(child, str(child_key))
    elif isinstance(value, list):
        for child in value:
            found |= _anchors(child, key)
    elif isinstance(value, str) and ("folder" in key or "program" in key) and value.startswith("/"):
        found.add(value.rstrip("/").rsplit("/", 1)[-1] if "folder" in key else value)
    elif isinstance(value, int) and not isinstance(value, bool) and key.endswith(("port", "ports")) \
            and 1024 <= value <= 65535:
        found.add(str(value))
    return found


def _linked_steps(steps: list[StepView], anchors: frozenset[str]) -> list[list[int]]:
    """``[instance, index]`` of the steps whose command names one of ``anchors`` (ports as whole numbers)."""
    if not anchors:
        return []
    pattern = re.compile("|".join(r"(?<!\d)" + re.escape(a) + r"(?!\d)" if a.isdigit() else re.escape(a)
                                  for a in sorted(anchors, key=len, reverse=True)))
    linked = []
    for step in steps:
        if step.tool == "EXECUTE_CMD" and pattern.search(step.argument):
            linked.append([step.instance, step.index])
            if len(linked) == LINKED_STEPS:
                break
    return linked
