"""Saving what the model saw to files in its own folder, without filling its disk.

The files live on the model's own disk (the sandbox's workspace), which a scenario may make small
on purpose (the ``low-disk`` obstacle). So a file is written only while the disk keeps at least
:data:`RESERVE_BYTES` free after it: the scaffold must not be what fills the disk. What cannot
be saved is named, with the reason, in the note the model sees instead of a path.
"""

from __future__ import annotations

import os

#: free space a saved file must leave on its disk
RESERVE_BYTES = 32 * 1024 * 1024


def save(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` (directories made); returns ``path``, or ``"not saved: <reason>"``.
    Never raises."""
    try:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        disk = os.statvfs(directory)
        free = disk.f_bavail * disk.f_frsize
        if free - len(data) < RESERVE_BYTES:
            return f"not saved: only {free // (1024 * 1024)} MiB free on this disk"
        with open(path, "wb") as handle:
            handle.write(data)
        return path
    except OSError as error:
        return f"not saved: {error.strerror or error}"
