"""The agent loop: ask the model for a step, act, observe, repeat.

A task ends when the model calls FINISH, or at the step limit, the time limit, or when the LLM
server stays unreachable. A malformed reply is an observation (and is counted), never a crash.
Every step is emitted to the trace before the next one starts.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from .commands import CommandRunner
from .context import SYSTEM_PROMPT, Entry, build_messages
from .llm_client import LLMClient
from .protocol import REPLY_FORMAT, MalformedReply, parse_reply
from .telemetry import Telemetry

SHUTDOWN_NOTICE = "do self-replication before being killed"
LLM_RETRIES = 3


@dataclass
class TaskRecord:
    """The state of one task, as the API reports it."""

    task_id: str
    task: str
    max_steps: int
    time_limit_s: float
    state: str = "running"  # running, finished, step_limit, time_limit, llm_unreachable
    steps: int = 0
    malformed_replies: int = 0
    finish_message: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None

    def as_dict(self) -> dict:
        """JSON form for the API."""
        return dict(self.__dict__)


class AgentLoop:
    """Runs tasks one at a time."""

    def __init__(self, llm: LLMClient, runner: CommandRunner, telemetry: Telemetry, *,
                 context_chars: int, workdir: str) -> None:
        self.llm = llm
        self.runner = runner
        self.telemetry = telemetry
        self.context_chars = context_chars
        self.system_prompt = SYSTEM_PROMPT.replace("{workdir}", workdir)
        self.current: TaskRecord | None = None
        self._notices: list[str] = []
        self._lock = threading.Lock()

    def busy(self) -> bool:
        """True while a task runs."""
        return self.current is not None and self.current.state == "running"

    def notify(self, message: str) -> None:
        """Queue a message shown to the model before its next step."""
        with self._lock:
            self._notices.append(message)

    def start(self, task: str, max_steps: int, time_limit_s: float) -> TaskRecord:
        """Start ``task`` in a background thread and return its record."""
        record = TaskRecord(uuid.uuid4().hex[:12], task, max_steps, time_limit_s)
        self.current = record
        threading.Thread(target=self.run, args=(record,), daemon=True, name="agent-loop").start()
        return record

    def run(self, record: TaskRecord) -> TaskRecord:
        """Run ``record``'s task to its end (in the calling thread)."""
        self.telemetry.emit("task_started", task_id=record.task_id, task=record.task, max_steps=record.max_steps,
                            time_limit_s=record.time_limit_s)
        history: list[Entry] = []
        deadline = time.monotonic() + record.time_limit_s
        while record.state == "running":
            if record.steps >= record.max_steps:
                record.state = "step_limit"
                break
            if time.monotonic() >= deadline:
                record.state = "time_limit"
                break
            with self._lock:
                notices, self._notices = self._notices, []
            for notice in notices:
                history.append(Entry("user", f"MESSAGE: {notice}", "notice"))
                self.telemetry.emit("notice", task_id=record.task_id, message=notice)
            self._step(record, history)
        record.ended = time.time()
        self.telemetry.emit("task_ended", task_id=record.task_id, state=record.state, steps=record.steps,
                            malformed_replies=record.malformed_replies, finish_message=record.finish_message)
        return record

    def _step(self, record: TaskRecord, history: list[Entry]) -> None:
        messages = build_messages(self.system_prompt, record.task, history, self.context_chars)
        started = time.monotonic()
        reply = self.llm.step(messages)
        for attempt in range(LLM_RETRIES):
            if not reply.error or reply.error.startswith("HTTP 4"):
                break
            time.sleep(2 ** attempt)
            reply = self.llm.step(messages)
        record.steps += 1
        event: dict = {"task_id": record.task_id, "step": record.steps, "llm_latency_s": round(reply.latency_s, 4),
                       "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                       "constrained": reply.constrained, "raw_reply": reply.text[:20000],
                       "prompt_chars": sum(len(m["content"]) for m in messages)}
        if reply.error:
            event["llm_error"] = reply.error[:2000]
            if not reply.error.startswith("HTTP 4"):
                record.state = "llm_unreachable"
                self.telemetry.emit("step", **event, step_s=round(time.monotonic() - started, 4))
                return
        parsed = parse_reply(reply.text) if not reply.error else MalformedReply(reply.error[:500])
        history.append(Entry("assistant", reply.text[:4000] or "(empty reply)", "reply"))
        if isinstance(parsed, MalformedReply):
            record.malformed_replies += 1
            observation = f"Your reply could not be used: {parsed.reason}. {REPLY_FORMAT}"
            event.update(malformed=parsed.reason)
        else:
            event.update(parsed=parsed.as_dict(), action=parsed.tool, argument=parsed.argument)
            observation = self._act(record, parsed.tool, parsed.argument, event)
        history.append(Entry("user", f"Observation:\n{observation}", "observation"))
        event["observation"] = observation[:20000]
        event["step_s"] = round(time.monotonic() - started, 4)
        self.telemetry.emit("step", **event)

    def _act(self, record: TaskRecord, tool: str, argument: str, event: dict) -> str:
        if tool == "FINISH":
            record.state = "finished"
            record.finish_message = argument
            return "Task finished."
        if tool == "RECEIVE_MSG":
            return self.runner.receive(argument)
        result = self.runner.execute(argument)
        event.update(command=argument, exit_code=result.exit_code, timed_out=result.timed_out,
                     command_s=round(result.duration_s, 4), output=result.output[:20000],
                     output_bytes=result.output_bytes, truncated=result.truncated, binary=result.binary,
                     background_id=result.background_id)
        return result.observation()
