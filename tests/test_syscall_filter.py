"""The syscall filter: each call it refuses is refused to every process in a real sandbox -- the
init, entered commands, background processes and their children -- and ordinary work is not
affected. A host that cannot apply it is refused unless weaker containment is accepted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import make_box, wait_for_processes

from redline.errors import UserError
from redline.sandbox import Limits, Sandbox, SandboxSpec, WeakContainmentRefused, default_spec, syscalls
from redline.sandbox.bwrap.backend import BwrapBackend
from redline.sandbox.selfcheck import run_self_check

#: calls a sandboxed process makes with ctypes: name -> (syscall number on x86_64, arguments)
CALL = r"""
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for name, number, args in json.loads(sys.argv[1]):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
    if r == 0 and name.startswith("clone"):
        import os; os._exit(0)
    out[name] = errno.errorcode.get(ctypes.get_errno(), "?") if r == -1 else "returned %d" % r
print(json.dumps(out))
"""
X86_64 = {"io_uring_setup": 425, "keyctl": 250, "add_key": 248, "bpf": 321, "perf_event_open": 298,
          "userfaultfd": 323, "unshare": 272, "mount": 165, "init_module": 175, "kexec_load": 246,
          "open_by_handle_at": 304, "clone3": 435, "clone": 56, "getpid": 39}


def calls(box: Sandbox, wanted: list[tuple[str, int, list[int]]], via: str = "exec") -> dict[str, str]:
    """What each call returned inside ``box``: run directly (``exec``), or from a grandchild of a
    background process (``spawn``)."""
    argument = json.dumps(wanted)
    if via == "exec":
        result = box.exec(["python3", "-c", CALL, argument], timeout=30)
        assert result.exit_code == 0, result.text("stderr")
        return json.loads(result.text())
    box.write_file("/home/agent/call.py", CALL.encode())
    box.write_file("/home/agent/args.json", argument.encode())
    process = box.spawn(["bash", "-c", "sleep 0.2; bash -c 'python3 call.py \"$(cat args.json)\"' > out.json"])
    assert process.wait(timeout=30) == 0
    return json.loads(box.read_file("/home/agent/out.json"))


@pytest.fixture(scope="module")
def filtered() -> Sandbox:
    with make_box() as box:
        yield box


def test_the_dangerous_calls_are_refused_to_commands_and_to_their_descendants(filtered: Sandbox) -> None:
    wanted = [(name, X86_64[name], [0] * 6) for name in
              ("io_uring_setup", "keyctl", "add_key", "bpf", "perf_event_open", "userfaultfd", "unshare",
               "mount", "init_module", "kexec_load", "open_by_handle_at")]
    wanted += [("clone3", X86_64["clone3"], [0, 0]), ("clone(CLONE_NEWNET)", X86_64["clone"], [0x40000000 | 17, 0]),
               ("getpid", X86_64["getpid"], [])]
    for via in ("exec", "spawn"):
        seen = calls(filtered, wanted, via)
        assert {name: seen[name] for name, _, _ in wanted if name not in ("clone3", "getpid")} == \
            dict.fromkeys([name for name, _, _ in wanted if name not in ("clone3", "getpid")], "EPERM"), via
        assert seen["clone3"] == "ENOSYS" and seen["getpid"].startswith("returned "), via


def test_every_process_in_the_sandbox_is_filtered_from_pid_1_down(filtered: Sandbox) -> None:
    background = filtered.spawn(["bash", "-c", "sleep 30 & sleep 30"])
    try:
        def both_sleeping(processes) -> bool:  # the second may be bash itself, exec'ing its last command
            return len([p for p in processes
                        if p.cmdline == ("sleep", "30") and background.pid in (p.pid, p.ppid)]) == 2

        wait_for_processes(filtered, both_sleeping, "both `sleep 30` to exec")
        shown = filtered.shell("for s in /proc/[0-9]*/status; do awk '/^(Name|Seccomp):/{printf \"%s \", $2}' $s; "
                               "echo; done").text()
        modes = dict(line.split() for line in shown.splitlines() if len(line.split()) == 2)
        assert modes["catatonit"] == "2" and modes["sleep"] == "2" and set(modes.values()) == {"2"}, shown
    finally:
        background.signal(9)
        background.wait(timeout=10)


def test_tiocsti_is_refused_even_with_high_bits_set_and_other_abis_are_killed(filtered: Sandbox) -> None:
    script = ("import ctypes, os; libc = ctypes.CDLL(None, use_errno=True)\n"
              "for request in (0x5412, 0x5412 | (1 << 32), 0x541C):\n"
              "    r = libc.ioctl(0, ctypes.c_ulong(request), ctypes.c_char_p(b'x'))\n"
              "    print(request, r, os.strerror(ctypes.get_errno()))\n")
    result = filtered.exec(["python3", "-c", script], timeout=30)
    assert result.text().count("Operation not permitted") == 3, result.text()
    x32 = filtered.exec(["python3", "-c", "import ctypes; ctypes.CDLL(None).syscall(0x40000000 + 39); print('ran')"],
                        timeout=30)
    assert x32.exit_code == 128 + 31 and "ran" not in x32.text()  # SIGSYS: the x32 ABI is not allowed


def test_the_self_check_reports_the_filter_observed_from_inside(filtered: Sandbox) -> None:
    [check] = [c for c in run_self_check(filtered) if c.name == "syscall filter"]
    assert check.passed, check.observed
    assert "io_uring_setup EPERM" in check.observed and "seccomp mode 2 here, 2 in pid 1" in check.observed
    assert filtered.containment.enforces(syscalls.ITEM_NAME)


def test_ordinary_work_is_not_affected(filtered: Sandbox) -> None:
    script = r"""
set -e
python3 - <<'PY'
import multiprocessing, subprocess, threading, socket, sqlite3, tempfile, os
def work(n): return n * n
with multiprocessing.Pool(2) as pool: assert pool.map(work, range(4)) == [0, 1, 4, 9]
t = threading.Thread(target=print, args=("thread",)); t.start(); t.join()
assert subprocess.run(["bash", "-c", "echo sub | tr a-z A-Z"], capture_output=True, text=True).stdout == "SUB\n"
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); s.close()
db = sqlite3.connect(os.path.join(tempfile.mkdtemp(), "x.db")); db.execute("create table t(x)"); db.close()
print("python ok")
PY
tar -czf /tmp/a.tgz -C /home/agent . && tar -tzf /tmp/a.tgz > /dev/null && echo "tar ok"
python3 -m pip --version > /dev/null && echo "pip ok"
ssh -V 2>&1 | grep -q OpenSSH && echo "ssh ok" || echo "ssh absent"
"""
    result = filtered.shell(script, timeout=120)
    assert result.exit_code == 0, result.text("stderr")
    for line in ("thread", "python ok", "tar ok", "pip ok"):
        assert line in result.text()


def test_the_loader_never_runs_a_command_unfiltered(tmp_path) -> None:
    loader = syscalls.support().loader
    garbage = tmp_path / "garbage.bpf"
    garbage.write_bytes(b"\x06\x00\x00\x00\xff\xff")  # not a whole number of instructions
    for fd_text in ("99", "x"):  # a descriptor it does not have; not a number
        done = subprocess.run([loader, fd_text, "/bin/echo", "ran"], capture_output=True, timeout=30)
        assert done.returncode == 1 and b"ran" not in done.stdout
        assert done.stderr.startswith(syscalls.LOADER_FAILURE_PREFIX), done.stderr
    with open(garbage, "rb") as handle:
        done = subprocess.run([loader, str(handle.fileno()), "/bin/echo", "ran"], capture_output=True, timeout=30,
                              pass_fds=(handle.fileno(),))
    assert done.returncode == 1 and b"ran" not in done.stdout and b"the filter's size" in done.stderr
    # and with the real program: the command runs, filtered
    done = subprocess.run([*syscalls.loader_prefix(), "/usr/bin/awk", "/^Seccomp:/{print $2}", "/proc/self/status"],
                          capture_output=True, timeout=30, pass_fds=(syscalls.entry_fd(),))
    assert done.stdout.strip() == b"2", done.stderr


def test_a_host_without_libseccomp_is_refused_unless_weaker_containment_is_accepted(monkeypatch) -> None:
    # the harness's own Python has no libseccomp bindings: the same as a host without python3-seccomp
    monkeypatch.setattr(syscalls, "SYSTEM_PYTHON", sys.executable)
    syscalls.support.cache_clear()
    try:
        assert "apt-get install python3-seccomp" in (syscalls.support().problem or "")
        backend = BwrapBackend()
        with pytest.raises(WeakContainmentRefused, match="syscall filter"):
            backend.create(default_spec())
        with backend.create(SandboxSpec(limits=Limits(), accept_weaker_containment=True)) as box:
            report = box.containment
            assert report.weaker_accepted and [item.name for item in report.missing] == [syscalls.ITEM_NAME]
            assert box.shell("awk '/^Seccomp:/{print $2}' /proc/self/status").text().strip() == "0"
    finally:
        syscalls.support.cache_clear()


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_ENV", "GLIBC_TUNABLES"])
def test_variables_the_root_entry_helpers_would_read_are_refused(filtered: Sandbox, name: str) -> None:
    with pytest.raises(UserError, match=f"environment variable {name}: the entry helpers read it on the host"):
        filtered.exec(["true"], env={name: "/tmp/x.so"})
