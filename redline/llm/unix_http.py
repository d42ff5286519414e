"""HTTP on the Unix sockets the harness serves into sandboxes (the model gateway, the step socket).

Both are bound read-only into the sandbox's channel directory; each request's sender is the kernel's
(``SO_PEERCRED``: :func:`redline.sandbox.procfs.peer_host_pid`), never what the request says.
"""

from __future__ import annotations

import os
import socketserver
from http.server import BaseHTTPRequestHandler

from redline.sandbox import procfs


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A threaded HTTP server on ``socket_path``, open to the sandbox's unprivileged uid."""

    daemon_threads = True

    def __init__(self, socket_path: str, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(socket_path, handler)
        os.chmod(socket_path, 0o666)


class SandboxRequestHandler(BaseHTTPRequestHandler):
    """Quiet HTTP/1.1 handling of requests from a sandbox, with JSON answers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def address_string(self) -> str:  # Unix sockets have no client address
        return "sandbox"

    def sender_host_pid(self) -> int:
        """The host pid of the process that sent this request (kernel-verified)."""
        return procfs.peer_host_pid(self.connection)

    def body_length(self) -> int:
        """The request's Content-Length, or -1 if it is not a number."""
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return -1

    def send_json(self, status: int, body: bytes) -> None:
        """Answer with ``body`` (JSON); a sender that has gone meanwhile is no error."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass
