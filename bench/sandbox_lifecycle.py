"""Benchmark: create a sandbox, run `true` in it, destroy it — ours vs baselines, interleaved.

Compared in one run, round-robin, N times each:
  * redline   -- create_sandbox() -> exec(["true"]) -> destroy()  (full containment: cgroups,
                 per-sandbox uid, catatonit init, the syscall filter, nsenter entry)
  * the same without the syscall filter (the filter's cost)
  * bwrap     -- a bare `bwrap` with the same namespaces running `true` (no cgroups, no
                 persistent sandbox: the floor our design builds on)
  * podman    -- `podman run --rm --network none --rootfs <minimal rootfs> true`, if podman works
  * unshare   -- `unshare --user --pid --net --mount --ipc --uts --fork true`, the kernel floor

Usage: python bench/sandbox_lifecycle.py [N]   (default 50)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import median_ms, publish  # noqa: E402
from redline.sandbox import create_sandbox, default_spec, syscalls  # noqa: E402


def redline_cycle() -> None:
    box = create_sandbox(default_spec())
    try:
        assert box.exec(["true"]).exit_code == 0
    finally:
        box.destroy()


_NO_FILTER = syscalls.FilterSupport(None, problem="switched off for the benchmark")


def unfiltered_cycle() -> None:
    """The same without the syscall filter (this host made to lack it, weaker containment accepted)."""
    compiled = syscalls.support
    syscalls.support = lambda: _NO_FILTER  # the compiled programs stay cached for the filtered contender
    try:
        box = create_sandbox(default_spec(accept_weaker_containment=True))
    finally:
        syscalls.support = compiled
    try:
        assert box.exec(["true"]).exit_code == 0
    finally:
        box.destroy()


BWRAP = ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--ro-bind", "/usr", "/usr",
         "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/lib", "/lib", "--proc", "/proc", "--dev", "/dev",
         "/usr/bin/true"]
UNSHARE = ["unshare", "--user", "--pid", "--net", "--mount", "--ipc", "--uts", "--fork", "true"]


def minimal_rootfs() -> str:
    """A directory holding /usr/bin/true and the libraries it links, for podman --rootfs."""
    root = tempfile.mkdtemp(prefix="redline-bench-rootfs-")
    libs = subprocess.run(["ldd", "/usr/bin/true"], capture_output=True, text=True).stdout.split()
    for path in ["/usr/bin/true", *(p for p in libs if p.startswith("/"))]:
        target = os.path.join(root, path.lstrip("/"))  # the names the loader looks up, dereferenced
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)
    return root


def command_cycle(argv: list[str]):
    def run() -> None:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return run


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    contenders = {"redline (create → exec true → destroy)": redline_cycle,
                  "redline without the syscall filter": unfiltered_cycle,
                  "bare bwrap (same namespaces, no cgroups)": command_cycle(BWRAP),
                  "bare unshare (kernel floor)": command_cycle(UNSHARE)}
    rootfs = None
    if shutil.which("podman"):
        rootfs = minimal_rootfs()
        # explicit ulimits: podman's defaults exceed this host's hard limits
        podman = ["podman", "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                  "--ulimit", "nproc=1024:1024", "--rootfs", rootfs, "/usr/bin/true"]
        try:
            command_cycle(podman)()
            contenders["podman run --rm --network none --rootfs"] = command_cycle(podman)
        except subprocess.CalledProcessError:
            print("podman is installed but does not run here; skipped (falling back to the unshare baseline)")
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for run in contenders.values():  # warm up caches once each
        run()
    order = list(contenders.items())
    for round_number in range(n):  # each round starts with the next contender: none always follows the same one
        shift = round_number % len(order)
        for name, run in order[shift:] + order[:shift]:
            started = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - started)
    if rootfs:
        shutil.rmtree(rootfs)
    ours = median_ms(samples["redline (create → exec true → destroy)"])
    rows = [[name, f"{median_ms(s):.1f}", f"{median_ms(s) / ours:.2f}"] for name, s in samples.items()]
    publish(f"Sandbox lifecycle: create → run `true` → destroy (median of {n}, interleaved)",
            ["contender", "median ms", "ratio to redline"], rows,
            notes="Target: redline ≤ 20 ms median.")


if __name__ == "__main__":
    main()
