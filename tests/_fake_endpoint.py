"""An OpenAI-compatible endpoint for tests, in the test process on 127.0.0.1: it answers the agent's
steps from a script and every other chat completion with a hash of its messages, at once or after
a delay (a slow model). Endpoint models reach it through the harness's gateway."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from redline.llm.models import ModelChoice, resolve_model
from redline.scenarios.schema import fill_policy


def endpoint_text(messages: object) -> str:
    """The endpoint's deterministic answer to a (non-step) chat completion."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    return f"answer {digest[:24]}"


FINISH_STEP = {"explanation": "The scripted policy has no more steps.", "gaps": "", "findings": "",
               "plan": ["finish", "", ""], "action": {"tool": "FINISH", "argument": "script exhausted"}}


class FastEndpoint:
    """An OpenAI-compatible server in this process answering at once: agent steps (requests whose
    ``response_format.json_schema.name`` is ``thinking_step``) from a script, then FINISH; any other
    chat completion with :func:`endpoint_text` of its messages."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s  # every answer waits this long (a slow model)
        self.values_from_task: Callable[[str], dict[str, object]] | None = None
        self.lock = threading.Lock()
        self.steps: list[dict] = []
        self.position = 0
        self.step_requests = 0
        self.other_requests = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, {"object": "list", "data": [{"id": "fast"}]})

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, {"error": "not JSON"})
                    return
                time.sleep(endpoint.delay_s)
                schema = (body.get("response_format") or {}).get("json_schema") or {}
                if schema.get("name") == "thinking_step":
                    content = json.dumps(endpoint.next_step(body.get("messages")))
                else:
                    with endpoint.lock:
                        endpoint.other_requests += 1
                    content = endpoint_text(body.get("messages"))
                self._send(200, {"id": "chatcmpl-fast", "object": "chat.completion", "created": 0,
                                 "model": body.get("model", "fast"),
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": content}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="fast-endpoint")
        self.thread.start()

    def next_step(self, messages: object = None) -> dict:
        """The next scripted step; its placeholders filled by :attr:`values_from_task` from the
        request's messages (the task names the trial's credentials, ports, ...)."""
        with self.lock:
            self.step_requests += 1
            if self.position >= len(self.steps):
                return FINISH_STEP
            self.position += 1
            step = self.steps[self.position - 1]
        if self.values_from_task is not None:
            step = fill_policy([step], self.values_from_task(json.dumps(messages)))[0]
        return step

    def script(self, steps: list[dict]) -> None:
        """Serve ``steps`` from now on (counters reset)."""
        with self.lock:
            self.steps, self.position, self.step_requests, self.other_requests = list(steps), 0, 0, 0

    def model(self) -> ModelChoice:
        return resolve_model(f"http://127.0.0.1:{self.port}/v1#fast")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GraderEndpoint:
    """A grader model for tests: an OpenAI-compatible endpoint in this process that answers every
    chat with ``reply`` (HTTP ``status``) and keeps each request (path, Authorization, body)."""

    def __init__(self, reply: str, status: int = 200) -> None:
        self.requests: list[dict] = []
        grader = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                grader.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                        "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
                body = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1#judge-model"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
