"""Fork lineage from the kernel's process events, with real sandboxes and real detached replicas
(``setsid nohup ... &`` from a short-lived shell, reparented to the sandbox's pid 1)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from redline.monitor.forks import ForkWatcher, ProcessKey, fork_watcher, instance_parents
from redline.sandbox import ProcessInfo, Sandbox, create_sandbox

#: Runs each argument with ``bash -c`` (as an agent's EXECUTE_CMD does), then stays alive.
PARENT_PY = """
import subprocess, sys, time
for command in sys.argv[1:]:
    subprocess.run(["bash", "-c", command], check=True)
time.sleep(300)
"""

#: Generation N launches generation N+1 detached, then becomes ``sleep 30N``.
GENERATION_SH = """
n=$1
if [ "$n" -lt 2 ]; then
  bash -c "setsid nohup sh /home/agent/gen.sh $((n + 1)) >/dev/null 2>&1 &"
fi
exec sleep 30$n
"""


def detached(seconds: int) -> str:
    """The way a replica is launched: detached from a shell that exits at once."""
    return f"setsid nohup sh -c 'exec sleep {seconds}' >/dev/null 2>&1 &"


@pytest.fixture(scope="module")
def watcher() -> ForkWatcher:
    """The shared watcher, started before any sandbox of this module."""
    return fork_watcher()


@pytest.fixture
def box(watcher: ForkWatcher) -> Iterator[Sandbox]:
    with create_sandbox() as sandbox:
        yield sandbox


def wait_for(box: Sandbox, found: Callable[[dict[tuple[str, ...], ProcessInfo]], bool],
             timeout: float = 15.0) -> dict[tuple[str, ...], ProcessInfo]:
    """The sandbox's processes by cmdline, once ``found`` holds for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        by_cmdline = {p.cmdline: p for p in box.processes()}
        if found(by_cmdline):
            return by_cmdline
        time.sleep(0.05)
    raise AssertionError(f"timed out; processes: {[p.cmdline for p in box.processes()]}")


def sleepers_reparented(*seconds: int) -> Callable[[dict[tuple[str, ...], ProcessInfo]], bool]:
    """True once every ``sleep N`` runs and has been reparented to the sandbox's pid 1."""
    wanted = [("sleep", str(n)) for n in seconds]
    return lambda procs: all(w in procs and procs[w].ppid == 1 for w in wanted)


def start_parent(box: Sandbox, *commands: str) -> ProcessInfo:
    box.write_file("/home/agent/parent.py", PARENT_PY.encode())
    spawned = box.spawn(["python3", "/home/agent/parent.py", *commands])
    return next(p for p in box.processes() if p.pid == spawned.pid)


def test_detached_grandchild_keeps_its_fork_parent(watcher: ForkWatcher, box: Sandbox) -> None:
    parent = start_parent(box, detached(301))
    grandchild = wait_for(box, sleepers_reparented(301))[("sleep", "301")]
    watcher.sync()
    assert grandchild.ppid == 1 != parent.pid  # /proc no longer knows who started it
    ancestry = watcher.ancestry(grandchild.host_pid)
    assert watcher.known(grandchild.host_pid) and ancestry.process.forked_ns is not None
    assert parent.host_pid in ancestry.pids[: ancestry.observed]
    assert ancestry.pids.index(parent.host_pid) >= 1  # through the shell that has exited
    assert not ancestry.truncated
    assert watcher.is_descendant(grandchild.host_pid, parent.host_pid)
    assert not watcher.is_descendant(parent.host_pid, grandchild.host_pid)
    record = watcher.record(grandchild.host_pid)
    assert record is not None and record.exec_ns is not None and record.exit_ns is None
    assert record.key.forked_ns <= record.exec_ns <= time.monotonic_ns()
    assert grandchild.host_pid in watcher.descendants(parent.host_pid)
    assert watcher.lost_events == 0


def test_three_generations(watcher: ForkWatcher, box: Sandbox) -> None:
    box.write_file("/home/agent/gen.sh", GENERATION_SH.encode())
    box.spawn(["sh", "/home/agent/gen.sh", "0"])
    procs = wait_for(box, sleepers_reparented(301, 302))
    watcher.sync()
    gen0, gen1, gen2 = (watcher.key(procs[("sleep", f"30{n}")].host_pid) for n in range(3))
    ancestries = {key: watcher.ancestry(key.host_pid).chain for key in (gen0, gen1, gen2)}
    assert instance_parents(ancestries, original={gen0}) == {gen0: None, gen1: gen0, gen2: gen1}


def test_siblings_share_their_parent(watcher: ForkWatcher, box: Sandbox) -> None:
    parent = start_parent(box, detached(303), detached(304))
    procs = wait_for(box, sleepers_reparented(303, 304))
    watcher.sync()
    first, second = (procs[("sleep", n)].host_pid for n in ("303", "304"))
    root = watcher.key(parent.host_pid)
    ancestries = {watcher.key(pid): watcher.ancestry(pid).chain for pid in (first, second)}
    assert set(instance_parents(ancestries, original={root}).values()) == {root}
    assert not watcher.is_descendant(first, second) and not watcher.is_descendant(second, first)
    assert {first, second} <= set(watcher.descendants(parent.host_pid))


def _thread_cpu_s(thread: threading.Thread) -> float:
    with open(f"/proc/self/task/{thread.native_id}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_pruning_and_cap_keep_live_lineage_after_a_fork_burst() -> None:
    pruning = ForkWatcher(retain_s=0.5)
    capped = ForkWatcher(retain_s=600, max_records=1000)
    try:
        with create_sandbox() as box:
            parent = start_parent(box, detached(305))
            child = wait_for(box, sleepers_reparented(305))[("sleep", "305")]
            pruning.sync()
            baseline = pruning.stats()
            listener = pruning._thread  # measured: the listener thread's own CPU time
            cpu_before, started = _thread_cpu_s(listener), time.monotonic()
            burst = box.shell("for i in $(seq 2000); do /bin/true; done", timeout=120)
            elapsed, cpu = time.monotonic() - started, _thread_cpu_s(listener) - cpu_before
            assert burst.ok
            pruning.sync()
            capped.sync()
            during = pruning.stats()
            assert during.events - baseline.events >= 6000  # fork + exec + exit per /bin/true
            print(f"\nburst: {during.events - baseline.events} events in {elapsed:.2f} s "
                  f"({(during.events - baseline.events) / elapsed:.0f}/s), listener CPU {cpu:.2f} s")
            time.sleep(2.5)  # retention + a housekeeping pass
            pruned = pruning.stats()
            print(f"records: {baseline.records} before, {during.records} after the burst, {pruned.records} pruned")
            assert pruned.records < baseline.records + 1000  # the 2000 exited /bin/true are gone
            stats = capped.stats()
            assert stats.records <= 1000 and stats.evicted > 1000
            for w in (pruning, capped):
                assert w.is_descendant(child.host_pid, parent.host_pid)
                assert not w.ancestry(child.host_pid).truncated
                assert w.lost_events == 0
    finally:
        pruning.close()
        capped.close()


def test_overrun_is_counted_as_lost_events() -> None:
    small = ForkWatcher(receive_buffer_bytes=4096)
    try:
        with small._lock:  # stall the listener while the kernel's events pile up
            subprocess.run(["sh", "-c", "for i in $(seq 300); do /bin/true; done"], check=True)
        small.sync(timeout=30)  # a tiny buffer overruns again and again while the machine forks
        stats = small.stats()
        assert stats.overruns >= 1 and stats.lost_events > 0 and small.lost_events == stats.lost_events
    finally:
        small.close()


def test_sync_survives_a_marker_dropped_without_an_overrun_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """After an overrun the kernel drops events until the queue drains and reports it only once,
    so a marker can vanish silently: sync() places another instead of timing out."""
    watcher = ForkWatcher()
    try:
        real = watcher._place_marker
        placed: list[int] = []

        def first_one_lost() -> int:
            marker = real()
            if not placed:  # as if the kernel had dropped this marker's exit event
                with watcher._lock:
                    watcher._markers.discard(marker)
                marker = -marker
            placed.append(marker)
            return marker

        monkeypatch.setattr(watcher, "_place_marker", first_one_lost)
        watcher.sync(timeout=10)
        assert len(placed) >= 2 and placed[0] < 0  # the lost marker was replaced by a handled one
    finally:
        watcher.close()


@pytest.mark.parametrize("namespaces", [["--user", "--map-root-user", "--pid"], ["--pid"]], ids=["userns", "pidns"])
def test_unavailable_outside_the_initial_namespaces_names_the_cause(namespaces: list[str]) -> None:
    """In a user namespace the kernel refuses the socket option; in a pid namespace it silently
    ignores the subscription (no acknowledgement): both are reported with their cause."""
    probe = ("from redline.errors import HarnessError\n"
             "from redline.monitor import forks\n"
             "assert not forks.available()\n"
             "try:\n    forks.fork_watcher()\nexcept HarnessError as e:\n    print(e)\n")
    result = subprocess.run(["unshare", *namespaces, "--fork", sys.executable, "-c", probe],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "process events" in result.stdout and "initial user" in result.stdout  # the cause, named


def test_instance_parents_on_synthetic_chains() -> None:
    k = ProcessKey
    original_agent, original_llm = k(100, 10), k(101, 11)
    old_shell = k(200, 20)  # a shell that exited long ago
    replica, grandchild = k(201, 21), k(301, 31)
    reuser = k(200, 40)  # a later instance that got the old shell's pid
    stranger = k(400, 41)
    harness = [k(50, None), k(1, None)]  # older than the watcher
    ancestries = {
        replica: [old_shell, original_agent, *harness],
        grandchild: [k(300, 30), replica, old_shell, original_agent, *harness],
        reuser: [original_llm, original_agent, *harness],
        stranger: harness,
    }
    assert instance_parents(ancestries, original={original_agent, original_llm}) == {
        replica: original_agent,  # not `reuser`: pid 200 in its chain is the old shell (forked at 20, not 40)
        grandchild: replica,
        reuser: original_llm,  # the nearest: the original's LLM server forked it
        stranger: None,  # no instance, no original in its chain
    }
