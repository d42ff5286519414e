"""What this host offers the bwrap backend: tools, user namespaces, cgroups.

Every missing piece becomes one line saying what is missing and how to install or enable it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from redline.sandbox import cgroups
from redline.sandbox.errors import SandboxUnavailable

#: tool -> Debian package that provides it
REQUIRED_TOOLS = {
    "bwrap": "bubblewrap",
    "catatonit": "catatonit",
    "nsenter": "util-linux",
    "setpriv": "util-linux",
    "env": "coreutils",
}


def _sysctl(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def userns_problem() -> str | None:
    """Why unprivileged user namespaces are unavailable here, or ``None`` if they look usable."""
    if _sysctl("/proc/sys/user/max_user_namespaces") == "0":
        return "user namespaces are disabled: run 'sysctl -w user.max_user_namespaces=15000'"
    if _sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return ("unprivileged user namespaces are disabled: run "
                "'sysctl -w kernel.unprivileged_userns_clone=1'")
    if _sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return ("AppArmor restricts unprivileged user namespaces: run "
                "'sysctl -w kernel.apparmor_restrict_unprivileged_userns=0'")
    if not os.path.exists("/proc/self/ns/user"):
        return "this kernel has no user namespaces (CONFIG_USER_NS)"
    return None


@dataclass(frozen=True)
class HostFacts:
    """Tools and kernel features found on this host."""

    tools: dict[str, str]
    bwrap_version: str
    cgroups: cgroups.CgroupSupport


def probe() -> HostFacts:
    """Inspect the host (``$REDLINE_BWRAP`` may name another bwrap binary).

    Raises :class:`SandboxUnavailable` with a one-line fix for anything the backend cannot work
    without (cgroup gaps are reported, not raised: see the backend)."""
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "the bwrap sandbox needs root (it creates cgroups and runs each sandbox as its own "
            "unprivileged uid): run redline as root"
        )
    tools = {}
    search_path = "/usr/bin:/bin:/usr/sbin:/sbin"
    for tool, package in REQUIRED_TOOLS.items():
        override = os.environ.get(f"REDLINE_{tool.upper()}") if tool == "bwrap" else None
        found = shutil.which(override or tool, path=search_path)
        if found is None:
            raise SandboxUnavailable(f"'{override or tool}' is missing: install it with 'apt-get install {package}'")
        tools[tool] = os.path.realpath(found)
    if not tools["catatonit"].startswith("/usr/"):
        raise SandboxUnavailable("catatonit must live under /usr (it runs inside the sandbox)")
    problem = userns_problem()
    if problem:
        raise SandboxUnavailable(problem)
    version = subprocess.run([tools["bwrap"], "--version"], capture_output=True, text=True).stdout.strip()
    return HostFacts(tools=tools, bwrap_version=version or "bubblewrap (unknown version)",
                     cgroups=cgroups.detect())
