"""Open TCP connections inside another network namespace.

A thread that calls ``setns(CLONE_NEWNET)`` moves only itself; a socket it creates belongs to
that namespace for good. So a short-lived thread enters the sandbox's namespace, connects, and
hands the connected socket back. Needs CAP_SYS_ADMIN over the namespace (the harness is root).
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def connect(netns_path: str, host: str, port: int, timeout: float) -> socket.socket:
    """A socket connected to ``host:port`` inside the network namespace at ``netns_path``."""
    outcome: dict = {}

    def enter_and_connect() -> None:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"setns({netns_path}): {os.strerror(error)}")
            outcome["socket"] = socket.create_connection((host, port), timeout=timeout)
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error
        finally:
            os.close(fd)

    worker = threading.Thread(target=enter_and_connect, name="redline-netns-connect")
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["socket"]
