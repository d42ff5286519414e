"""Benchmark: what running trials on Ray costs -- the same trials on this machine's local executor
and on a Ray cluster on this machine, side by side.

A one-node :class:`~redline.cluster.local.LocalCluster` (one slot, one CPU) against the local
executor at concurrency 1, both running N reference-policy trials of ``self-replication`` through
``redline run`` (so each includes the command's start, the node check for the cluster, the trials
and the report). Reported: wall time of each and their ratio, and the Ray-side fixed costs seen
(the cluster's start, the containment check of its node), and the scheduling latency of a task
shaped like a trial's.

Usage: python bench/cluster.py [N]   (default 4)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import publish  # noqa: E402
from redline.cluster.local import LocalCluster  # noqa: E402

REDLINE = os.path.join(os.path.dirname(sys.executable), "redline")

#: run inside the cluster's namespace: 20 tasks shaped like a trial's (one CPU, one redline slot,
#: pinned to the node), each reporting when it started; prints the median submit→start and the
#: median round trip in milliseconds
LATENCY = """
import statistics, time, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=ADDRESS, logging_level="ERROR")
node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("redline"))
started_at = ray.remote(lambda: time.time())
options = dict(num_cpus=1, resources={"redline": 1}, max_retries=0,
               scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False))
ray.get(started_at.options(**options).remote())  # a worker exists, as for every trial after the first
to_start, round_trip = [], []
for _ in range(20):
    submitted = time.time()
    began = ray.get(started_at.options(**options).remote())
    to_start.append(began - submitted)
    round_trip.append(time.time() - submitted)
print(round(statistics.median(to_start) * 1000, 1), round(statistics.median(round_trip) * 1000, 1))
"""


def timed_run(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-1500:]}")
    return time.perf_counter() - started


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        with LocalCluster(os.path.join(work, "cluster")) as cluster:
            cluster_start = time.perf_counter() - started
            check = timed_run(cluster.command([REDLINE, "cluster", "check", "--cluster", cluster.address]))
            common = ["run", "--model", "reference", "--trials", str(n), "--concurrency", "1"]
            local = timed_run([REDLINE, *common, "--out", os.path.join(work, "local")])
            on_ray = timed_run(cluster.command([REDLINE, *common, "--cluster", cluster.address,
                                                "--out", os.path.join(work, "ray")]))
            script = LATENCY.replace("ADDRESS", repr(cluster.address))
            latency = subprocess.run(cluster.command([sys.executable, "-c", script]), capture_output=True, text=True)
            to_start, round_trip = latency.stdout.split()[-2:] if latency.returncode == 0 else ("?", "?")
    rows = [[f"{n} reference trials, local executor", f"{local:.1f}", "1.00",
             f"{n * 3600 / local:.0f}"],
            [f"{n} reference trials, Ray (one node, one slot)", f"{on_ray:.1f}", f"{on_ray / local:.2f}",
             f"{n * 3600 / on_ray:.0f}"],
            ["start a one-node cluster (once)", f"{cluster_start:.1f}", "", ""],
            ["redline cluster check (one node)", f"{check:.1f}", "", ""],
            ["scheduling: submit → task start (median of 20, ms)", to_start, "", ""],
            ["scheduling: submit → result back (median of 20, ms)", round_trip, "", ""]]
    publish(f"Trials on Ray vs the local executor ({n} trials each, concurrency 1)",
            ["what", "seconds", "ratio to local", "trials per hour"], rows,
            notes="Each run is a whole `redline run` (start, node check on Ray, trials, report). Target: Ray "
                  "overhead ≤ 10%.")


if __name__ == "__main__":
    main()
