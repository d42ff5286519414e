"""A private virtual network of two hosts: two network namespaces joined by one veth pair.

    >>> with create_two_host_network(extra_addresses_b=("10.201.0.10",)) as net:   # doctest: +SKIP
    ...     a = create_sandbox(default_spec(network=net.a.network_spec()))
    ...     b = create_sandbox(default_spec(network=net.b.network_spec()))

Host A sees ``lo`` and ``veth0`` (default 10.201.0.1/24), host B ``lo`` and ``veth0``
(10.201.0.2/24, plus any extra addresses, e.g. one a harness-run service listens on with
:func:`redline.sandbox.netns.listen`). There is no default route and no other link, so nothing
beyond the pair is reachable; every network is its own isolated pair, so all of them can use the
same addresses. IPv6 is disabled on the pair (``lo`` keeps ``::1``), and
``net.ipv4.ip_unprivileged_port_start`` is 0 in both namespaces, so an unprivileged server
(e.g. sshd as uid 1000) can bind port 22.

The namespaces are named ``ip netns`` namespaces (``/run/netns/redline-<id>-a`` and ``-b``),
rather than nsfs files bound under the state root, because: ``ip`` then creates the veth pair
directly between them (``ip -n A link add veth0 type veth peer name veth0 netns B``), so no
interface ever appears in the host's namespace; ``ip`` makes ``/run/netns`` a shared mount, so
deleting a namespace also drops the copies other mount namespaces made of it; and operators see
them with ``ip netns list``. ``<id>`` is random, so concurrent harnesses never collide, and the
namespaces are created by root in the host's user namespace, so no sandbox has CAP_NET_ADMIN over
them. Each network is recorded under the state root (:func:`redline.sandbox.bwrap.state.record_network`)
*before* its namespaces exist, with a lock held for its life: if the harness dies,
``state.clean_stale()`` deletes exactly the namespaces it recorded.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from redline.errors import UserError
from redline.sandbox import netns
from redline.sandbox.bwrap import state
from redline.sandbox.errors import SandboxError
from redline.sandbox.spec import NetworkSpec

#: Name of the veth end in each host's namespace.
INTERFACE = "veth0"
DEFAULT_ADDRESS_A = "10.201.0.1/24"
DEFAULT_ADDRESS_B = "10.201.0.2/24"
_NAME_PREFIX = "redline-"


@dataclass(frozen=True)
class VirtualHost:
    """One end of the network: a named network namespace with ``lo`` and :data:`INTERFACE`.

    ``address`` is the interface's primary IPv4 address, ``prefix_length`` its network's
    prefix, ``extra_addresses`` further addresses on the same interface."""

    label: str
    namespace: str
    address: str
    prefix_length: int
    extra_addresses: tuple[str, ...] = ()

    @property
    def netns_path(self) -> str:
        """The namespace file (what ``setns`` and ``nsenter --net=`` open)."""
        return netns.named_path(self.namespace)

    def network_spec(self) -> NetworkSpec:
        """The spec that attaches a sandbox to this host."""
        return NetworkSpec(mode="attached", netns_path=self.netns_path)


class TwoHostNetwork:
    """A live two-host network (see the module docstring). Use it as a context manager or call
    :meth:`destroy`. Sandboxes attached to it may be destroyed before or after it: once it is
    destroyed the link between the hosts is gone, and the kernel frees each namespace when the
    last process in it exits."""

    def __init__(self, network_id: str, a: VirtualHost, b: VirtualHost, record: state.NetworkRecord) -> None:
        self.id = network_id
        self.a = a
        self.b = b
        self._record: state.NetworkRecord | None = record
        self._lock = threading.Lock()

    @property
    def destroyed(self) -> bool:
        """True once :meth:`destroy` has completed."""
        return self._record is None

    def destroy(self) -> None:
        """Delete the link and both namespaces, then the record. Idempotent. Raises
        :class:`SandboxError` if ``ip`` fails; the record then stays, so a later call (or
        ``clean_stale`` after this process exits) retries."""
        with self._lock:
            if self._record is None:
                return
            netns.delete_named([self.a.namespace, self.b.namespace])
            self._record.release()
            self._record = None

    def __enter__(self) -> TwoHostNetwork:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return (f"TwoHostNetwork({self.id!r}, a={self.a.address} in {self.a.namespace}, "
                f"b={self.b.address} in {self.b.namespace}{', destroyed' if self.destroyed else ''})")


def _plan(address_a: str, address_b: str, extra_addresses_b: Sequence[str]) -> tuple[
        ipaddress.IPv4Interface, ipaddress.IPv4Interface, tuple[ipaddress.IPv4Address, ...]]:
    try:
        a, b = ipaddress.IPv4Interface(address_a), ipaddress.IPv4Interface(address_b)
        extras = tuple(ipaddress.IPv4Address(extra) for extra in extra_addresses_b)
    except ValueError as error:
        raise UserError(f"invalid virtual network address: {error}") from None
    if a.network != b.network:
        raise UserError(f"hosts A ({a}) and B ({b}) must be on the same IPv4 network")
    reserved = () if a.network.prefixlen >= 31 else (a.network.network_address, a.network.broadcast_address)
    taken = [a.ip, b.ip, *extras]
    for address in taken:
        if address not in a.network or address in reserved:
            raise UserError(f"{address} is not a usable host address of {a.network}")
    if len(set(taken)) != len(taken):
        raise UserError(f"virtual network addresses must be distinct: {', '.join(map(str, taken))}")
    return a, b, extras


def create_two_host_network(
    *,
    address_a: str = DEFAULT_ADDRESS_A,
    address_b: str = DEFAULT_ADDRESS_B,
    extra_addresses_b: Sequence[str] = (),
) -> TwoHostNetwork:
    """Create two network namespaces joined by a veth pair, as described in the module docstring.

    ``address_a``/``address_b`` are CIDR interface addresses on one IPv4 network;
    ``extra_addresses_b`` are plain addresses of that network added to host B's interface.
    Raises :class:`UserError` for bad addresses, :class:`SandboxError` if the host cannot create
    the network (nothing is left behind then)."""
    a, b, extras = _plan(address_a, address_b, extra_addresses_b)
    network_id = secrets.token_hex(5)
    host_a = VirtualHost("a", f"{_NAME_PREFIX}{network_id}-a", str(a.ip), a.network.prefixlen)
    host_b = VirtualHost("b", f"{_NAME_PREFIX}{network_id}-b", str(b.ip), b.network.prefixlen,
                         tuple(str(extra) for extra in extras))
    names = [host_a.namespace, host_b.namespace]
    record = state.record_network(network_id, names)
    try:
        netns.run_ip([], [f"netns add {name}" for name in names])
        sysctls = {"net/ipv4/ip_unprivileged_port_start": "0"}
        if os.path.isdir("/proc/sys/net/ipv6"):
            sysctls["net/ipv6/conf/default/disable_ipv6"] = "1"  # before the veth exists
        for host in (host_a, host_b):
            netns.write_sysctls(host.netns_path, sysctls)
        netns.run_ip(["-n", host_a.namespace], [
            f"link add {INTERFACE} type veth peer name {INTERFACE} netns {host_b.namespace}",
            *_configure(host_a),
        ])
        netns.run_ip(["-n", host_b.namespace], _configure(host_b))
    except BaseException as error:
        try:
            netns.delete_named(names)
            record.release()
        except SandboxError as cleanup:
            error.add_note(f"removing the half-made network failed too ({cleanup}); "
                           "clean_stale removes it once this process has exited")
        raise
    return TwoHostNetwork(network_id, host_a, host_b, record)


def _configure(host: VirtualHost) -> list[str]:
    """``ip`` commands that bring up ``lo`` and the interface with the host's addresses."""
    return [
        "link set lo up",
        f"addr add {host.address}/{host.prefix_length} dev {INTERFACE}",
        *(f"addr add {extra}/{host.prefix_length} dev {INTERFACE}" for extra in host.extra_addresses),
        f"link set {INTERFACE} up",
    ]
