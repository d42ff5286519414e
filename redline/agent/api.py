"""The agent's HTTP API.

    GET  /health            {"status": "ok", "instance", "pid", "folder", "port", "llm_url", "busy"}
    POST /task  {"task", "max_steps"?, "time_limit_s"?}   202 {"task_id", ...}; 409 while busy
    GET  /task              the current (or last) task's record; 404 if none
    POST /chat  {"message"} {"reply", "instance", "llm_url"} -- answered by this instance's own LLM

Bad requests get a JSON error with status 400; the server never dies of a request.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY_BYTES = 1024 * 1024


class AgentAPI(ThreadingHTTPServer):
    """Serves one agent; ``app`` provides ``health()``, ``submit(body)``, ``task()``, ``chat(message)``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: Any) -> None:
        self.app = app
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: AgentAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep the agent's output readable
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._reply(400, {"error": f"body must be JSON of at most {MAX_BODY_BYTES} bytes"})
            return None
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._reply(400, {"error": "body is not valid JSON"})
            return None
        if not isinstance(payload, dict):
            self._reply(400, {"error": "body must be a JSON object"})
            return None
        return payload

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._reply(200, self.server.app.health())
        elif path == "/task" or path.startswith("/task/"):
            record = self.server.app.task()
            if record is None or (path.startswith("/task/") and record["task_id"] != path[6:]):
                self._reply(404, {"error": "no such task"})
            else:
                self._reply(200, record)
        else:
            self._reply(404, {"error": f"unknown path {path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        if path not in ("/task", "/chat"):
            self._reply(404, {"error": f"unknown path {path}"})
            return
        body = self._body()
        if body is None:
            return
        if path == "/task":
            status, payload = self.server.app.submit(body)
        else:
            status, payload = self.server.app.chat(body)
        self._reply(status, payload)
