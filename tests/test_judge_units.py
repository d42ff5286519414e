"""Unit tests of the judge's parts that need no sandbox: strace parsing, which listener a
connection reached, Python code origins, fresh prompts, the verdict's JSON form, and the
gateway's sender records."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from redline.judge.code_origin import _python_target
from redline.judge.connections import http_answer, parse_trace, reached_listener
from redline.judge.criteria import CRITERIA, DEFAULT_REQUIRED
from redline.judge.facts import Connection, CriterionResult, Listener, Verdict
from redline.judge.probes import fresh_prompt, nonce
from redline.llm.gateway import ModelGateway
from redline.sandbox import procfs
from redline.scenarios.schema import Scenario

NS = "strace's PID NS"
STRACE = f"""\
100 clone3({{flags=CLONE_VM|CLONE_FS|CLONE_THREAD|CLONE_SYSVSEM, child_tid=0x7f}} <unfinished ...>
100 <... clone3 resumed> => {{parent_tid=[4 /* 104 in {NS} */]}}, 88) = 4 /* 104 in {NS} */
104 connect(6<TCP:[1]>, {{sa_family=AF_INET, sin_port=htons(8101), sin_addr=inet_addr("127.0.0.1")}}, 16) = -1 \
EINPROGRESS (Operation now in progress)
104  connect(7<UDP:[2]>, {{sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}}, 16) = 0
104 vfork() = 9 /* 109 in {NS} */
109 connect(3<TCP:[3]>, {{sa_family=AF_INET, sin_port=htons(8001), sin_addr=inet_addr("127.0.0.1")}}, 16) = 0
100 connect(8<TCP:[4]>, {{sa_family=AF_INET6, sin6_port=htons(9001), sin6_flowinfo=htonl(0), \
inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}}, 28) = 0
100 connect(9<TCP:[5]>, {{sa_family=AF_INET, sin_port=htons(7), sin_addr=inet_addr("127.0.0.1")}}, 16) = -1 \
ECONNREFUSED (Connection refused)
100 connect(3<UNIX-STREAM:[6]>, {{sa_family=AF_UNIX, sun_path="/run/agent-telemetry/trace.sock"}}, 110) = 0
104 sendto(6<TCP:[1]>, "POST /v1/chat/completions HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n... check MARK7", 60, 0, \
NULL, 0) = 60
109 write(3<TCP:[127.0.0.1:40001->127.0.0.1:8001]>, "MARK7", 5) = 5
100 sendmsg(8<TCPv6:[[::1]:40002->[::1]:9001]>, {{msg_iov=[{{iov_base="POST /completion HTTP/1.1\\r\\n\\r\\n", \
iov_len=29}}]}}, 0) = 29
100 sendmsg(8<TCPv6:[[::1]:40002->[::1]:9001]>, {{msg_iov=[{{iov_base="MARK7 again", iov_len=11}}]}}, 0) = 11
100 sendto(9<TCP:[127.0.0.1:40003->127.0.0.1:8101]>, "GET /health HTTP/1.1\\r\\nX-Note: MARK7\\r\\n\\r\\n", 40, \
0, NULL, 0) = 40
100 sendto(9<TCP:[127.0.0.1:40003->127.0.0.1:8101]>, "MARK7 without a request", 23, 0, NULL, 0) = 23
100 write(3<UNIX-STREAM:[6->7]>, "MARK7 in a trace event", 22) = 22
104 read(6<TCP:[1]>,  <unfinished ...>
100 read(8<TCPv6:[[::1]:40002->[::1]:9001]>, "HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n\
e\\r\\n{{\\"content\\": 1}}\\r\\n0\\r\\n\\r\\n", 65536) = 60
109 read(3<TCP:[127.0.0.1:40001->127.0.0.1:8001]>, "HTTP/1.0 200 OK\\r\\n\\r\\n{{}}", 100) = 21
104 <... read resumed>"HTTP/1.0 200 OK\\r\\nContent-Type: application/json\\r\\n\\r\\n{{\\"choices\\": []}}", \
65536) = 70
100 read(9<TCP:[127.0.0.1:40003->127.0.0.1:8101]>, "HTTP/1.0 200 OK\\r\\n\\r\\n{{}}", 100) = 21
100 read(8<TCPv6:[[::1]:40002->[::1]:9001]>, "", 65536) = 0
"""


def test_strace_parsing_keeps_the_processs_own_threads_and_drops_its_children_and_datagrams() -> None:
    calls = parse_trace(STRACE, {100}, "MARK7")
    found = calls.connects
    assert (Connection("ipv4", "127.0.0.1", 8101, "connect"), "pending") in found  # a new thread's connect
    assert (Connection("ipv6", "::1", 9001, "connect"), "ok") in found
    assert (Connection("ipv4", "127.0.0.1", 7, "connect"), "ECONNREFUSED") in found
    assert (Connection("unix", "/run/agent-telemetry/trace.sock", None, "connect"), "ok") in found
    assert all(c.port != 8001 for c, _ in found)  # made by a child process (a command), not by the agent
    assert all(c.port != 53 for c, _ in found)  # a DNS datagram
    assert parse_trace(STRACE, {999}).connects == []
    # the task's text went out on the agent's own TCP sockets (not its child's, not the trace channel),
    # in completion requests (headers and body in one send, or in two); not in another request's header
    assert [(c.address, c.port) for c in calls.carried_mark] == [("127.0.0.1", 8101), ("::1", 9001)]
    assert calls.mark_otherwise == ["GET /health", "GET /health"]
    # what the process's threads read back on the sockets that carried the task's completion request
    # (the data of a receive that was interrupted comes with its resumption), nothing read elsewhere
    assert [(c.address, c.port) for c, _ in calls.answers] == [("127.0.0.1", 8101), ("::1", 9001)]
    assert [http_answer(data) for _, data in calls.answers] == [(200, {"choices": []}), (200, {"content": 1})]
    assert http_answer(b"not HTTP") == (None, None) and http_answer(b"HTTP/1.1 503 x\r\n\r\nbusy") == (503, None)


def test_a_connection_reaches_the_listener_of_its_own_host_whatever_its_bind_address() -> None:
    local = frozenset({"127.0.0.1", "::1", "10.201.0.2"})
    listeners = [Listener("ipv4", "0.0.0.0", 8101, (5,)), Listener("ipv6", "::", 8102, (6,)),
                 Listener("ipv6", "::1", 8103, (7,)), Listener("ipv4", "10.201.0.2", 8104, (8,))]
    reach = lambda address, port: reached_listener(Connection("ipv6" if ":" in address else "ipv4", address, port,  # noqa: E731
                                                              "connect"), listeners, local)
    assert reach("127.0.0.1", 8101).pids == (5,) and reach("10.201.0.2", 8101).pids == (5,)
    assert reach("127.0.0.1", 8102).pids == (6,) and reach("::1", 8102).pids == (6,)  # dual-stack wildcard
    assert reach("::1", 8103).pids == (7,) and reach("127.0.0.1", 8103) is None
    assert reach("10.201.0.2", 8104).pids == (8,) and reach("127.0.0.1", 8104) is None
    assert reach("::ffff:127.0.0.1", 8101).pids == (5,)
    assert reach("10.201.0.1", 8101) is None  # another host's address: never a local server
    assert reach("127.0.0.1", 9999) is None
    assert reached_listener(Connection("unix", "/x.sock", None, "connect"), listeners, local) is None
    assert Listener("ipv4", "0.0.0.0", 1, ()).connect_address == "127.0.0.1"
    assert Listener("ipv6", "::", 1, ()).connect_address == "::1"
    # an IPv6 socket bound to an IPv4-mapped address listens on that IPv4 address (and its mapped wildcard on all)
    mapped = [Listener("ipv6", "::ffff:127.0.0.1", 8105, (9,)), Listener("ipv6", "::ffff:0.0.0.0", 8106, (10,))]
    assert reached_listener(Connection("ipv4", "127.0.0.1", 8105, "connect"), mapped, local).pids == (9,)
    assert reached_listener(Connection("ipv4", "10.201.0.2", 8106, "connect"), mapped, local).pids == (10,)
    assert reached_listener(Connection("ipv4", "10.201.0.2", 8105, "connect"), mapped, local) is None
    assert mapped[0].connect_address == "127.0.0.1" and mapped[1].connect_address == "127.0.0.1"
    # /proc/net/tcp6 names an IPv4-mapped address the way strace and the socket API write it
    assert procfs._decode_ipv6("0000000000000000FFFF00000100007F") == "::ffff:127.0.0.1"
    assert procfs._decode_ipv6("00000000000000000000000001000000") == "::1"


def test_python_command_lines_name_their_code() -> None:
    assert _python_target(("python3", "-m", "agent", "--config", "c.json")) == ("module", "agent", set())
    assert _python_target(("python3", "-u", "-magent.__main__")) == ("module", "agent.__main__", {"-u"})
    assert _python_target(("python3", "-X", "utf8", "llm_server.py", "--port", "1"))[:2] == ("script", "llm_server.py")
    assert _python_target(("python3", "-I", "-m", "agent"))[2] == {"-I"}
    assert _python_target(("python3", "-c", "import agent"))[0] == "inline"
    assert _python_target(("python3",))[0] == "interactive"


def test_fresh_prompts_and_marks_do_not_repeat() -> None:
    prompts = {fresh_prompt() for _ in range(2000)}
    assert len(prompts) == 2000
    marks = {nonce() for _ in range(2000)}
    assert len(marks) == 2000 and nonce() not in fresh_prompt() and "reference abc" in fresh_prompt("abc")


def test_criteria_are_defined_once_and_the_schema_uses_them() -> None:
    assert set(DEFAULT_REQUIRED) <= set(CRITERIA)
    annotation = Scenario.model_fields["criteria"].annotation
    assert set(annotation.__args__[0].__args__) == set(CRITERIA)


def test_a_verdict_lists_only_the_required_criteria() -> None:
    criteria = {name: CriterionResult(False, "x") for name in DEFAULT_REQUIRED}
    verdict = Verdict(False, list(DEFAULT_REQUIRED), criteria, {"agent_up": False}, None, [], {}, [])
    data = verdict.to_json()
    assert set(data["criteria"]) == set(DEFAULT_REQUIRED) and data["failing"] == list(DEFAULT_REQUIRED)
    assert "signal_catcher" not in json.dumps(data) and data["schema_version"] >= 2


def test_the_gateway_records_each_request_with_its_kernel_verified_sender(tmp_path) -> None:
    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "ok"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    gateway = ModelGateway(str(tmp_path / "gw.sock"), f"http://127.0.0.1:{upstream.server_port}/v1", "m")
    try:
        mark = nonce()

        def post() -> int:
            connection = http.client.HTTPConnection("localhost")
            connection.sock = socket.socket(socket.AF_UNIX)
            connection.sock.connect(str(tmp_path / "gw.sock"))
            connection.request("POST", "/v1/chat/completions", json.dumps({"messages": [{"content": mark}]}))
            return connection.getresponse().status

        assert post() == 200
        [record] = gateway.requests_containing(mark)
        assert record["sender_host_pid"] == os.getpid() and '"ok"' in record["response"]
        gateway.stop_forwarding()
        assert post() == 503 and gateway.requests == 1  # nothing more went upstream
    finally:
        gateway.close()
        upstream.shutdown()
        upstream.server_close()

