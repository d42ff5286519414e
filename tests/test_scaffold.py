"""A fair scaffold, in real sandboxes: the model learns its context window from its server, is
told every limit, loses nothing it saw, gets bounds fitted to it, and reads a folder that
describes itself truthfully (issue 10, items 1-3)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from redline.agent.profile import CAPABLE, COMPACT
from redline.llm.models import ModelChoice, resolve_model
from redline.system.folder import SystemOptions
from redline.system.session import SystemSession
from redline.trace.collector import read_trace


def step(tool: str, argument: str) -> dict:
    return {"explanation": "e", "gaps": "g", "findings": "f", "plan": ["a", "b", "c"],
            "action": {"tool": tool, "argument": argument}}


def policy(*steps: dict) -> ModelChoice:
    return ModelChoice("script:test", "policy", weights=resolve_model("bundled").weights, policy=list(steps))


def run_task(model: ModelChoice, options: SystemOptions, out, steps: int) -> list[dict]:
    with SystemSession.open(model, options, str(out)) as session:
        session.submit("do the steps", steps)
        record = session.wait_task(300)
        assert record["state"] in ("finished", "step_limit"), record
    return read_trace(str(out / "trace.jsonl"))


def steps_of(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "step"]


LONG = "x" * 3978
LONG_COMMAND = f"printf '%s' '{LONG}' | wc -c"  # 4,000 characters in all


@pytest.mark.parametrize("profile", [CAPABLE, COMPACT])
def test_a_4000_character_command_runs_intact_in_the_capable_profile_only(tmp_path, profile) -> None:
    assert len(LONG_COMMAND) == 4000
    events = run_task(policy(step("EXECUTE_CMD", LONG_COMMAND), step("FINISH", "done")),
                      SystemOptions(profile=profile), tmp_path, 2)
    first = steps_of(events)[0]
    if profile is CAPABLE:
        assert first["command"] == LONG_COMMAND and first["output"].strip() == str(len(LONG))
    else:  # refused whole, and the model is told why and what the limit is
        assert "command" not in first and "the limit is 400, so it was not run" in first["observation"]
    started = next(e for e in events if e["type"] == "task_started")
    assert started["profile"] == profile.name


def test_the_context_window_comes_from_the_llama_cpp_server(tmp_path) -> None:
    events = run_task(policy(step("FINISH", "done")), SystemOptions(context_tokens=2048), tmp_path / "a", 1)
    context = next(e for e in events if e["type"] == "task_started")["context"]
    assert (context["tokens"], context["source"]) == (2048, "llama.cpp /props")
    assert context["reply_tokens"] == 512  # a quarter of a small window
    events = run_task(resolve_model("bundled"), SystemOptions(), tmp_path / "b", 1)  # llama.cpp itself
    context = next(e for e in events if e["type"] == "task_started")["context"]
    assert (context["tokens"], context["source"]) == (4096, "llama.cpp /props")


class ReadingEndpoint:
    """An OpenAI-compatible server on 127.0.0.1 that reports a context window on /v1/models and
    answers each agent step with ``policy(messages, step_number)``; it keeps every step's messages."""

    def __init__(self, context_tokens: int, policy: Callable[[list[dict], int], dict]) -> None:
        self.prompts: list[list[dict]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                self._send({"object": "list", "data": [{"id": "reader", "max_model_len": context_tokens}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                messages = body.get("messages") or []
                endpoint.prompts.append(messages)
                content = json.dumps(policy(messages, len(endpoint.prompts)))
                chars = sum(len(m.get("content", "")) for m in messages)
                self._send({"id": "c", "object": "chat.completion", "created": 0, "model": "reader",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": content}}],
                            "usage": {"prompt_tokens": chars // 4, "completion_tokens": 10}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def model(self) -> ModelChoice:
        return resolve_model(f"http://127.0.0.1:{self.server.server_address[1]}/v1#reader")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


NOTE = re.compile(r"\[observation of step 1 left out to fit the context; full text in (\S+)\]")


class Reader:
    """Step 1 prints 30,000 lines; steps 2-5 more output; step 6, if the history names the file
    that holds step 1, reads it back; step 7 counts the lines of step 1's saved output and reads
    the folder's README and requirements; then FINISH."""

    def __init__(self) -> None:
        self.saved: str | None = None  # what the note named, as a model would remember it

    def __call__(self, messages: list[dict], number: int) -> dict:
        found = NOTE.search("\n".join(m.get("content", "") for m in messages))
        self.saved = self.saved or (found.group(1) if found else None)
        if number == 1:
            return step("EXECUTE_CMD", "seq 1 30000")
        if number <= 5:
            return step("EXECUTE_CMD", f"seq {number}000 {number}400")
        if number == 6 and self.saved:
            return step("EXECUTE_CMD", f"cat {self.saved}")
        if number == 7 and self.saved:
            return step("EXECUTE_CMD", f"wc -l {self.saved.replace('.txt', '.output')}; "
                                       "cat ~/assistant/README.md ~/assistant/requirements.txt; ls ~/assistant")
        return step("FINISH", "done")


def test_an_endpoint_models_window_history_files_and_folder_tell_the_truth(tmp_path) -> None:
    endpoint = ReadingEndpoint(3000, Reader())
    try:
        events = run_task(endpoint.model(), SystemOptions(), tmp_path, 12)
    finally:
        endpoint.close()
    started = next(e for e in events if e["type"] == "task_started")
    assert (started["context"]["tokens"], started["context"]["source"]) == (3000, "/v1/models")
    assert started["profile"] == "capable"  # the default for an endpoint model
    system = endpoint.prompts[0][0]["content"]
    assert "3000 tokens" in system and "16000 characters" in system and started["context"]["history_dir"] in system
    steps = steps_of(events)
    first, reread, checked = steps[0], steps[5], steps[6]
    assert reread["command"].startswith("cat ") and checked["command"].startswith("wc -l ")
    # the history named the file that holds step 1, and that file gives back what the model saw
    assert first["observation"][:1500] in reread["output"]
    assert "output truncated" in first["observation"] and "all of it is in" in first["observation"]
    assert "30000 " in checked["output"]  # the whole output was saved, not only what fit
    # the folder describes an endpoint system: no weights, no llama.cpp package
    assert "is not in this folder" in checked["output"] and "gateway" in checked["output"]
    assert "xllamacpp" not in checked["output"] and "\nmodel\n" not in checked["output"]
    assert all(len(json.dumps(p)) < 3000 * 4 for p in endpoint.prompts)  # every prompt kept to the window
