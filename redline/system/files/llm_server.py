"""LLM server of the assistant: an OpenAI-compatible HTTP API on 127.0.0.1.

Usage: python3 llm_server.py [--config config.json] [--port PORT]

Backends (``llm_server.backend`` in the config):
  llama.cpp  serves the GGUF weights in ``llm_server.model`` with llama.cpp (xllamacpp).
  gateway    forwards every request to the model gateway socket in ``llm_server.gateway_socket``.
With ``llm_server.policy`` set, the agent's step requests are answered from that file of
replies, in order, while every other request (chat, completions) is answered by the model
(served by llama.cpp on a private loopback port). With ``llm_server.steps_socket`` set instead,
the agent's step requests are forwarded to that Unix socket (``POST /step``), where a person
answers them (redline's human model); every other request is answered by the model in the same way.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STEP_SCHEMA_NAME = "thinking_step"
MAX_BODY = 8 * 1024 * 1024


def load_config(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def start_llama(settings: dict, folder: str, port: int):
    """Start llama.cpp's server on ``port`` (0: any free port); returns the server object."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = os.path.join(folder, settings["model"])
    params.n_ctx = int(settings.get("n_ctx", 4096))
    params.cpuparams.n_threads = int(settings.get("threads", 2))
    params.cpuparams_batch.n_threads = int(settings.get("threads", 2))
    params.port = port
    params.hostnames = ["127.0.0.1"]
    params.verbosity = int(settings.get("verbosity", 0))
    # gpu_layers: layers offloaded to the GPUs passed into the sandbox (a CPU build ignores it);
    # 0 keeps the model on the CPU, as without GPUs
    params.n_gpu_layers = int(settings.get("gpu_layers", 0))
    return xllamacpp.Server(params)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def exchange(connection: http.client.HTTPConnection, path: str, body: dict | None, what: str) -> tuple[int, bytes]:
    """``POST path`` with ``body`` (``GET`` if None) on ``connection``, then close it; returns
    (status, bytes), HTTP 502 naming ``what`` if it cannot be reached."""
    try:
        data = None if body is None else json.dumps(body)
        connection.request("GET" if body is None else "POST", path, data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    except OSError as error:
        return 502, json.dumps({"error": f"{what} is unreachable: {error}"}).encode()
    finally:
        connection.close()


def forward_steps(socket_path: str, timeout_s: float):
    """The agent's step requests go to the step socket ``socket_path``: (body) -> (status, bytes)."""

    def ask(body: dict) -> tuple[int, bytes]:
        return exchange(_UnixHTTPConnection(socket_path, timeout_s), "/step", body, "the step socket")

    return ask


class Policy:
    """Replays a list of step replies, one per step request; then replies FINISH."""

    def __init__(self, path: str) -> None:
        with open(path, encoding="utf-8") as handle:
            self.replies = json.load(handle)
        self.position = 0
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            if self.position < len(self.replies):
                reply = self.replies[self.position]
                self.position += 1
                return reply
        return {"explanation": "The scripted policy has no more steps.", "gaps": "", "findings": "",
                "plan": ["finish", "", ""], "action": {"tool": "FINISH", "argument": "script exhausted"}}


def completion(content: str, model: str) -> dict:
    return {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


class FrontServer(ThreadingHTTPServer):
    """The Python front used by the gateway backend and by scripted policies."""

    daemon_threads = True

    def __init__(self, port: int, answer, policy: Policy | None, model_name: str, steps=None) -> None:
        self.answer = answer  # (path, body) -> (status, bytes); body None: a GET
        self.policy = policy
        self.model_name = model_name
        self.steps = steps  # (body) -> (status, bytes) for the agent's step requests, or None
        super().__init__(("127.0.0.1", port), _FrontHandler)


class _FrontHandler(BaseHTTPRequestHandler):
    server: FrontServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/health":
            self._send(200, b'{"status": "ok"}')
        elif self.path.rstrip("/") in ("/props", "/v1/models"):
            # what the model's server says about itself (the agent reads its context window here)
            status, payload = self.server.answer(self.path.rstrip("/"), None)
            if status != 200 and self.path.rstrip("/") == "/v1/models":
                status, payload = 200, json.dumps({"object": "list", "data": [{"id": self.server.model_name}]}).encode()
            self._send(status, payload)
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, MAX_BODY))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(400, b'{"error": "body is not JSON"}')
            return
        schema = ((body.get("response_format") or {}).get("json_schema") or {}) if isinstance(body, dict) else {}
        if self.server.policy is not None and schema.get("name") == STEP_SCHEMA_NAME:
            reply = self.server.policy.next()
            if isinstance(reply, dict) and "raw_body_base64" in reply:
                self._send(200, base64.b64decode(reply["raw_body_base64"]))
                return
            content = reply if isinstance(reply, str) else json.dumps(reply)
            self._send(200, json.dumps(completion(content, self.server.model_name)).encode())
            return
        if self.server.steps is not None and schema.get("name") == STEP_SCHEMA_NAME:
            self._send(*self.server.steps(body))
            return
        status, payload = self.server.answer(self.path, body)
        self._send(status, payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm_server.py", description="Serve the assistant's LLM.")
    parser.add_argument("--config", default="config.json")
    parser.add_argument("--port", type=int, help="port (default: llm_server.port in the config)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    folder = os.path.dirname(os.path.abspath(args.config))
    settings = config.get("llm_server", {})
    port = args.port or int(settings.get("port", 8001))
    model_name = settings.get("model_name", "local")
    backend = settings.get("backend", "llama.cpp")
    policy = Policy(os.path.join(folder, settings["policy"])) if settings.get("policy") else None
    steps = forward_steps(settings["steps_socket"], float(settings.get("steps_timeout_s", 1830))) \
        if settings.get("steps_socket") else None
    stop = threading.Event()
    keep = []  # objects that must stay alive while serving
    if backend == "llama.cpp" and policy is None and steps is None:
        keep.append(start_llama(settings, folder, port))  # raises at once if the port is taken
    else:
        if backend == "llama.cpp":
            # The model is served on a private loopback port and reached over HTTP (xllamacpp's
            # in-process calls stall for ~45 s on their first uses).
            internal = free_port()

            def answer(path: str, body: dict | None) -> tuple[int, bytes]:
                connection = http.client.HTTPConnection("127.0.0.1", internal, timeout=600)
                return exchange(connection, path, body, "the model's llama.cpp server")
        elif backend == "gateway":
            gateway = settings["gateway_socket"]

            def answer(path: str, body: dict | None) -> tuple[int, bytes]:
                connection = _UnixHTTPConnection(gateway, timeout=float(settings.get("timeout_s", 600)))
                return exchange(connection, path, body, "the model gateway")
        else:
            print(f"llm_server: unknown backend {backend!r}", file=sys.stderr)
            return 2
        # The front binds its port before the weights load: a taken port fails at once, and never
        # after llama.cpp started (whose destructor can hang the exit).
        try:
            front = FrontServer(port, answer, policy, model_name, steps)
        except OSError as error:
            print(f"llm_server: cannot listen on 127.0.0.1:{port}: {error.strerror}", file=sys.stderr)
            return 1
        keep.append(front)
        if backend == "llama.cpp":
            try:
                keep.append(start_llama(settings, folder, internal))
            except Exception as error:  # noqa: BLE001 -- reported, and the process ends at once
                print(f"llm_server: could not start llama.cpp: {error}", file=sys.stderr, flush=True)
                os._exit(1)
        threading.Thread(target=front.serve_forever, daemon=True).start()
    # llama.cpp installs its own SIGINT/SIGTERM handlers: ours go in after it started
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    answered_by = ", scripted policy" if policy else ", human steps" if steps else ""
    print(f"llm_server listening on http://127.0.0.1:{port} ({backend}{answered_by})",
          flush=True)
    while not stop.wait(0.5):
        pass
    # Exit without running xllamacpp's destructor: it blocks (and can deadlock) while requests
    # are in flight.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
