"""The agent's link to its LLM server: an OpenAI-compatible ``/v1/chat/completions`` call.

Step requests ask for JSON-schema constrained output; if the server rejects that, the client
falls back to plain output (parsed tolerantly) for the rest of its life. Responses are read up to
a cap and decoded leniently: whatever the server sends, the client returns an :class:`LLMReply`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

MAX_RESPONSE_BYTES = 16 * 1024 * 1024


@dataclass
class LLMReply:
    """One completion: the text, or the error that prevented it."""

    text: str
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    constrained: bool = False
    finish_reason: str | None = None  # "length": the reply was cut at max_tokens


def _about_the_schema(error: str) -> bool:
    """Whether an HTTP 400 is about ``response_format`` (not, say, a prompt too long)."""
    lowered = error.lower()
    return any(word in lowered for word in ("schema", "response_format", "grammar", "json")) or \
        not any(word in lowered for word in ("context", "too long", "exceed"))


class LLMClient:
    """Calls one OpenAI-compatible server."""

    def __init__(self, url: str, model: str, *, schema: dict, temperature: float = 0.0, max_tokens: int = 512,
                 timeout_s: float = 300.0, json_schema: bool = True) -> None:
        self.base = url.rstrip("/")
        self.url = self.base + "/v1/chat/completions"
        self.model = model
        self.schema = schema
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.json_schema = json_schema

    def step(self, messages: list[dict], max_tokens: int | None = None) -> LLMReply:
        """A thinking-model step (schema-constrained when the server supports it). A server that
        rejects the schema (HTTP 400 naming it) gets plain requests from then on."""
        if self.json_schema:
            reply = self._post(messages, constrained=True, max_tokens=max_tokens)
            if reply.error and reply.error.startswith("HTTP 400") and _about_the_schema(reply.error):
                self.json_schema = False
            else:
                return reply
        return self._post(messages, constrained=False, max_tokens=max_tokens)

    def chat(self, messages: list[dict], max_tokens: int | None = None) -> LLMReply:
        """A plain chat completion."""
        return self._post(messages, constrained=False, max_tokens=max_tokens)

    def get_json(self, path: str, timeout_s: float = 10.0) -> object | None:
        """``GET path`` on the server, decoded as JSON; ``None`` if it fails in any way."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout_s) as response:
                return json.loads(response.read(MAX_RESPONSE_BYTES).decode("utf-8", errors="replace"))
        except (OSError, ValueError):
            return None

    def _post(self, messages: list[dict], constrained: bool, max_tokens: int | None = None) -> LLMReply:
        body: dict = {"model": self.model, "messages": messages, "temperature": self.temperature,
                      "max_tokens": max_tokens or self.max_tokens, "stream": False}
        if constrained:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "thinking_step", "schema": self.schema, "strict": True}}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as error:
            detail = error.read(2000).decode("utf-8", errors="replace")
            return LLMReply("", time.monotonic() - started, error=f"HTTP {error.code}: {detail}",
                            constrained=constrained)
        except (OSError, ValueError) as error:
            return LLMReply("", time.monotonic() - started, error=f"LLM server unreachable: {error}",
                            constrained=constrained)
        latency = time.monotonic() - started
        if len(raw) > MAX_RESPONSE_BYTES:
            return LLMReply("", latency, error=f"response larger than {MAX_RESPONSE_BYTES} bytes",
                            constrained=constrained)
        try:
            payload = json.loads(raw.decode("utf-8", errors="replace"))
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
            finish_reason = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            # not an OpenAI response: hand the body to the parser, which will say what is wrong
            return LLMReply(raw.decode("utf-8", errors="replace"), latency, constrained=constrained)
        usage = payload.get("usage") if isinstance(payload, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        return LLMReply(str(text), latency, usage.get("prompt_tokens"), usage.get("completion_tokens"),
                        constrained=constrained,
                        finish_reason=finish_reason if isinstance(finish_reason, str) else None)
