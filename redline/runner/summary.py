"""The summary of a run: success rate with a 95% Wilson interval, the study's three bars,
milestones, per obstacle how often each outcome occurred (met, avoided, seen, not encountered), the
median steps spent (meeting it -> past it; seeing it -> the way around) and the resolutions per
outcome, and the causes of the trials the harness failed."""

from __future__ import annotations

import statistics

from redline.analysis.stats import wilson_interval
from redline.obstacles.base import Outcome

#: how much of a harness error's first line names its cause (the rest is detail, e.g. a log tail)
CAUSE_CHARS = 200


def error_causes(verdicts: dict[str, dict]) -> list[dict]:
    """The distinct causes of the harness errors among ``verdicts`` (trial -> verdict): each
    ``{"cause", "count", "trials"}`` -- the cause is the error's first line, at most
    :data:`CAUSE_CHARS` characters --, the most frequent first (then by first trial)."""
    trials: dict[str, list[str]] = {}
    for trial_id, verdict in verdicts.items():
        if verdict.get("error"):
            text = str(verdict["error"]).strip() or "(no message)"
            trials.setdefault(text.splitlines()[0][:CAUSE_CHARS], []).append(trial_id)
    ranked = sorted(trials.items(), key=lambda item: (-len(item[1]), sorted(item[1])[0]))
    return [{"cause": cause, "count": len(ids), "trials": sorted(ids)} for cause, ids in ranked]


def summarize(run: dict, verdicts: dict[str, dict], statuses: dict[str, str]) -> dict:
    """One row per model × scenario (a run has one of each). Trials the harness failed
    (``error``) are reported but not counted; unfinished trials are counted as pending."""
    judged = [v for v in verdicts.values() if not v.get("error")]
    successes = sum(1 for v in judged if v.get("success"))
    low, high = wilson_interval(successes, len(judged))
    bars = {name: sum(1 for v in judged if v.get("bars", {}).get(name)) for name in ("agreed", "knew_how", "succeeded")}
    milestones: dict[str, int] = {}
    for verdict in judged:
        for name, reached in (verdict.get("milestones") or {}).items():
            milestones[name] = milestones.get(name, 0) + bool(reached)
    obstacles: dict[str, dict] = {}
    for verdict in judged:
        for name, report in (verdict.get("obstacles") or {}).items():
            row = obstacles.setdefault(name, {"present": 0, "met": 0, "outcomes": {o.value: 0 for o in Outcome},
                                              "steps": {"met": [], "avoided": []},
                                              "resolutions": {"met": {}, "avoided": {}}})
            row["present"] += bool(report.get("present"))
            # a verdict written before outcomes existed (a resumed run) has only "met"
            outcome = report.get("outcome") or ("met" if report.get("met") else Outcome.NOT_ENCOUNTERED.value)
            row["outcomes"][outcome] = row["outcomes"].get(outcome, 0) + 1
            row["met"] += outcome == Outcome.MET.value
            if outcome in row["steps"]:
                row["steps"][outcome].append(report.get("steps", 0))
                labels = row["resolutions"][outcome]
                labels[report.get("resolution", "")] = labels.get(report.get("resolution", ""), 0) + 1
    for row in obstacles.values():
        steps = row.pop("steps")
        row["median_steps"] = statistics.median(steps["met"]) if steps["met"] else None  # meeting it -> past it
        row["median_steps_avoided"] = statistics.median(steps["avoided"]) if steps["avoided"] else None
    return {
        "model": run["model"]["label"], "scenario": run["scenario"]["id"],
        "trials": len(run["trial_ids"]), "judged": len(judged), "successes": successes,
        "success_rate": successes / len(judged) if judged else None, "wilson_95": [low, high],
        "errors": sum(1 for v in verdicts.values() if v.get("error")), "error_causes": error_causes(verdicts),
        "pending": sum(1 for s in statuses.values() if s in ("pending", "running", "interrupted")),
        "interrupted": sum(1 for s in statuses.values() if s == "interrupted"),
        "bars": bars, "milestones": milestones, "obstacles": obstacles,
        "instructed": run["scenario"].get("instructed", True),
        "population_cap_enforced": sum(1 for v in judged if (v.get("population") or {}).get("stopped")),
    }
