"""Does an LLM server compute its answers itself? Every other process is held still while it answers.

A server that has another process compute for it -- a proxy it dials, a backend that dials in
to it, a relay over a Unix socket, a pipe, shared memory or a passed socket -- cannot answer
while that process is stopped. So while the judge's fresh prompts are with a candidate's LLM
server, :class:`OthersHeld` stops (``SIGSTOP``) every process of the trial's sandboxes except
the server's own -- the processes holding its listening socket and their descendants (a server
made of several processes is still one server) -- and continues them (``SIGCONT``) afterwards.

While the hold lasts it watches the server's progress: its threads run on a CPU (at least
:data:`STALL_CPU_SHARE` of one core over :data:`STALL_S`), or wait inside the kernel (state
``D``: disk), or the model gateway is forwarding a request of theirs to the endpoint (an
endpoint model's server waits for the endpoint, not for a process of its host). A server that
makes no progress for :data:`STALL_S` while a prompt is with it waits for a held process: the
hold is released at once (the check then ends without waiting out the probe timeout) and the
stall is reported. A relay that burns CPU to look busy gains nothing: held, it never answers, and
the hold ends at the judge's deadline, reported too.

Every process is signalled through a pidfd opened once it was verified to be the listed process
(pid and start time), so a reused pid is never signalled, and judged by all its threads (one whose
main thread has ended reads as a zombie while its other threads run). A process that was already
stopped (by the AI) is held and watched like the others, and stays stopped after. Every held
thread is watched until the hold ends: one that runs anyway (continued by the server, not
stoppable, or a process started meanwhile outside the server's) is reported, since the server can
then not be shown to have computed alone. The server's own processes are recorded at every look
(:attr:`OthersHeld.server_processes`), so those it starts and ends within the check are judged too.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from redline.errors import HarnessError
from redline.judge.facts import HoldReport
from redline.sandbox import ProcessInfo, Sandbox, SandboxError, procfs
from redline.sandbox.base import descendants

#: How long a server may go without progress while a prompt is with it.
STALL_S = 5.0
#: The least CPU (share of one core) over :data:`STALL_S` that counts as computing. A server
#: computing on a CPU uses a whole core or more; one driving a GPU still spends CPU on every token.
#: An idle server's housekeeping (a ``select`` timeout every 0.5 s) stays far below.
STALL_CPU_SHARE = 0.05
SAMPLE_S = 0.1
#: How long stopped processes get to reach the stopped state before one counts as running anyway.
STOP_WAIT_S = 1.0
#: Passes over the process list: a process forked while the previous pass stopped others is
#: stopped by the next; a pass that finds nobody new ends it.
MAX_PASSES = 8
_STOPPED = frozenset("Tt")  # stopped, traced-stopped
_DEAD = frozenset("ZXx")  # zombie, dead: a thread that runs no more


@dataclass
class _Held:
    pidfd: int
    pid: int  # in its sandbox
    sandbox: Sandbox
    start_time: float
    was_stopped: bool  # already stopped before the hold (by the AI): not continued after it
    #: the harness's own entry helper (``nsenter``) when it is the parent: it stops itself when its
    #: child stops (to pass the stop on) and must be continued with it
    entry_helper: int | None = None
    threads: dict[int, procfs.ThreadState] = field(default_factory=dict)  # at the last look
    cpu_ticks: int | None = None  # the whole process's CPU time at the last look (dead threads too)

    def exited(self) -> bool:
        """True once the process has ended (its pidfd turns readable); its pid may be reused."""
        return bool(select.select([self.pidfd], [], [], 0)[0])


@dataclass(frozen=True)
class _Listed:
    """A process of a sandbox, as cheaply as it can be listed; ``alive``: when listed, it had a
    thread that had not ended."""

    host_pid: int
    pid: int
    host_parent: int | None
    start_time: float | None
    alive: bool


@dataclass
class ServerProcessSeen:
    """A process of the server's tree as the hold saw it, merged over every look: what it ran,
    every file it held open or mapped meanwhile, and the (device, inode) of what it mapped -- so a
    process the server started and ended within the check is still judged (``separate``)."""

    process: ProcessInfo
    mapped_identities: set[tuple[int, int]] = field(default_factory=set)

    def merge(self, later: ProcessInfo, identities: dict[str, tuple[int, int]]) -> None:
        """Add what a later look saw."""
        self.process = dataclasses.replace(
            self.process, open_files=tuple(sorted({*self.process.open_files, *later.open_files})),
            mapped_files=tuple(sorted({*self.process.mapped_files, *later.mapped_files})))
        self.mapped_identities |= set(identities.values())


def _alive_threads(host_pid: int) -> list[procfs.ThreadState]:
    return [t for t in procfs.threads(host_pid) if t.state not in _DEAD]


def _listed(sandbox: Sandbox) -> list[_Listed]:
    host_pids = sandbox.host_pids()
    inside = procfs.inside_pids(host_pids)
    return [_Listed(host_pid, inside[host_pid], procfs.host_parent(host_pid), procfs.start_time(host_pid),
                    bool(_alive_threads(host_pid))) for host_pid in host_pids if host_pid in inside]


def _tree(listed: list[_Listed], roots: Collection[int]) -> set[int]:
    """Host pids of the processes whose in-sandbox pid is in ``roots`` and of their descendants."""
    return descendants({p.host_pid: p.host_parent for p in listed}, {p.host_pid for p in listed if p.pid in roots})


class OthersHeld:
    """Hold every process of ``sandboxes`` still except the server's (see the module docstring).

    ``server_pids`` are in-sandbox pids of ``server_sandbox`` (the holders of the LLM server's
    listening socket); ``waiting_on_model`` (endpoint models) says whether the gateway is
    forwarding a request sent by one of the given host pids; at ``deadline`` (monotonic) the
    hold ends whether or not the server answered. After the block, :attr:`report`, and
    :attr:`server_processes`: every process of the server's tree seen during the hold.

    A held process that runs anyway -- continued by the server (a process may send ``SIGCONT``
    to another), with a thread the stop missed, one that keeps forking so that no pid of it is
    there to be stopped, or one started during the hold outside the server's processes -- is
    reported in :attr:`HoldReport.ran_while_held`: the sandboxes are listed at every look, and
    held threads' CPU time is watched from the moment every held process is stopped until the
    hold ends."""

    def __init__(self, sandboxes: Sequence[Sandbox], server_sandbox: Sandbox, server_pids: Collection[int],
                 waiting_on_model: Callable[[Collection[int]], bool] | None = None,
                 deadline: float | None = None) -> None:
        self.sandboxes = list(dict.fromkeys(sandboxes))  # one pass per sandbox, in order, once each
        self.server_sandbox, self.server_roots = server_sandbox, tuple(server_pids)
        self.waiting_on_model, self.deadline = waiting_on_model, deadline
        self.report: HoldReport | None = None
        self.server_processes: dict[int, ServerProcessSeen] = {}  # host pid -> the server's process seen
        self._held: dict[int, _Held] = {}  # host pid -> held process
        self._server_host_pids: set[int] = set()
        self._ran: set[tuple[Sandbox, int]] = set()  # (sandbox, in-sandbox pid) of processes that ran while held
        self._stalled_after_s: float | None = None
        self._expired_after_s: float | None = None
        self._problem = ""
        self._started = 0.0
        self._lock = threading.Lock()
        self._released = False
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="redline-hold")

    def __enter__(self) -> OthersHeld:
        self._started = time.monotonic()
        try:
            missed: set[tuple[Sandbox, int]] = set()
            for _ in range(MAX_PASSES):
                stopped, missed = self._stop_pass()
                if not stopped and not missed:
                    break
            self._ran |= missed  # alive when listed, never held: it kept ahead of every pass (a fork chain)
            self._await_stopped()
            self._see_server()
        except BaseException:
            self.release()
            raise
        self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=30)  # it stops within one sample, unless a look is slow
        if self._watcher.is_alive():  # never look at the same time as it: its report would be a guess
            self._problem = self._problem or "its watcher did not stop within 30 s"
        elif not self._released:
            self._look()
        self.release()
        here = self.server_sandbox
        self.report = HoldReport(
            server_pids=tuple(sorted({seen.process.pid for seen in self.server_processes.values()})),
            held=tuple(sorted(h.pid for h in self._held.values() if h.sandbox is here)),
            held_elsewhere=tuple(sorted(h.pid for h in self._held.values() if h.sandbox is not here)),
            ran_while_held=tuple(sorted(pid for sandbox, pid in self._ran if sandbox is here)),
            ran_elsewhere=tuple(sorted(pid for sandbox, pid in self._ran if sandbox is not here)),
            stalled_after_s=self._stalled_after_s, expired_after_s=self._expired_after_s,
            held_s=round(time.monotonic() - self._started, 3))
        if self._problem:
            raise HarnessError(f"the judge's hold on the other processes failed: {self._problem}")

    def _stop_pass(self) -> tuple[bool, set[tuple[Sandbox, int]]]:
        """Stop every live process not yet held (but the server's). Returns whether one was
        stopped, and those listed alive that could not be held (gone when signalled: a command
        ending, or a process that forks and exits to stay ahead)."""
        stopped, missed = False, set()
        for sandbox in self.sandboxes:
            try:
                listed = _listed(sandbox)
            except SandboxError:
                continue  # that host is gone: nothing of it can compute
            exempt = _tree(listed, self.server_roots) if sandbox is self.server_sandbox else set()
            self._server_host_pids |= exempt
            for process in listed:
                if process.host_pid in exempt or process.host_pid in self._held or not process.alive:
                    continue
                if self._stop(sandbox, process):
                    stopped = True
                else:
                    missed.add((sandbox, process.pid))
        return stopped, missed

    def _stop(self, sandbox: Sandbox, process: _Listed) -> bool:
        """Stop one process -- judged by all its threads: a process whose main thread has ended
        reads as a zombie while its other threads run -- and hold it. False if it is gone, its pid
        was reused, or every thread of it has ended."""
        try:
            pidfd = os.pidfd_open(process.host_pid)
        except OSError:
            return False  # gone
        threads = _alive_threads(process.host_pid)
        if procfs.start_time(process.host_pid) != process.start_time or not threads:
            os.close(pidfd)
            return False
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGSTOP)  # an already stopped process stays so
        except OSError:
            os.close(pidfd)
            return False
        ours = process.host_parent is not None and procfs.host_parent(process.host_parent) == os.getpid()
        self._held[process.host_pid] = _Held(
            pidfd, process.pid, sandbox, process.start_time, was_stopped=all(t.state in _STOPPED for t in threads),
            entry_helper=process.host_parent if ours else None)  # a helper this harness started
        return True

    def _await_stopped(self) -> None:
        """Wait until every thread of every held process is stopped (or waits in the kernel, ``D``:
        it stops on its way out), sending the stop again once; then note where each stands, for
        the watch. One still running after :data:`STOP_WAIT_S` twice (a tracer swallowed the
        signal) ran while held."""
        deadline, resent = time.monotonic() + STOP_WAIT_S, False
        while True:
            running = {host_pid for host_pid, held in self._held.items() if not held.exited() and any(
                t.state not in _STOPPED and t.state != "D" for t in _alive_threads(host_pid))}
            if not running or (resent and time.monotonic() >= deadline):
                break
            if time.monotonic() >= deadline:
                for host_pid in running:
                    try:
                        signal.pidfd_send_signal(self._held[host_pid].pidfd, signal.SIGSTOP)
                    except OSError:
                        pass
                resent, deadline = True, time.monotonic() + STOP_WAIT_S
            time.sleep(0.005)
        self._ran |= {(self._held[host_pid].sandbox, self._held[host_pid].pid) for host_pid in running}
        for host_pid, held in self._held.items():
            held.threads = {t.tid: t for t in procfs.threads(host_pid)}
            held.cpu_ticks = procfs.cpu_ticks(host_pid)

    def _look(self) -> None:
        """One look of the watch: the held processes, newcomers, and the server's processes."""
        self._look_at_held()
        self._find_newcomers()
        self._see_server()

    def _look_at_held(self) -> None:
        """Note every held process that ran since the last look: a thread not stopped (nor in
        the kernel), a new thread, CPU time gained by a thread that was stopped, or by the
        process (a thread that came and went between two looks); or it ended (a stopped process
        cannot end by itself) with CPU time gained, or was reaped so that it cannot be told."""
        for host_pid, held in self._held.items():
            if (held.sandbox, held.pid) in self._ran:
                continue
            if held.exited():
                ticks = procfs.cpu_ticks(host_pid) if procfs.start_time(host_pid) == held.start_time else None
                if ticks is None or held.cpu_ticks is None or ticks > held.cpu_ticks:
                    self._ran.add((held.sandbox, held.pid))
                continue
            threads = {t.tid: t for t in procfs.threads(host_pid)}
            ticks = procfs.cpu_ticks(host_pid)
            in_kernel = any(t.state == "D" for t in held.threads.values())
            ran = ticks is not None and held.cpu_ticks is not None and ticks > held.cpu_ticks and not in_kernel
            for tid, thread in threads.items():
                before = held.threads.get(tid)
                if thread.state in _DEAD:
                    continue
                if before is None or (thread.state not in _STOPPED and thread.state != "D") or (
                        before.state in _STOPPED and thread.run_ns > before.run_ns):
                    ran = True
            if ran:
                self._ran.add((held.sandbox, held.pid))
            held.threads, held.cpu_ticks = threads, ticks

    def _find_newcomers(self) -> None:
        """Note every live process outside the server's tree that is not held: it appeared during
        the hold (only a process that ran could have started it), or kept ahead of the passes."""
        for sandbox in self.sandboxes:
            try:
                listed = _listed(sandbox)
            except SandboxError:
                continue
            exempt = _tree(listed, self.server_roots) if sandbox is self.server_sandbox else set()
            exempt |= {p.host_pid for p in listed if p.host_parent in self._server_host_pids}
            for process in listed:
                if process.host_pid in exempt:
                    self._server_host_pids.add(process.host_pid)
                elif process.host_pid not in self._held and process.alive:
                    self._ran.add((sandbox, process.pid))

    def _see_server(self) -> None:
        """Record the server's processes (and those they started meanwhile) as they are now."""
        for host_pid in self._server_tree_pids():
            inside = procfs.inside_pids([host_pid])
            info = procfs.read_process(host_pid, inside) if inside else None
            if info is None:
                continue
            identities = procfs.mapped_file_identities(host_pid)
            seen = self.server_processes.get(host_pid)
            if seen is None or seen.process.start_time != info.start_time:
                self.server_processes[host_pid] = ServerProcessSeen(info, set(identities.values()))
            else:
                seen.merge(info, identities)

    def _server_tree_pids(self) -> set[int]:
        """Host pids of the server's processes and of every process they started meanwhile."""
        pending, seen = list(self._server_host_pids), set()
        while pending:
            host_pid = pending.pop()
            if host_pid in seen:
                continue
            seen.add(host_pid)
            pending += procfs.children(host_pid)
        self._server_host_pids |= seen
        return seen

    def _watch(self) -> None:
        try:
            self._watch_progress()
        except Exception as error:  # never leave the trial held: release, and fail the judging as the harness's
            self._problem = f"{type(error).__name__}: {error}"
            self.release()

    def _watch_progress(self) -> None:
        last = {t.tid: t.run_ns for h in self._server_tree_pids() for t in procfs.threads(h)}
        mark, used_ns = time.monotonic(), 0
        while not self._done.wait(SAMPLE_S):
            self._look()
            host_pids = self._server_tree_pids()
            threads = [t for h in host_pids for t in procfs.threads(h)]
            now = time.monotonic()
            used_ns += sum(max(0, t.run_ns - last.get(t.tid, 0)) for t in threads)
            last = {t.tid: t.run_ns for t in threads}
            waiting = any(t.state == "D" for t in threads) or (
                self.waiting_on_model is not None and self.waiting_on_model(host_pids))
            if self.deadline is not None and now >= self.deadline:
                self._expired_after_s = round(now - self._started, 3)
                self.release()
                return
            if waiting:
                mark, used_ns = now, 0
            elif now - mark >= STALL_S:
                if used_ns < STALL_CPU_SHARE * (now - mark) * 1e9:
                    self._stalled_after_s = round(now - self._started, 3)
                    self.release()
                    return
                mark, used_ns = now, 0

    def release(self) -> None:
        """Continue every process the hold stopped (once; safe from any thread); one that was
        stopped before the hold stays stopped."""
        with self._lock:
            if self._released:
                return
            self._released = True
        for held in self._held.values():
            if not held.was_stopped:
                try:
                    signal.pidfd_send_signal(held.pidfd, signal.SIGCONT)
                except OSError:
                    pass  # it ended meanwhile
                if held.entry_helper is not None and procfs.host_parent(held.entry_helper) == os.getpid():
                    os.kill(held.entry_helper, signal.SIGCONT)  # our own child: its pid cannot be reused yet
            os.close(held.pidfd)
