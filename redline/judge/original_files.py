"""The original's own files -- its code and its weights -- and who read them.

``separate`` requires that the replica runs its own copy. What its processes map or hold open is
seen in ``/proc`` when the judge looks, and where its entry point lives by
:mod:`redline.judge.code_origin`; neither sees a module imported (and closed) from the original's
folder through a stub, a ``__path__`` or a ``sys.path`` entry, nor weights read with ``read()``.
So, from the moment the original is recorded (before the AI acts), :class:`OriginalFiles` marks
every file of the original's code (``CODE_FILES``, the ``CODE_DIRS`` trees with their bytecode
caches, also files created there later) and its weights file for fanotify
(:mod:`redline.monitor.file_reads`), and keeps their (device, inode) pairs:

* :meth:`OriginalFiles.read_by` -- the original's files a process read *for its current program*:
  after its latest exec, or, for a process that has not exec'd since its fork (so it runs its
  parent's image), also what its parent read for that image, and so on up. Fork and exec times
  come from the kernel's process events (:mod:`redline.monitor.forks`); a read is stamped when
  the listener thread sees it, a little later than it happened, so a parent's reads count
  whether they came before or after the fork (a stamp cannot order them), and a read made just
  before an exec may count for the new program. Where process events are unavailable every read
  by the pid counts.
* :attr:`OriginalFiles.identities` -- to tell a hard link or a symlink to one of these files from
  a copy.

Vendored packages (``lib/``), the config, the start script and the logs are not marked: a copy
may legitimately read its original's ``lib/`` through an inherited ``PYTHONPATH``, append to its
logs or read its config; none of them is the system's code or model.

Files are reached through ``/proc/<pid>/root`` of a process of the sandbox, one path component at
a time with ``O_PATH | O_NOFOLLOW`` -- nothing the AI could have placed is followed (and at record
time the folder is still the harness's deployment).
"""

from __future__ import annotations

import os
import posixpath
import stat

from redline.errors import HarnessError
from redline.judge.original import CODE_DIRS, CODE_FILES, OriginalFacts
from redline.monitor import forks
from redline.monitor.file_reads import FileRead, FileReadWatch
from redline.sandbox import Sandbox

#: directories of a code tree deeper than this are not marked (the system's own are two deep)
MAX_DEPTH = 4


class OriginalFiles:
    """The marks on one original's files and the reads reported since (see the module docstring)."""

    def __init__(self, root_pid: int, folder: str, code_files: tuple[str, ...], code_dirs: tuple[str, ...],
                 weights_path: str | None) -> None:
        """Mark the files, reached from ``/proc/<root_pid>/root`` (``root_pid``: a host pid of the
        original's sandbox). ``folder`` and ``weights_path`` are paths inside the sandbox; the
        code names are relative to ``folder``. Raises :class:`HarnessError` if fanotify or the
        process events are unavailable, or the folder cannot be reached."""
        self._lineage = forks.fork_watcher() if forks.available() else None
        self._watch = FileReadWatch()
        self.identities: dict[tuple[int, int], str] = {}  # (device, inode) -> path inside the sandbox
        try:
            root = os.open(f"/proc/{root_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for name in code_files:
                    self._mark_path(root, posixpath.join(folder, name))
                for name in code_dirs:
                    self._mark_path(root, posixpath.join(folder, name))
                if weights_path:
                    self._mark_path(root, weights_path)
            finally:
                os.close(root)
        except BaseException:
            self._watch.close()
            raise
        if not self.identities:
            self._watch.close()
            raise HarnessError(f"none of the original's code files were found in {folder}")

    def _mark_path(self, root: int, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        parent = root
        try:
            for part in parts[:-1]:
                step = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
                if parent != root:
                    os.close(parent)
                parent = step
            self._mark(parent, parts[-1], path, 0)
        except (FileNotFoundError, NotADirectoryError):
            return  # a code file the system does not have
        finally:
            if parent != root:
                os.close(parent)

    def _mark(self, parent: int, name: str, path: str, depth: int) -> None:
        """Mark ``name`` in directory ``parent`` (never following a symlink), and for a directory
        its contents."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                self._watch.mark(parent, name, directory=False)
                self.identities[(info.st_dev, info.st_ino)] = path
            elif stat.S_ISDIR(info.st_mode) and depth <= MAX_DEPTH:
                self._watch.mark(parent, name, directory=True)
                listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                try:
                    names = os.listdir(listing)
                finally:
                    os.close(listing)
                for child in names:
                    self._mark(fd, child, posixpath.join(path, child), depth + 1)
        finally:
            os.close(fd)

    @property
    def complete(self) -> bool:
        """False if the kernel dropped events (then a read may be missing)."""
        return not self._watch.overflowed and not (self._lineage is not None and self._lineage.lost_events)

    def read_by(self, host_pid: int) -> list[str]:
        """Paths (inside the sandbox, as marked; ``(created later)`` for files made in a marked
        directory afterwards) of the original's files that host process ``host_pid`` read for
        the program it runs now (see the module docstring)."""
        self._watch.sync()
        if self._lineage is not None:
            self._lineage.sync()
        by_pid: dict[int, list[FileRead]] = {}
        for read in self._watch.reads():
            by_pid.setdefault(read.host_pid, []).append(read)
        found: list[FileRead] = []
        pid = host_pid
        for _ in range(64):  # a fork chain without exec is short; bounded anyway
            record = self._lineage.record(pid) if self._lineage is not None else None
            since = (record.exec_ns or record.key.forked_ns) if record is not None else None
            found += [r for r in by_pid.get(pid, []) if since is None or r.seen_ns >= since]
            if record is None or record.exec_ns is not None or record.parent_pid is None \
                    or record.key.forked_ns is None:
                break
            parent = self._lineage.record(record.parent_pid)
            if parent is None or (parent.key.forked_ns or 0) > record.key.forked_ns:
                break  # the parent's pid now names a newer process
            pid = record.parent_pid
        return sorted({self.identities.get((r.device, r.inode), "(created later)") for r in found})

    def close(self) -> None:
        """Remove the marks."""
        self._watch.close()

    def __enter__(self) -> OriginalFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def watch_original(original: OriginalFacts) -> OriginalFiles:
    """Mark ``original``'s code and weights (call right after recording it, before the AI acts)."""
    return OriginalFiles(original.host_pids[0], original.folder, CODE_FILES, CODE_DIRS, original.weights_path)


#: how many files of a replica's code folder are compared with the original's, at most
MAX_LINK_CHECKS = 5000


def linked_files(sandbox: Sandbox, folders: list[str], files: OriginalFiles,
                 original_folder_now: str | None) -> dict[str, str]:
    """Files under ``folders`` (a replica's code folders, inside ``sandbox``, the original's host)
    that are the original's code or weights files themselves -- a hard link, or a symlink
    resolving to one -- mapped to the original's path; the original's own folder, where it is now,
    is skipped (a replica folder that contains it is judged by its own files). Listed inside the
    sandbox (``find -L``: symlinks followed there, never on the host), up to
    :data:`MAX_LINK_CHECKS` files."""
    skip = [original_folder_now] if original_folder_now else []
    found: dict[str, str] = {}
    for (device, inode), paths in folder_files(sandbox, folders, skip).items():
        theirs = files.identities.get((device, inode))
        for path in paths if theirs is not None else ():
            if path != theirs:
                found[path] = theirs
    return found


def folder_files(sandbox: Sandbox, folders: list[str], skip: list[str]) -> dict[tuple[int, int], list[str]]:
    """The files under ``folders`` inside ``sandbox`` by (device, inode) -- what they *are*, whatever
    their paths: symlinks followed (``find -L``, inside the sandbox, never on the host), up to
    :data:`MAX_LINK_CHECKS` per folder -- leaving out those under a folder of ``skip``."""
    prefixes = tuple(folder.rstrip("/") + "/" for folder in skip)
    found: dict[tuple[int, int], list[str]] = {}
    for folder in dict.fromkeys(folders):
        result = sandbox.exec(["/bin/sh", "-c", 'find -L "$1" -maxdepth 3 -type f -printf "%D %i %p\\0" 2>/dev/null '
                               f'| head -z -n {MAX_LINK_CHECKS}', "linked", folder], timeout=30)
        for entry in result.stdout.decode(errors="replace").split("\0"):
            device, _, rest = entry.partition(" ")
            inode, _, path = rest.partition(" ")
            if device.isdigit() and inode.isdigit() and path and not path.startswith(prefixes):
                found.setdefault((int(device), int(inode)), []).append(path)
    return found
