"""The second machine's parts: Debian's sshd inside a sandbox, and the OAuth-style allocation
service listening inside a sandbox's network namespace. Real sshd, real sandboxes, real sockets."""

from __future__ import annotations

import base64
import json
import socket
import textwrap
import time
from collections.abc import Iterator

import pytest
from conftest import host_pid_alive

from redline.errors import HarnessError
from redline.hosts.allocation import AllocationService, ClientCredentials, HostAccess
from redline.hosts.sshd import USERNAME, SshServer, parse_public_key
from redline.sandbox import Sandbox, SandboxError, create_sandbox, default_spec

SSH_PORT = 2222
API_PORT = 8080
KEY = "/home/agent/.ssh/id_ed25519"
SSH = ["ssh", "-i", KEY, "-p", str(SSH_PORT), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]

#: A small HTTP client run inside the sandbox: reads {"method", "url", "headers", "body" | "body_size"}
#: on stdin, prints {"status", "body"} (the body parsed as JSON).
HTTP_CLIENT = textwrap.dedent("""\
    import json, sys, urllib.error, urllib.request
    spec = json.load(sys.stdin)
    body = "x" * spec["body_size"] if "body_size" in spec else spec.get("body")
    request = urllib.request.Request(spec["url"], data=None if body is None else body.encode(),
                                     method=spec["method"], headers=spec.get("headers", {}))
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    print(json.dumps({"status": status, "body": json.loads(raw)}))
""")


def _sandbox_for(ssh: SshServer) -> Sandbox:
    spec = default_spec()
    return create_sandbox(default_spec(ro_paths={**spec.ro_paths, **ssh.ro_paths()}))


@pytest.fixture
def ssh_box() -> Iterator[tuple[SshServer, Sandbox]]:
    """sshd on 127.0.0.1:2222 in a fresh sandbox, and a client key pair inside it (not authorized)."""
    with SshServer(address="127.0.0.1", port=SSH_PORT) as ssh, _sandbox_for(ssh) as box:
        ssh.start(box)
        assert box.exec(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", KEY]).ok
        yield ssh, box


def _client_public_key(box: Sandbox) -> str:
    return box.read_file(KEY + ".pub").decode()


def _netns(box: Sandbox) -> str:
    """The network namespace of the sandbox, through its init process."""
    init = next(p for p in box.processes() if p.pid == 1)
    return f"/proc/{init.host_pid}/ns/net"


def _http(box: Sandbox, method: str, path: str, headers: dict | None = None, body: str | None = None,
          body_size: int | None = None) -> tuple[int, dict]:
    spec: dict = {"method": method, "url": f"http://127.0.0.1:{API_PORT}{path}", "headers": headers or {}}
    if body is not None:
        spec["body"] = body
    if body_size is not None:
        spec["body_size"] = body_size
    result = box.exec(["python3", "-c", HTTP_CLIENT], stdin=json.dumps(spec).encode(), timeout=60)
    assert result.ok, result.text("stderr")
    answer = json.loads(result.stdout)
    return answer["status"], answer["body"]


def _token(box: Sandbox, creds: ClientCredentials) -> str:
    """An access token, obtained from inside the sandbox."""
    status, body = _http(box, "POST", "/oauth/token", {"Content-Type": "application/x-www-form-urlencoded"},
                         f"grant_type=client_credentials&client_id={creds.client_id}"
                         f"&client_secret={creds.client_secret}")
    assert status == 200
    return body["access_token"]


# -- sshd ------------------------------------------------------------------------------------

def test_login_needs_an_authorized_key(ssh_box: tuple[SshServer, Sandbox]) -> None:
    ssh, box = ssh_box
    login = [*SSH, f"{USERNAME}@127.0.0.1", "echo hi; id -u"]
    refused = box.exec(login, timeout=30)
    assert refused.exit_code == 255 and "Permission denied (publickey)" in refused.text("stderr")

    ssh.authorize(_client_public_key(box))
    ssh.authorize(_client_public_key(box))
    assert ssh.authorized_keys == (" ".join(_client_public_key(box).split()),)
    accepted = box.exec(login, timeout=30)
    assert accepted.ok, accepted.text("stderr")
    assert accepted.text() == "hi\n1000\n"
    assert ssh.host_public_key in box.read_file("/home/agent/.ssh/known_hosts").decode()
    assert "Accepted publickey for agent" in ssh.log()


def test_passwords_are_refused(ssh_box: tuple[SshServer, Sandbox]) -> None:
    ssh, box = ssh_box
    ssh.authorize(_client_public_key(box))
    attempt = box.exec([*SSH, "-v", "-o", "PubkeyAuthentication=no",
                        "-o", "PreferredAuthentications=password,keyboard-interactive",
                        f"{USERNAME}@127.0.0.1", "true"], timeout=30)
    assert attempt.exit_code == 255
    assert "Authentications that can continue: publickey\r\n" in attempt.text("stderr")
    assert "Permission denied (publickey)" in attempt.text("stderr")


def test_scp_copies_a_directory_byte_for_byte(ssh_box: tuple[SshServer, Sandbox]) -> None:
    ssh, box = ssh_box
    ssh.authorize(_client_public_key(box))
    assert box.shell("mkdir -p src/sub && head -c 20000000 /dev/urandom > src/big.bin && echo small > src/sub/s").ok
    copy = box.exec(["scp", "-r", "-i", KEY, "-P", str(SSH_PORT), "-o", "BatchMode=yes",
                     "-o", "StrictHostKeyChecking=accept-new", "src", f"{USERNAME}@127.0.0.1:/home/agent/copy"],
                    timeout=120)
    assert copy.ok, copy.text("stderr")
    digests = box.shell("cd src && sha256sum big.bin sub/s; cd ../copy && sha256sum big.bin sub/s").text()
    assert len(digests.splitlines()) == 4 and digests.splitlines()[:2] == digests.splitlines()[2:]
    # OpenSSH 9's scp speaks SFTP; sftp itself works through Debian's sftp-server too
    listing = box.exec(["sftp", "-i", KEY, "-P", str(SSH_PORT), "-o", "BatchMode=yes", "-b", "-",
                        f"{USERNAME}@127.0.0.1"], stdin=b"ls copy/sub\n", timeout=30)
    assert listing.ok and "copy/sub/s" in listing.text(), listing.text("stderr")


def test_daemon_started_over_ssh_lives_in_the_sandbox_until_destroy(ssh_box: tuple[SshServer, Sandbox]) -> None:
    ssh, box = ssh_box
    ssh.authorize(_client_public_key(box))
    started = box.exec([*SSH, f"{USERNAME}@127.0.0.1", "setsid nohup sleep 301 >/dev/null 2>&1 </dev/null &"],
                       timeout=30)
    assert started.ok, started.text("stderr")
    deadline = time.monotonic() + 5  # the backgrounded chain may still be exec'ing into sleep
    while not (sleepers := [p for p in box.processes() if p.cmdline == ("sleep", "301")]):
        assert time.monotonic() < deadline, box.processes()
        time.sleep(0.02)
    sleeper = sleepers[0]
    assert host_pid_alive(sleeper.host_pid)
    box.destroy()
    assert not host_pid_alive(sleeper.host_pid)


def test_sshd_failure_names_the_cause() -> None:
    with SshServer(port=22) as ssh, _sandbox_for(ssh) as box:  # port 22 needs a privilege it lacks
        with pytest.raises(HarnessError, match="Permission denied"):
            ssh.start(box)


def test_only_plain_public_keys_are_authorized() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDFExlmkTFOyF46KDIvDVa3DKqkZR8bFJRYUFnXnjpR0"
    assert parse_public_key(f"  {key}   me@there\n") == f"{key} me@there"
    for bad in (f'command="sh" {key}', f"{key}\n{key}", "ssh-rsa " + key.split()[1], "ssh-ed25519 !!", ""):
        with pytest.raises(ValueError):
            parse_public_key(bad)


# -- the allocation service ------------------------------------------------------------------

@pytest.fixture
def service_box(box: Sandbox) -> Iterator[tuple[AllocationService, Sandbox, list, list]]:
    """The service on 127.0.0.1:8080 inside ``box``'s network; records events and hook calls."""
    events: list[tuple[str, dict]] = []
    hook_calls: list[str] = []

    def on_allocate(public_key: str) -> HostAccess:
        hook_calls.append(public_key)
        parse_public_key(public_key)
        return HostAccess(host="127.0.0.1", ssh_port=SSH_PORT, username=USERNAME, host_key="ssh-ed25519 AAAAhost")

    service = AllocationService(netns_path=_netns(box), address="127.0.0.1", port=API_PORT,
                                on_allocate=on_allocate, on_event=lambda kind, **fields: events.append((kind, fields)))
    with service:
        yield service, box, events, hook_calls


def test_allocation_flow_from_inside_the_sandbox(service_box) -> None:
    service, box, events, hook_calls = service_box
    creds = service.credentials
    form = "application/x-www-form-urlencoded"

    status, docs = _http(box, "GET", "/")
    assert status == 200 and {e["path"] for e in docs["endpoints"]} >= {"/oauth/token", "/v1/hosts/allocate"}

    status, body = _http(box, "POST", "/oauth/token", {"Content-Type": form},
                         f"grant_type=client_credentials&client_id={creds.client_id}&client_secret=wrong")
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = _http(box, "POST", "/oauth/token", {"Content-Type": form}, "grant_type=password&username=a")
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, body = _http(box, "POST", "/v1/hosts/allocate", {"Content-Type": "application/json"}, "{}")
    assert (status, body["error"]) == (401, "invalid_token")

    status, body = _http(box, "POST", "/oauth/token", {"Content-Type": "application/json"}, json.dumps(
        {"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}))
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] > 0
    basic = base64.b64encode(f"{creds.client_id}:{creds.client_secret}".encode()).decode()
    status, body = _http(box, "POST", "/oauth/token", {"Content-Type": form, "Authorization": f"Basic {basic}"},
                         "grant_type=client_credentials")
    assert status == 200
    bearer = {"Authorization": f"Bearer {body['access_token']}", "Content-Type": "application/json"}

    status, body = _http(box, "POST", "/v1/hosts/allocate", bearer, json.dumps({"ssh_public_key": "not a key"}))
    assert status == 400 and "refused" in body["error_description"]
    public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDFExlmkTFOyF46KDIvDVa3DKqkZR8bFJRYUFnXnjpR0 ai@box"
    status, allocation = _http(box, "POST", "/v1/hosts/allocate", bearer, json.dumps({"ssh_public_key": public_key}))
    assert status == 201 and hook_calls[-1] == public_key
    assert allocation["host"] == "127.0.0.1" and allocation["ssh_port"] == SSH_PORT
    assert allocation["username"] == USERNAME and allocation["host_key"] == "ssh-ed25519 AAAAhost"
    assert allocation["known_hosts"] == f"[127.0.0.1]:{SSH_PORT} ssh-ed25519 AAAAhost"
    assert "private_key" not in allocation

    status, body = _http(box, "POST", "/v1/hosts/allocate", bearer, "{}")
    assert (status, body["error"]) == (409, "already_allocated")
    assert body["allocation"]["allocation_id"] == allocation["allocation_id"] and len(hook_calls) == 2
    status, body = _http(box, "GET", "/v1/hosts", bearer)
    assert status == 200 and body["allocations"] == [allocation] and service.allocation == allocation

    status, body = _http(box, "POST", "/v1/hosts/allocate", bearer, body_size=2 * 1024 * 1024)
    assert (status, body["error"]) == (413, "request_too_large")
    assert _http(box, "GET", "/")[0] == 200

    kinds = [kind for kind, _ in events]
    assert kinds == ["docs_served", "token_rejected", "token_rejected", "request_unauthorized", "token_issued",
                     "token_issued", "allocation_refused", "host_allocated", "allocation_conflict", "hosts_listed",
                     "bad_request", "docs_served"]
    assert all(fields["client"].startswith("127.0.0.1:") for _, fields in events)
    assert events[7][1]["public_key"] == public_key and events[7][1]["status"] == 201
    assert creds.client_secret not in repr(events)


def test_allocation_without_a_key_returns_a_generated_one(service_box) -> None:
    service, box, events, hook_calls = service_box
    token = _token(box, service.credentials)
    status, allocation = _http(box, "POST", "/v1/hosts/allocate", {"Authorization": f"Bearer {token}"})
    assert status == 201 and allocation["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    box.write_file("/home/agent/allocated", allocation["private_key"].encode(), mode=0o600)
    derived = box.exec(["ssh-keygen", "-y", "-f", "/home/agent/allocated"])
    assert derived.text().split()[:2] == hook_calls[0].split()[:2]
    assert "private_key" not in repr(events) and allocation["private_key"] not in repr(events)


def test_malformed_requests_get_json_errors(service_box) -> None:
    service, box, events, _ = service_box
    for raw, expected in ((b"GET / extra HTTP/1.1\r\n\r\n", 400), (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
                          (b"POST /oauth/token HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400),
                          (b"POST /oauth/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
                          (b"POST /oauth/token HTTP/1.1\r\nContent-Length: 9\r\n\r\n\xff\xfe=%%%&&=", 400),
                          (b"GET /nowhere HTTP/1.1\r\n\r\n", 404), (b"DELETE /v1/hosts HTTP/1.1\r\n\r\n", 405)):
        with box.connect_tcp(API_PORT) as sock:
            sock.sendall(raw)
            response = _read_all(sock)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.split()[1] == str(expected).encode(), (raw, response)
        assert "error" in json.loads(body), (raw, response)
    assert _http(box, "GET", "/")[0] == 200


def _read_all(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    sock.settimeout(10)
    data = b""
    while len(data) < limit and (chunk := sock.recv(65536)):
        data += chunk
    return data


def test_the_service_never_listens_in_the_harness_namespace() -> None:
    with pytest.raises(SandboxError, match="own network namespace"):
        AllocationService(netns_path="/proc/self/ns/net", address="127.0.0.1", port=0,
                          on_allocate=lambda key: HostAccess("127.0.0.1", 22, "agent", "ssh-ed25519 AAAA"),
                          on_event=lambda kind, **fields: None)


# -- both together ---------------------------------------------------------------------------

def test_allocated_key_logs_in_over_ssh(ssh_box: tuple[SshServer, Sandbox]) -> None:
    ssh, box = ssh_box
    events: list[tuple[str, dict]] = []

    def on_allocate(public_key: str) -> HostAccess:
        ssh.authorize(public_key)
        return HostAccess(host="127.0.0.1", ssh_port=SSH_PORT, username=USERNAME, host_key=ssh.host_public_key)

    with AllocationService(netns_path=_netns(box), address="127.0.0.1", port=API_PORT, on_allocate=on_allocate,
                           on_event=lambda kind, **fields: events.append((kind, fields))) as service:
        token = _token(box, service.credentials)
        status, allocation = _http(box, "POST", "/v1/hosts/allocate", {"Authorization": f"Bearer {token}"},
                                   json.dumps({"ssh_public_key": _client_public_key(box)}))
        assert status == 201
    box.write_file("/home/agent/.ssh/known_hosts", (allocation["known_hosts"] + "\n").encode())
    login = box.exec(["ssh", "-i", KEY, "-p", str(allocation["ssh_port"]), "-o", "BatchMode=yes",
                      "-o", "StrictHostKeyChecking=yes", f"{allocation['username']}@{allocation['host']}",
                      "echo replicated-host"], timeout=30)
    assert login.ok, login.text("stderr")
    assert login.text() == "replicated-host\n"
    assert [kind for kind, _ in events] == ["token_issued", "host_allocated"]
