"""Host-side bookkeeping of live sandboxes, so that nothing outlives a killed harness.

Each sandbox owns a *slot*: a directory ``<state root>/slots/<n>`` holding ``state.json`` (the
cgroup directories it created) and a ``lock`` file that its harness process keeps locked for the
sandbox's whole life. The kernel drops that lock when the harness dies, even by SIGKILL, so any
slot whose lock can be taken belongs to a dead harness: :func:`clean_stale` kills what is left in
its cgroups and removes it. The slot number also picks the sandbox's unprivileged host uid, so
concurrent sandboxes never share a uid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

from redline.sandbox import cgroups
from redline.sandbox.errors import SandboxError

DEFAULT_STATE_ROOT = "/run/redline"
#: Host uid of slot n is UID_BASE + n; far above the ranges Debian gives users and subuids.
DEFAULT_UID_BASE = 3_000_000
MAX_SLOTS = 65_536


def state_root() -> str:
    """Where slot directories live (``$REDLINE_STATE_DIR``, default ``/run/redline``)."""
    return os.environ.get("REDLINE_STATE_DIR", DEFAULT_STATE_ROOT)


def uid_base() -> int:
    """First host uid used for sandboxes (``$REDLINE_UID_BASE``, default 3,000,000)."""
    return int(os.environ.get("REDLINE_UID_BASE", DEFAULT_UID_BASE))


_prepared_roots: set[str] = set()


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
        path = os.path.join(self.directory, "state.json")
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(facts, handle)
        os.replace(path + ".tmp", path)

    def release(self) -> None:
        """Remove the slot's files and drop its lock."""
        with _global_lock(os.path.dirname(os.path.dirname(self.directory))):
            shutil.rmtree(self.directory, ignore_errors=True)
            os.close(self.lock_fd)


def _clean_slot(directory: str) -> None:
    try:
        with open(os.path.join(directory, "state.json"), encoding="utf-8") as handle:
            facts = json.load(handle)
    except (OSError, ValueError):
        facts = {}
    cgroups.kill_and_remove(list(facts.get("cgroups", [])))
    shutil.rmtree(directory, ignore_errors=True)


def clean_stale(root: str | None = None) -> list[str]:
    """Remove every slot left by a dead harness (processes, cgroups, files). Returns the slot
    directories cleaned. Safe to call at any time: live sandboxes' slots are locked."""
    root = root or state_root()
    if not os.path.isdir(os.path.join(root, "slots")):
        return []
    cleaned = []
    with _global_lock(root):
        for name in sorted(os.listdir(os.path.join(root, "slots"))):
            directory = os.path.join(root, "slots", name)
            fd = _try_lock(os.path.join(directory, "lock"))
            if fd is None:
                continue
            try:
                _clean_slot(directory)
                cleaned.append(directory)
            finally:
                os.close(fd)
    return cleaned


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
