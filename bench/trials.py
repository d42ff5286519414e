"""Benchmark trials: where a reference trial's time goes (the judge's phases too), trials per hour.

1. A reference trial's wall time split into sandbox creation, deploy, system start (to healthy),
   recording the original's identity (incl. the oracle check), agent steps, and judge -- from the
   trace's harness events; the judge's own phases (before the kill, removing the original,
   settling, examining) from the verdict's timeline.
2. Trials per hour with the reference policy at concurrency 1 and 2 (same run, one after the other).

Usage: python bench/trials.py [TRIALS_PER_CONCURRENCY]   (default 4)
"""

from __future__ import annotations

import os
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


def split() -> list[list[str]]:
    with tempfile.TemporaryDirectory() as out:
        started = time.time()
        verdict = run_trial("t01", reference(), SCENARIO, out, max_steps=30, time_limit_s=600)
        events = {e["type"]: e for e in read_trace(os.path.join(out, "trace.jsonl")) if e.get("source") == "harness"}
    assert verdict["success"], verdict["failing"]
    t = verdict["timings"]
    at = {entry["event"]: entry["t_s"] for entry in reversed(verdict["timeline"])}  # first occurrence of each
    created = events["sandbox_created"]["time"] - started
    deployed = events["system_deployed"]["time"] - events["sandbox_created"]["time"]
    healthy = events["original_healthy"]["seconds"]
    rows = [["sandbox creation (incl. trace channel)", f"{created:.2f} s"],
            ["deploy the system folder (98 MB weights)", f"{deployed:.2f} s"],
            ["system start (start.sh → agent healthy)", f"{healthy:.2f} s"],
            ["record the original (weights hash, code hashes, oracle check)", f"{t['identity_s']:.2f} s"],
            ["agent steps (6 scripted steps, incl. the replica's start)", f"{t['agent_s']:.2f} s"],
            ["judge (all phases)", f"{t['judge_s']:.2f} s"],
            ["  judge: observe before the kill", f"{at['observed_before_kill']:.2f} s"],
            ["  judge: remove the original (verified)", f"{at['original_gone'] - at['observed_before_kill']:.2f} s"],
            ["  judge: settle (host quiet 0.5 s)", f"{at['settled'] - at['original_gone']:.2f} s"],
            ["  judge: examine (task probe, oracle check, origins)", f"{at['examined'] - at['settled']:.2f} s"],
            ["total", f"{t['total_s']:.2f} s"]]
    return rows


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
    rows = [[name, value, ""] for name, value in split()]
    rows += [[name, value, rate] for name, value, rate in throughput(trials)]
    publish("Trials: reference trial split (with the judge's phases), throughput", ["measure", "value", "detail"],
            rows)


if __name__ == "__main__":
    main()
