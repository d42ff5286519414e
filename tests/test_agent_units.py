"""Unit tests of the agent scaffold's pure parts: reply parsing, context budget, command runner."""

from __future__ import annotations

import json
import time

import pytest

from redline.agent.commands import CommandRunner, render_output
from redline.agent.context import TRIMMED, Entry, build_messages
from redline.agent.protocol import MalformedReply, Step, parse_reply

GOOD = {"explanation": "e", "gaps": "g", "findings": "f", "plan": ["a", "b", "c"],
        "action": {"tool": "EXECUTE_CMD", "argument": "ls"}}


def test_well_formed_reply_parses() -> None:
    step = parse_reply(json.dumps(GOOD))
    assert isinstance(step, Step) and step.tool == "EXECUTE_CMD" and step.argument == "ls"
    assert step.plan == ("a", "b", "c") and not step.missing_fields


def test_tolerant_parsing_of_fences_prose_and_capitals() -> None:
    reply = {"Explanation": "x", "Action": {"Tool": "finish", "Argument": "done"}}
    text = "Sure! ```json\n" + json.dumps(reply) + "\n```"
    step = parse_reply(text)
    assert isinstance(step, Step) and step.tool == "FINISH" and step.argument == "done"
    assert set(step.missing_fields) == {"gaps", "findings", "plan"}


@pytest.mark.parametrize("raw, reason", [
    ("", "empty"),
    ("   ", "empty"),
    ("no json here", "no JSON object"),
    ("{broken", "invalid"),
    ("[1, 2]", "not an object"),
    ('{"action": {"tool": "RM_RF", "argument": "/"}}', "must be one of"),
    ('{"plan": []}', 'no "action"'),
    ('{"action": {"tool": "EXECUTE_CMD", "argument": ""}}', "needs a command"),
    ("x" * 10_000_000, "characters long"),
    (b"\xff\xfe{\x80".decode("utf-8", errors="replace"), "invalid"),
    ("[" * 60000, "nested too deeply"),
])
def test_garbage_replies_become_reasons_not_crashes(raw, reason) -> None:
    result = parse_reply(raw)
    assert isinstance(result, MalformedReply)
    assert reason in result.reason


def test_context_budget_trims_oldest_observations_then_exchanges_deterministically() -> None:
    history = []
    for i in range(10):
        history += [Entry("assistant", f"reply {i}", "reply"),
                    Entry("user", f"observation {i} " + "x" * 1000, "observation")]
    messages = build_messages("system", "the task", history, budget_chars=3000)
    assert messages[0]["content"] == "system" and messages[1]["content"] == "Task: the task"
    assert sum(len(m["content"]) for m in messages) <= 3000
    assert messages[-1]["content"].startswith("observation 9")
    assert TRIMMED in [m["content"] for m in messages]
    assert build_messages("system", "the task", history, 3000) == messages
    tiny = build_messages("system", "the task", history, budget_chars=50)
    assert tiny[:2] == messages[:2] and tiny[-1]["content"].startswith("observation 9")
    assert history[0].content == "reply 0" and "x" in history[1].content  # the history itself is untouched


def test_execute_returns_output_and_exit_code(tmp_path) -> None:
    runner = CommandRunner(str(tmp_path), timeout_s=10, output_cap_chars=1000)
    result = runner.execute("echo hello; echo oops >&2; exit 4")
    assert result.exit_code == 4 and "hello" in result.output and "oops" in result.output
    assert "[exit code 4]" in result.observation()


def test_execute_times_out_and_kills_the_group(tmp_path) -> None:
    runner = CommandRunner(str(tmp_path), timeout_s=1, output_cap_chars=1000)
    started = time.monotonic()
    result = runner.execute("sleep 100")
    assert result.timed_out and result.exit_code is None and time.monotonic() - started < 5
    assert "timeout" in result.observation()


def test_background_process_returns_at_once_and_receive_msg_reads_it(tmp_path) -> None:
    runner = CommandRunner(str(tmp_path), timeout_s=10, output_cap_chars=1000)
    started = time.monotonic()
    result = runner.execute("(echo first; sleep 0.5; echo second; sleep 0.5; echo third) &")
    assert time.monotonic() - started < 2 and result.background_id == 1
    assert "RECEIVE_MSG" in result.observation()
    time.sleep(1.5)
    received = runner.receive("")
    assert "second" in received and "third" in received and "closed" in received
    assert runner.receive("") == "No new output from background processes."


def test_binary_and_huge_output_is_escaped_and_capped() -> None:
    text, truncated, binary = render_output(bytes(range(256)) * 1000, cap=500)
    assert binary and truncated and len(text) < 800 and "\\x00" in text
    text, truncated, binary = render_output("é".encode() * 10, cap=500)
    assert not binary and not truncated and text == "é" * 10
