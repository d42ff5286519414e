"""Shared fixtures. Sandboxes made by tests keep their state under a directory of their own and
use their own host uid range, so a test run never touches a real run's sandboxes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

os.environ.setdefault("REDLINE_STATE_DIR", f"/run/redline-test-{os.getpid()}")
os.environ.setdefault("REDLINE_UID_BASE", "3500000")

from redline.sandbox import Limits, ProcessInfo, Sandbox, create_sandbox, default_spec  # noqa: E402

T = TypeVar("T")


@pytest.fixture
def box() -> Iterator[Sandbox]:
    """A fresh sandbox with the default spec, destroyed after the test."""
    with create_sandbox() as sandbox:
        yield sandbox


def make_box(**limits) -> Sandbox:
    """A sandbox with the default spec but the given limits."""
    return create_sandbox(default_spec(limits=Limits(**limits)))


@pytest.fixture
def host_sleeper() -> Iterator[subprocess.Popen]:
    """A host process the test started (and ends, by its pid)."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def free_port() -> int:
    """A TCP port nothing on the host listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def host_pid_alive(pid: int) -> bool:
    """True if host process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return False


def wait_until(condition: Callable[[], T], what: str | Callable[[], str], timeout: float = 20.0,
               interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns a true value and return that value; after ``timeout``
    seconds fail the test, saying it timed out waiting for ``what`` (a callable is called then, to
    show the last state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def wait_for_processes(box: Sandbox, found: Callable[[list[ProcessInfo]], bool], what: str,
                       timeout: float = 20.0) -> list[ProcessInfo]:
    """The sandbox's processes, listed once ``found`` holds for them (e.g. once a spawned command
    has exec'd its program); fails the test after ``timeout`` seconds, showing the last listing."""
    last: list[ProcessInfo] = []

    def listed() -> list[ProcessInfo] | None:
        nonlocal last
        last = box.processes()
        return last if found(last) else None

    return wait_until(listed, lambda: f"{what}; processes: {[(p.pid, p.ppid, p.cmdline) for p in last]}", timeout)


def run_cli(*args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the ``redline`` CLI in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "redline", *args], input=stdin or b"", capture_output=True,
                          timeout=timeout, env=os.environ.copy())


@pytest.fixture(scope="session", autouse=True)
def _remove_test_state_root() -> Iterator[None]:
    """Leave nothing under /run once the session's sandboxes are gone."""
    yield
    import shutil

    shutil.rmtree(os.environ["REDLINE_STATE_DIR"], ignore_errors=True)
