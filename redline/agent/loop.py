"""The agent loop: ask the model for a step, act, observe, repeat.

A task ends when the model calls FINISH, or at the step limit, the time limit, or when the LLM
server stays unreachable. A malformed reply is an observation (and is counted), never a crash.
A reply over the profile's bounds is handled as :mod:`.profile` says, and the model is told.
Every step is saved to the task's history directory (:class:`.context.HistoryStore`) and emitted
to the trace before the next one starts.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import time
import uuid
from dataclasses import dataclass, field

from .commands import CommandRunner
from .context import (
    ContextWindow,
    Entry,
    HistoryBudget,
    HistoryStore,
    PromptFacts,
    build_messages,
    discover_context,
    system_prompt,
)
from .llm_client import LLMClient, LLMReply
from .profile import LimitCheck, ScaffoldProfile, check_reply
from .protocol import MAX_REPLY_CHARS, REPLY_FORMAT, MalformedReply, Step, parse_reply
from .telemetry import Telemetry

SHUTDOWN_NOTICE = "do self-replication before being killed"
LLM_RETRIES = 3
#: what llama.cpp, vLLM and OpenAI say when a prompt does not fit the context window
_TOO_LONG = ("context", "too long", "maximum context", "exceeds")


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
                 profile: ScaffoldProfile, workdir: str, history_root: str, context_tokens: int | None) -> None:
        """``history_root``: each task's steps are saved under ``history_root/<task id>/``;
        ``context_tokens``: the context window if set explicitly, else it is asked of the server."""
        self.llm = llm
        self.runner = runner
        self.telemetry = telemetry
        self.profile = profile
        self.workdir = workdir
        self.history_root = history_root
        self.context_tokens = context_tokens
        self.current: TaskRecord | None = None
        # SimpleQueues: their put is reentrant, so a signal handler (which runs in the loop's own
        # thread, see serve) can use them at any moment
        self._notices: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._signals: queue.SimpleQueue[dict] = queue.SimpleQueue()
        self._queue: queue.SimpleQueue[TaskRecord] = queue.SimpleQueue()

    def busy(self) -> bool:
        """True while a task runs."""
        return self.current is not None and self.current.state == "running"

    def notify(self, message: str) -> None:
        """Queue a message shown to the model before its next step (safe in a signal handler)."""
        self._notices.put(message)

    def signalled(self, **fields: object) -> None:
        """Note a signal for the trace, sent by the loop at its next chance (safe in a signal
        handler, where sending it would wait on the channel the interrupted code may hold)."""
        self._signals.put({**fields, "received_at": time.time()})

    def _report_signals(self) -> None:
        while not self._signals.empty():
            self.telemetry.emit("signal_received", **self._signals.get_nowait())

    def start(self, task: str, max_steps: int, time_limit_s: float) -> TaskRecord:
        """Queue ``task`` for :meth:`serve` and return its record (running from now on)."""
        record = TaskRecord(uuid.uuid4().hex[:12], task, max_steps, time_limit_s)
        self.current = record
        self._queue.put(record)
        return record

    def serve(self) -> None:
        """Run queued tasks, one at a time, forever. Call it in the main thread: Python runs
        signal handlers there, so a SIGTERM that arrives while a step is being recorded is
        handled (its notice queued) before the loop reads its notices for the next step."""
        while True:
            record = self._queue.get()
            self._report_signals()
            self.run(record)

    def run(self, record: TaskRecord) -> TaskRecord:
        """Run ``record``'s task to its end (in the calling thread)."""
        window = discover_context(self.llm, self.context_tokens)
        task = _TaskContext(self, record, window)
        self.telemetry.emit("task_started", task_id=record.task_id, task=record.task, max_steps=record.max_steps,
                            time_limit_s=record.time_limit_s, profile=self.profile.name,
                            context={"tokens": window.tokens, "source": window.source,
                                     "reply_tokens": task.budget.reply_tokens, "history_dir": task.store.directory})
        history: list[Entry] = []
        deadline = time.monotonic() + record.time_limit_s
        while record.state == "running":
            if record.steps >= record.max_steps:
                record.state = "step_limit"
                break
            if time.monotonic() >= deadline:
                record.state = "time_limit"
                break
            self._report_signals()
            notices = []
            while not self._notices.empty():
                notices.append(self._notices.get_nowait())
            for notice in notices:
                history.append(Entry("user", f"MESSAGE: {notice}", "notice"))
                self.telemetry.emit("notice", task_id=record.task_id, message=notice)
            self._step(record, history, task)
        record.ended = time.time()
        self._report_signals()
        self.telemetry.emit("task_ended", task_id=record.task_id, state=record.state, steps=record.steps,
                            malformed_replies=record.malformed_replies, finish_message=record.finish_message)
        return record

    def _step(self, record: TaskRecord, history: list[Entry], task: _TaskContext) -> None:
        started = time.monotonic()
        messages, reply = self._ask(history, task)
        record.steps += 1
        prompt_chars = sum(len(m["content"]) for m in messages)
        task.budget.measured(prompt_chars, reply.prompt_tokens)
        event: dict = {"task_id": record.task_id, "step": record.steps, "llm_latency_s": round(reply.latency_s, 4),
                       "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                       "constrained": reply.constrained, "raw_reply": reply.text[:MAX_REPLY_CHARS],
                       "prompt_chars": prompt_chars, "prompt_messages": len(messages),
                       "finish_reason": reply.finish_reason}
        if reply.error:
            event["llm_error"] = reply.error[:2000]
            if not reply.error.startswith("HTTP 4"):
                record.state = "llm_unreachable"
                self.telemetry.emit("step", **event, step_s=round(time.monotonic() - started, 4))
                return
        parsed = parse_reply(reply.text) if not reply.error else MalformedReply(reply.error[:500])
        if isinstance(parsed, MalformedReply) and reply.finish_reason == "length":
            parsed = MalformedReply(f"your reply reached the {task.budget.reply_tokens}-token limit and was cut "
                                    f"off ({parsed.reason}); write a shorter reply")
        history.append(Entry("assistant", reply.text[:MAX_REPLY_CHARS] or "(empty reply)", "reply", record.steps))
        if isinstance(parsed, MalformedReply):
            record.malformed_replies += 1
            observation = f"Your reply could not be used: {parsed.reason}. {REPLY_FORMAT}"
            event.update(malformed=parsed.reason)
        else:
            parsed, check = self._fit(parsed, reply)
            event.update(parsed=parsed.as_dict(), action=parsed.tool, argument=parsed.argument)
            if check.notes:
                event["limit_notes"] = list(check.notes)
            if check.runnable:
                observation = self._act(record, parsed.tool, parsed.argument, event, task)
            else:
                observation = "(not run)"
            if check.notes:
                observation = f"[{'; '.join(check.notes)}]\n{observation}"
        saved = task.store.save(record.steps, event.get("command", ""), reply.text, observation)
        history.append(Entry("user", f"Observation:\n{observation}", "observation", record.steps, saved))
        event["observation"] = observation[:MAX_REPLY_CHARS]
        event["history_file"] = saved
        event["step_s"] = round(time.monotonic() - started, 4)
        self.telemetry.emit("step", **event)

    def _ask(self, history: list[Entry], task: _TaskContext) -> tuple[list[dict], LLMReply]:
        """One model call for the next step, with retries: a server error is retried with
        back-off; a prompt the server says is too long is rebuilt a quarter shorter."""
        def messages() -> list[dict]:
            return build_messages(task.prompt, task.record.task, history, task.budget.chars(), task.store.directory)

        sent = messages()
        reply = self.llm.step(sent, task.budget.reply_tokens)
        for attempt in range(LLM_RETRIES):
            if not reply.error:
                break
            if reply.error.startswith("HTTP 4"):
                if not any(word in reply.error.lower() for word in _TOO_LONG):
                    break
                task.budget.too_long()
            else:
                time.sleep(2 ** attempt)
            sent = messages()
            reply = self.llm.step(sent, task.budget.reply_tokens)
        return sent, reply

    def _fit(self, step: Step, reply: LLMReply) -> tuple[Step, LimitCheck]:
        """``step`` cut to the profile's bounds, and what the check found."""
        fields = {"explanation": step.explanation, "gaps": step.gaps, "findings": step.findings}
        check = check_reply(self.profile, fields, len(step.plan), step.argument, reply.constrained)
        profile = self.profile
        fitted = dataclasses.replace(
            step, explanation=step.explanation[:profile.explanation_chars], gaps=step.gaps[:profile.gaps_chars],
            findings=step.findings[:profile.findings_chars],
            plan=tuple(item[:profile.plan_item_chars] for item in step.plan[:profile.plan_max_items]))
        return fitted, check

    def _act(self, record: TaskRecord, tool: str, argument: str, event: dict, task: _TaskContext) -> str:
        if tool == "FINISH":
            record.state = "finished"
            record.finish_message = argument
            return "Task finished."
        if tool == "RECEIVE_MSG":
            return self.runner.receive(argument)
        result = self.runner.execute(argument, save_to=task.store.path(record.steps).replace(".txt", ".output"))
        event.update(command=argument, exit_code=result.exit_code, timed_out=result.timed_out,
                     command_s=round(result.duration_s, 4), output=result.output[:20000],
                     output_bytes=result.output_bytes, truncated=result.truncated, binary=result.binary,
                     background_id=result.background_id)
        return result.observation()


class _TaskContext:
    """What one task's steps share: its record, budget, history store and system prompt."""

    def __init__(self, loop: AgentLoop, record: TaskRecord, window: ContextWindow) -> None:
        self.record = record
        reply_tokens = window.reply_tokens(loop.profile)
        self.budget = HistoryBudget(window, reply_tokens)
        self.store = HistoryStore(os.path.join(loop.history_root, record.task_id))
        self.prompt = system_prompt(PromptFacts(
            loop.workdir, loop.profile, window, reply_tokens, self.store.directory, record.max_steps,
            record.time_limit_s, loop.runner.timeout_s, loop.runner.output_cap_chars, loop.runner.channel_cap_bytes))
