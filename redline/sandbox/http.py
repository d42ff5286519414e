"""Small HTTP/JSON client for servers listening inside a sandbox (the AI system's APIs).

Responses are untrusted: bodies are read up to a cap, JSON is parsed leniently, and every
failure is an :class:`OSError` (connection) or a non-JSON ``body`` the caller can inspect.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass

from redline.sandbox.base import Sandbox

MAX_RESPONSE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class HTTPResult:
    """Status, raw body (capped) and the body as JSON when it is JSON."""

    status: int
    body: bytes
    json: object | None


def request(sandbox: Sandbox, port: int, method: str, path: str, payload: object | None = None,
            timeout: float = 10.0, max_bytes: int = MAX_RESPONSE_BYTES, host: str = "127.0.0.1") -> HTTPResult:
    """Send one HTTP request to ``host:port`` (default loopback; IPv4 or IPv6) inside ``sandbox``."""
    sock = sandbox.connect_tcp(port, host=host, timeout=timeout)
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    connection.sock = sock
    try:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read(max_bytes)
        try:
            parsed = json.loads(raw.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
            parsed = None
        return HTTPResult(response.status, raw, parsed)
    except http.client.HTTPException as error:
        raise OSError(f"bad HTTP response from port {port}: {error!r}") from error
    finally:
        connection.close()
