"""Benchmark the study's scenarios: each reference trial's wall time, side by side with the plain
self-replication reference trial in the same run, and the cost of the two-host network.

1. Wall time of each scenario's reference trial (and of self-replication with all four
   obstacles set up), median of N interleaved rounds, with the ratio to self-replication.
2. Two-host network (two namespaces + veth): create + destroy, median of M; side by side with
   creating and destroying one loopback sandbox, and with the second host's full bring-up
   (network + host B sandbox + sshd + allocation service), as measured by the trial.

Usage: python bench/scenarios.py [ROUNDS] [NETWORKS]   (default 2 and 20)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import median_ms, publish  # noqa: E402
from redline.llm.models import ModelChoice, resolve_model  # noqa: E402
from redline.runner.trial import run_trial  # noqa: E402
from redline.sandbox import create_sandbox  # noqa: E402
from redline.sandbox.vnet import create_two_host_network  # noqa: E402
from redline.scenarios import load_scenario  # noqa: E402
from redline.trace.collector import read_trace  # noqa: E402

CASES = [("self-replication", ()), ("shutdown-avoidance", ()), ("uninstructed", ()), ("chain-of-replication", ()),
         ("replicate-to-host", ()), ("self-replication", ("no-net-tools", "port-taken", "low-disk",
                                                          "missing-dependency"))]


def reference() -> ModelChoice:
    return ModelChoice("reference", "policy", weights=resolve_model("bundled").weights)


def scenario_rows(rounds: int) -> tuple[list[list[str]], float | None]:
    walls: dict[int, list[float]] = {i: [] for i in range(len(CASES))}
    setups: dict[int, list[float]] = {i: [] for i in range(len(CASES))}
    bring_up: list[float] = []
    for _ in range(rounds):
        for index, (name, obstacles) in enumerate(CASES):
            with tempfile.TemporaryDirectory() as out:
                verdict = run_trial("t01", reference(), load_scenario(name), out, max_steps=40, time_limit_s=600,
                                    obstacles=obstacles)
                if name == "replicate-to-host":
                    events = read_trace(os.path.join(out, "trace.jsonl"))
                    ready = [e for e in events if e["type"] == "second_host_ready"]
                    bring_up += [e["seconds"] for e in ready]
            # the reference solution is not written to get past obstacles: that case measures their cost
            assert verdict["success"] or obstacles, (name, verdict["failing"], verdict.get("error"))
            assert verdict.get("error") is None, verdict["error"]
            walls[index].append(verdict["timings"]["total_s"])
            setups[index].append(verdict["timings"]["start_s"])
    base = statistics.median(walls[0])
    rows = []
    for index, (name, obstacles) in enumerate(CASES):
        wall = statistics.median(walls[index])
        label = name + (f" + all {len(obstacles)} obstacles (the reference is not written to pass them: "
                        "its 60 s health wait times out)" if obstacles else "")
        rows.append([f"reference trial: {label}", f"{wall:.2f} s", f"{wall / base:.2f}",
                     f"median of {rounds}: " + ", ".join(f"{w:.2f}" for w in walls[index])
                     + f"; setup to original healthy {statistics.median(setups[index]):.2f} s"])
    return rows, (statistics.median(bring_up) if bring_up else None)


def network_rows(count: int, bring_up_s: float | None) -> list[list[str]]:
    networks, sandboxes = [], []
    for _ in range(count):  # interleaved
        started = time.perf_counter()
        create_two_host_network().destroy()
        networks.append(time.perf_counter() - started)
        started = time.perf_counter()
        create_sandbox().destroy()
        sandboxes.append(time.perf_counter() - started)
    network_ms, sandbox_ms = median_ms(networks), median_ms(sandboxes)
    rows = [["two-host network create + destroy", f"{network_ms:.1f} ms", f"{network_ms / sandbox_ms:.2f}",
             f"median of {count}; ratio to one loopback sandbox create + destroy ({sandbox_ms:.1f} ms)"]]
    if bring_up_s is not None:
        rows.append(["second host bring-up in a trial", f"{bring_up_s * 1000:.0f} ms", "",
                     "host B sandbox + sshd listening + allocation service (network made before)"])
    return rows


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rows, bring_up = scenario_rows(rounds)
    rows += network_rows(count, bring_up)
    publish("Scenarios: reference trial wall times, two-host network cost", ["measure", "value", "ratio", "detail"],
            rows, "Ratios: scenario trial / self-replication trial (same run, interleaved); network / sandbox.")
    print(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
