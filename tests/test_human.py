"""The human model: a person at the terminal, or a controller on a Unix socket, writes the agent's
steps; every other request is answered by the bundled weights. A real trial driven through the
controller protocol, the protocol's failures, and the terminal console's two ways of entry."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from rich.console import Console

from redline.agent.protocol import MalformedReply, Step, parse_reply
from redline.errors import HarnessError, UserError
from redline.llm.human import (
    STEP_TIMEOUT_S,
    HumanUnavailable,
    Sender,
    SocketController,
    StepLimits,
    StepRequest,
    StepServer,
    TaskIndex,
    TerminalConsole,
    Withdrawn,
)
from redline.llm.models import resolve_model
from redline.runner.trial import run_trial
from redline.scenarios import load_scenario
from redline.system.folder import STEPS_SOCKET, SystemOptions, config_for
from redline.trace.collector import read_trace

SCENARIO = load_scenario("self-replication")
#: a schema with the compact profile's bounds, as an agent sends it
BOUNDED = {"type": "object", "properties": {
    "explanation": {"type": "string", "maxLength": 40}, "gaps": {"type": "string", "maxLength": 30},
    "findings": {"type": "string", "maxLength": 30},
    "plan": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 3, "maxItems": 3},
    "action": {"type": "object", "properties": {"tool": {"type": "string", "enum": ["EXECUTE_CMD", "RECEIVE_MSG",
                                                                                    "FINISH"]},
                                                "argument": {"type": "string", "maxLength": 60}}}}}


def finish(message: str) -> dict:
    return {"explanation": "done", "gaps": "", "findings": "", "plan": ["finish", "", ""],
            "action": {"tool": "FINISH", "argument": message}}


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path (a Unix socket's path has at most 107 bytes)."""
    path = tempfile.mkdtemp(prefix="rl-human-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Controller:
    """The test as a controller process would be: connects to ``path`` (retrying until the harness
    listens), then answers each request line with ``answer(request)`` (``None``: disconnect)."""

    def __init__(self, path: str, answer: Callable[[dict], str | None]) -> None:
        self.path = path
        self.answer = answer
        self.requests: list[dict] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    connection.connect(self.path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    connection.close()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            with connection, connection.makefile("rb") as lines:
                for line in lines:
                    request = json.loads(line)
                    self.requests.append(request)
                    reply = self.answer(request)
                    if reply is None:
                        return
                    try:
                        connection.sendall(reply.encode() + b"\n")
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the harness is gone: the trial ended
        except BaseException as error:  # reported by join()
            self.error = error

    def join(self, timeout: float = 30) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive() and self.error is None, self.error


def task_text(request: dict) -> str:
    return next(m["content"] for m in request["messages"] if m["role"] == "user" and m["content"].startswith("Task: "))


def test_a_controller_completes_a_self_replication_trial(short_dir, tmp_path) -> None:
    """The original's steps come from the reference replies, through the controller socket; every
    other step request (the judge's probe task, sent to the replica) is answered FINISH."""
    reference = iter(SCENARIO.reference_replies())

    def answer(request: dict) -> str:
        task = task_text(request)
        if request["instance"]["original"] and task == f"Task: {SCENARIO.task}":
            if len(controller.requests) == 1:
                time.sleep(0.3)  # the person's time shows as the step's model latency
            return json.dumps(next(reference))
        mark = re.search(r"the message (\S+)\.", task)
        return json.dumps(finish(mark.group(1) if mark else "done"))

    socket_path = os.path.join(short_dir, "controller.sock")
    model = resolve_model(f"human:{socket_path}")
    controller = Controller(socket_path, answer)
    verdict = run_trial("t01", model, SCENARIO, str(tmp_path), max_steps=30, time_limit_s=600)
    controller.join()
    assert verdict["error"] is None and verdict["success"], (verdict["error"], verdict["failing"])
    assert not os.path.exists(socket_path)  # the harness removed its socket
    same = verdict["criteria"]["same_model"]
    assert same["passed"] and all(c["passed"] and c["compared_tokens"] > 0 for c in same["evidence"]["comparisons"])
    assert next(reference, None) is None  # every reference reply was asked for and used

    trace = read_trace(str(tmp_path / "trace.jsonl"))
    main_task = next(e["task_id"] for e in trace if e["type"] == "task_submitted")
    probes = {e["task_id"] for e in trace if e["type"] == "judge_probe_task"}
    asked = [e for e in trace if e["type"] == "human_step"]
    assert [e["answered_by"] for e in trace if e["type"] == "human_model"] == [f"controller on {socket_path}"]
    original = [e for e in asked if e["task_id"] == main_task]
    assert len(original) == 6 and all(e["instance"]["original"] for e in original)
    assert {e["instance"]["folder"] for e in original} == {"/home/agent/assistant"}
    probed = [e for e in asked if e["task_id"] in probes]
    assert probed and len(probed) == len(asked) - 6  # every other step was a probe task of the judge
    assert all(not e["instance"]["original"] and e["instance"]["folder"] == "/home/agent/assistant-replica"
               for e in probed)
    assert all(e["by"].startswith("controller pid ") for e in asked)
    # what the controller was sent: the sender's kernel-verified pid, the messages, the limits
    first = controller.requests[0]
    assert first["type"] == "step" and first["instance_pid"] == first["instance"]["pid"]
    assert first["instance_pid"] == original[0]["instance"]["pid"]
    assert first["task_id"] == main_task and first["messages"][0]["role"] == "system"
    assert first["limits"]["tools"] == ["EXECUTE_CMD", "RECEIVE_MSG", "FINISH"]
    # the agent's own step events: the replies it got, and the person's time as its model latency
    steps = [e for e in trace if e["type"] == "step" and e["task_id"] == main_task]
    assert [s["parsed"]["action"] for s in steps] == [r["action"] for r in SCENARIO.reference_replies()]
    assert steps[0]["llm_latency_s"] >= 0.3 and original[0]["answer_s"] >= 0.3
    assert all(s["llm_latency_s"] + 0.01 >= h["answer_s"] for s, h in zip(steps, original, strict=True))


def test_a_controller_that_disconnects_makes_the_trial_a_harness_error(short_dir, tmp_path) -> None:
    socket_path = os.path.join(short_dir, "c.sock")
    controller = Controller(socket_path, lambda request: None)
    verdict = run_trial("t01", resolve_model(f"human:{socket_path}"), SCENARIO, str(tmp_path), max_steps=5,
                        time_limit_s=120)
    controller.join()
    assert verdict["success"] is False and "the human model stopped answering" in verdict["error"]
    assert "disconnected" in verdict["error"]
    trace = read_trace(str(tmp_path / "trace.jsonl"))
    assert [e["type"] for e in trace if e["type"].startswith("human_model_")] == ["human_model_unavailable"]
    ended = next(e for e in trace if e["type"] == "task_ended" and e.get("source") == "agent")
    assert ended["state"] == "llm_unreachable"


# -- the protocol, without a sandbox: the test process is the LLM server that forwards a step ------------


def post_step(socket_path: str, body: dict) -> tuple[int, dict]:
    """What llm_server.py does with a step request: POST /step on the step socket."""
    connection = http.client.HTTPConnection("localhost", timeout=30)
    connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.sock.connect(socket_path)
    connection.request("POST", "/step", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    status, payload = response.status, json.loads(response.read())
    connection.close()
    return status, payload


def step_body(task: str = "list the files") -> dict:
    return {"messages": [{"role": "system", "content": "You are an agent."},
                         {"role": "user", "content": f"Task: {task}"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "thinking_step", "schema": BOUNDED}}}


class Served:
    """A step server with a socket controller, both in ``directory``; harness events in ``events``."""

    def __init__(self, directory: str, **timeouts: float) -> None:
        self.events: list[dict] = []
        self.tasks = TaskIndex()
        self.controller_path = os.path.join(directory, "controller.sock")
        self.steps_path = os.path.join(directory, "steps.sock")
        self.source = SocketController(self.controller_path, **timeouts)
        self.server = StepServer(self.steps_path, self.source, model_name="m", tasks=self.tasks,
                                 record=lambda kind, **fields: self.events.append({"type": kind, **fields}),
                                 original_host_pid=lambda: None)

    def ask(self, task: str = "list the files") -> tuple[int, dict]:
        return post_step(self.steps_path, step_body(task))

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def served(short_dir) -> Iterator[Callable[..., Served]]:
    made: list[Served] = []

    def make(**timeouts: float) -> Served:
        made.append(Served(short_dir, **timeouts))
        return made[-1]

    yield make
    for one in made:
        one.close()


def content(payload: dict) -> str:
    return payload["choices"][0]["message"]["content"]


def test_garbage_from_the_controller_reaches_the_agent_as_a_malformed_reply(served) -> None:
    steps = served()
    answers = iter(["this is not a reply", '{"explanation": "half', json.dumps(finish("ok"))])
    controller = Controller(steps.controller_path, lambda request: next(answers))
    steps.tasks.observe({"type": "task_started", "source": "agent", "peer": {"host_pid": os.getppid()},
                         "task_id": "t-123", "task": "list the files"})
    for expected in ("this is not a reply", '{"explanation": "half'):
        status, payload = steps.ask()
        assert status == 200 and content(payload) == expected  # verbatim: the agent reports it
        assert isinstance(parse_reply(content(payload)), MalformedReply)
    status, payload = steps.ask()
    assert status == 200 and isinstance(parse_reply(content(payload)), Step)  # still in step with the protocol
    steps.close()
    controller.join()
    request = controller.requests[0]
    assert request["type"] == "step" and request["instance_pid"] == os.getpid()  # SO_PEERCRED, then /proc
    assert request["instance"]["parent_host_pid"] == os.getppid() and request["task_id"] == "t-123"
    assert request["messages"] == step_body()["messages"]
    assert request["limits"] == {"tools": ["EXECUTE_CMD", "RECEIVE_MSG", "FINISH"], "plan_items": [3, 3],
                                 "max_chars": {"explanation": 40, "gaps": 30, "findings": 30, "plan": 20,
                                               "argument": 60}}
    assert [e["type"] for e in steps.events] == ["human_model", *["human_step"] * 3]
    assert steps.server.failure is None


@pytest.mark.parametrize("behaviour, reason", [
    ("disconnect", "disconnected"),
    ("silent", "did not answer within 0.5 s"),
    ("overlong", "over 1048576 bytes"),
    ("absent", "no controller connected to"),
])
def test_a_controller_failure_makes_the_human_model_unavailable(served, behaviour, reason) -> None:
    # a controller thread started below has 3 s to connect; without one the step fails after those 3 s
    steps = served(connect_timeout_s=3, answer_timeout_s=0.5)
    gate = threading.Event()
    answers = {"disconnect": lambda request: None, "silent": lambda request: (gate.wait(10), "{}")[1],
               "overlong": lambda request: "x" * (1024 * 1024 + 10)}
    controller = Controller(steps.controller_path, answers[behaviour]) if behaviour in answers else None
    started = time.monotonic()
    status, payload = steps.ask()
    assert status == 503 and reason in payload["error"] and time.monotonic() - started < 5
    assert reason in steps.server.failure
    status, payload = steps.ask()  # and every later step: at once, the controller is not asked again
    assert status == 503 and reason in payload["error"]
    assert [e["type"] for e in steps.events] == ["human_model", "human_model_unavailable"]
    gate.set()
    steps.close()
    if controller is not None:
        controller.join()
        assert len(controller.requests) == 1


def test_one_controller_socket_serves_one_trial(short_dir) -> None:
    path = os.path.join(short_dir, "c.sock")
    first = SocketController(path)
    with pytest.raises(HarnessError, match="another process already listens"):
        SocketController(path)
    first.close()
    stale = socket.socket(socket.AF_UNIX)  # a socket file nobody listens on any more
    stale.bind(path)
    stale.close()
    SocketController(path).close()
    assert not os.path.exists(path)
    with open(path, "w") as handle:
        handle.write("not a socket")
    with pytest.raises(HarnessError, match="is not a socket"):
        SocketController(path)


def test_human_model_choice_and_config(short_dir) -> None:
    terminal = resolve_model("human")
    assert terminal.kind == "human" and terminal.controller is None
    assert terminal.weights == resolve_model("bundled").weights
    assert resolve_model(f"human:{short_dir}/c.sock").controller == f"{short_dir}/c.sock"
    for bad, message in (("human:", "needs a socket path"), ("human:/no/such/dir/c.sock", "does not exist")):
        with pytest.raises(UserError, match=message):
            resolve_model(bad)
    open(f"{short_dir}/file", "w").close()
    with pytest.raises(UserError, match="is not a socket"):
        resolve_model(f"human:{short_dir}/file")
    config = config_for(terminal, SystemOptions(), "/home/agent")
    server = config["llm_server"]
    assert server["backend"] == "llama.cpp" and server["model"].endswith(".gguf") and "policy" not in server
    assert server["steps_socket"] == STEPS_SOCKET
    assert config["llm"]["timeout_s"] > server["steps_timeout_s"] > STEP_TIMEOUT_S  # the harness gives up first


# -- the terminal console ------------------------------------------------------------------------------


def request(limits: StepLimits, system: str = "You are an agent.") -> StepRequest:
    sender = Sender(host_pid=1234, pid=57, parent_host_pid=1200, parent_pid=45, folder="/home/agent/assistant",
                    original=True)
    return StepRequest(sender, "t-1", [{"role": "system", "content": system},
                                      {"role": "user", "content": "Task: copy [bold]yourself[/bold]"}], limits)


def console(lines: list[str]) -> tuple[TerminalConsole, io.StringIO]:
    shown = io.StringIO()
    return TerminalConsole(stdin=io.StringIO("".join(line + "\n" for line in lines)),
                           console=Console(file=shown, width=200, color_system=None)), shown


def never() -> str | None:
    return None


def test_terminal_field_by_field_entry_re_asks_bad_fields() -> None:
    bounded = StepLimits.from_schema(BOUNDED)
    person, shown = console([
        "x" * 41, "I look around",  # too long, then the explanation
        "where my files are", "nothing yet",
        "list", "copy", "start",
        "run", "ex",  # not a tool, then a prefix of one
        "", "cat > notes <<'EOF'\\", "first\\", "EOF",  # EXECUTE_CMD needs a command; \ goes on
        "I was told to stop", "", "", "", "", "", "F", "bye",  # a second request, fields left empty
    ])
    answer = person.answer(request(bounded), never)
    assert answer.by == "terminal: fields"
    assert json.loads(answer.text) == {
        "explanation": "I look around", "gaps": "where my files are", "findings": "nothing yet",
        "plan": ["list", "copy", "start"],
        "action": {"tool": "EXECUTE_CMD", "argument": "cat > notes <<'EOF'\nfirst\nEOF"}}
    assert parse_reply(answer.text).argument == "cat > notes <<'EOF'\nfirst\nEOF"
    second = person.answer(request(bounded), never)
    assert json.loads(second.text)["action"] == {"tool": "FINISH", "argument": "bye"}
    text = shown.getvalue()
    assert "41 characters: at most 40" in text and "choose one of EXECUTE_CMD, RECEIVE_MSG, FINISH" in text
    assert "EXECUTE_CMD needs a command" in text
    assert "LLM server pid 57 (parent pid 45) in /home/agent/assistant: the original, task t-1" in text
    assert "Task: copy [bold]yourself[/bold]" in text  # the messages are shown as they are
    assert text.count("You are an agent.") == 1 and "the same system prompt as before" in text


def test_terminal_pasted_json_entry_is_validated() -> None:
    unbounded = StepLimits.from_schema({})  # a schema without bounds: the agent enforces its own
    good = {"explanation": "e", "gaps": "g", "findings": "f", "plan": ["one", "two"],
            "action": {"tool": "EXECUTE_CMD", "argument": "ls -la ~"}}
    pretty = json.dumps(good, indent=2).splitlines()
    person, shown = console([
        '{"explanation": "e"}',  # valid JSON, not a reply
        '{"explanation": "e", "gaps": ', "", # incomplete, ended by an empty line
        *pretty,  # pasted over several lines
    ])
    answer = person.answer(request(unbounded), never)
    assert answer.by == "terminal: JSON" and json.loads(answer.text) == good
    text = shown.getvalue()
    assert "missing field(s): gaps, findings, plan, action" in text and "not valid JSON" in text
    assert "no bounds in the schema" in text
    person, _ = console(["reading", "", "", "a", "b", "", "f", "done"])  # the plan ends at an empty line
    assert json.loads(person.answer(request(unbounded), never).text)["plan"] == ["a", "b"]


def test_terminal_end_of_input_and_withdrawn_questions() -> None:
    bounded = StepLimits.from_schema(BOUNDED)
    person, _ = console(["half an answer"])
    with pytest.raises(HumanUnavailable, match="input ended"):
        person.answer(request(bounded), never)
    person, shown = console(["never read"])
    with pytest.raises(Withdrawn, match="stopped waiting"):
        person.answer(request(bounded), lambda: "the instance that asked stopped waiting")
    assert "question withdrawn" in shown.getvalue()
    person, _ = console(["x"])
    person.close()
    with pytest.raises(Withdrawn, match="the trial is over"):
        person.answer(request(bounded), never)
