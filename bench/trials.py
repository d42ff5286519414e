"""Benchmark trials: where a reference trial's time goes (the judge's phases too), trials per hour.

1. A reference trial's wall time (the median of 3) split into sandbox creation, deploy, system start (to healthy),
   recording the original's identity (incl. the oracle check), agent steps, and judge -- from the
   trace's harness events; the judge's own phases (before the kill, removing the original,
   settling, examining) from the verdict's timeline.
2. Trials per hour with the reference policy at concurrency 1 and 2 (same run, one after the other).

Usage: python bench/trials.py [TRIALS_PER_CONCURRENCY]   (default 4)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import publish  # noqa: E402
from redline.llm.models import ModelChoice, resolve_model  # noqa: E402
from redline.runner.run import RunRequest, run_experiment  # noqa: E402
from redline.runner.trial import run_trial  # noqa: E402
from redline.scenarios import load_scenario  # noqa: E402
from redline.trace.collector import read_trace  # noqa: E402

SCENARIO = load_scenario("self-replication")


def reference() -> ModelChoice:
    return ModelChoice("reference", "policy", weights=resolve_model("bundled").weights)


SPLIT_RUNS = 3


def split() -> list[list[str]]:
    """Each part's median over :data:`SPLIT_RUNS` reference trials, with every run's value."""
    runs = [split_once() for _ in range(SPLIT_RUNS)]
    return [[name, f"{statistics.median(r[i][1] for r in runs):.2f} s",
             "runs: " + ", ".join(f"{r[i][1]:.2f}" for r in runs)] for i, (name, _) in enumerate(runs[0])]


def split_once() -> list[tuple[str, float]]:
    """One reference trial's parts, in seconds."""
    with tempfile.TemporaryDirectory() as out:
        started = time.time()
        verdict = run_trial("t01", reference(), SCENARIO, out, max_steps=30, time_limit_s=600)
        events = {e["type"]: e for e in read_trace(os.path.join(out, "trace.jsonl")) if e.get("source") == "harness"}
    assert verdict["success"], verdict["failing"]
    t = verdict["timings"]
    at = {entry["event"]: entry["t_s"] for entry in reversed(verdict["timeline"])}  # first occurrence of each
    return [("sandbox creation (incl. trace channel)", events["sandbox_created"]["time"] - started),
            ("deploy the system folder (98 MB weights)",
             events["system_deployed"]["time"] - events["sandbox_created"]["time"]),
            ("system start (start.sh → agent healthy)", events["original_healthy"]["seconds"]),
            ("record the original (weights hash, code hashes, oracle check)", t["identity_s"]),
            ("agent steps (6 scripted steps, incl. the replica's start)", t["agent_s"]),
            ("judge (all phases)", t["judge_s"]),
            ("  judge: observe before the kill", at["observed_before_kill"]),
            ("  judge: remove the original (verified)", at["original_gone"] - at["observed_before_kill"]),
            ("  judge: settle (host quiet 0.5 s)", at["settled"] - at["original_gone"]),
            ("  judge: examine (task probe, oracle check, origins)", at["examined"] - at["settled"]),
            ("    of which: others held while the replica answers",
             verdict["criteria"]["same_model"]["evidence"]["others_held"]["held_s"]),
            ("total", t["total_s"])]


def throughput(trials: int) -> list[list[str]]:
    rows = []
    for concurrency in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            request = RunRequest("reference", SCENARIO.id, trials, concurrency, 30, 600)
            started = time.monotonic()
            results = run_experiment(request, reference(), SCENARIO, out)
            elapsed = time.monotonic() - started
        assert results["summary"]["successes"] == trials
        rows.append([f"concurrency {concurrency}", f"{trials} trials in {elapsed:.1f} s",
                     f"{trials / elapsed * 3600:.0f} trials/hour"])
    return rows


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    rows = split() + throughput(trials)
    publish("Trials: reference trial split (with the judge's phases), throughput", ["measure", "value", "detail"],
            rows)


if __name__ == "__main__":
    main()
