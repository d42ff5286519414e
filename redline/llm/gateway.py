"""The model gateway: how an AI system in a sandbox reaches an OpenAI-compatible endpoint.

The sandbox has no network. For endpoint models the harness listens on a Unix socket that is
bound read-only into the sandbox; the system's in-folder LLM server forwards requests to it, and
the gateway forwards them to the endpoint (vLLM on GPUs, Ollama, a remote llama.cpp, a hosted
API), setting the model name and the API key (``$REDLINE_API_KEY``) itself, so no credential is
ever inside the sandbox. Only ``POST /v1/chat/completions`` and ``POST /v1/completions`` pass, and
``GET /v1/models`` and ``GET /props`` (what the server says about the model, such as its
context window; nothing is sent upstream but the path).

Every request is recorded with the kernel's view of its sender (``SO_PEERCRED``: the host pid of
the process that connected), the request and the endpoint's answer, so the judge can prove which
sandbox process forwarded a probe (:meth:`ModelGateway.requests_containing`). When the trial is
over, :meth:`stop_forwarding` makes every further request fail without reaching the endpoint.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Collection

import httpx

from redline.llm.unix_http import SandboxRequestHandler, UnixHTTPServer

ALLOWED_PATHS = ("/v1/chat/completions", "/v1/completions")
ALLOWED_GET_PATHS = ("/v1/models", "/props")
MAX_BODY_BYTES = 8 * 1024 * 1024
#: requests remembered for the judge (oldest dropped first)
RECORDS_KEPT = 4096
RECORD_TEXT_CHARS = 64 * 1024


class ModelGateway:
    """Serves the gateway socket at ``socket_path`` until :meth:`close`."""

    def __init__(self, socket_path: str, endpoint_url: str, model: str, timeout_s: float = 600.0) -> None:
        base = endpoint_url.rstrip("/")
        self.base = base[: -len("/v1")] if base.endswith("/v1") else base
        self.model = model
        key = os.environ.get("REDLINE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)
        self.requests = 0
        self.records: collections.deque[dict] = collections.deque(maxlen=RECORDS_KEPT)
        self._records_lock = threading.Lock()
        self._in_flight: collections.Counter[int] = collections.Counter()  # sender host pid -> requests
        self.forwarding = True
        gateway = self

        class Handler(SandboxRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path not in ALLOWED_GET_PATHS:
                    self.send_json(404, b'{"error": "the gateway answers GET only for /v1/models and /props"}')
                    return
                self.send_json(*gateway.describe(self.path))

            def do_POST(self) -> None:  # noqa: N802
                if self.path not in ALLOWED_PATHS:
                    self.send_json(404, b'{"error": "the gateway forwards only chat and completion requests"}')
                    return
                length = self.body_length()
                if length < 0 or length > MAX_BODY_BYTES:
                    self.send_json(413, b'{"error": "request too large"}')
                    return
                sender = self.sender_host_pid()
                raw = self.rfile.read(length)
                with gateway._records_lock:
                    gateway._in_flight[sender] += 1
                try:
                    status, body = gateway.forward(self.path, raw)
                finally:
                    with gateway._records_lock:
                        gateway._in_flight[sender] -= 1
                gateway.remember(sender, self.path, raw, status, body)
                self.send_json(status, body)

        self._server = UnixHTTPServer(socket_path, Handler)
        self.socket_path = socket_path
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="redline-gateway")
        self._thread.start()

    def forward(self, path: str, raw: bytes) -> tuple[int, bytes]:
        """Send one request upstream with the configured model name; returns (status, body)."""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, b'{"error": "body is not JSON"}'
        if not isinstance(body, dict):
            return 400, b'{"error": "body must be a JSON object"}'
        if not self.forwarding:
            return 503, b'{"error": "the trial is over: the gateway no longer forwards requests"}'
        body["model"] = self.model
        self.requests += 1
        try:
            response = self.client.post(self.base + path, json=body)
            return response.status_code, response.content[:MAX_BODY_BYTES]
        except (httpx.HTTPError, ValueError, UnicodeError) as error:  # unreachable, or a body httpx cannot send
            return 502, json.dumps({"error": f"endpoint unreachable: {error}"}).encode()

    def describe(self, path: str) -> tuple[int, bytes]:
        """``GET path`` upstream (one of :data:`ALLOWED_GET_PATHS`); returns (status, body)."""
        if not self.forwarding:
            return 503, b'{"error": "the trial is over: the gateway no longer forwards requests"}'
        try:
            response = self.client.get(self.base + path)
            return response.status_code, response.content[:MAX_BODY_BYTES]
        except (httpx.HTTPError, ValueError, UnicodeError) as error:
            return 502, json.dumps({"error": f"endpoint unreachable: {error}"}).encode()

    def remember(self, sender_host_pid: int, path: str, raw: bytes, status: int, response: bytes) -> None:
        """Record one request (see the module docstring)."""
        record = {"time": time.time(), "sender_host_pid": sender_host_pid, "path": path, "status": status,
                  "request": raw[:RECORD_TEXT_CHARS].decode("utf-8", errors="replace"),
                  "response": response[:RECORD_TEXT_CHARS].decode("utf-8", errors="replace")}
        with self._records_lock:
            self.records.append(record)

    def requests_containing(self, text: str) -> list[dict]:
        """The recorded requests whose body contains ``text`` (oldest first)."""
        with self._records_lock:
            return [record for record in self.records if text in record["request"]]

    def forwarding_for(self, host_pids: Collection[int]) -> bool:
        """True while a request sent by one of ``host_pids`` is with the endpoint (its answer not yet
        back): that sender waits for the model, not for a process of its own host."""
        with self._records_lock:
            return any(self._in_flight[pid] > 0 for pid in host_pids)

    def stop_forwarding(self) -> None:
        """From now on, answer every request with 503 without reaching the endpoint."""
        self.forwarding = False

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self.stop_forwarding()
        self._server.shutdown()
        self._server.server_close()
        self.client.close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
