"""Which process read which file: the kernel's fanotify, on files marked by the harness.

The judge must know whether a replica's processes run the *original's* code or weights. What a
process maps or holds open can be seen in ``/proc`` at any moment, but Python closes each module
after importing it, and a server may read its weights with ``read()`` rather than map them: the
open is over before anyone looks. :class:`FileReadWatch` asks the kernel to report every read of
the marked files as it happens (fanotify, notification class: nothing is blocked or delayed),
with the host pid of the process that did it.

Contracts:

* **What is reported.** For each marked inode (a hard link is the same inode; a symlink leads to
  it): a read (``FAN_ACCESS``), the close of a description opened without write access
  (``FAN_CLOSE_NOWRITE``: an open for reading, also one only used to ``mmap``), an open to
  execute (``FAN_OPEN_EXEC``). An open for writing or appending only (a log) is not a read.
  A marked directory also reports these for files created in it later (``FAN_EVENT_ON_CHILD``).
* **Identity.** Each :class:`FileRead` names the host pid (thread group) and the file's (device,
  inode), read from the descriptor the kernel passes with the event; ``seen_ns`` is when the
  listener thread read the event (``CLOCK_MONOTONIC``, a little after the read itself).
* **Completeness.** The queue is unlimited (``FAN_UNLIMITED_QUEUE``); if the kernel still
  reports an overflow, :attr:`FileReadWatch.overflowed` is set and callers must say the record may
  be incomplete. :meth:`sync` waits until every event queued before it was handled.
* **Requirements.** Root (``CAP_SYS_ADMIN``) and a kernel with fanotify; otherwise the
  constructor raises :class:`HarnessError` naming the cause.

Why not a library: the one maintained wrapper on PyPI (pyfanotify) runs its listener as a forked
``multiprocessing`` process with its own client protocol and ships as a C source build; the two
system calls needed here are plain ``ctypes`` calls.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
import time
from dataclasses import dataclass

from redline.errors import HarnessError

FAN_ACCESS = 0x00000001
FAN_CLOSE_NOWRITE = 0x00000010
FAN_OPEN_EXEC = 0x00001000
FAN_Q_OVERFLOW = 0x00004000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_UNLIMITED_MARKS = 0x00000020
FAN_MARK_ADD = 0x00000001
FAN_MARK_DONT_FOLLOW = 0x00000004
FAN_NOFD = -1
READ_EVENTS = FAN_ACCESS | FAN_CLOSE_NOWRITE | FAN_OPEN_EXEC
_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


@dataclass(frozen=True)
class FileRead:
    """One read of a marked file: by host process ``host_pid``, of file (``device``, ``inode``)."""

    host_pid: int
    device: int
    inode: int
    seen_ns: int


class FileReadWatch:
    """A fanotify group and its listener thread (see the module docstring). Close it when done."""

    def __init__(self) -> None:
        fd = _libc.fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS,
                                 os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC | os.O_NOATIME)
        if fd < 0:
            cause = os.strerror(ctypes.get_errno())
            raise HarnessError(f"the judge cannot watch file reads (fanotify_init: {cause}); it needs root and a "
                               "kernel with fanotify")
        self._fd = fd
        self._lock = threading.Lock()
        self._reads: list[FileRead] = []
        self.overflowed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._closed = False
        self._thread = threading.Thread(target=self._listen, name="file-read-watch", daemon=True)
        self._thread.start()

    def mark(self, directory_fd: int, name: str, directory: bool) -> None:
        """Report reads of the file ``name`` in the directory open as ``directory_fd`` (an
        ``O_PATH`` descriptor is enough; a symlink is not followed) -- or, for a ``directory``,
        of the files in it, those created later included."""
        mask = READ_EVENTS | (FAN_EVENT_ON_CHILD if directory else 0)
        if _libc.fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW, mask, directory_fd,
                               os.fsencode(name)) != 0:
            raise HarnessError(f"the judge cannot watch a file (fanotify_mark: {os.strerror(ctypes.get_errno())})")

    def _listen(self) -> None:
        while not self._closed:
            ready, _, _ = select.select([self._fd, self._wake_r], [], [], 1.0)
            if self._fd in ready:
                with self._lock:
                    self._drain()

    def _drain(self) -> None:
        """Read every queued event (the caller holds the lock)."""
        while True:
            try:
                buffer = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in (errno.EBADF, errno.EINVAL):
                    return
                raise
            now, offset, found = time.monotonic_ns(), 0, []
            while offset + _METADATA.size <= len(buffer):
                length, _, _, _, mask, event_fd, pid = _METADATA.unpack_from(buffer, offset)
                offset += max(length, _METADATA.size)
                if mask & FAN_Q_OVERFLOW:
                    self.overflowed = True
                if event_fd == FAN_NOFD:
                    continue
                try:
                    identity = os.fstat(event_fd)
                    found.append(FileRead(pid, identity.st_dev, identity.st_ino, now))
                finally:
                    os.close(event_fd)
            self._reads.extend(found)

    def sync(self) -> None:
        """Handle every event the kernel queued before this call (call before :meth:`reads`)."""
        with self._lock:
            self._drain()

    def reads(self) -> list[FileRead]:
        """Every read reported so far, in order."""
        with self._lock:
            return list(self._reads)

    def close(self) -> None:
        """Stop listening and release the group (its marks go with it)."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)
