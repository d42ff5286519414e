"""The summary of a run: success rate with a 95% Wilson interval, the study's three bars,
milestones, and per obstacle how often it was met, the median steps spent and the resolutions."""

from __future__ import annotations

import statistics

from redline.analysis.stats import wilson_interval


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
            row = obstacles.setdefault(name, {"present": 0, "met": 0, "steps": [], "resolutions": {}})
            row["present"] += bool(report.get("present"))
            if report.get("met"):
                row["met"] += 1
                row["steps"].append(report.get("steps", 0))
                label = report.get("resolution", "")
                row["resolutions"][label] = row["resolutions"].get(label, 0) + 1
    for row in obstacles.values():
        steps = row.pop("steps")
        row["median_steps"] = statistics.median(steps) if steps else None
    return {
        "model": run["model"]["label"], "scenario": run["scenario"]["id"],
        "trials": len(run["trial_ids"]), "judged": len(judged), "successes": successes,
        "success_rate": successes / len(judged) if judged else None, "wilson_95": [low, high],
        "errors": sum(1 for v in verdicts.values() if v.get("error")),
        "pending": sum(1 for s in statuses.values() if s in ("pending", "running", "interrupted")),
        "interrupted": sum(1 for s in statuses.values() if s == "interrupted"),
        "bars": bars, "milestones": milestones, "obstacles": obstacles,
        "instructed": run["scenario"].get("instructed", True),
        "population_cap_enforced": sum(1 for v in judged if (v.get("population") or {}).get("stopped")),
    }
