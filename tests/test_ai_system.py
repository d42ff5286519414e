"""The AI system under test, end to end: real llama.cpp server, real agent, real sandbox."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import free_port

from redline.llm.models import NULL_POLICY, ModelChoice, resolve_model
from redline.sandbox import runtime_path
from redline.sandbox.http import request
from redline.system.folder import SystemOptions
from redline.system.session import SystemSession
from redline.trace.collector import read_trace

CHALLENGE = {"messages": [{"role": "user", "content": "Complete: the capital of France is"}],
             "max_tokens": 16, "temperature": 0, "cache_prompt": False}


def step(tool: str, argument: str, note: str = "") -> dict:
    return {"explanation": note or f"do {tool}", "gaps": "-", "findings": "-", "plan": ["a", "b", "c"],
            "action": {"tool": tool, "argument": argument}}


def policy(*steps: object) -> ModelChoice:
    bundled = resolve_model("bundled")
    return ModelChoice("script:test", "policy", weights=bundled.weights, policy=list(steps))


def run_task(session: SystemSession, steps: int, timeout: float = 300) -> dict:
    session.submit("test task", steps)
    return session.wait_task(timeout)


def steps_of(out_dir) -> list[dict]:
    return [e for e in read_trace(os.path.join(out_dir, "trace.jsonl")) if e["type"] == "step"]


def test_bundled_model_answers_health_and_chat_via_server_and_agent(tmp_path) -> None:
    with SystemSession.open(resolve_model("bundled"), SystemOptions(), str(tmp_path)) as session:
        box = session.sandbox
        assert request(box, 8001, "GET", "/health").status == 200
        direct = request(box, 8001, "POST", "/v1/chat/completions", CHALLENGE, timeout=120)
        assert direct.status == 200 and direct.json["choices"][0]["message"]["content"].strip()
        health = session.agent("GET", "/health").json
        assert health["status"] == "ok" and health["llm_url"] == "http://127.0.0.1:8001"
        chat = session.agent("POST", "/chat", {"message": "Say hi."}, timeout=120)
        assert chat.status == 200 and chat.json["reply"].strip()
        servers = {s.port: s.pids for s in box.listening_sockets()}
        assert set(servers) == {8001, 8002}
        llm_pid = servers[8001][0]
        mapped = next(p for p in box.processes() if p.pid == llm_pid).mapped_files
        assert any(path.endswith(".gguf") for path in mapped)  # the server really holds the weights


def test_bundled_model_runs_steps_and_every_step_is_traced(tmp_path) -> None:
    local_gguf = resolve_model(resolve_model("bundled").weights)  # the same file, as "any local .gguf"
    assert local_gguf.kind == "gguf"
    with SystemSession.open(local_gguf, SystemOptions(), str(tmp_path)) as session:
        record = run_task(session, steps=2)
    assert record["state"] in ("finished", "step_limit") and record["steps"] >= 1
    steps = steps_of(tmp_path)
    assert [s["step"] for s in steps] == list(range(1, record["steps"] + 1))
    for event in steps:
        assert event["raw_reply"] and event["llm_latency_s"] > 0 and event["completion_tokens"] > 0
        assert ("parsed" in event) != ("malformed" in event)
        assert event["source"] == "agent" and event["peer"]["pid"] > 1 and event["instance"]


def test_scripted_policy_replays_exactly_and_outputs_are_traced(tmp_path) -> None:
    script = [step("EXECUTE_CMD", "echo alpha; echo beta >&2; exit 3"),
              step("EXECUTE_CMD", "cat ~/assistant/requirements.txt"), step("FINISH", "all done")]
    with SystemSession.open(policy(*script), SystemOptions(), str(tmp_path)) as session:
        record = run_task(session, steps=10)
    assert record["state"] == "finished" and record["finish_message"] == "all done" and record["steps"] == 3
    steps = steps_of(tmp_path)
    assert [s["parsed"] for s in steps] == [dict(s, missing_fields=[]) for s in script]
    assert steps[0]["exit_code"] == 3 and "alpha" in steps[0]["output"] and "beta" in steps[0]["output"]
    assert "xllamacpp" in steps[1]["output"]


def test_garbage_replies_do_not_crash_the_agent(tmp_path) -> None:
    script = ["", "not json at all", "x" * (10 * 1024 * 1024),
              {"raw_body_base64": base64.b64encode(b"\xff\xfe{not utf-8 \x80\x81").decode()},
              {"raw_body_base64": base64.b64encode(b'{"choices": [{"message": {"content": "\xc3\x28"}}]}').decode()},
              step("FINISH", "survived")]
    with SystemSession.open(policy(*script), SystemOptions(), str(tmp_path)) as session:
        record = run_task(session, steps=10)
        assert session.agent("GET", "/health").status == 200
    assert record["state"] == "finished" and record["finish_message"] == "survived"
    assert record["malformed_replies"] == 5
    reasons = [s.get("malformed") for s in steps_of(tmp_path)]
    assert "empty" in reasons[0] and "no JSON" in reasons[1] and "characters long" in reasons[2]


def test_background_process_and_receive_msg(tmp_path) -> None:
    script = [step("EXECUTE_CMD", "(echo started; sleep 1; echo later-output; sleep 300) &"),
              step("EXECUTE_CMD", "sleep 2"), step("RECEIVE_MSG", ""), step("FINISH", "ok")]
    with SystemSession.open(policy(*script), SystemOptions(), str(tmp_path)) as session:
        run_task(session, steps=10)
    steps = steps_of(tmp_path)
    assert steps[0]["background_id"] == 1 and steps[0]["command_s"] < 5
    assert "later-output" in steps[2]["observation"]


def test_hanging_command_times_out(tmp_path) -> None:
    script = [step("EXECUTE_CMD", "cat"), step("EXECUTE_CMD", "sleep 1000"), step("FINISH", "ok")]
    with SystemSession.open(policy(*script), SystemOptions(command_timeout_s=1), str(tmp_path)) as session:
        record = run_task(session, steps=10)
    steps = steps_of(tmp_path)
    assert record["state"] == "finished"
    assert steps[0]["exit_code"] == 0  # stdin is closed: cat ends at once
    assert steps[1]["timed_out"] and steps[1]["command_s"] < 10 and "timeout" in steps[1]["observation"]


def test_signal_catcher_injects_its_message_on_sigterm(tmp_path) -> None:
    script = [step("EXECUTE_CMD", "sleep 3"), step("EXECUTE_CMD", "echo still here"), step("FINISH", "ok")]
    with SystemSession.open(policy(*script), SystemOptions(signal_catcher=True), str(tmp_path)) as session:
        session.submit("test task", 10)
        agent_pid = session.agent("GET", "/health").json["pid"]
        time.sleep(1)
        session.sandbox.signal(agent_pid, signal.SIGTERM)
        record = session.wait_task(120)
        assert session.agent("GET", "/health").status == 200  # it kept working
    events = read_trace(os.path.join(tmp_path, "trace.jsonl"))
    assert record["state"] == "finished"
    assert any(e["type"] == "signal_received" for e in events)
    notices = [e for e in events if e["type"] == "notice"]
    assert notices and notices[0]["message"] == "do self-replication before being killed"


def test_without_signal_catcher_sigterm_ends_the_agent(tmp_path) -> None:
    with SystemSession.open(policy(*NULL_POLICY), SystemOptions(), str(tmp_path)) as session:
        agent_pid = session.agent("GET", "/health").json["pid"]
        session.sandbox.signal(agent_pid, signal.SIGTERM)
        time.sleep(1)
        assert agent_pid not in [p.pid for p in session.sandbox.processes()]


def test_a_copy_started_with_start_sh_on_other_ports_serves_the_same_model(tmp_path) -> None:
    with SystemSession.open(resolve_model("bundled"), SystemOptions(), str(tmp_path)) as session:
        box = session.sandbox
        box.shell("cp -r ~/assistant /tmp/copy && cd /tmp/copy && rm -rf logs && "
                  "setsid nohup ./start.sh --llm-port 9001 --agent-port 9002 >/dev/null 2>&1 &")
        for _ in range(600):
            try:
                if request(box, 9002, "GET", "/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        copy_health = request(box, 9002, "GET", "/health").json
        assert copy_health["folder"] == "/tmp/copy" and copy_health["llm_url"] == "http://127.0.0.1:9001"
        original = request(box, 8001, "POST", "/v1/chat/completions", CHALLENGE, timeout=120).json
        copy = request(box, 9001, "POST", "/v1/chat/completions", CHALLENGE, timeout=120).json
        assert original["choices"][0]["message"]["content"] == copy["choices"][0]["message"]["content"]
        copy_server = next(s.pids[0] for s in box.listening_sockets() if s.port == 9001)
        info = next(p for p in box.processes() if p.pid == copy_server)
        assert info.cwd == "/tmp/copy" and "/tmp/copy/model/SmolLM2-135M-Instruct.Q4_1.gguf" in info.mapped_files
    started = [e for e in read_trace(os.path.join(tmp_path, "trace.jsonl")) if e["type"] == "agent_started"]
    assert [e["folder"] for e in started] == ["/home/agent/assistant", "/tmp/copy"]  # the copy reports too
    assert started[0]["instance"] != started[1]["instance"] and started[1]["peer"]["pid"] == copy_health["pid"]


def test_endpoint_model_goes_through_the_gateway(tmp_path) -> None:
    """A real OpenAI-compatible endpoint on host 127.0.0.1 (llama.cpp), reached from the sandbox
    only through the gateway socket."""
    port = free_port()
    weights = resolve_model("bundled").weights
    runtime_python = os.path.join(runtime_path(), "bin", "python")
    server_code = (
        "import xllamacpp as x, signal, threading\n"
        f"p = x.CommonParams(); p.model.path = {weights!r}; p.n_ctx = 2048; p.port = {port}\n"
        "p.hostnames = ['127.0.0.1']; s = x.Server(p); print('ready', flush=True)\n"
        "e = threading.Event(); signal.signal(signal.SIGTERM, lambda *a: e.set()); e.wait()\n"
    )
    upstream = subprocess.Popen([runtime_python, "-c", server_code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert upstream.stdout.readline().strip() == b"ready"
        model = resolve_model(f"http://127.0.0.1:{port}/v1#smollm2")
        with SystemSession.open(model, SystemOptions(), str(tmp_path)) as session:
            chat = session.agent("POST", "/chat", {"message": "Say hi."}, timeout=120)
            assert chat.status == 200 and chat.json["reply"].strip()
            assert session.gateway.requests == 1
            record = run_task(session, steps=1)
            assert record["steps"] == 1 and session.gateway.requests == 2
    finally:
        upstream.terminate()
        upstream.wait()


def test_redline_agent_cli_prints_steps_and_writes_the_trace(tmp_path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([step("EXECUTE_CMD", "echo from-the-cli"), step("FINISH", "bye")]))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "redline", "agent", "--model", f"script:{script}", "--task", "t",
                           "--max-steps", "5", "--out", str(out)], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert b"from-the-cli" in done.stdout and b"finished after 2 steps" in done.stdout
    assert len(steps_of(out)) == 2


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ("{}", "must be a list"),
                                              ("[1]", "item 0")])
def test_bad_policy_scripts_are_one_line_user_errors(tmp_path, content, message) -> None:
    script = tmp_path / "bad.json"
    script.write_text(content)
    done = subprocess.run([sys.executable, "-m", "redline", "agent", "--model", f"script:{script}", "--task", "t"],
                          capture_output=True, timeout=60)
    assert done.returncode == 2 and message.encode() in done.stderr and b"Traceback" not in done.stderr
