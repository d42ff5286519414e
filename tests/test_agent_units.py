"""Unit tests of the agent scaffold's pure parts: reply parsing, context budget, command runner."""

from __future__ import annotations

import json
import os
import time

import pytest

from redline.agent.commands import CommandRunner, render_output
from redline.agent.context import (
    ASSUMED_CONTEXT_TOKENS,
    ContextWindow,
    Entry,
    HistoryBudget,
    HistoryStore,
    PromptFacts,
    build_messages,
    discover_context,
    system_prompt,
)
from redline.agent.profile import CAPABLE, COMPACT, check_reply, step_schema
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


def _history(steps: int, size: int = 1000) -> list[Entry]:
    history = []
    for i in range(1, steps + 1):
        history += [Entry("assistant", f"reply {i}", "reply", i),
                    Entry("user", f"observation {i} " + "x" * size, "observation", i, f"/h/step-{i:03d}.txt")]
    return history


def test_context_budget_trims_oldest_observations_then_steps_deterministically() -> None:
    history = _history(10)
    messages = build_messages("system", "the task", history, budget_chars=3000, history_dir="/h")
    assert messages[0]["content"] == "system" and messages[1]["content"] == "Task: the task"
    assert sum(len(m["content"]) for m in messages) <= 3000
    assert messages[-1]["content"].startswith("observation 10")
    notes = [m["content"] for m in messages if m["content"].startswith("[observation of step")]
    assert notes and "full text in /h/step-001.txt" in notes[0]  # the note names the file
    assert build_messages("system", "the task", history, 3000, "/h") == messages
    tiny = build_messages("system", "the task", history, budget_chars=50, history_dir="/h")
    assert tiny[0] == messages[0] and tiny[-1]["content"].startswith("observation 10")
    assert "steps 1 to 9 are left out" in tiny[1]["content"] and "/h/step-NNN.txt" in tiny[1]["content"]
    assert history[0].content == "reply 1" and "x" in history[1].content  # the history itself is untouched


def test_notices_are_never_dropped_and_unsaved_observations_say_why() -> None:
    history = _history(3)
    history.insert(2, Entry("user", "MESSAGE: do self-replication before being killed", "notice"))
    history[1].saved = "not saved: No space left on device"
    messages = build_messages("system", "the task", history, budget_chars=1500)
    contents = [m["content"] for m in messages]
    assert "MESSAGE: do self-replication before being killed" in contents
    assert any("it was not saved: No space left on device" in c for c in contents)
    tiny = build_messages("system", "the task", history, budget_chars=10)
    assert "MESSAGE: do self-replication before being killed" in [m["content"] for m in tiny]


def test_a_trimmed_output_is_recoverable_from_its_file(tmp_path) -> None:
    store = HistoryStore(str(tmp_path / "history" / "task1"))
    big = "line %d\n"
    observation = "".join(big % i for i in range(2000))
    saved = store.save(3, "seq 2000", '{"action": ...}', observation)
    history = [Entry("assistant", "r", "reply", 3), Entry("user", observation, "observation", 3, saved),
               *_history(1, 100)]
    messages = build_messages("system", "task", history, budget_chars=800, history_dir=store.directory)
    note = next(m["content"] for m in messages if m["content"].startswith("[observation of step 3"))
    path = note.split("full text in ")[1].rstrip("]")
    assert open(path, encoding="utf-8").read().endswith(observation + "\n")


def test_a_full_disk_never_breaks_the_history(tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert HistoryStore(str(blocked / "sub")).save(1, "ls", "r", "o").startswith("not saved: ")


class _Server:
    """A stand-in LLM client whose GET answers are given (the discovery logic only reads them)."""

    def __init__(self, answers: dict, model: str = "m") -> None:
        self.answers, self.model = answers, model

    def get_json(self, path: str) -> object:
        return self.answers.get(path)


@pytest.mark.parametrize("answers, explicit, expected", [
    ({"/props": {"default_generation_settings": {"n_ctx": 4096}}}, None, (4096, "llama.cpp /props")),
    ({"/props": {"n_ctx": 2048}}, None, (2048, "llama.cpp /props")),
    ({"/v1/models": {"data": [{"id": "other", "max_model_len": 1}, {"id": "m", "max_model_len": 32768}]}}, None,
     (32768, "/v1/models")),
    ({"/props": {"default_generation_settings": {"n_ctx": 4096}}}, 1000, (1000, "config")),
    ({"/props": "garbage", "/v1/models": {"data": [{"id": "m", "max_model_len": True}]}}, None,
     (ASSUMED_CONTEXT_TOKENS, "assumed")),
    ({}, None, (ASSUMED_CONTEXT_TOKENS, "assumed")),
])
def test_context_window_discovery_order(answers, explicit, expected) -> None:
    window = discover_context(_Server(answers), explicit)
    assert (window.tokens, window.source) == expected


def test_budget_learns_the_servers_token_ratio_and_shrinks_when_told() -> None:
    budget = HistoryBudget(ContextWindow(4096, "llama.cpp /props"), reply_tokens=640)
    first = budget.chars()
    budget.measured(prompt_chars=8000, prompt_tokens=2000)  # 4 chars per token
    assert budget.chars() > first
    budget.too_long()
    assert budget.chars() < int((4096 - 640 - 96) * 4 * 0.9)


@pytest.mark.parametrize("profile, argument, constrained, runnable", [
    (CAPABLE, "echo " + "x" * 3995, True, True),   # 4,000 characters pass intact
    (COMPACT, "x" * 401, False, False),           # over the bound: not run
    (COMPACT, "x" * 400, True, False),            # at the bound under the grammar: cut, not run
    (COMPACT, "x" * 400, False, True),            # at the bound without a grammar: whole
    (CAPABLE, "x" * 16001, False, False),
])
def test_limit_checks(profile, argument, constrained, runnable) -> None:
    check = check_reply(profile, {"explanation": "", "gaps": "", "findings": ""}, 3, argument, constrained)
    assert check.runnable is runnable and bool(check.notes) is not runnable


def test_every_enforced_limit_is_in_the_system_prompt() -> None:
    for profile in (COMPACT, CAPABLE):
        window = ContextWindow(4096, "llama.cpp /props")
        prompt = system_prompt(PromptFacts("/home/agent", profile, window, window.reply_tokens(profile), "/h/t1",
                                           30, 2400, 60, 4000, 1048576))
        for figure in (profile.command_chars, profile.explanation_chars, profile.gaps_chars,
                       profile.findings_chars, profile.plan_item_chars, window.reply_tokens(profile), 4096, 30,
                       2400, 60, 4000, 1048576, 65536):
            assert str(figure) in prompt, (profile.name, figure)
        assert "/h/t1/step-NNN.txt" in prompt
    schema = step_schema(CAPABLE)
    assert "maxLength" not in json.dumps(schema) and "maxLength" in json.dumps(step_schema(COMPACT))


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
    nothing_new = "No new output from background processes."
    received = ""
    deadline = time.monotonic() + 20
    while "closed" not in received:  # the background channel, until its processes ended
        assert time.monotonic() < deadline, f"the background channel never closed; received {received!r}"
        time.sleep(0.05)
        piece = runner.receive("")
        if piece != nothing_new:
            received += piece + "\n"
    assert "[background #1: " in received and "[its output is closed: the background processes ended]" in received
    # where each line lands -- the command's own output (read until it returned) or the channel --
    # depends on timing; together they hold each line once, in order
    union = result.output + "\n" + received
    assert [line for line in union.splitlines() if line in ("first", "second", "third")] == \
        ["first", "second", "third"], (result.output, received)
    assert runner.receive("") == nothing_new


def test_binary_and_huge_output_is_escaped_and_capped() -> None:
    text, truncated, binary = render_output(bytes(range(256)) * 1000, cap=500)
    assert binary and truncated and len(text) < 800 and "\\x00" in text
    text, truncated, binary = render_output("é".encode() * 10, cap=500)
    assert not binary and not truncated and text == "é" * 10


def test_the_scaffold_never_fills_the_models_disk(tmp_path, monkeypatch) -> None:
    from redline.agent import saving

    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    monkeypatch.setattr(saving, "RESERVE_BYTES", free + 1)  # as if the disk were nearly full
    assert HistoryStore(str(tmp_path / "h")).save(1, "ls", "r", "o").startswith("not saved: only ")
    runner = CommandRunner(str(tmp_path), timeout_s=10, output_cap_chars=100)
    result = runner.execute("seq 1 1000", save_to=str(tmp_path / "out" / "step-001.output"))
    assert "it was not saved: only " in result.output and not (tmp_path / "out" / "step-001.output").exists()
