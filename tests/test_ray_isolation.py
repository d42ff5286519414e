"""Sandboxes cannot reach Ray's ports or read its token.

The module starts a Ray head of its own (token authentication on, its token, temp dir and every
port its own), finds on the host which TCP ports and unix sockets *its* processes listen on, and
then tries to reach each of them, and to read the token and the session directory, from inside
a sandbox -- the default one (only ``lo``) and an ``attached`` one on a two-host network. Only
what this module created is looked at; the head is stopped by killing its own process group.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from conftest import free_port

from redline.sandbox import Sandbox, create_sandbox, default_spec, vnet

pytest.importorskip("ray", reason="Ray is not installed in the harness's environment")

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
START_TIMEOUT_S = 180

#: Connects to each target given as an argument: "tcp:HOST:PORT" or "unix:PATH" ("unix:@NAME" is
#: abstract); prints one JSON object {target: outcome}.
PROBE = textwrap.dedent("""
    import errno, json, socket, sys
    out = {}
    for target in sys.argv[1:]:
        kind, rest = target.split(":", 1)
        try:
            if kind == "tcp":
                host, port = rest.rsplit(":", 1)
                socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
            else:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(3)
                s.connect("\\0" + rest[1:] if rest.startswith("@") else rest)
                s.close()
            out[target] = "CONNECTED"
        except OSError as error:
            out[target] = errno.errorcode.get(error.errno, type(error).__name__)
    print(json.dumps(out))
""")


@dataclass
class RayHead:
    popen: subprocess.Popen
    base: str
    token_path: str
    token: str
    session_dir: str
    log: str
    ports: dict[str, int]
    tcp_listeners: set[tuple[str, int]] = field(default_factory=set)  # (address, port) of its processes
    unix_listeners: set[str] = field(default_factory=set)  # paths ("@name": abstract)


def _free_range(size: int) -> int:
    """The first port of ``size`` consecutive ports nothing listens on now (for Ray's workers)."""
    for start in range(21000, 40000, 97):
        probes = []
        try:
            for port in range(start, start + size):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("0.0.0.0", port))
            return start
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise AssertionError("no free port range for Ray's workers")


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(name))
    return pids


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _listeners(inodes: set[int]) -> tuple[set[tuple[str, int]], set[str]]:
    """The listening TCP (host network namespace) and unix sockets among ``inodes``."""
    tcp = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/net/{name}", encoding="ascii") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or int(fields[9]) not in inodes:
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                tcp.add((socket.inet_ntop(family, packed), int(port, 16)))
    unix = set()
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and int(fields[6]) in inodes and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON
                unix.add(fields[7])
    return tcp, unix


def _host_addresses() -> list[str]:
    """Every global or host-scope address of the host's own interfaces (link-local ones need a
    scope the sandbox's interfaces cannot name)."""
    listed = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    addresses = []
    for line in listed.splitlines():
        fields = line.split()
        address = ipaddress.ip_address(fields[3].split("/")[0])
        if not address.is_link_local:
            addresses.append(str(address))
    return addresses


def _reachable_on_host(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
        return True
    except OSError:
        return False


def _stop(popen: subprocess.Popen) -> None:
    """Stop the head: its own process group only (never ``ray stop``, which stops every Ray)."""
    pgid = popen.pid
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (popen.poll() is None or _group_pids(pgid)):
            time.sleep(0.1)
        if popen.poll() is not None and not _group_pids(pgid):
            break
    popen.wait(10)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    base = str(tmp_path_factory.mktemp("ray"))
    own_base = len(base) > 48  # unix socket paths under the session directory must stay < 108 bytes
    if own_base:
        base = tempfile.mkdtemp(prefix="rl-ray-", dir="/tmp")
    home = os.path.join(base, "home")
    os.makedirs(home)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(HOME=home, RAY_AUTH_MODE="token")  # its token goes to $HOME/.ray/auth_token
    generated = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                               timeout=120)
    assert generated.returncode == 0, generated.stderr
    token_path = os.path.join(home, ".ray", "auth_token")
    with open(token_path, encoding="utf-8") as handle:
        token = handle.read().strip()
    assert len(token) >= 16 and token == generated.stdout.strip()

    ports = {name: free_port() for name in ("port", "dashboard-port", "node-manager-port", "object-manager-port",
                                            "metrics-export-port", "dashboard-agent-listen-port",
                                            "dashboard-agent-grpc-port", "runtime-env-agent-port")}
    from ray._private.utils import get_ray_client_dependency_error  # minimal Ray has no client server

    if get_ray_client_dependency_error() is None:
        ports["ray-client-server-port"] = free_port()
    assert len(set(ports.values())) == len(ports), ports
    workers = _free_range(20)
    argv = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            *[item for name, port in ports.items() for item in (f"--{name}", str(port))],
            "--min-worker-port", str(workers), "--max-worker-port", str(workers + 19),
            "--num-cpus", "1", "--object-store-memory", "80000000",
            "--temp-dir", os.path.join(base, "r"), "--disable-usage-stats"]
    log = os.path.join(base, "ray.log")
    with open(log, "wb") as output:
        popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                 cwd=base, start_new_session=True)
    try:
        session_link = os.path.join(base, "r", "session_latest")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (_reachable_on_host("127.0.0.1", ports["port"])
                   and os.path.exists(os.path.join(session_link, "sockets", "raylet"))):
            if popen.poll() is not None or time.monotonic() > deadline:
                with open(log, encoding="utf-8", errors="replace") as handle:
                    pytest.fail(f"the Ray head did not start (exit {popen.poll()}): {handle.read()[-3000:]}")
            time.sleep(0.5)
        time.sleep(2)  # let the raylet open its ports too
        inodes = set().union(*(_socket_inodes(pid) for pid in _group_pids(popen.pid)))
        tcp, unix = _listeners(inodes)
        head = RayHead(popen, base, token_path, token, os.path.realpath(session_link), log, ports, tcp, unix)
        yield head
    finally:
        _stop(popen)
        assert not _group_pids(popen.pid), "processes of the Ray head survived its process group's SIGKILL"
        if own_base:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", params=["loopback", "attached"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    if request.param == "loopback":
        with create_sandbox() as box:
            yield box
        return
    with vnet.create_two_host_network() as network, \
            create_sandbox(default_spec(network=network.a.network_spec(), hostname="host-a")) as box:
        yield box


def _probe(box: Sandbox, targets: list[str]) -> dict[str, str]:
    result = box.exec(["python3", "-c", PROBE, *targets], timeout=300)
    assert result.exit_code == 0, result.text("stderr")
    return json.loads(result.text())


def _tcp_target(address: str, port: int) -> str:
    return f"tcp:[{address}]:{port}" if ":" in address else f"tcp:{address}:{port}"


# -- what the head really exposes on the host (else the sandbox's failures would prove nothing) ------


def test_the_head_listens_and_its_token_and_sockets_exist_on_the_host(ray_head: RayHead) -> None:
    assert os.path.isfile(ray_head.token_path) and os.path.getsize(ray_head.token_path) > 0
    gcs = ray_head.ports["port"]
    assert any(port == gcs for _, port in ray_head.tcp_listeners), ray_head.tcp_listeners
    assert _reachable_on_host("127.0.0.1", gcs)
    sockets = {os.path.basename(path) for path in ray_head.unix_listeners}
    assert {"raylet", "plasma_store"} <= sockets, ray_head.unix_listeners
    assert all(path.startswith(ray_head.session_dir) for path in ray_head.unix_listeners if not path.startswith("@"))


# -- from inside ---------------------------------------------------------------------------------


def test_no_port_of_the_head_is_reachable_from_a_sandbox(ray_head: RayHead, sandbox: Sandbox) -> None:
    addresses = ["127.0.0.1", *(a for a in _host_addresses() if a != "127.0.0.1")]
    wanted_ports = {ray_head.ports[name] for name in ("port", "dashboard-port", "ray-client-server-port")
                    if name in ray_head.ports}
    targets: dict[str, bool] = {}  # target -> reachable from the host
    for address in addresses:
        for port in wanted_ports | {port for _, port in ray_head.tcp_listeners}:
            targets[_tcp_target(address, port)] = _reachable_on_host(address, port)
    reachable = [target for target, ok in targets.items() if ok]
    assert _tcp_target("127.0.0.1", ray_head.ports["port"]) in reachable, targets  # GCS, from the host
    for _, port in ray_head.tcp_listeners:  # every port of the head is live on some host address
        assert any(targets[_tcp_target(address, port)] for address in addresses), (port, targets)
    seen = _probe(sandbox, list(targets))
    assert not [target for target, outcome in seen.items() if outcome == "CONNECTED"], seen
    # refused (loopback: the sandbox's own lo), unreachable (no route), or a timeout -- never a connection
    assert set(seen.values()) <= {"ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH", "TimeoutError", "EADDRNOTAVAIL"}, \
        seen


def test_the_heads_unix_sockets_are_absent_or_unreachable(ray_head: RayHead, sandbox: Sandbox) -> None:
    targets = [f"unix:{path}" for path in sorted(ray_head.unix_listeners)]
    seen = _probe(sandbox, targets)
    for target, outcome in seen.items():
        if target.startswith("unix:@"):  # abstract: scoped by network namespace
            assert outcome == "ECONNREFUSED", (target, outcome)
        else:
            assert outcome == "ENOENT", (target, outcome)


def test_the_token_and_the_session_directory_cannot_be_read(ray_head: RayHead, sandbox: Sandbox) -> None:
    paths = [ray_head.token_path, os.path.dirname(ray_head.token_path), ray_head.base, ray_head.session_dir,
             os.path.join(ray_head.session_dir, "sockets"), ray_head.log, "/root/.ray/auth_token"]
    script = ("for p; do for q in \"$p\" \"/proc/1/root$p\" \"/proc/self/root$p\"; do "
              "cat \"$q\" 2>/dev/null && echo \"READ $q\"; ls -a \"$q\" 2>/dev/null && echo \"LISTED $q\"; "
              "test -e \"$q\" && echo \"EXISTS $q\"; done; done; "
              "find / \\( -path /proc -o -path /sys \\) -prune -o \\( -name auth_token -o -name \"$SESSION\" "
              "-o -path '*/sockets/plasma_store' -o -path '*/sockets/raylet' \\) -print 2>/dev/null; true")
    result = sandbox.exec(["/bin/sh", "-c", script, "read-token", *paths],
                          env={"SESSION": os.path.basename(ray_head.session_dir)}, timeout=240)
    assert result.exit_code == 0, result.text("stderr")
    assert result.text().strip() == "", result.text()
    assert ray_head.token not in result.text() + result.text("stderr")


def test_a_harness_running_with_rays_token_does_not_hand_it_to_the_sandbox(
        ray_head: RayHead, monkeypatch: pytest.MonkeyPatch) -> None:
    # a harness started as a Ray task has Ray's variables in its environment
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", ray_head.token_path)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{ray_head.ports['port']}")
    with create_sandbox() as box:
        background = box.spawn(["sleep", "30"])
        try:
            shown = box.shell("env; echo; cat /proc/1/environ; echo; for f in /proc/[0-9]*/environ; do "
                              "tr '\\0' '\\n' < $f; done 2>/dev/null").text()
        finally:
            background.signal(9)
            background.wait(10)
    assert "RAY_" not in shown and ray_head.token not in shown, shown
