"""Host-side bookkeeping of live sandboxes and virtual networks, so that nothing outlives a
killed harness.

Each sandbox owns a *slot*: a directory ``<state root>/slots/<n>`` holding ``state.json`` (the
cgroup directories it created) and a ``lock`` file that its harness process keeps locked for the
sandbox's whole life. The kernel drops that lock when the harness dies, even by SIGKILL, so any
slot whose lock can be taken belongs to a dead harness: :func:`clean_stale` kills what is left in
its cgroups and removes it. The slot number also picks the sandbox's unprivileged host uid, so
concurrent sandboxes never share a uid.

Each virtual network (:mod:`redline.sandbox.vnet`) has a *network record* ``<state root>/networks/<id>``
with the same lock discipline, naming the network namespaces it creates; :func:`clean_stale`
deletes the namespaces recorded by dead harnesses -- only those, never any other namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from redline.sandbox import cgroups, netns
from redline.sandbox.errors import SandboxError

DEFAULT_STATE_ROOT = "/run/redline"
#: Host uid of slot n is UID_BASE + n; far above the ranges Debian gives users and subuids.
DEFAULT_UID_BASE = 3_000_000
MAX_SLOTS = 65_536


def state_root() -> str:
    """Where slot and network records live (``$REDLINE_STATE_DIR``, default ``/run/redline``)."""
    return os.environ.get("REDLINE_STATE_DIR", DEFAULT_STATE_ROOT)


def uid_base() -> int:
    """First host uid used for sandboxes (``$REDLINE_UID_BASE``, default 3,000,000)."""
    return int(os.environ.get("REDLINE_UID_BASE", DEFAULT_UID_BASE))


_prepared_roots: set[str] = set()
_run_label = ""


def label_sandboxes(run_id: str) -> None:
    """Record ``run_id`` in the slot of every sandbox this process creates from now on (what
    :func:`stop_run` looks for); ``""`` for none."""
    global _run_label
    _run_label = run_id


def run_label() -> str:
    """The run id new sandboxes of this process are labelled with (see :func:`label_sandboxes`)."""
    return _run_label


@contextlib.contextmanager
def _global_lock(root: str) -> Iterator[None]:
    if root not in _prepared_roots:
        os.makedirs(os.path.join(root, "slots"), mode=0o711, exist_ok=True)
        os.chmod(root, 0o711)
        _prepared_roots.add(root)
    with open(os.path.join(root, "lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_lock(path: str) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _release(directory: str, lock_fd: int) -> None:
    with _global_lock(os.path.dirname(os.path.dirname(directory))):
        shutil.rmtree(directory, ignore_errors=True)
        os.close(lock_fd)


def _write_facts(directory: str, facts: dict) -> None:
    path = os.path.join(directory, "state.json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(facts, handle)
    os.replace(path + ".tmp", path)


def _read_facts(directory: str) -> dict:
    try:
        with open(os.path.join(directory, "state.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


@dataclass
class Slot:
    """A claimed slot. ``release`` must be called after the sandbox's resources are gone."""

    number: int
    directory: str
    lock_fd: int

    @property
    def host_uid(self) -> int:
        """The unprivileged host uid the sandbox's processes run as."""
        return uid_base() + self.number

    def record(self, **facts: object) -> None:
        """Write facts (e.g. cgroup directories) to ``state.json`` for stale cleanup."""
        _write_facts(self.directory, facts)

    def release(self) -> None:
        """Remove the slot's files and drop its lock."""
        _release(self.directory, self.lock_fd)


@dataclass
class NetworkRecord:
    """The record of a live virtual network. ``release`` must be called after its namespaces
    are deleted; until then the record's lock marks the network as alive."""

    directory: str
    lock_fd: int

    def release(self) -> None:
        """Remove the record's files and drop its lock."""
        _release(self.directory, self.lock_fd)


def record_network(network_id: str, namespaces: Sequence[str], root: str | None = None) -> NetworkRecord:
    """Create and lock the record of network ``network_id``, naming the ``ip netns`` namespaces
    it is about to create. Call this *before* creating them, so a crash in between still leaves
    a record for :func:`clean_stale`. Raises :class:`SandboxError` if the id is taken."""
    root = root or state_root()
    with _global_lock(root):
        directory = os.path.join(root, "networks", network_id)
        os.makedirs(os.path.dirname(directory), mode=0o711, exist_ok=True)
        try:
            os.mkdir(directory, 0o711)
        except FileExistsError:
            raise SandboxError(f"network record {directory} already exists") from None
        fd = _try_lock(os.path.join(directory, "lock"))
        assert fd is not None, "a new record's lock is free (the global lock is held)"
        _write_facts(directory, {"id": network_id, "owner_pid": os.getpid(), "namespaces": list(namespaces)})
        return NetworkRecord(directory, fd)


def _clean_slot(directory: str) -> None:
    cgroups.kill_and_remove(list(_read_facts(directory).get("cgroups", [])))
    shutil.rmtree(directory, ignore_errors=True)


def _clean_network(directory: str) -> None:
    netns.delete_named(list(_read_facts(directory).get("namespaces", [])))
    shutil.rmtree(directory, ignore_errors=True)


def _clean_unlocked(parent: str, clean: Callable[[str], None]) -> list[str]:
    """Clean every record under ``parent`` whose lock is free (its harness is dead)."""
    if not os.path.isdir(parent):
        return []
    cleaned = []
    for name in sorted(os.listdir(parent)):
        directory = os.path.join(parent, name)
        fd = _try_lock(os.path.join(directory, "lock"))
        if fd is None:
            continue
        try:
            clean(directory)
            cleaned.append(directory)
        finally:
            os.close(fd)
    return cleaned


def clean_stale(root: str | None = None) -> list[str]:
    """Remove everything left by a dead harness under ``root``: its sandboxes' slots (processes,
    cgroups, files), then its virtual networks (the recorded namespaces, with their links).
    Returns the slot and network directories cleaned. Safe to call at any time: live sandboxes
    and networks are locked."""
    root = root or state_root()
    if not os.path.isdir(root):
        return []
    with _global_lock(root):
        return (_clean_unlocked(os.path.join(root, "slots"), _clean_slot)
                + _clean_unlocked(os.path.join(root, "networks"), _clean_network))


@dataclass(frozen=True)
class StoppedSandbox:
    """A sandbox :func:`stop_run` stopped: its id, the pids killed, and whether its cgroups are
    now empty (read back from the kernel)."""

    sandbox_id: str
    killed_pids: tuple[int, ...]
    empty: bool


def stop_run(run_id: str, root: str | None = None) -> list[StoppedSandbox]:
    """Kill every process of every live sandbox on this host labelled with ``run_id`` (their
    harness then finds them gone and cleans up; the slots of dead harnesses are cleaned). The
    kill is verified: each sandbox's cgroups are read again and must be empty."""
    root = root or state_root()
    clean_stale(root)
    slots = os.path.join(root, "slots")
    stopped = []
    for name in sorted(os.listdir(slots)) if os.path.isdir(slots) else []:
        facts = _read_facts(os.path.join(slots, name))
        if not run_id or facts.get("run") != run_id:
            continue
        directories = [str(d) for d in facts.get("cgroups", [])]
        killed = cgroups.kill_members(directories)
        empty = all(not cgroups.members(directory) for directory in directories)
        stopped.append(StoppedSandbox(str(facts.get("id", name)), tuple(sorted(killed)), empty))
    return stopped


def claim_slot(root: str | None = None) -> Slot:
    """Claim the lowest free slot (cleaning it first if a dead harness left it)."""
    root = root or state_root()
    with _global_lock(root):
        for number in range(MAX_SLOTS):
            directory = os.path.join(root, "slots", str(number))
            os.makedirs(directory, mode=0o711, exist_ok=True)
            fd = _try_lock(os.path.join(directory, "lock"))
            if fd is None:
                continue
            if os.path.exists(os.path.join(directory, "state.json")):
                _clean_slot(directory)
                os.makedirs(directory, mode=0o711, exist_ok=True)
                os.close(fd)
                fd = _try_lock(os.path.join(directory, "lock"))
                if fd is None:
                    continue
            return Slot(number, directory, fd)
    raise SandboxError(f"all {MAX_SLOTS} sandbox slots under {root} are in use")
