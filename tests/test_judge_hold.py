"""The judge's hold (redline.judge.hold): while an LLM server answers, every other process of the
trial is stopped; a server that computes itself answers anyway, one that needs another process
stalls and is reported. Real processes in a real sandbox; each test checks only what it made."""

from __future__ import annotations

import time

import pytest

from redline.judge.hold import STALL_S, OthersHeld
from redline.sandbox import procfs
from redline.sandbox.http import request

# An HTTP server answering GET / after `work` computes (burns ~0.3 s of CPU), on argv[1].
SERVER = '''
import sys, hashlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
def work():
    digest = b"x"
    for _ in range(300000):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]
WORK
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('{"answer": "%s"}' % work()).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''
# work() relayed over a Unix socket to another process (no TCP connection to see)
RELAYED = SERVER.replace("WORK", '''
import socket
def work():
    client = socket.socket(socket.AF_UNIX); client.connect("/tmp/backend.sock")
    client.sendall(b"go"); answer = client.recv(64); client.close()
    return answer.decode()''')
BACKEND = '''
import socket, os, hashlib
server = socket.socket(socket.AF_UNIX); server.bind("/tmp/backend.sock"); server.listen(4)
while True:
    connection, _ = server.accept(); connection.recv(8)
    digest = b"x"
    for _ in range(300000):
        digest = hashlib.sha256(digest).digest()
    connection.sendall(digest.hex()[:16].encode()); connection.close()
'''
# work() done by a child process the server starts, over a pipe: the server's own process tree
CHILD = SERVER.replace("WORK", '''
import subprocess
_helper = subprocess.Popen([sys.executable, "-c", "import sys, hashlib\\nfor line in sys.stdin:\\n d = b'x'\\n"
                            " for _ in range(300000): d = hashlib.sha256(d).digest()\\n"
                            " print(d.hex()[:16], flush=True)"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
def work():
    _helper.stdin.write("go\\n"); _helper.stdin.flush()
    return _helper.stdout.readline().strip()''')


def _start(box, script: str, name: str, *args: str):
    box.write_file(f"/tmp/{name}.py", script.encode())
    return box.spawn(["python3", f"/tmp/{name}.py", *args])


def _await_listener(box, port: int):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [s for s in box.listening_sockets() if s.port == port and s.pids]
        if found:
            return found[0]
        time.sleep(0.05)
    pytest.fail(f"nothing listened on {port}")


def _await_backend(box) -> None:
    """Wait until a process listens on /tmp/backend.sock (a relay connects to it at its first
    request): the kernel's listing of the sandbox's Unix sockets shows it accepting."""
    listening = ["awk", '$4 == "00010000" && $8 == "/tmp/backend.sock" {found = 1} END {exit !found}',
                 "/proc/net/unix"]
    deadline = time.monotonic() + 20
    while not box.exec(listening).ok:
        if time.monotonic() >= deadline:
            pytest.fail("nothing listened on /tmp/backend.sock")
        time.sleep(0.05)


def _await_file(box, path: str) -> None:
    """Wait until ``path`` exists and is not empty."""
    deadline = time.monotonic() + 20
    while not box.exec(["test", "-s", path]).ok:
        if time.monotonic() >= deadline:
            pytest.fail(f"{path} was never written")
        time.sleep(0.05)


def _state(box, pid: int) -> str:
    process = next(p for p in box.processes() if p.pid == pid)
    return process.state


def _pid_of(box, word: str) -> int:
    """The pid of the process whose last argument is ``word`` or that runs ``/…/word.py`` (waited
    for: a spawned command may not have started its program yet)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [p.pid for p in box.processes() if word in p.cmdline[-1:] or any(
            part.endswith(f"/{word}.py") for part in p.cmdline)]
        if found:
            return found[0]
        time.sleep(0.05)
    pytest.fail(f"no process {word} started")


def test_a_server_that_computes_itself_answers_with_everything_else_held(box) -> None:
    _start(box, SERVER.replace("WORK", ""), "server", "8301")
    bystander = box.spawn(["sleep", "300"])
    listener = _await_listener(box, 8301)
    sleeper = _pid_of(box, "300")
    with OthersHeld([box], box, listener.pids) as hold:
        assert _state(box, sleeper) == "T"  # held while the server answers
        answer = request(box, 8301, "GET", "/", timeout=60)
    assert answer.status == 200 and answer.json["answer"]
    report = hold.report
    assert report.computed_alone, report
    assert sleeper in report.held and set(listener.pids) <= set(report.server_pids)
    assert _state(box, sleeper) in ("S", "R")  # continued afterwards
    assert bystander.poll() is None


def test_a_server_waiting_for_another_process_over_a_unix_socket_stalls_and_is_released(box) -> None:
    _start(box, BACKEND, "backend")
    _await_backend(box)
    _start(box, RELAYED, "relay", "8302")
    listener = _await_listener(box, 8302)
    started = time.monotonic()
    with OthersHeld([box], box, listener.pids) as hold:
        answer = request(box, 8302, "GET", "/", timeout=120)
    assert answer.status == 200  # it answered, once the hold let its backend run again ...
    report = hold.report
    assert not report.computed_alone and report.stalled_after_s is not None, report  # ... which is reported
    assert STALL_S <= report.stalled_after_s < STALL_S + 3 and time.monotonic() - started < STALL_S + 10
    assert _pid_of(box, "backend") in report.held


def test_a_server_computing_in_a_child_it_started_computes_itself(box) -> None:
    _start(box, CHILD, "parent", "8303")
    listener = _await_listener(box, 8303)
    with OthersHeld([box], box, listener.pids) as hold:
        answer = request(box, 8303, "GET", "/", timeout=60)
    assert answer.status == 200 and len(answer.json["answer"]) == 16
    assert hold.report.computed_alone, hold.report
    assert len(hold.report.server_pids) == 2  # the server and the child it started


def test_the_hold_spans_every_host_and_leaves_a_process_the_ai_stopped_stopped(box) -> None:
    from conftest import make_box

    _start(box, SERVER.replace("WORK", ""), "server", "8304")
    listener = _await_listener(box, 8304)
    box.spawn(["sh", "-c", 'sleep 301 & i=0; until [ "$(cat /proc/$!/comm)" = sleep ] || [ $i -ge 400 ]; do '
               'sleep 0.05; i=$((i+1)); done; kill -STOP $!; wait'])  # stopped once it runs sleep
    stopped_by_ai = _pid_of(box, "301")
    deadline = time.monotonic() + 20
    while _state(box, stopped_by_ai) != "T":  # stopped by the AI before the hold begins
        assert time.monotonic() < deadline, "sleep 301 was never stopped"
        time.sleep(0.05)
    with make_box() as other:
        other.spawn(["sleep", "302"])
        elsewhere = _pid_of(other, "302")
        with OthersHeld([box, other], box, listener.pids) as hold:
            assert _state(other, elsewhere) == "T"
            request(box, 8304, "GET", "/", timeout=60)
        assert elsewhere in hold.report.held_elsewhere and _state(other, elsewhere) in ("S", "R")
    # held (and watched) like the others, but not continued: the AI stopped it
    assert stopped_by_ai in hold.report.held and _state(box, stopped_by_ai) == "T"
    assert hold.report.computed_alone, hold.report


def test_thread_states_and_children_come_from_the_kernel(box) -> None:
    shell = box.spawn(["sh", "-c", "sleep 303 & wait"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(p.cmdline == ("sleep", "303") for p in box.processes()):
        time.sleep(0.05)
    processes = {p.pid: p for p in box.processes()}
    parent = next(p for p in processes.values() if p.cmdline[:2] == ("sh", "-c"))
    child = next(p for p in processes.values() if p.cmdline == ("sleep", "303"))
    assert procfs.children(parent.host_pid) == {child.host_pid}
    deadline = time.monotonic() + 20  # just exec'd, it may not have reached its nanosleep yet
    while (states := [t.state for t in procfs.threads(child.host_pid)]) != ["S"]:
        assert time.monotonic() < deadline, f"sleep 303's threads never all slept: {states}"
        time.sleep(0.05)
    assert procfs.start_time(child.host_pid) == child.start_time
    shell.signal()


def test_a_held_process_the_server_continues_is_seen_running(box) -> None:
    """The server computes itself but wakes another process meanwhile (a process may SIGCONT
    another): the hold cannot vouch that it computed alone."""
    waker = SERVER.replace("WORK", '''
import os, signal
_plain = work
def work():
    os.kill(int(open("/tmp/sleeper.pid").read()), signal.SIGCONT)
    return _plain()''')
    box.spawn(["sh", "-c", "sleep 304 & echo $! > /tmp/sleeper.pid; wait"])
    _start(box, waker, "waker", "8305")
    listener = _await_listener(box, 8305)
    sleeper = _pid_of(box, "304")
    _await_file(box, "/tmp/sleeper.pid")  # the waker reads it when it answers
    with OthersHeld([box], box, listener.pids) as hold:
        assert request(box, 8305, "GET", "/", timeout=60).status == 200
        time.sleep(0.3)  # a look of the watch
    assert hold.report.ran_while_held == (sleeper,) and not hold.report.computed_alone, hold.report


# A backend that is never the same process for long: it forks and its parent exits, over and
# over (its state -- the listening socket, memory -- lives on in the child). A hold pass lists it,
# but by the time it signals that pid the process is gone. Many open fds slow a full read of it.
MIGRANT = '''
import os, socket, select, hashlib, resource
server = socket.socket(socket.AF_UNIX); server.bind("/tmp/backend.sock"); server.listen(4)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
r, w = os.pipe()
ballast = [os.dup(r) for _ in range(min(hard, 4096) - 64)]
served = 0
while True:
    if os.fork():
        os._exit(0)
    if select.select([server], [], [], 0)[0]:
        connection, _ = server.accept(); connection.recv(8)
        digest = b"x"
        for _ in range(300000):
            digest = hashlib.sha256(digest).digest()
        served += 1
        with open("/tmp/served.tmp", "w") as count:  # whole, and before the answer goes out
            count.write(str(served))
        os.replace("/tmp/served.tmp", "/tmp/served")
        connection.sendall(digest.hex()[:16].encode()); connection.close()
'''


def test_a_backend_that_keeps_forking_is_seen_running(box) -> None:
    """The relay (RELAYED) has its work done over a Unix socket by MIGRANT, a process outside the
    server's tree that changes pid every ~millisecond, so no pass finds a pid of it to stop: it
    is seen alive and unheld, and the hold does not vouch for the server."""
    _start(box, MIGRANT, "migrant")
    _await_backend(box)
    _start(box, RELAYED, "relay", "8311")
    listener = _await_listener(box, 8311)
    reports = []
    for _ in range(3):
        with OthersHeld([box], box, listener.pids) as hold:
            answer = request(box, 8311, "GET", "/", timeout=60)
        assert answer.status == 200 and len(answer.json["answer"]) == 16
        reports.append(hold.report)
    served = int(box.read_file("/tmp/served").decode())
    assert served == 3  # the migrant computed every answer
    escaped = [r for r in reports if r.computed_alone]
    assert not escaped, f"{len(escaped)} of 3 holds vouched for the relay: {escaped[0]}"


def test_a_relay_that_spins_while_its_backend_is_held_ends_at_the_deadline(box) -> None:
    """A relay that spends CPU while it waits never stalls; held, its backend cannot answer: the
    hold ends at the judge's deadline and says so (the answer then comes, through the relay)."""
    spinning = RELAYED.replace("import socket\n", "import socket, threading\n"
                               "def _spin():\n    while True:\n        sum(range(100000)); time.sleep(0.01)\n"
                               "import time\nthreading.Thread(target=_spin, daemon=True).start()\n", 1)
    _start(box, BACKEND, "backend")
    _await_backend(box)
    _start(box, spinning, "spinner", "8306")
    listener = _await_listener(box, 8306)
    with OthersHeld([box], box, listener.pids, deadline=time.monotonic() + 3) as hold:
        answer = request(box, 8306, "GET", "/", timeout=60)
    assert answer.status == 200 and hold.report.stalled_after_s is None
    assert hold.report.expired_after_s is not None and 3 <= hold.report.expired_after_s < 4.5, hold.report
    assert not hold.report.computed_alone
