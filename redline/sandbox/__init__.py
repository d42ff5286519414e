"""Isolation of the AI system under test.

One interface (:class:`Sandbox`), one default backend (``bwrap``: bubblewrap + Linux namespaces
+ cgroups). Callers obtain sandboxes through :func:`create_sandbox` and never name a backend
class, so another backend (e.g. podman) can be added to :data:`BACKENDS` without touching them.

    >>> from redline.sandbox import create_sandbox
    >>> with create_sandbox() as box:                               # doctest: +SKIP
    ...     print(box.exec(["id", "-u"]).stdout)                    # b'1000\\n'
"""

from __future__ import annotations

import os
from collections.abc import Callable

from redline.errors import UserError
from redline.sandbox.base import (
    ContainmentItem,
    ContainmentReport,
    ExecResult,
    ListeningSocket,
    ProcessInfo,
    ResourceUsage,
    Sandbox,
    SandboxProcess,
    TcpConnection,
    process_tree,
)
from redline.sandbox.bwrap import BwrapBackend
from redline.sandbox.errors import (
    NoSuchProcess,
    SandboxError,
    SandboxGone,
    SandboxUnavailable,
    WeakContainmentRefused,
)
from redline.sandbox.spec import WRITABLE_TREES, Limits, NetworkSpec, SandboxSpec

#: Python environment (a venv) made available read-only inside every sandbox created from
#: :func:`default_spec`, for the AI system's programs. ``$REDLINE_RUNTIME`` overrides it.
DEFAULT_RUNTIME = "/opt/redline/runtime"

#: Backend name -> factory. Instances are created once per process and shared.
BACKENDS: dict[str, Callable[[], BwrapBackend]] = {"bwrap": BwrapBackend}
_instances: dict[str, BwrapBackend] = {}


def runtime_path() -> str:
    """Where the AI system's Python environment lives on the host."""
    return os.environ.get("REDLINE_RUNTIME", DEFAULT_RUNTIME)


def default_spec(**overrides) -> SandboxSpec:
    """The default spec: default limits, loopback network, and the runtime environment mounted
    read-only at the same path with its ``bin`` first on ``PATH`` (when it exists)."""
    runtime = runtime_path()
    if os.path.isdir(runtime):
        overrides.setdefault("ro_paths", {runtime: runtime})
        overrides.setdefault("env", {
            "PATH": f"{runtime}/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
            "VIRTUAL_ENV": runtime,
        })
    return SandboxSpec(**overrides)


def get_backend(name: str = "bwrap") -> BwrapBackend:
    """The shared instance of backend ``name``. Raises :class:`UserError` for an unknown name."""
    if name not in BACKENDS:
        raise UserError(f"unknown sandbox backend {name!r}: choose one of {', '.join(sorted(BACKENDS))}")
    if name not in _instances:
        _instances[name] = BACKENDS[name]()
    return _instances[name]


def create_sandbox(spec: SandboxSpec | None = None, backend: str = "bwrap") -> Sandbox:
    """Create a sandbox from ``spec`` (default: :func:`default_spec`)."""
    return get_backend(backend).create(spec or default_spec())


__all__ = [
    "BACKENDS", "ContainmentItem", "ContainmentReport", "ExecResult", "Limits", "ListeningSocket", "TcpConnection",
    "NetworkSpec", "NoSuchProcess", "ProcessInfo", "ResourceUsage", "Sandbox", "SandboxError",
    "SandboxGone", "SandboxProcess", "SandboxSpec", "SandboxUnavailable", "WRITABLE_TREES", "WeakContainmentRefused",
    "create_sandbox", "default_spec", "get_backend", "process_tree", "runtime_path",
]
