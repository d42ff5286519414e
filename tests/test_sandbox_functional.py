"""What the harness relies on from a sandbox, exercised with real processes and sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import free_port, host_pid_alive, make_box, wait_for_processes

from redline.sandbox import NoSuchProcess, Sandbox, SandboxGone
from redline.sandbox.bwrap import state


def _http_server(box: Sandbox, port: int):
    server = box.spawn(["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"])
    for _ in range(100):
        if any(s.port == port for s in box.listening_sockets()):
            return server
        time.sleep(0.05)
    raise AssertionError(f"server did not listen: {server.read_output()!r}")


def test_server_reachable_inside_and_invisible_from_host(box: Sandbox) -> None:
    port = free_port()
    server = _http_server(box, port)
    fetch = box.exec(["python3", "-c", f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}/').status)"])
    assert fetch.text().strip() == "200"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    sockets = [s for s in box.listening_sockets() if s.port == port]
    assert len(sockets) == 1 and sockets[0].address == "127.0.0.1" and sockets[0].pids == (server.pid,)


def test_process_listing_reports_tree_cwd_files_and_maps(box: Sandbox) -> None:
    box.write_file("/home/agent/work/data.bin", b"x" * 4096)
    parent = box.spawn(["sh", "-c", "exec 3</home/agent/work/data.bin; sleep 300 & wait"], cwd="/home/agent/work")
    # once `sleep 300` has exec'd, the shell has run its `exec 3<` and forked it
    listed = wait_for_processes(box, lambda ps: any(p.cmdline == ("sleep", "300") for p in ps), "sleep 300 to exec")
    processes = {p.pid: p for p in listed}
    assert processes[1].exe == "/usr/bin/catatonit"
    shell = processes[parent.pid]
    sleeper = next(p for p in processes.values() if p.cmdline == ("sleep", "300"))
    assert sleeper.ppid == shell.pid
    assert shell.cwd == "/home/agent/work" and sleeper.cwd == "/home/agent/work"
    assert "/home/agent/work/data.bin" in shell.open_files
    assert shell.exe == "/usr/bin/dash" and "/usr/bin/dash" in shell.mapped_files
    assert all(p.host_uid != 0 for p in processes.values())
    assert abs(sleeper.start_time - time.time()) < 30
    assert sleeper.rss_bytes > 0


def test_capped_binary_output(box: Sandbox) -> None:
    result = box.shell("head -c 50000000 /dev/urandom", output_cap=1024 * 1024, timeout=60)
    assert result.exit_code == 0
    assert result.stdout_truncated and result.stdout_bytes == 50_000_000
    assert 1024 * 1024 <= len(result.stdout) < 1024 * 1024 + 200
    assert b"[redline: output truncated, 50000000 bytes printed" in result.stdout


def test_command_waiting_on_stdin_times_out(box: Sandbox) -> None:
    started = time.monotonic()
    result = box.exec(["cat"], timeout=1)
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 5
    assert box.exec(["cat"], stdin=b"given").stdout == b"given"


def test_command_sleeping_forever_times_out_and_its_children_die(box: Sandbox) -> None:
    result = box.shell("sleep 1000 & echo started; sleep infinity", timeout=1)
    assert result.timed_out and b"started" in result.stdout
    time.sleep(0.2)
    assert not [p for p in box.processes() if p.cmdline[:1] == ("sleep",)]


def test_background_process_returns_at_once_and_keeps_running(box: Sandbox) -> None:
    started = time.monotonic()
    result = box.shell("sleep 30 & echo launched")
    assert result.ok and result.stdout == b"launched\n"
    assert time.monotonic() - started < 2
    assert [p for p in box.processes() if p.cmdline == ("sleep", "30")]


def test_spawned_process_output_and_signal(box: Sandbox) -> None:
    process = box.spawn(["sh", "-c", "echo one; sleep 0.3; echo two; sleep 300"])
    output = bytearray()
    deadline = time.monotonic() + 20
    while output != b"one\ntwo\n":  # each piece once: read_output returns only what is new
        assert len(output) < 8 and output == b"one\ntwo\n"[:len(output)], bytes(output)
        assert time.monotonic() < deadline, f"timed out waiting for both lines; got {bytes(output)!r}"
        time.sleep(0.02)
        output += process.read_output()
    assert process.read_output() == b""
    assert process.poll() is None  # the output came while it runs
    process.signal(signal.SIGTERM)
    assert process.wait(5) == 128 + signal.SIGTERM


def test_signal_by_inside_pid(box: Sandbox) -> None:
    process = box.spawn(["sleep", "300"])
    box.signal(process.pid, signal.SIGKILL)
    assert process.wait(5) == 128 + signal.SIGKILL
    with pytest.raises(NoSuchProcess):
        box.signal(99999)


def test_files_round_trip(box: Sandbox) -> None:
    payload = bytes(range(256)) * 1000
    box.write_file("/home/agent/a/b/c.bin", payload, mode=0o600)
    assert box.read_file("/home/agent/a/b/c.bin") == payload
    assert box.shell("stat -c '%a %U' /home/agent/a/b/c.bin").text() == "600 agent\n"
    with pytest.raises(FileNotFoundError):
        box.read_file("/home/agent/missing")


def test_environment_is_cleared(box: Sandbox, monkeypatch) -> None:
    monkeypatch.setenv("REDLINE_TEST_HOST_SECRET", "leak")
    with make_box() as fresh:
        env = fresh.exec(["env"], env={"EXTRA": "1"}).text()
    assert "leak" not in env and "EXTRA=1" in env and "HOME=/home/agent" in env


def test_destroy_leaves_no_process_cgroup_mount_or_file(box: Sandbox) -> None:
    box.shell("sleep 500 & python3 -m http.server 0 >/dev/null 2>&1 &")
    time.sleep(0.3)
    host_pids = [p.host_pid for p in box.processes()]
    slot_dirs = os.listdir(os.path.join(state.state_root(), "slots"))
    record = json.load(open(os.path.join(state.state_root(), "slots", slot_dirs[0], "state.json")))
    assert record["cgroups"] and all(os.path.isdir(d) for d in record["cgroups"])
    box.destroy()
    assert not [pid for pid in host_pids if host_pid_alive(pid)]
    assert not [d for d in record["cgroups"] if os.path.exists(d)]
    assert os.listdir(os.path.join(state.state_root(), "slots")) == []
    assert state.state_root() not in open("/proc/self/mountinfo").read()
    assert not box.alive and box.destroyed_reason == "destroyed"
    with pytest.raises(SandboxGone):
        box.exec(["true"])
    box.destroy()  # idempotent


def test_wall_clock_limit_destroys_the_sandbox() -> None:
    box = make_box(wall_time_s=1.0)
    box.spawn(["sleep", "300"])
    time.sleep(0.2)
    host_pids = [p.host_pid for p in box.processes()]
    time.sleep(1.5)
    assert not box.alive and box.destroyed_reason == "wall-clock limit"
    assert not [pid for pid in host_pids if host_pid_alive(pid)]


HARNESS = textwrap.dedent("""
    import json, sys, time
    from redline.sandbox import create_sandbox
    box = create_sandbox()
    box.shell("setsid sh -c 'sleep 900 &' ; nohup sleep 901 >/dev/null 2>&1 &")
    time.sleep(0.3)
    print(json.dumps([p.host_pid for p in box.processes()]), flush=True)
    time.sleep(600)
""")


def test_sandboxes_die_with_a_sigkilled_harness_and_leftovers_are_cleaned() -> None:
    harness = subprocess.Popen([sys.executable, "-c", HARNESS], stdout=subprocess.PIPE, env=os.environ.copy())
    host_pids = json.loads(harness.stdout.readline())
    assert len(host_pids) >= 3
    slots = os.path.join(state.state_root(), "slots")
    leftover = [os.path.join(slots, d) for d in os.listdir(slots)]
    record = json.load(open(os.path.join(leftover[0], "state.json")))
    harness.kill()
    harness.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [pid for pid in host_pids if host_pid_alive(pid)]:
        time.sleep(0.05)
    assert not [pid for pid in host_pids if host_pid_alive(pid)]
    assert os.path.isdir(leftover[0])  # the dead harness could not clean up ...
    with make_box() as fresh:  # ... so the next start does
        assert fresh.exec(["true"]).ok
        assert not [d for d in record["cgroups"] if os.path.exists(d)]
        assert set(os.listdir(slots)) == {"0"}  # only the fresh sandbox's slot


def test_concurrent_sandboxes_are_isolated_from_each_other() -> None:
    with make_box() as first, make_box() as second:
        first.spawn(["sleep", "301"])
        time.sleep(0.2)
        assert not [p for p in second.processes() if p.cmdline == ("sleep", "301")]
        uids = {first.processes()[0].host_uid, second.processes()[0].host_uid}
        assert len(uids) == 2
        first.write_file("/home/agent/mine", b"1")
        assert second.exec(["cat", "/home/agent/mine"]).exit_code != 0
