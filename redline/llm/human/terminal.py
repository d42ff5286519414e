"""The person at this terminal as a human model's step source (``--model human``)."""

from __future__ import annotations

import json
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from redline.llm.human.protocol import (
    MAX_LINE_BYTES,
    POLL_S,
    STEP_TIMEOUT_S,
    Answer,
    HumanStepSource,
    HumanUnavailable,
    StepLimits,
    StepRequest,
    Withdrawn,
    reply_problem,
)


class TerminalConsole(HumanStepSource):
    """A person at this terminal.

    ``stdin``: where answers are read; by default file descriptor 0, read unbuffered and polled,
    so that a question can be withdrawn and so that no thread is left blocked inside ``sys.stdin``
    when the run ends (a daemon thread holding its lock at exit aborts the interpreter).
    ``console``: where the messages and prompts are printed."""

    def __init__(self, stdin: TextIO | None = None, console: Console | None = None,
                 answer_timeout_s: float = STEP_TIMEOUT_S) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.answer_timeout_s = answer_timeout_s
        self._stdin = stdin
        self._pending = b""
        self._closed = threading.Event()
        self._last_system_prompt: str | None = None

    def describe(self) -> str:
        return "terminal"

    def answer(self, request: StepRequest, withdrawn: Callable[[], str | None]) -> Answer:
        deadline = time.monotonic() + self.answer_timeout_s

        def check() -> None:
            if self._closed.is_set():
                raise Withdrawn("the trial is over")
            reason = withdrawn()
            if reason:
                raise Withdrawn(reason)
            if time.monotonic() > deadline:
                raise HumanUnavailable(f"no answer at the terminal within {self.answer_timeout_s:g} s")

        self._show(request)
        try:
            return self._ask(request.limits, check)
        except Withdrawn as why:
            self.console.print(f"\n[yellow]question withdrawn: {escape(str(why))}[/yellow]")
            raise

    def close(self) -> None:
        self._closed.set()

    def _show(self, request: StepRequest) -> None:
        console = self.console
        task = f", task {request.task_id}" if request.task_id else ""
        console.rule("step request")
        console.print(f"[bold]from:[/bold] {escape(request.sender.label())}{escape(task)}")
        for message in request.messages:
            if message["role"] == "system" and message["content"] == self._last_system_prompt:
                console.print("[dim]system: (the same system prompt as before)[/dim]")
                continue
            if message["role"] == "system":
                self._last_system_prompt = message["content"]
            console.print(f"[bold]{escape(message['role'])}:[/bold]")
            console.print(message["content"], markup=False, highlight=False, emoji=False)
        limits = request.limits
        bounds = ", ".join(f"{name} ≤ {limit}" for name, limit in limits.max_chars.items() if limit is not None)
        bounds = f"bounds in the schema: {bounds}" if bounds else "no bounds in the schema: see the system prompt"
        console.print(f"[dim]tools: {', '.join(limits.tools)}; {escape(bounds)}[/dim]")

    def _ask(self, limits: StepLimits, check: Callable[[], None]) -> Answer:
        while True:
            first = self._read("explanation (or paste the whole reply as one JSON object)", check)
            if not first.lstrip().startswith("{"):
                reply = self._fields(first, limits, check)
                return Answer(json.dumps(reply, ensure_ascii=False), "terminal: fields")
            value = self._read_json(first, check)
            if value is None:
                continue
            problem = reply_problem(value, limits)
            if problem is None:
                return Answer(json.dumps(value, ensure_ascii=False), "terminal: JSON")
            self.console.print(f"[red]not a reply: {escape(problem)}[/red]; again:")

    def _fields(self, explanation: str, limits: StepLimits, check: Callable[[], None]) -> dict:
        bounds = limits.max_chars
        reply: dict = {"explanation": self._text("explanation", bounds["explanation"], check, explanation)}
        reply["gaps"] = self._text("gaps", bounds["gaps"], check)
        reply["findings"] = self._text("findings", bounds["findings"], check)
        reply["plan"] = self._plan(limits, check)
        tool = self._tool(limits.tools, check)
        hint = {"EXECUTE_CMD": "the command; end a line with \\ to go on with the next",
                "RECEIVE_MSG": "a background number, or empty for all", "FINISH": "your final message"}
        while True:
            argument = self._text(f"action argument ({hint.get(tool, 'its argument')})", bounds["argument"], check,
                                  continued=tool == "EXECUTE_CMD")
            if tool != "EXECUTE_CMD" or argument.strip():
                break
            self.console.print("[red]EXECUTE_CMD needs a command[/red]")
        reply["action"] = {"tool": tool, "argument": argument}
        return reply

    def _text(self, name: str, limit: int | None, check: Callable[[], None], given: str | None = None,
              continued: bool = False) -> str:
        """One text field, re-asked while it is over ``limit``; ``continued``: a line ending in a
        backslash goes on with the next one (the backslash becomes a line break)."""
        while True:
            bound = f" (≤ {limit} chars)" if limit is not None else ""
            text = given if given is not None else self._read(name + bound, check)
            given = None
            while continued and text.endswith("\\"):
                text = text[:-1] + "\n" + self._read("...", check)
            if limit is None or len(text) <= limit:
                return text
            self.console.print(f"[red]{len(text)} characters: at most {limit}[/red]")

    def _plan(self, limits: StepLimits, check: Callable[[], None]) -> list[str]:
        low, high = limits.plan_items
        if high is not None and low == high:
            return [self._text(f"plan item {i + 1} of {high}", limits.max_chars["plan"], check) for i in range(high)]
        plan: list[str] = []
        while high is None or len(plan) < high:
            item = self._text(f"plan item {len(plan) + 1} (empty line: done)", limits.max_chars["plan"], check)
            if not item and len(plan) >= (low or 0):
                break
            plan.append(item)
        return plan

    def _tool(self, tools: tuple[str, ...], check: Callable[[], None]) -> str:
        while True:
            text = self._read(f"action tool ({' / '.join(tools)}; a prefix will do)", check).strip().upper()
            matches = [tool for tool in tools if text and tool.startswith(text)]
            if len(matches) == 1:
                return matches[0]
            self.console.print(f"[red]choose one of {', '.join(tools)}[/red]")

    def _read_json(self, first: str, check: Callable[[], None]) -> object | None:
        """A pasted JSON value from ``first`` and the lines after it (until it parses); ``None``
        when an empty line ends it before that."""
        text = first
        hinted = False
        while True:
            try:
                return json.loads(text)
            except json.JSONDecodeError as error:
                reason = f"{error.msg} at line {error.lineno}"
            except RecursionError:
                reason = "nested too deeply"
            if len(text) > MAX_LINE_BYTES:
                self.console.print(f"[red]the pasted reply is over {MAX_LINE_BYTES} characters[/red]")
                return None
            if not hinted:
                self.console.print("[dim](the JSON is not complete: go on pasting, or enter an empty line to "
                                   "start again)[/dim]")
                hinted = True
            line = self._readline(check)
            if not line:
                raise HumanUnavailable("the terminal's input ended (end of file)")
            if not line.strip():
                self.console.print(f"[red]not valid JSON ({escape(reason)})[/red]")
                return None
            text += "\n" + line.rstrip("\r\n")

    def _read(self, prompt: str, check: Callable[[], None]) -> str:
        self.console.print(f"[cyan]{escape(prompt)}:[/cyan] ", end="")
        line = self._readline(check)
        if not line:
            raise HumanUnavailable("the terminal's input ended (end of file)")
        return line.rstrip("\n").rstrip("\r")

    def _readline(self, check: Callable[[], None]) -> str:
        """The next line with its newline ("" at the end of input), calling ``check`` while waiting."""
        if self._stdin is not None:
            check()
            return self._stdin.readline()
        while b"\n" not in self._pending:
            check()
            ready, _, _ = select.select([0], [], [], POLL_S)
            if ready:
                chunk = os.read(0, 65536)
                if not chunk:
                    rest, self._pending = self._pending, b""
                    return rest.decode("utf-8", errors="replace")
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8", errors="replace") + "\n"
