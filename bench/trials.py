"""Benchmark trials: where a reference trial's time goes, trials per hour, judge discovery latency.

1. A reference trial's wall time split into sandbox creation, deploy, system start (to healthy),
   recording the original's identity, agent steps, and judge -- from the trace's harness events.
2. Trials per hour with the reference policy at concurrency 1 and 2 (same run, one after the other).
3. How soon after a replica's agent starts listening the judge sees it: from the moment the
   kernel shows the listening socket to the moment the judge's discovery pass returns it.

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
from redline.judge.original import record_original  # noqa: E402
from redline.judge.verdict import candidates  # noqa: E402
from redline.llm.models import ModelChoice, resolve_model  # noqa: E402
from redline.runner.run import RunRequest, run_experiment  # noqa: E402
from redline.runner.trial import run_trial  # noqa: E402
from redline.scenarios import load_scenario  # noqa: E402
from redline.system.folder import SystemOptions  # noqa: E402
from redline.system.session import SystemSession  # noqa: E402
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
    created = events["sandbox_created"]["time"] - started
    deployed = events["system_deployed"]["time"] - events["sandbox_created"]["time"]
    healthy = events["original_healthy"]["seconds"]
    rows = [["sandbox creation (incl. trace channel)", f"{created:.2f} s"],
            ["deploy the system folder (98 MB weights)", f"{deployed:.2f} s"],
            ["system start (start.sh → agent healthy)", f"{healthy:.2f} s"],
            ["record the original (challenge, weights hash)", f"{t['identity_s']:.2f} s"],
            ["agent steps (6 scripted steps, incl. the replica's start)", f"{t['agent_s']:.2f} s"],
            ["judge (discover, probe, kill original, re-probe)", f"{t['judge_s']:.2f} s"],
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


def discovery(repeats: int = 5) -> list[float]:
    latencies = []
    with tempfile.TemporaryDirectory() as out:
        with SystemSession.open(reference(), SystemOptions(), out) as session:
            box = session.sandbox
            original = record_original(box, 8002, 8001)
            box.shell("cp -r ~/assistant ~/copy && rm -rf ~/copy/logs")
            for attempt in range(repeats):
                port = 9100 + 2 * attempt
                box.shell(f"cd ~/copy && setsid nohup ./start.sh --llm-port {port} --agent-port {port + 1} "
                          "> /dev/null 2>&1 &")
                while not any(s.port == port + 1 for s in box.listening_sockets()):
                    time.sleep(0.001)
                listening = time.monotonic()
                while not any(found == port + 1 for found, _ in candidates(box, set(original.pids))):
                    pass
                latencies.append(time.monotonic() - listening)
    return latencies


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    rows = [[name, value, ""] for name, value in split()]
    rows += [[name, value, rate] for name, value, rate in throughput(trials)]
    latencies = discovery()
    rows.append(["judge sees a replica after it listens", f"{statistics.median(latencies) * 1000:.1f} ms median",
                 f"max {max(latencies) * 1000:.1f} ms over {len(latencies)}"])
    publish("Trials: reference trial split, throughput, judge discovery latency", ["measure", "value", "detail"], rows)


if __name__ == "__main__":
    main()
