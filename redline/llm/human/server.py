"""The harness's step socket (:class:`StepServer`, see :mod:`redline.llm.human`): each step request
stamped with its sender from the kernel (:func:`describe_sender`) and its task (:class:`TaskIndex`),
put to the step source (:func:`open_source`) one at a time, answered as a chat completion."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable

from redline.llm.human.controller import SocketController
from redline.llm.human.protocol import (
    HumanStepSource,
    HumanUnavailable,
    Sender,
    StepLimits,
    StepRequest,
    Withdrawn,
    json_object,
)
from redline.llm.human.terminal import TerminalConsole
from redline.llm.models import ModelChoice
from redline.llm.unix_http import SandboxRequestHandler, UnixHTTPServer
from redline.sandbox import procfs

STEPS_SOCKET_NAME = "steps.sock"
MAX_BODY_BYTES = 8 * 1024 * 1024
#: how long a step request waits for its agent's task_started event to reach the trace collector
TASK_EVENT_WAIT_S = 0.2


def open_source(model: ModelChoice) -> HumanStepSource:
    """The step source of a human ``model``: its controller socket, or this terminal."""
    return SocketController(model.controller) if model.controller else TerminalConsole()


class TaskIndex:
    """The latest task each agent process started, from the trace's ``task_started`` events (whose
    sender the collector stamps from the kernel)."""

    def __init__(self) -> None:
        self._latest: dict[int, tuple[str, str]] = {}  # agent host pid -> (task id, task)
        self._changed = threading.Condition()

    def observing(self, on_event: Callable[[dict], None] | None) -> Callable[[dict], None]:
        """A trace-event callback that feeds this index, then ``on_event``."""
        def observe(event: dict) -> None:
            self.observe(event)
            if on_event is not None:
                on_event(event)
        return observe

    def observe(self, event: dict) -> None:
        """Take note of one trace event."""
        if event.get("type") != "task_started" or event.get("source") != "agent":
            return
        peer = json_object(event.get("peer"))
        host_pid, task_id, task = peer.get("host_pid"), event.get("task_id"), event.get("task")
        if isinstance(host_pid, int) and isinstance(task_id, str) and isinstance(task, str):
            with self._changed:
                self._latest[host_pid] = (task_id, task)
                self._changed.notify_all()

    def task_of(self, agent_host_pid: int | None, task_message: str | None,
                wait_s: float = TASK_EVENT_WAIT_S) -> str | None:
        """The id of the task agent ``agent_host_pid`` started whose text ``task_message`` (the
        step's ``Task: ...`` message) shows, waiting up to ``wait_s`` for its event."""
        if agent_host_pid is None or task_message is None:
            return None

        def found() -> str | None:
            task_id, task = self._latest.get(agent_host_pid, (None, None))
            shown = task is not None and (task_message == f"Task: {task}" or task_message.startswith(f"Task: {task}\n"))
            return task_id if shown else None

        with self._changed:
            return self._changed.wait_for(found, timeout=wait_s)


def _host_ppid(host_pid: int) -> int | None:
    try:
        with open(f"/proc/{host_pid}/stat", encoding="utf-8", errors="replace") as stat_file:
            return int(stat_file.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def describe_sender(host_pid: int, original_host_pid: int | None) -> Sender:
    """The kernel's facts about step-request sender ``host_pid`` (see :class:`Sender`);
    ``original_host_pid``: the original's agent (``None``: not known)."""
    parent = _host_ppid(host_pid)
    inside = procfs.inside_pids([host_pid, *([parent] if parent else [])])
    chain, current = [], parent
    while current and current > 1 and len(chain) < 64:
        chain.append(current)
        current = _host_ppid(current)
    try:
        folder: str | None = os.readlink(f"/proc/{host_pid}/cwd")
    except OSError:
        folder = None
    return Sender(host_pid=host_pid, pid=inside.get(host_pid), parent_host_pid=parent,
                  parent_pid=inside.get(parent) if parent else None, folder=folder,
                  original=original_host_pid is not None and original_host_pid in chain)


def _messages(value: object) -> list[dict]:
    """The request's chat messages as role + content strings (whatever the sender put there)."""
    items = value if isinstance(value, list) else []
    return [{"role": str(item.get("role", "")), "content": item["content"] if isinstance(item.get("content"), str)
             else json.dumps(item.get("content"), ensure_ascii=False)} for item in items if isinstance(item, dict)]


def _task_message(messages: list[dict]) -> str | None:
    return next((m["content"] for m in messages if m["role"] == "user" and m["content"].startswith("Task: ")), None)


def _completion(content: str, model: str) -> dict:
    return {"id": f"chatcmpl-human-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def _peer_gone(connection: socket.socket) -> str | None:
    """Why the client of ``connection`` no longer waits for its answer (it closed the connection:
    killed, or it gave up), or ``None``."""
    try:
        ready, _, _ = select.select([connection], [], [], 0)
        if ready and connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
            return "the instance that asked stopped waiting (it was killed, or gave up)"
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return "the instance that asked stopped waiting (its connection failed)"
    return None


class StepServer:
    """Serves the step socket at ``socket_path`` until :meth:`close` (see :mod:`redline.llm.human`).

    ``record``: writes a harness event into the trial's trace (``human_model``, ``human_step``,
    ``human_step_withdrawn``, ``human_model_unavailable``); ``original_host_pid``: the original's
    agent, asked at each request; ``tasks``: the trial's :class:`TaskIndex`. :attr:`failure` is
    set (and stays) once the source is unavailable."""

    def __init__(self, socket_path: str, source: HumanStepSource, *, model_name: str,
                 record: Callable[..., None], original_host_pid: Callable[[], int | None], tasks: TaskIndex) -> None:
        self.socket_path = socket_path
        self.source = source
        self.model_name = model_name
        self.record = record
        self.original_host_pid = original_host_pid
        self.tasks = tasks
        self.failure: str | None = None
        self._one_at_a_time = threading.Lock()
        steps = self

        class Handler(SandboxRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = self.body_length()
                if self.path != "/step" or not 0 <= length <= MAX_BODY_BYTES:
                    status, body = 404, b'{"error": "the step socket takes POST /step with a chat request"}'
                else:
                    raw = self.rfile.read(length)
                    try:
                        request = json.loads(raw or b"{}")
                    except (ValueError, RecursionError):
                        request = {}  # no messages: the person sees an empty request
                    status, body = steps.ask(self.sender_host_pid(), request, lambda: _peer_gone(self.connection))
                self.send_json(status, body)  # an instance that asked and is gone is no error

        self._server = UnixHTTPServer(socket_path, Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="redline-steps")
        self._thread.start()
        record("human_model", answered_by=source.describe())

    def ask(self, host_pid: int, body: object, withdrawn: Callable[[], str | None]) -> tuple[int, bytes]:
        """Put one step request (chat request ``body`` from host process ``host_pid``) to the
        source; returns the HTTP status and body for the sender."""
        body = json_object(body)
        messages = _messages(body.get("messages"))
        schema = json_object(json_object(body.get("response_format")).get("json_schema")).get("schema")
        sender = describe_sender(host_pid, self.original_host_pid())
        task_id = self.tasks.task_of(sender.parent_host_pid, _task_message(messages))
        request = StepRequest(sender, task_id, messages, StepLimits.from_schema(schema))
        asked = time.monotonic()
        with self._one_at_a_time:
            shown = time.monotonic()
            if self.failure is None:
                try:
                    reason = withdrawn()
                    if reason:
                        raise Withdrawn(reason)
                    answer = self.source.answer(request, withdrawn)
                except Withdrawn as why:
                    self.record("human_step_withdrawn", instance=sender.as_dict(), task_id=task_id, reason=str(why))
                    return 503, json.dumps({"error": f"the question was withdrawn: {why}"}).encode()
                except HumanUnavailable as error:
                    self.failure = str(error)
                    self.record("human_model_unavailable", reason=self.failure)
            if self.failure is not None:
                return 503, json.dumps({"error": f"the human model is unavailable: {self.failure}"}).encode()
            answered = time.monotonic()
        self.record("human_step", instance=sender.as_dict(), task_id=task_id, by=answer.by,
                    answer_s=round(answered - shown, 3), waited_s=round(shown - asked, 3), reply=answer.text[:20000])
        return 200, json.dumps(_completion(answer.text, self.model_name)).encode()

    def close(self) -> None:
        """Withdraw what is pending, stop serving and remove the socket."""
        self.source.close()
        self._server.shutdown()
        self._server.server_close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
