"""Benchmark: what the syscall filter costs -- a filtered sandbox vs the same sandbox without it.

Two live sandboxes, one with the seccomp filter and one built with weaker containment accepted and
the filter switched off; interleaved, N times each:
  * entry   -- ``exec(["true"])``: the harness entering the sandbox (the filtered one runs the
               host-side loader, ``seccomp_exec.c``, first);
  * work    -- one ``exec`` of a shell loop that forks and executes ``/bin/true`` 200 times and
               runs a Python startup: the cost of the filter on what the AI's commands do
               (they inherit it; nothing is loaded again).

Usage: python bench/syscall_filter.py [N]   (default 30)
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import median_ms, publish  # noqa: E402
from redline.sandbox import Limits, SandboxSpec, create_sandbox, default_spec, syscalls  # noqa: E402

WORK = "for i in $(seq 200); do /bin/true; done; python3 -c 'import json'"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    filtered = create_sandbox(default_spec())
    compiled = syscalls.support()
    syscalls.support.cache_clear()
    original = syscalls.SYSTEM_PYTHON
    syscalls.SYSTEM_PYTHON = "/nonexistent/python3"  # this process's backend: no filter for the next sandbox
    try:
        unfiltered = create_sandbox(SandboxSpec(limits=Limits(), accept_weaker_containment=True))
    finally:
        syscalls.SYSTEM_PYTHON = original
        syscalls.support.cache_clear()
    assert compiled.bpf is not None and filtered.containment.enforces(syscalls.ITEM_NAME)
    assert not unfiltered.containment.enforces(syscalls.ITEM_NAME)
    cases = {"entry: exec true": ["true"], "work: 200 fork+exec and a python start": ["bash", "-c", WORK]}
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for case, argv in cases.items():  # one case at a time, the two sandboxes alternating, which first alternating
            for round_number in range(n):
                pair = [("filtered", filtered), ("unfiltered", unfiltered)]
                for name, box in pair if round_number % 2 == 0 else reversed(pair):
                    started = time.perf_counter()
                    assert box.exec(argv, timeout=60).exit_code == 0
                    samples.setdefault((case, name), []).append(time.perf_counter() - started)
    finally:
        filtered.destroy()
        unfiltered.destroy()
    rows = []
    for case in cases:
        with_filter, without = median_ms(samples[(case, "filtered")]), median_ms(samples[(case, "unfiltered")])
        rows.append([case, f"{with_filter:.1f}", f"{without:.1f}", f"{with_filter / without:.2f}"])
    publish(f"Syscall filter: filtered vs unfiltered sandbox (median of {n}, interleaved)",
            ["case", "filtered ms", "unfiltered ms", "ratio"], rows,
            notes="The entry cost is the host-side loader (seccomp_exec.c installing the compiled program); the "
                  "AI's own commands inherit the filter and pay only the kernel's per-syscall check.")


if __name__ == "__main__":
    main()
