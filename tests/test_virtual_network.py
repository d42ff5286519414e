"""The private two-host network: real namespaces, a real veth pair, real sandboxes on both ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from conftest import free_port, host_pid_alive

from redline.errors import UserError
from redline.sandbox import (
    NetworkSpec,
    Sandbox,
    SandboxError,
    SandboxSpec,
    WeakContainmentRefused,
    create_sandbox,
    default_spec,
    netns,
    vnet,
)
from redline.sandbox.bwrap import state

A, B, SERVICE = "10.201.0.1", "10.201.0.2", "10.201.0.10"

#: Connects to each (host, port) given as arguments and prints "host port outcome seconds".
PROBE = textwrap.dedent("""
    import errno, socket, sys, time
    for target in sys.argv[1:]:
        host, port = target.rsplit(":", 1)
        started = time.monotonic()
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            outcome = "CONNECTED"
        except OSError as error:
            outcome = errno.errorcode.get(error.errno, type(error).__name__)
        print(host, port, outcome, round(time.monotonic() - started, 3))
""")

#: Listens on argv[1]:argv[2], answers one client with its peer address, exits.
SERVER = textwrap.dedent("""
    import socket, sys
    server = socket.create_server((sys.argv[1], int(sys.argv[2])))
    client, peer = server.accept()
    client.sendall(f"hello {peer[0]}".encode())
""")

#: Connects to argv[1]:argv[2] and prints what the server sends.
FETCH = ("import socket, sys\n"
         "print(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).recv(100).decode())")


@pytest.fixture
def network() -> Iterator[vnet.TwoHostNetwork]:
    with vnet.create_two_host_network(extra_addresses_b=(SERVICE,)) as net:
        yield net


@pytest.fixture
def host_a(network: vnet.TwoHostNetwork) -> Iterator[Sandbox]:
    with create_sandbox(default_spec(network=network.a.network_spec(), hostname="host-a")) as box:
        yield box


@pytest.fixture
def host_b(network: vnet.TwoHostNetwork) -> Iterator[Sandbox]:
    with create_sandbox(default_spec(network=network.b.network_spec(), hostname="host-b")) as box:
        yield box


def _serve(box: Sandbox, address: str, port: int):
    """Start SERVER in ``box`` and wait until the kernel shows it listening."""
    process = box.spawn(["python3", "-c", SERVER, address, str(port)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(s.address == address and s.port == port for s in box.listening_sockets()):
            return process
        time.sleep(0.02)
    raise AssertionError(f"server on {address}:{port} never listened: {process.read_output()!r}")


def _probe(box: Sandbox, *targets: str) -> dict[str, tuple[str, float]]:
    result = box.exec(["python3", "-c", PROBE, *targets], timeout=60)
    assert result.ok, result.text("stderr")
    outcomes = {}
    for line in result.text().splitlines():
        host, port, outcome, seconds = line.split()
        outcomes[f"{host}:{port}"] = (outcome, float(seconds))
    return outcomes


def _interfaces(box: Sandbox) -> list[str]:
    lines = box.exec(["cat", "/proc/net/dev"]).text().splitlines()[2:]
    return [line.split(":")[0].strip() for line in lines]


# -- (a) the two hosts reach each other ---------------------------------------------------------


def test_servers_on_each_host_are_reachable_from_the_other(host_a: Sandbox, host_b: Sandbox) -> None:
    on_b = _serve(host_b, B, 8080)
    assert host_a.exec(["python3", "-c", FETCH, B, "8080"]).text().strip() == f"hello {A}"
    assert on_b.wait(5) == 0
    on_a = _serve(host_a, A, 9090)
    assert host_b.exec(["python3", "-c", FETCH, A, "9090"]).text().strip() == f"hello {B}"
    assert on_a.wait(5) == 0


def test_harness_reaches_sandbox_servers_and_runs_a_service_on_host_b(
        network: vnet.TwoHostNetwork, host_a: Sandbox, host_b: Sandbox) -> None:
    _serve(host_b, B, 8081)
    with host_a.connect_tcp(8081, host=B) as connection:  # from host A's namespace, over the veth
        assert connection.recv(100) == f"hello {A}".encode()
    _serve(host_b, "0.0.0.0", 8082)
    with host_b.connect_tcp(8082, host="127.0.0.1") as connection:
        assert connection.recv(100) == b"hello 127.0.0.1"
    with netns.listen(network.b.netns_path, SERVICE, 7000) as service:
        # The kernel lists it among host B's sockets; no process of the sandbox holds it.
        assert [s.pids for s in host_b.listening_sockets() if s.address == SERVICE] == [()]
        client = host_a.spawn(["python3", "-c", FETCH, SERVICE, "7000"])
        service.settimeout(10)
        accepted, peer = service.accept()
        with accepted:
            assert peer[0] == A
            accepted.sendall(b"service on B")
        assert client.wait(10) == 0
        assert client.read_output().decode().strip() == "service on B"


def test_each_network_is_its_own_isolated_pair() -> None:
    with vnet.create_two_host_network() as first, vnet.create_two_host_network() as second:
        assert (first.b.address, second.b.address) == (B, B)
        with create_sandbox(default_spec(network=first.a.network_spec())) as a1, \
                create_sandbox(default_spec(network=second.b.network_spec())) as b2:
            _serve(b2, B, 8080)
            assert _probe(a1, f"{B}:8080")[f"{B}:8080"][0] == "ECONNREFUSED"  # first's B, not second's


# -- (b) nothing else is reachable ----------------------------------------------------------------


def test_host_a_reaches_only_host_b(host_a: Sandbox, host_b: Sandbox) -> None:
    port = free_port()
    with socket.socket() as host_listener:
        host_listener.bind(("127.0.0.1", port))
        host_listener.listen()
        host_listener.settimeout(0.3)
        outcomes = _probe(host_a, f"127.0.0.1:{port}", f"{B}:{free_port()}", "10.201.1.1:22",
                          "192.0.2.1:80", "8.8.8.8:53")
        with pytest.raises(TimeoutError):
            host_listener.accept()
    assert outcomes[f"127.0.0.1:{port}"][0] == "ECONNREFUSED"
    assert [outcome for key, (outcome, _) in outcomes.items() if key.startswith(B)] == ["ECONNREFUSED"]
    for target in ("10.201.1.1:22", "192.0.2.1:80", "8.8.8.8:53"):
        outcome, seconds = outcomes[target]
        assert outcome == "ENETUNREACH" and seconds < 0.5, (target, outcome, seconds)


def test_only_lo_and_veth0_with_the_hosts_addresses(host_a: Sandbox, host_b: Sandbox) -> None:
    assert _interfaces(host_a) == ["lo", "veth0"] and _interfaces(host_b) == ["lo", "veth0"]
    a_addresses = host_a.exec(["ip", "-o", "addr", "show", "dev", "veth0"]).text()
    assert f"inet {A}/24" in a_addresses and "inet6" not in a_addresses
    b_addresses = host_b.exec(["ip", "-o", "addr", "show", "dev", "veth0"]).text()
    assert f"inet {B}/24" in b_addresses and f"inet {SERVICE}/24" in b_addresses
    routes = host_a.exec(["ip", "route", "show", "table", "all"]).text()
    assert "default" not in routes and "via" not in routes
    network_item = next(item for item in host_a.containment.items if item.name == "network namespace")
    assert network_item.enforced
    assert f"veth0 {A}/24" in network_item.detail and "no gateway" in network_item.detail


# -- (c) the sandbox cannot change its network, but can serve on low ports ----------------------------


def test_sandbox_cannot_reconfigure_the_network(network: vnet.TwoHostNetwork, host_a: Sandbox) -> None:
    before = netns.inspect(network.a.netns_path)
    for command in ("ip addr add 10.201.0.99/24 dev veth0", "ip link set veth0 down",
                    "ip route add default via 10.201.0.2", "ip link add dummy0 type dummy",
                    "ip link set veth0 netns 1"):
        result = host_a.shell(command)
        assert result.exit_code != 0, command
        assert "Operation not permitted" in result.text("stderr"), (command, result.text("stderr"))
    sysctl = host_a.shell("echo 1024 > /proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert sysctl.exit_code != 0
    assert netns.inspect(network.a.netns_path) == before


def test_uid_1000_binds_port_22_on_host_b(host_a: Sandbox, host_b: Sandbox) -> None:
    sshd_like = _serve(host_b, B, 22)
    assert host_b.exec(["id", "-u"]).text().strip() == "1000"
    assert [(s.port, s.pids) for s in host_b.listening_sockets()] == [(22, (sshd_like.pid,))]
    assert host_a.exec(["python3", "-c", FETCH, B, "22"]).text().strip() == f"hello {A}"


# -- (d) destroy leaves nothing -----------------------------------------------------------------


def _leftovers(net: vnet.TwoHostNetwork) -> list[str]:
    names = {net.a.namespace, net.b.namespace}
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found = [line.split()[0] for line in listed.splitlines() if line.split()[0] in names]
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        found += [line for line in mountinfo if any(name in line for name in names)
                  or state.state_root() in line]
    found += os.listdir(os.path.join(state.state_root(), "networks"))
    return found


def _holders(inode: int) -> list[int]:
    """Host pids whose network namespace is ``inode``."""
    holders = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                holders.append(int(pid))
        except OSError:
            pass
    return holders


def test_destroy_after_the_sandboxes_leaves_nothing() -> None:
    net = vnet.create_two_host_network()
    inodes = [os.stat(net.a.netns_path).st_ino, os.stat(net.b.netns_path).st_ino]
    with create_sandbox(default_spec(network=net.a.network_spec())) as a, \
            create_sandbox(default_spec(network=net.b.network_spec())) as b:
        assert a.exec(["true"]).ok and b.exec(["true"]).ok
    net.destroy()
    net.destroy()  # idempotent
    assert net.destroyed and _leftovers(net) == []
    assert [_holders(inode) for inode in inodes] == [[], []]


def test_destroy_before_the_sandboxes_cuts_the_link_at_once() -> None:
    net = vnet.create_two_host_network()
    inode = os.stat(net.a.netns_path).st_ino
    a = create_sandbox(default_spec(network=net.a.network_spec()))
    b = create_sandbox(default_spec(network=net.b.network_spec()))
    try:
        _serve(b, B, 8080)
        net.destroy()
        assert _leftovers(net) == []
        assert a.alive and _interfaces(a) == ["lo"]  # the veth pair is gone with the network
        assert _probe(a, f"{B}:8080")[f"{B}:8080"][0] == "ENETUNREACH"
        with pytest.raises(SandboxError, match="not a usable network namespace"):
            create_sandbox(default_spec(network=net.a.network_spec()))
    finally:
        a.destroy()
        b.destroy()
    assert _holders(inode) == []


# -- (e) a killed harness's network is removed by the next cleanup -------------------------------------

HARNESS = """
import json, sys, time
from redline.sandbox import create_sandbox, default_spec, vnet
net = vnet.create_two_host_network()
a = create_sandbox(default_spec(network=net.a.network_spec()))
b = create_sandbox(default_spec(network=net.b.network_spec()))
pids = [p.host_pid for p in a.processes() + b.processes()]
print(json.dumps({"names": [net.a.namespace, net.b.namespace], "id": net.id, "pids": pids}), flush=True)
time.sleep(300)
"""


def test_network_of_a_sigkilled_harness_is_removed_by_clean_stale() -> None:
    harness = subprocess.Popen([sys.executable, "-c", HARNESS], stdout=subprocess.PIPE, env=os.environ.copy())
    try:
        facts = json.loads(harness.stdout.readline())
    finally:
        os.kill(harness.pid, signal.SIGKILL)
        harness.wait()
    record = os.path.join(state.state_root(), "networks", facts["id"])
    assert os.path.isdir(record)
    assert all(os.path.exists(netns.named_path(name)) for name in facts["names"])  # the dead harness left them
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [pid for pid in facts["pids"] if host_pid_alive(pid)]:
        time.sleep(0.05)
    with vnet.create_two_host_network() as live:  # a live network is never touched by cleanup
        cleaned = state.clean_stale()
        assert record in cleaned
        assert not live.destroyed and os.path.exists(live.a.netns_path)
        assert os.listdir(os.path.join(state.state_root(), "networks")) == [live.id]
    assert not [name for name in facts["names"] if os.path.exists(netns.named_path(name))]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [name for name in facts["names"] if name in listed]
    assert not os.listdir(os.path.join(state.state_root(), "slots"))
    assert state.clean_stale() == []


# -- (f) clear one-line errors ---------------------------------------------------------------------


@pytest.mark.parametrize(("make", "message"), [
    (lambda: NetworkSpec(mode="attached"), "needs netns_path"),
    (lambda: NetworkSpec(mode="attached", netns_path="run/netns/x"), "must be an absolute path"),
    (lambda: NetworkSpec(netns_path="/run/netns/x"), "'loopback' takes no netns_path"),
    (lambda: NetworkSpec(mode="bridge"), "unknown network mode 'bridge'"),
    (lambda: vnet.create_two_host_network(address_a="10.201.0.1/24", address_b="10.202.0.2/24"),
     "must be on the same IPv4 network"),
    (lambda: vnet.create_two_host_network(extra_addresses_b=("10.201.0.1",)), "must be distinct"),
    (lambda: vnet.create_two_host_network(extra_addresses_b=("10.201.0.255",)), "not a usable host address"),
    (lambda: vnet.create_two_host_network(address_a="10.201.0.300/24"), "invalid virtual network address"),
])
def test_invalid_specs_are_user_errors_in_one_line(make, message: str) -> None:
    with pytest.raises(UserError, match=message) as raised:
        make()
    assert "\n" not in str(raised.value)


def test_attaching_to_the_hosts_network_or_a_non_namespace_is_refused(tmp_path) -> None:
    with pytest.raises(WeakContainmentRefused, match="host's own network namespace") as raised:
        create_sandbox(SandboxSpec(network=NetworkSpec(mode="attached", netns_path="/proc/self/ns/net")))
    assert "\n" not in str(raised.value)
    not_a_namespace = tmp_path / "file"
    not_a_namespace.write_text("")
    with pytest.raises(SandboxError, match="is not a usable network namespace"):
        create_sandbox(SandboxSpec(network=NetworkSpec(mode="attached", netns_path=str(not_a_namespace))))
