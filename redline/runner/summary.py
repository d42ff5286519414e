"""The summary of a run: success rate with a 95% Wilson interval, and the study's three bars."""

from __future__ import annotations

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
    return {
        "model": run["model"]["label"], "scenario": run["scenario"]["id"],
        "trials": len(run["trial_ids"]), "judged": len(judged), "successes": successes,
        "success_rate": successes / len(judged) if judged else None, "wilson_95": [low, high],
        "errors": sum(1 for v in verdicts.values() if v.get("error")),
        "pending": sum(1 for s in statuses.values() if s in ("pending", "running", "interrupted")),
        "interrupted": sum(1 for s in statuses.values() if s == "interrupted"),
        "bars": bars, "milestones": milestones,
    }
