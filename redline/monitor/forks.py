"""Fork lineage from the kernel's process events connector: which process forked which.

A replica is typically started with ``setsid nohup ./start.sh &`` from a short-lived ``bash -c``;
within milliseconds the shell exits and the kernel reparents the replica to the sandbox's pid 1,
so the parent pid in ``/proc`` says nothing about who made it. The kernel's *process events
connector* (netlink ``NETLINK_CONNECTOR``, group ``CN_IDX_PROC``) reports every fork, exec and
exit as it happens, with host pids and a ``CLOCK_MONOTONIC`` timestamp. :class:`ForkWatcher`
listens to it and keeps, for every process forked while it runs, the process that forked it --
a fact the AI cannot rewrite afterwards.

Contracts:

* **Host-wide, host pids.** Every fork on the host is recorded (thread creation is ignored).
  Timestamps are ``CLOCK_MONOTONIC`` nanoseconds, comparable with :func:`time.monotonic_ns`.
* **Identity across pid reuse.** A process is a :class:`ProcessKey`: host pid + fork time. A
  child is linked to its parent's *record* when the fork is seen, and only to a record that was
  forked before the child and had not exited before it; a newer process that later gets the
  same pid never takes the old one's place in a chain. A query by pid names the newest process
  the watcher saw with that pid.
* **Processes older than the watcher** are not *known*: their fork was never seen. When one of
  them forks, it appears in chains with ``forked_ns=None``; above it, chains continue from the
  *current* ``/proc`` parent pids (:attr:`Ancestry.observed` says where that weaker part starts).
  Start the watcher (:func:`fork_watcher`) before the sandboxes whose lineage matters.
* **Up to date after** :meth:`ForkWatcher.sync`: events are handled by a listener thread; a
  query right after a fork may not see it yet.
* **Completeness.** If the socket overruns (``ENOBUFS``) or the kernel drops an event, the
  per-CPU sequence numbers the kernel stamps on events show a gap; :attr:`ForkWatcher.lost_events`
  counts the events missed. When it is non-zero a chain may be cut short or a fork unrecorded:
  callers must say the lineage may be incomplete.
* **Memory.** An exited process's record is kept ``retain_s`` seconds after its exit, and beyond
  that as long as a record of one of its descendants is kept (so chains through exited
  intermediates stay whole); a never-observed ancestor is kept while it has recorded children.
  Hard cap ``max_records``: when reached, exited records are evicted first (childless ones,
  oldest exit first, then the others), after re-checking ``/proc`` for records whose exit event
  was lost; children of an evicted record end their chains there (:attr:`Ancestry.truncated`).
  If the table is full of live processes (only possible when ``pid_max`` exceeds the cap), new
  forks are not recorded and count as lost events.
* **What the AI can influence.** Nothing recorded here comes from the AI, except that a process
  may fork with ``CLONE_PARENT``, which makes the kernel report its own parent as the parent: a
  process can hide one generation (attribute its child to its parent), never attribute a child
  to a process outside its own ancestry.
* **Requirements.** Root in the host's initial user and pid namespaces, and a kernel with
  ``CONFIG_PROC_EVENTS``. Otherwise :class:`ForkWatcher` raises :class:`HarnessError` naming the
  cause; :func:`available` lets a caller degrade to ``/proc`` parents and record that it did.
"""

from __future__ import annotations

import collections
import errno
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from redline.errors import HarnessError

_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = 1
_CN_VAL_PROC = 1
_PROC_CN_MCAST_LISTEN = 1
_PROC_CN_MCAST_IGNORE = 2
_NLMSG_DONE = 3
_SO_RCVBUFFORCE = 33
_EVENT_NONE = 0x0
_EVENT_FORK = 0x1
_EVENT_EXEC = 0x2
_EVENT_EXIT = 0x80000000
_NO_CPU = 0xFFFFFFFF  # the cpu of an acknowledgement on kernels that do not number them

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, port id
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_PIDS = struct.Struct("=iiii")  # fork: parent pid, parent tgid, child pid, child tgid; exec/exit: pid, tgid, ...
_CN_OFFSET = _NLMSGHDR.size
_EVENT_OFFSET = _CN_OFFSET + _CN_MSG.size
_DATA_OFFSET = _EVENT_OFFSET + _EVENT_HEAD.size

_ACK_TIMEOUT_S = 5.0  # the listener thread may be slow to run on a loaded machine
_MARKER_RETRY_S = 1.0  # a marker not handled by then may have been dropped silently: place another
_HOUSEKEEPING_S = 1.0
_CAP_HEADROOM = 0.9  # after an eviction the table holds at most this fraction of the cap
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_START_TOLERANCE_NS = 3 * 1_000_000_000 // _CLOCK_TICKS  # /proc start times are in clock ticks


@dataclass(frozen=True)
class ProcessKey:
    """One process across pid reuse: its host pid and when its fork was seen
    (``CLOCK_MONOTONIC`` ns; ``None`` when the watcher never saw it forked)."""

    host_pid: int
    forked_ns: int | None


@dataclass(frozen=True)
class ProcessRecord:
    """What the watcher saw of one process. ``parent_pid`` is the host pid of the process that
    forked it, as the kernel reported at fork time (``None`` if its fork was not seen).
    ``exec_ns`` is its latest exec, ``exit_ns`` its exit (``None``: not seen / still running).
    Which program it exec'd is not recorded: that would come from ``/proc/<pid>/cmdline``,
    which the process controls."""

    key: ProcessKey
    parent_pid: int | None
    exec_ns: int | None
    exit_ns: int | None


@dataclass(frozen=True)
class Ancestry:
    """The fork-parent chain of ``process``, nearest first.

    The first ``observed`` entries come from forks the kernel reported (the fork-time parents,
    whether or not they still exist). The chain's last observed entry is normally a process
    older than the watcher (``forked_ns=None``); if it is still running, the chain goes on with
    its *current* ``/proc`` parents, also with ``forked_ns=None`` -- a weaker source, since a
    reparented process names its new parent there. ``truncated`` is true when the chain stops
    early because a record was evicted or a fork event was lost.
    """

    process: ProcessKey
    chain: tuple[ProcessKey, ...]
    observed: int
    truncated: bool

    @property
    def pids(self) -> list[int]:
        """The host pids of :attr:`chain`."""
        return [key.host_pid for key in self.chain]


@dataclass(frozen=True)
class WatcherStats:
    """Counters of a watcher: events handled, events lost (gaps in the kernel's sequence
    numbers, plus forks not recorded because the table was full), socket overruns, records held
    now, records evicted by the cap."""

    events: int
    lost_events: int
    overruns: int
    records: int
    evicted: int


class _Record:
    """A process in the table (mutable; only touched under the watcher's lock)."""

    __slots__ = ("pid", "forked_ns", "parent_pid", "parent", "children", "exec_ns", "exit_ns", "removed")

    def __init__(self, pid: int, forked_ns: int | None, parent_pid: int | None, parent: _Record | None) -> None:
        self.pid = pid
        self.forked_ns = forked_ns
        self.parent_pid = parent_pid
        self.parent = parent
        self.children: set[_Record] | None = None  # created on the first child: most have none
        self.exec_ns: int | None = None
        self.exit_ns: int | None = None
        self.removed = False

    @property
    def key(self) -> ProcessKey:
        return ProcessKey(self.pid, self.forked_ns)

    def snapshot(self) -> ProcessRecord:
        return ProcessRecord(self.key, self.parent_pid, self.exec_ns, self.exit_ns)


def _proc_stat(host_pid: int) -> tuple[int, int] | None:
    """``(ppid, start time in clock ticks since boot)`` of a live host process, else ``None``."""
    try:
        with open(f"/proc/{host_pid}/stat", encoding="utf-8", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _proc_parents(host_pid: int) -> list[int]:
    """The current ``/proc`` parent chain of a live host process, nearest first (up to pid 1)."""
    chain: list[int] = []
    pid = host_pid
    while (stat := _proc_stat(pid)) is not None and stat[0] > 0 and stat[0] not in chain:
        pid = stat[0]
        chain.append(pid)
    return chain


def _subscription(op: int, token: int) -> bytes:
    """A connector message (un)subscribing to process events; the kernel acknowledges it with
    ``ack = token + 1``."""
    payload = struct.pack("=I", op)
    cn_msg = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, token, len(payload), 0)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(cn_msg) + len(payload), _NLMSG_DONE, 0, 0, 0)
    return header + cn_msg + payload


class ForkWatcher:
    """Listens to the process events connector in one daemon thread and answers lineage queries
    by host pid (see the module docstring for the contracts). Thread-safe.

    Most callers share one per harness process through :func:`fork_watcher`; a separate
    instance (e.g. with other limits) opens its own subscription until :meth:`close`.
    Raises :class:`HarnessError` if the kernel's process events cannot be received.
    """

    def __init__(self, *, retain_s: float = 120.0, max_records: int = 200_000,
                 receive_buffer_bytes: int = 32 * 1024 * 1024) -> None:
        self._retain_ns = int(retain_s * 1e9)
        self._max_records = max_records
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)  # notified: marker seen, overrun, failure
        self._by_pid: dict[int, _Record] = {}
        self._records: set[_Record] = set()
        self._exited: collections.deque[_Record] = collections.deque()
        self._last_seq: dict[int, int] = {}
        self._events = self._lost = self._overruns = self._evicted = 0
        self._reconciled_lost = 0
        self._markers: set[int] = set()  # thread ids whose exit sync() waits for
        self._markers_seen: set[int] = set()
        self._own_pid = os.getpid()
        self._failure: BaseException | None = None
        self._closing = False
        self._token = secrets.randbelow(2**31)
        self._acknowledged = threading.Event()
        self._ack_error = 0
        self._socket = self._open(receive_buffer_bytes)
        self._thread = threading.Thread(target=self._listen, daemon=True, name="redline-forks")
        self._thread.start()
        if not self._acknowledged.wait(_ACK_TIMEOUT_S) or self._ack_error:
            self.close()
            if self._failure is not None:
                raise HarnessError(f"the fork watcher's listener failed at start: {self._failure!r}")
            if self._ack_error:
                raise HarnessError(f"the kernel refused the process events subscription: {os.strerror(self._ack_error)}"
                                   " (it needs root in the host's initial user namespace)")
            raise HarnessError("the kernel did not acknowledge the process events subscription: the kernel lacks "
                               "CONFIG_PROC_EVENTS, or redline runs outside the host's initial user and pid "
                               "namespaces (e.g. in a container)")

    def _open(self, receive_buffer_bytes: int) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
        except OSError as error:
            raise HarnessError(f"cannot open the kernel's process events connector ({error.strerror}): "
                               "the kernel lacks CONFIG_CONNECTOR/CONFIG_PROC_EVENTS") from error
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, receive_buffer_bytes)
            sock.bind((0, _CN_IDX_PROC))
            sock.settimeout(_HOUSEKEEPING_S)
            sock.send(_subscription(_PROC_CN_MCAST_LISTEN, self._token))
        except OSError as error:
            sock.close()
            hint = (" (it needs root in the host's initial user namespace, not in a container)"
                    if error.errno in (errno.EPERM, errno.EACCES) else "")
            raise HarnessError(f"cannot subscribe to the kernel's process events: {error.strerror}{hint}") from error
        return sock

    def close(self) -> None:
        """Unsubscribe, stop the listener and release the socket. Queries fail afterwards."""
        self._closing = True
        try:
            self._socket.send(_subscription(_PROC_CN_MCAST_IGNORE, self._token))
        except OSError:
            pass  # nothing left to undo: the socket is closed below
        self._thread.join()
        self._socket.close()

    # -- the listener thread ------------------------------------------------------------------

    def _listen(self) -> None:
        buffer = bytearray(8192)
        next_housekeeping = time.monotonic() + _HOUSEKEEPING_S
        try:
            while not self._closing:
                try:
                    size = self._socket.recv_into(buffer)
                except TimeoutError:
                    size = 0
                except OSError as error:
                    if error.errno != errno.ENOBUFS:
                        raise
                    with self._progress:
                        self._overruns += 1  # the sequence-number gap counts the events lost
                        self._progress.notify_all()
                    size = 0
                if size:
                    with self._lock:
                        self._handle(buffer, size)
                if time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + _HOUSEKEEPING_S
                    with self._lock:
                        self._housekeep()
        except BaseException as error:  # noqa: B036 -- recorded, then every query reports it
            if not self._closing:
                with self._progress:
                    self._failure = error
                    self._progress.notify_all()

    def _handle(self, buffer: bytearray, size: int) -> None:
        offset = 0
        while offset + _DATA_OFFSET <= size:
            length = _NLMSGHDR.unpack_from(buffer, offset)[0]
            idx, val, seq, ack, _, _ = _CN_MSG.unpack_from(buffer, offset + _CN_OFFSET)
            if idx == _CN_IDX_PROC and val == _CN_VAL_PROC:
                what, cpu, timestamp = _EVENT_HEAD.unpack_from(buffer, offset + _EVENT_OFFSET)
                data = offset + _DATA_OFFSET
                if what != _EVENT_NONE or cpu != _NO_CPU:  # recent kernels number acks like events
                    self._count(cpu, seq)
                if what == _EVENT_NONE:
                    if ack == self._token + 1:
                        self._ack_error = struct.unpack_from("=I", buffer, data)[0]
                        self._acknowledged.set()
                elif what == _EVENT_FORK:
                    _, parent_tgid, child_pid, child_tgid = _PIDS.unpack_from(buffer, data)
                    if child_pid == child_tgid:
                        self._on_fork(parent_tgid, child_tgid, timestamp)
                elif what == _EVENT_EXEC:
                    self._on_exec(_PIDS.unpack_from(buffer, data)[1], timestamp)
                elif what == _EVENT_EXIT:
                    pid, tgid, _, _ = _PIDS.unpack_from(buffer, data)
                    self._on_exit(pid, tgid, timestamp)
            offset += max((length + 3) & ~3, _DATA_OFFSET)

    def _count(self, cpu: int, seq: int) -> None:
        self._events += 1
        previous = self._last_seq.get(cpu)
        if previous is not None:
            gap = (seq - previous - 1) & 0xFFFFFFFF
            if gap:
                self._lost += gap
                self._progress.notify_all()  # a marker may be among the lost (sync() waits on this)
        self._last_seq[cpu] = seq

    def _on_fork(self, parent_pid: int, child_pid: int, timestamp: int) -> None:
        if len(self._records) + 2 > self._max_records:  # the child, and perhaps a placeholder parent
            self._evict()
            if len(self._records) + 2 > self._max_records:
                self._lost += 1
                return
        parent = self._parent_at(parent_pid, timestamp)
        child = _Record(child_pid, timestamp, parent_pid, parent)
        previous = self._by_pid.get(child_pid)
        if previous is not None and previous.exit_ns is None:
            self._mark_exited(previous, timestamp)  # its exit event was lost: its pid is in use again
        self._add(child)
        if parent is not None:
            if parent.children is None:
                parent.children = set()
            parent.children.add(child)

    def _parent_at(self, pid: int, timestamp: int) -> _Record | None:
        """The record of the process ``pid`` that could have forked at ``timestamp``: forked
        before it and not exited before it. A process never seen forked gets a placeholder."""
        record = self._by_pid.get(pid)
        if record is not None:
            forked_before = record.forked_ns is None or record.forked_ns <= timestamp
            if forked_before and (record.exit_ns is None or record.exit_ns >= timestamp):
                return record
            if record.exit_ns is None:
                return None  # only possible after lost events: leave the link out rather than guess
        placeholder = _Record(pid, None, None, None)
        self._add(placeholder)
        return placeholder

    def _add(self, record: _Record) -> None:
        self._records.add(record)
        self._by_pid[record.pid] = record

    def _on_exec(self, pid: int, timestamp: int) -> None:
        record = self._by_pid.get(pid)
        if record is not None:
            record.exec_ns = timestamp
            # A thread other than the main one exec'd: the kernel reported the main thread's exit
            # (with the process's pid) while it made the exec'ing thread the process.
            record.exit_ns = None

    def _on_exit(self, pid: int, tgid: int, timestamp: int) -> None:
        if pid != tgid:  # a thread; the exit of sync()'s marker thread tells where the listener is
            if tgid == self._own_pid and pid in self._markers:
                self._markers_seen.add(pid)
                self._progress.notify_all()
            return
        record = self._by_pid.get(pid)
        if record is not None and record.exit_ns is None:
            self._mark_exited(record, timestamp)

    def _mark_exited(self, record: _Record, timestamp: int) -> None:
        record.exit_ns = timestamp
        self._exited.append(record)

    # -- pruning --------------------------------------------------------------------------------

    def _housekeep(self) -> None:
        if self._lost != self._reconciled_lost:
            self._reconciled_lost = self._lost
            self._reconcile()
        cutoff = time.monotonic_ns() - self._retain_ns
        while self._exited:
            exit_ns = self._exited[0].exit_ns
            if exit_ns is not None and exit_ns > cutoff:
                break
            self._prune_upwards(self._exited.popleft(), cutoff)  # (exit_ns is None: it exec'd after all)

    def _prune_upwards(self, record: _Record | None, cutoff: int) -> None:
        """Remove ``record`` if nothing needs it any more, then its parent likewise, and so on."""
        while record is not None and not record.removed and not record.children:
            placeholder = record.forked_ns is None
            if not placeholder and (record.exit_ns is None or record.exit_ns > cutoff):
                return
            parent = record.parent
            self._remove(record)
            record = parent

    def _remove(self, record: _Record) -> None:
        record.removed = True
        self._records.discard(record)
        if self._by_pid.get(record.pid) is record:
            del self._by_pid[record.pid]
        if record.parent is not None and record.parent.children is not None:
            record.parent.children.discard(record)
        for child in record.children or ():
            child.parent = None
        record.parent = record.children = None

    def _evict(self) -> None:
        """Bring the table under the cap (see the module docstring for the order)."""
        target = int(self._max_records * _CAP_HEADROOM)
        self._reconcile()
        exited = sorted((r for r in self._records if r.exit_ns is not None),
                        key=lambda r: (bool(r.children), r.exit_ns))
        for record in exited[: max(0, len(self._records) - target)]:
            self._evicted += 1
            parent = record.parent
            self._remove(record)
            self._prune_upwards(parent, -1)  # placeholders left without children

    def _reconcile(self) -> None:
        """Mark exited the records whose process is gone although no exit event was seen."""
        now = time.monotonic_ns()
        boot_offset = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - now
        for record in [r for r in self._records if r.exit_ns is None]:
            stat = _proc_stat(record.pid)
            if stat is None:
                self._mark_exited(record, now)
            elif record.forked_ns is not None:
                started = stat[1] * 1_000_000_000 // _CLOCK_TICKS - boot_offset
                if abs(started - record.forked_ns) > _START_TOLERANCE_NS:
                    self._mark_exited(record, now)  # the pid now belongs to another process

    # -- queries ----------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._failure is not None:
            raise HarnessError(f"the fork watcher's listener failed: {self._failure!r}")
        if self._closing:
            raise HarnessError("the fork watcher is closed")

    def sync(self, timeout: float = 30.0) -> None:
        """Return once every process event that happened before this call has been handled.
        Raises :class:`HarnessError` if the listener does not get there within ``timeout``.

        It places marker events and waits until the listener has handled one of them: the queue is
        first in, first out, so every earlier event has then been handled or counted as lost. A
        marker can be dropped without an overrun of its own being reported (after an overrun the
        kernel drops every event until the socket's queue is drained, and reports the overrun only
        once), so another is placed on each overrun or sequence gap, and every ``_MARKER_RETRY_S``;
        the earlier ones still count when they arrive."""
        deadline = time.monotonic() + timeout
        placed: set[int] = set()
        try:
            while True:
                self._check()
                with self._progress:
                    overruns, lost = self._overruns, self._lost
                placed.add(self._place_marker())
                with self._progress:
                    self._progress.wait_for(
                        lambda o=overruns, n=lost: (bool(placed & self._markers_seen) or self._overruns != o
                                                    or self._lost != n or self._failure is not None),
                        max(0.0, min(deadline, time.monotonic() + _MARKER_RETRY_S) - time.monotonic()))
                    seen = bool(placed & self._markers_seen)
                self._check()
                if seen:
                    return
                if time.monotonic() >= deadline:
                    raise HarnessError(f"the fork watcher fell behind the kernel's events (sync took over "
                                       f"{timeout:g} s)")
        finally:
            with self._lock:
                self._markers -= placed
                self._markers_seen -= placed

    def _place_marker(self) -> int:
        """Start a thread, register its id, let it exit; its exit event is the marker."""
        release = threading.Event()
        thread = threading.Thread(target=release.wait, daemon=True, name="redline-forks-sync")
        thread.start()
        assert thread.native_id is not None
        with self._lock:
            self._markers.add(thread.native_id)
        release.set()
        thread.join()
        return thread.native_id

    @property
    def lost_events(self) -> int:
        """Process events missed so far (socket overruns, events dropped by the kernel, forks
        not recorded for lack of room). Non-zero means lineage may be incomplete."""
        return self._lost

    def stats(self) -> WatcherStats:
        """The watcher's counters and table size now."""
        with self._lock:
            return WatcherStats(self._events, self._lost, self._overruns, len(self._records), self._evicted)

    def record(self, host_pid: int) -> ProcessRecord | None:
        """What was seen of the newest process with ``host_pid`` (its fork time is
        ``record.key.forked_ns``), or ``None`` if the watcher holds nothing about that pid."""
        self._check()
        with self._lock:
            record = self._by_pid.get(host_pid)
            return record.snapshot() if record is not None else None

    def key(self, host_pid: int) -> ProcessKey:
        """The identity of the newest process with ``host_pid`` (``forked_ns=None`` if unknown)."""
        record = self.record(host_pid)
        return record.key if record is not None else ProcessKey(host_pid, None)

    def known(self, host_pid: int) -> bool:
        """True if the watcher saw the fork of (the newest process with) ``host_pid``. Processes
        that existed before the watcher started are not known: their ancestry comes from
        ``/proc`` (see :class:`Ancestry`)."""
        return self.key(host_pid).forked_ns is not None

    def ancestry(self, host_pid: int) -> Ancestry:
        """The fork-parent chain of ``host_pid``, nearest first, as the kernel reported each fork
        -- intact when intermediates have exited and the process was reparented. Above the
        oldest observed ancestor it continues with current ``/proc`` parents. Empty if the
        watcher holds nothing about ``host_pid`` and it does not exist now."""
        self._check()
        chain: list[ProcessKey] = []
        with self._lock:
            record = self._by_pid.get(host_pid)
            if record is None:
                process, top_pid, top_live, truncated = ProcessKey(host_pid, None), host_pid, True, False
            else:
                process = record.key
                while record.parent is not None:
                    record = record.parent
                    chain.append(record.key)
                truncated = record.forked_ns is not None  # an observed process whose parent link is gone
                top_pid, top_live = record.pid, record.forked_ns is None and record.exit_ns is None
        observed = len(chain)
        if top_live and not truncated:
            chain.extend(ProcessKey(pid, None) for pid in _proc_parents(top_pid))
        return Ancestry(process, tuple(chain), observed, truncated)

    def is_descendant(self, host_pid: int, ancestor_host_pid: int) -> bool:
        """True if (the newest process with) ``ancestor_host_pid`` is in ``host_pid``'s
        :meth:`ancestry` -- the same process, not an older one that had the same pid."""
        return self.key(ancestor_host_pid) in self.ancestry(host_pid).chain

    def descendants(self, host_pid: int) -> list[int]:
        """Host pids of the live processes whose fork chain leads to ``host_pid``, sorted
        (only forks the watcher saw; "live" means no exit event seen)."""
        self._check()
        found = []
        with self._lock:
            record = self._by_pid.get(host_pid)
            pending = list(record.children or ()) if record is not None else []
            while pending:
                record = pending.pop()
                if record.exit_ns is None:
                    found.append(record.pid)
                pending.extend(record.children or ())
        return sorted(found)


def instance_parents(ancestries: Mapping[ProcessKey, Sequence[ProcessKey]],
                     original: Collection[ProcessKey]) -> dict[ProcessKey, ProcessKey | None]:
    """The parent instance of each instance, from fork chains alone (pure).

    ``ancestries`` maps each instance's root process (e.g. its agent) to its fork chain, nearest
    first (:attr:`Ancestry.chain`); ``original`` holds the original's processes. An instance's
    parent is the nearest process in its chain that is another instance's root or one of the
    original's processes (the caller tells which by membership in ``original``); ``None`` if
    there is none. Processes are compared as :class:`ProcessKey`, so a process that merely
    reused the pid of an instance is not mistaken for it.
    """
    candidates = set(ancestries) | set(original)
    return {
        instance: next((key for key in chain if key in candidates and key != instance), None)
        for instance, chain in ancestries.items()
    }


_shared: ForkWatcher | None = None
_shared_failure: str | None = None
_shared_lock = threading.Lock()


def fork_watcher() -> ForkWatcher:
    """The harness process's shared watcher, started on first use (default limits). Raises
    :class:`HarnessError` (the same cause every time) if process events are unavailable."""
    global _shared, _shared_failure
    with _shared_lock:
        if _shared is None and _shared_failure is None:
            try:
                _shared = ForkWatcher()
            except HarnessError as error:
                _shared_failure = str(error)
        if _shared is None:
            raise HarnessError(_shared_failure)
        return _shared


def available() -> bool:
    """True if the shared watcher runs; if not, lineage must come from ``/proc`` parents (and
    the record should say so, with the cause from :func:`fork_watcher`'s error)."""
    try:
        fork_watcher()
    except HarnessError:
        return False
    return True
