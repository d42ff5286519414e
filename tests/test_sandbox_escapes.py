"""Each test is an escape attempt from inside a real sandbox; each must fail to escape."""

from __future__ import annotations

import os
import socket
import time

from conftest import free_port, host_pid_alive, make_box, wait_for_processes

from redline.sandbox import Sandbox


def test_cannot_kill_a_host_process(box: Sandbox, host_sleeper) -> None:
    result = box.shell(f"kill -9 {host_sleeper.pid}; echo rc=$?; kill -9 -1; echo all=$?")
    assert "rc=1" in result.text()
    time.sleep(0.2)
    assert host_pid_alive(host_sleeper.pid)
    assert box.alive


def test_cannot_read_or_write_host_files(box: Sandbox, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    root_secret = "/root/.redline-test-secret"
    with open(root_secret, "w") as handle:
        handle.write("root secret")
    try:
        for path in (str(secret), root_secret, f"/proc/1/root{secret}", "/etc/shadow"):
            result = box.exec(["cat", path])
            assert result.exit_code != 0, path
            assert b"secret" not in result.stdout
        wrote = box.shell(f"echo pwned > {secret}; echo pwned > /root/.pwned; echo pwned > /work/.pwned")
        assert wrote.exit_code != 0
        assert secret.read_text() == "top secret"
        assert not os.path.exists("/root/.pwned") and not os.path.exists("/work/.pwned")
    finally:
        os.unlink(root_secret)


def test_host_directories_are_invisible(box: Sandbox) -> None:
    result = box.shell("for p in /root /work /sys /run /home/*; do [ -e $p ] && echo $p; done; ls -a /tmp")
    assert result.text().split() == ["/home/agent", ".", ".."]


def test_cannot_remount_read_only_paths_writable(box: Sandbox) -> None:
    result = box.shell("mount -o remount,rw /usr; mount -o remount,rw /; touch /usr/pwned /pwned")
    assert result.exit_code != 0
    assert not os.path.exists("/usr/pwned")
    check = box.shell("touch /usr/pwned || echo denied")
    assert "denied" in check.text()


def test_cannot_mount_proc_or_sys_to_see_the_host(box: Sandbox) -> None:
    result = box.shell(
        "mkdir -p /tmp/p /tmp/s; mount -t proc proc /tmp/p && echo PROC_MOUNTED; "
        "mount -t sysfs sys /tmp/s && echo SYS_MOUNTED; "
        "unshare -Urm sh -c 'mount -t proc proc /tmp/p' && echo NESTED_MOUNTED; "
        "unshare -Urpf --mount-proc true && echo NESTED_PROC; true"
    )
    assert "MOUNTED" not in result.text() and "NESTED" not in result.text()
    visible = box.shell("ls /proc | grep -c '^[0-9]'")
    assert int(visible.text()) < 10  # only the sandbox's few processes, not the host's


def test_cannot_connect_to_a_host_loopback_listener(box: Sandbox) -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        listener.settimeout(0.5)
        script = (f"import socket\ntry:\n socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                  " print('CONNECTED')\nexcept OSError as e:\n print('refused', e)")
        result = box.exec(["python3", "-c", script])
        assert "refused" in result.text()
        try:
            listener.accept()
            raise AssertionError("the sandbox reached the host listener")
        except TimeoutError:
            pass


def test_only_loopback_interface(box: Sandbox) -> None:
    result = box.exec(["cat", "/proc/net/dev"])
    names = [line.split(":")[0].strip() for line in result.text().splitlines()[2:]]
    assert names == ["lo"]
    route = box.exec(["cat", "/proc/net/route"]).text().splitlines()
    assert len(route) <= 1  # header only: no route anywhere


def test_cannot_ptrace_or_signal_the_harness(box: Sandbox) -> None:
    harness = os.getpid()
    script = f"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
print('ptrace', libc.ptrace(16, {harness}, 0, 0), ctypes.get_errno())
try:
    os.kill({harness}, signal.SIGTERM); print('SIGNALLED')
except OSError as e:
    print('kill failed', e.errno)
print('visible', os.path.exists('/proc/{harness}/cmdline') and open('/proc/{harness}/cmdline').read())
"""
    result = box.exec(["python3", "-c", script])
    assert "ptrace -1" in result.text()
    assert "SIGNALLED" not in result.text()
    assert "pytest" not in result.text()


def test_daemons_do_not_outlive_destroy() -> None:
    box = make_box()
    try:
        # the double fork's first python reaps its child: when the shell returns, the daemon (the
        # grandchild) runs and no intermediate python is left
        box.shell("setsid sh -c 'sleep 1001 & sleep 1002' > /dev/null 2>&1 &"
                  " nohup sleep 1003 > /dev/null 2>&1 &"
                  " python3 -c 'import os,time\npid=os.fork()\nif pid==0:\n os.setsid()\n"
                  " if os.fork()==0: time.sleep(1004)\nelse: os.waitpid(pid,0)'")

        def started(processes) -> bool:
            cmdlines = {p.cmdline for p in processes}
            return {("sleep", "1001"), ("sleep", "1002"), ("sleep", "1003")} <= cmdlines and \
                any(p.cmdline[:1] == ("python3",) and "time.sleep(1004)" in " ".join(p.cmdline) for p in processes)

        listed = wait_for_processes(box, started, "the three sleeps to exec and the daemon to run")
        sleepers = [p.host_pid for p in listed if p.cmdline[:1] in (("sleep",), ("python3",))]
        assert len(sleepers) >= 4
        box.destroy()
        assert not [pid for pid in sleepers if host_pid_alive(pid)]
    finally:
        box.destroy()  # idempotent: after a failed assertion too, leave no sandbox (nor slot) behind


def test_fork_bomb_is_stopped_by_the_process_limit() -> None:
    with make_box(max_processes=64) as box:
        box.exec(["bash", "-c", "bomb() { bomb | bomb & }; bomb; sleep 2"],
                          timeout=20)
        assert len(box.processes()) <= 64
        assert box.usage().process_limit_hits > 0
        host_ok = os.system("true")  # the host can still create processes
        assert host_ok == 0


def test_memory_bomb_is_stopped_by_the_memory_limit() -> None:
    with make_box(memory_bytes=128 * 1024 * 1024) as box:
        result = box.exec(["python3", "-c", "b = []\nwhile True: b.append(bytearray(16 * 1024 * 1024))"],
                          timeout=60)
        assert result.exit_code == 128 + 9  # SIGKILL from the OOM killer
        assert box.usage().oom_kills >= 1
        assert box.alive
        assert box.exec(["true"]).ok  # the sandbox itself survives


def test_filling_the_workspace_is_stopped_by_its_cap() -> None:
    with make_box(workspace_bytes=16 * 1024 * 1024) as box:
        result = box.shell("dd if=/dev/zero of=$HOME/fill bs=1M count=64 2>&1; stat -c %s $HOME/fill")
        assert "No space left on device" in result.text()
        assert int(result.text().split()[-1]) <= 16 * 1024 * 1024
