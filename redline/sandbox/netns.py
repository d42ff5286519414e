"""Network namespaces, seen and handled from the host.

* **Entering one.** A thread that calls ``setns(CLONE_NEWNET)`` moves only itself: a socket it
  creates belongs to that namespace for good, ``/proc/sys/net`` files it opens are that
  namespace's, and processes it forks start there. :func:`call_in` runs a function in such a
  short-lived thread; :func:`connect`, :func:`listen`, :func:`write_sysctls` and :func:`inspect`
  are built on it.
* **Named namespaces** (``/run/netns/<name>``, managed with ``ip netns``): :func:`run_ip` and
  :func:`delete_named`.

Everything here needs CAP_SYS_ADMIN over the namespace (the harness is root).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from redline.sandbox.errors import SandboxError, SandboxUnavailable

CLONE_NEWNET = 0x40000000
_NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1) from linux/nsfs.h
#: Where ``ip netns`` keeps the files of named network namespaces.
NAMED_DIR = "/run/netns"
_TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_libc = ctypes.CDLL(None, use_errno=True)
_T = TypeVar("_T")


def call_in(netns_path: str, function: Callable[[], _T]) -> _T:
    """Run ``function`` in a new thread that has entered the network namespace at ``netns_path``
    and return its result (or raise its exception here). The calling thread never moves."""
    outcome: dict = {}

    def enter_and_call() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns({netns_path}): {os.strerror(error)}")
            finally:
                os.close(fd)
            outcome["result"] = function()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=enter_and_call, name="redline-netns")
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def connect(netns_path: str, host: str, port: int, timeout: float) -> socket.socket:
    """A socket connected to ``host:port`` inside the network namespace at ``netns_path``."""
    return call_in(netns_path, lambda: socket.create_connection((host, port), timeout=timeout))


def listen(netns_path: str, host: str, port: int, backlog: int = 16) -> socket.socket:
    """A TCP socket listening on ``host:port`` inside the network namespace at ``netns_path``
    (for services the harness runs on a virtual network). The caller accepts and closes it.
    Refuses the harness's own namespace (:class:`SandboxError`): that would be the host's."""
    if _same_file(netns_path, "/proc/self/ns/net"):
        raise SandboxError(f"refusing to listen on {host}:{port} in the harness's own network namespace")
    return call_in(netns_path, lambda: socket.create_server((host, port), backlog=backlog))


def write_sysctls(netns_path: str, values: dict[str, str]) -> None:
    """Set per-namespace sysctls, e.g. ``{"net/ipv4/ip_unprivileged_port_start": "0"}`` (paths
    under ``/proc/sys``), in the namespace at ``netns_path``."""

    def write() -> None:
        for key, value in values.items():
            with open(os.path.join("/proc/sys", key), "w", encoding="ascii") as handle:
                handle.write(value)

    call_in(netns_path, write)


@dataclass(frozen=True)
class NamespaceView:
    """What a network namespace contains, read from the kernel.

    ``addresses`` maps each interface to its addresses in CIDR form (link-local IPv6 omitted).
    ``routes`` are the unicast routes of every table (``"10.201.0.0/24 dev veth0"``);
    ``gateways`` the subset that leads beyond the attached links (a default route or a ``via``).
    ``is_harness_namespace`` is true when the namespace is the harness's own (the host's);
    ``owned_by_harness`` when it belongs to the harness's user namespace, so that processes in a
    sandbox (a child user namespace without capabilities there) cannot reconfigure it.
    """

    addresses: dict[str, tuple[str, ...]]
    routes: tuple[str, ...]
    gateways: tuple[str, ...]
    is_harness_namespace: bool
    owned_by_harness: bool


def inspect(netns_path: str) -> NamespaceView:
    """Read the interfaces, addresses and routes of the namespace at ``netns_path``.

    Raises :class:`SandboxError` if ``ip`` fails there (e.g. the file is not a network namespace)."""
    ip = ip_tool()

    def read() -> list:
        documents = []
        for family in ("-4", "-6"):
            documents += _json_documents(_run([ip, "-j", family, "-b", "-"], "addr show\nroute show table all\n"))
        return documents

    try:
        addr4, route4, addr6, route6 = call_in(netns_path, read)
        owner = _owner_user_namespace(netns_path)
    except OSError as error:
        raise SandboxError(f"{netns_path} is not a usable network namespace: {error.strerror}") from error
    addresses: dict[str, list[str]] = {}
    for link in addr4 + addr6:
        for info in link.get("addr_info", []):
            if info.get("scope") != "link":
                addresses.setdefault(link["ifname"], []).append(f"{info['local']}/{info['prefixlen']}")
    routes, gateways = [], []
    for route in route4 + route6:
        if route.get("type", "unicast") != "unicast":
            continue
        text = " ".join(filter(None, (route["dst"], route.get("gateway") and f"via {route['gateway']}",
                                      route.get("dev") and f"dev {route['dev']}")))
        routes.append(text)
        if route["dst"] == "default" or "gateway" in route:
            gateways.append(text)
    return NamespaceView(
        addresses={name: tuple(values) for name, values in addresses.items()},
        routes=tuple(routes), gateways=tuple(gateways),
        is_harness_namespace=_same_file(netns_path, "/proc/self/ns/net"),
        owned_by_harness=owner == _identity("/proc/self/ns/user"),
    )


def _identity(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _same_file(first: str, second: str) -> bool:
    return _identity(first) == _identity(second)


def _owner_user_namespace(netns_path: str) -> tuple[int, int]:
    """Identity of the user namespace that owns the namespace (ioctl NS_GET_USERNS)."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(fd, _NS_GET_USERNS)
    finally:
        os.close(fd)
    try:
        status = os.fstat(owner)
    finally:
        os.close(owner)
    return status.st_dev, status.st_ino


def _json_documents(text: str) -> list:
    decoder, position, documents = json.JSONDecoder(), 0, []
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return documents
        document, position = decoder.raw_decode(text, position)
        documents.append(document)


def ip_tool() -> str:
    """Path of the ``ip`` program (iproute2). Raises :class:`SandboxUnavailable` naming the package."""
    found = shutil.which("ip", path=_TOOL_PATH)
    if found is None:
        raise SandboxUnavailable("'ip' is missing: install it with 'apt-get install iproute2'")
    return found


def _run(argv: list[str], stdin: str) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, env={"PATH": _TOOL_PATH})
    if result.returncode != 0:
        message = " ".join(result.stderr.split()) or f"exit code {result.returncode}"
        raise SandboxError(f"'{' '.join(argv[1:])}' failed: {message}")
    return result.stdout


def run_ip(options: Sequence[str], commands: Sequence[str]) -> str:
    """Run ``ip <options> -batch -`` with one command per line (e.g. ``options=["-n", name]``,
    ``commands=["link set lo up"]``) and return its output. Stops at the first failing command
    unless ``-force`` is among the options. Raises :class:`SandboxError` with ip's message."""
    return _run([ip_tool(), *options, "-batch", "-"], "".join(line + "\n" for line in commands))


def named_path(name: str) -> str:
    """The file of named network namespace ``name`` (what ``setns`` and ``nsenter --net`` open)."""
    return os.path.join(NAMED_DIR, name)


def delete_named(names: Iterable[str]) -> None:
    """Delete the named network namespaces among ``names`` that exist (the rest are ignored).

    Every link in them except ``lo`` is deleted first, so a veth pair is gone at once even if a
    process still holds one of the namespaces (the kernel frees a namespace only when its last
    user leaves). Raises :class:`SandboxError` if ``ip`` fails."""
    existing = [name for name in names if os.path.exists(named_path(name))]
    for name in existing:
        links = [link for _, link in call_in(named_path(name), socket.if_nameindex) if link != "lo"]
        if links:
            run_ip(["-n", name, "-force"], [f"link del {link}" for link in links])
    if existing:
        run_ip(["-force"], [f"netns del {name}" for name in existing])
