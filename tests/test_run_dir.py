"""A run directory interrupted at any moment: ``redline show`` reads it, the same command resumes
it, no trial is lost or counted twice; unreadable files; exit codes of runs whose trials the
harness failed."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from _fake_endpoint import FastEndpoint
from conftest import run_cli

from redline.llm.models import resolve_model
from redline.runner.run import (
    RunPlan,
    ScenarioOverrides,
    collect_results,
    pending_trials,
    prepare_run_dir,
    read_run,
    runner_identity,
    trial_state,
    write_results,
)
from redline.runner.summary import error_causes
from redline.sandbox.bwrap import state
from redline.scenarios import load_scenario

RUN = ["run", "--model", "null", "--trials", "2", "--concurrency", "1"]


@pytest.fixture
def runner() -> Iterator[Callable[..., subprocess.Popen]]:
    """Starts ``redline run ARGS --out OUT`` in a child process, as a user does (default ARGS:
    :data:`RUN`); a child still running at the end of the test is killed, by its pid."""
    started: list[subprocess.Popen] = []

    def start(out: str, *args: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "redline", *(args or RUN), "--out", out],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.002)


def trial_file(out: str, trial_id: str, name: str) -> str:
    return os.path.join(out, "trials", trial_id, name)


def has_event(path: str, kind: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return f'"{kind}"' in handle.read()
    except FileNotFoundError:
        return False


def kill_right_after_start(out: str, process: subprocess.Popen) -> None:
    wait_until(lambda: os.path.exists(os.path.join(out, "run.json")), "run.json is written")
    os.kill(process.pid, signal.SIGKILL)


def kill_while_a_trial_runs(out: str, process: subprocess.Popen) -> None:
    wait_until(lambda: has_event(trial_file(out, "t01", "trace.jsonl"), "task_started"), "t01's task runs")
    os.kill(process.pid, signal.SIGKILL)


def kill_between_trials(out: str, process: subprocess.Popen) -> None:
    """t02's first write is its status file, through a temp file of the same name + ``.tmp``: a FIFO
    there holds the runner exactly between t01's verdict and t02's start (a real temp file left by
    a kill looks the same to a resumed run)."""
    wait_until(lambda: os.path.exists(os.path.join(out, "run.json")), "run.json is written")
    os.makedirs(os.path.join(out, "trials", "t02"))
    os.mkfifo(trial_file(out, "t02", "status.json.tmp"))
    assert not os.path.exists(trial_file(out, "t01", "verdict.json"))  # the FIFO was there in time
    wait_until(lambda: os.path.exists(trial_file(out, "t01", "verdict.json"))
               and not os.path.exists(trial_file(out, "t01", "status.json")), "t01 has its verdict")
    time.sleep(0.3)
    assert not os.path.exists(trial_file(out, "t02", "status.json"))  # held before t02 started
    os.kill(process.pid, signal.SIGKILL)


def show(out: str) -> str:
    done = run_cli("show", out)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def status_of(shown: str, trial_id: str) -> str:
    row = next(line for line in shown.splitlines() if line.startswith(f"│ {trial_id} "))
    return row.split("│")[2].strip()


@pytest.mark.parametrize("kill, statuses", [
    (kill_right_after_start, {"t01": ("pending", "interrupted"), "t02": ("pending",)}),
    (kill_while_a_trial_runs, {"t01": ("interrupted",), "t02": ("pending",)}),
    (kill_between_trials, {"t01": ("done",), "t02": ("pending",)}),
], ids=["right-after-start", "while-a-trial-runs", "between-trials"])
def test_a_sigkilled_run_can_be_shown_and_is_resumed_without_counting_a_trial_twice(tmp_path, runner, kill,
                                                                                       statuses) -> None:
    out = str(tmp_path / "run")
    process = runner(out)
    kill(out, process)
    assert process.wait(timeout=60) == -signal.SIGKILL
    verdicts_before = {t: open(trial_file(out, t, "verdict.json")).read() for t in ("t01", "t02")
                       if os.path.exists(trial_file(out, t, "verdict.json"))}

    shown = show(out)
    for trial_id, allowed in statuses.items():
        assert status_of(shown, trial_id) in allowed, shown
    assert "have no verdict: run the same redline run command" in shown

    resumed = runner(out)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()
    # the run ends with its analysis and report, over every trial, resumed or not
    report = os.path.abspath(os.path.join(out, "report.html"))
    assert stdout.decode().rstrip().endswith(f"report: {report} (1 run(s))") and os.path.getsize(report) > 0
    assert [t["trial_id"] for t in json.load(open(os.path.join(out, "analysis.json")))["trials"]] == ["t01", "t02"]
    results = json.load(open(os.path.join(out, "results.json")))
    summary = results["summary"]
    assert summary["trials"] == summary["judged"] == 2 and summary["pending"] == summary["errors"] == 0
    assert results["statuses"] == {"t01": "done", "t02": "done"}
    assert [results["verdicts"][t]["trial"] for t in ("t01", "t02")] == ["t01", "t02"]
    for trial_id, content in verdicts_before.items():  # a trial with a verdict is never run again
        assert open(trial_file(out, trial_id, "verdict.json")).read() == content
    for trial_id in ("t01", "t02"):
        trial_dir = os.path.join(out, "trials", trial_id)
        attempts = sorted(name for name in os.listdir(trial_dir) if name.startswith("attempt-"))
        events = [json.loads(line)["type"] for line in open(os.path.join(trial_dir, "trace.jsonl"))]
        assert events.count("sandbox_created") == 1  # the final attempt's trace holds one trial
        if statuses[trial_id] == ("interrupted",):
            assert attempts == ["attempt-1"] and has_event(os.path.join(trial_dir, "attempt-1", "trace.jsonl"),
                                                          "task_started")
    if kill is kill_between_trials:  # the held temp file was set aside with the interrupted attempt
        assert os.listdir(trial_file(out, "t02", "attempt-1")) == ["status.json.tmp"]
    assert len(json.load(open(os.path.join(out, "run.json")))["resumed"]) == 1
    shown = show(out)
    assert status_of(shown, "t01") == status_of(shown, "t02") == "done"
    assert os.listdir(os.path.join(state.state_root(), "slots")) == []  # no sandbox left behind


def test_unreadable_verdict_and_status_count_as_pending_and_are_run_again(tmp_path, runner) -> None:
    out = str(tmp_path / "run")
    asked = RunPlan(resolve_model("null"), load_scenario("self-replication"), ScenarioOverrides(), 2, 1, out)
    prepare_run_dir(out, asked.request, asked.model, asked.scenario)  # the run.json of RUN
    truncated = json.dumps({"schema_version": 2, "success": False, "error": None, "trial": "t01"})[:40].encode()
    write(trial_file(out, "t01", "verdict.json"), truncated.decode())  # a verdict cut short
    write(trial_file(out, "t02", "status.json"), "\x00\x00{")  # a status of garbage

    shown = show(out)
    assert status_of(shown, "t01") == status_of(shown, "t02") == "pending"
    assert "t01: verdict.json is unreadable" in shown and "t02: status.json is unreadable" in shown

    resumed = runner(out)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["summary"]["judged"] == 2 and results["problems"] == {}
    assert open(trial_file(out, "t01", "attempt-1/verdict.json"), "rb").read() == truncated
    assert open(trial_file(out, "t02", "attempt-1/status.json"), "rb").read() == b"\x00\x00{"


def write(path: str, content: object) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content if isinstance(content, str) else json.dumps(content))


def dead_runner() -> dict:
    """The identity of a process that has ended (started and reaped here)."""
    process = subprocess.Popen(["sleep", "30"])
    identity = {**runner_identity(), "pid": process.pid}
    with open(f"/proc/{process.pid}/stat") as stat:
        identity["start_ticks"] = int(stat.read().rsplit(")", 1)[1].split()[19])
    process.kill()
    process.wait()
    return identity


VERDICT = {"success": False, "error": None, "failing": ["live"]}


@pytest.mark.parametrize("files, status, problem", [
    ({}, "pending", None),
    ({"verdict.json": VERDICT}, "done", None),
    ({"verdict.json": {**VERDICT, "error": "HarnessError: x"}}, "error", None),
    ({"verdict.json": VERDICT, "status.json": {"status": "running"}}, "done", None),
    ({"verdict.json": '{"success": fal'}, "pending", "verdict.json is unreadable"),
    ({"verdict.json": "[1, 2]"}, "pending", "verdict.json is not a JSON object"),
    ({"verdict.json": {"schema_version": 2}}, "pending", "verdict.json has no 'success'"),
    ({"status.json": "{\"status\": \"runn"}, "pending", "status.json is unreadable"),
    ({"status.json": {"status": "interrupted"}}, "interrupted", None),
    ({"status.json": {"status": "running", "runner": "self"}}, "running", None),
    ({"status.json": {"status": "running", "runner": "dead"}}, "interrupted", None),
    ({"status.json": {"status": "running", "runner": "reused pid"}}, "interrupted", None),
    ({"status.json": {"status": "running", "runner": "rebooted"}}, "interrupted", None),
    ({"status.json": {"status": "running", "runner": "other host"}}, "running", None),
    ({"status.json": {"status": "running"}}, "running", None),  # recorded before runners were: unknown
    ({"status.json": {"status": "weird"}}, "pending", "status.json says 'weird'"),
])
def test_trial_state_from_its_files(tmp_path, files, status, problem) -> None:
    runners = {"self": runner_identity(), "dead": dead_runner(),
               "reused pid": {**runner_identity(), "start_ticks": 1},
               "rebooted": {**runner_identity(), "boot_id": "another boot"},
               "other host": {**dead_runner(), "host": "elsewhere"}}
    for name, content in files.items():
        if isinstance(content, dict) and content.get("runner"):
            content = {**content, "runner": runners[content["runner"]]}
        write(str(tmp_path / name), content)
    found = trial_state(str(tmp_path))
    assert found.status == status
    assert (found.problem or "").startswith(problem or "") and bool(found.problem) == bool(problem)
    assert (found.verdict is not None) == (status in ("done", "error"))


def test_show_computes_what_write_results_writes_and_resume_sets_bad_files_aside(tmp_path) -> None:
    out = str(tmp_path)
    run = {"request": {"model": "null"}, "model": {"label": "null"}, "scenario": {"id": "self-replication"},
           "trial_ids": ["t01", "t02", "t03"]}
    write(os.path.join(out, "run.json"), run)
    write(trial_file(out, "t01", "verdict.json"), VERDICT)
    write(trial_file(out, "t02", "verdict.json"), "{trunc")
    write(trial_file(out, "t02", "trace.jsonl"), "")
    write(trial_file(out, "t02", "attempt-1/trace.jsonl"), "")
    write(trial_file(out, "t03", "status.json"), {"status": "running", "runner": dead_runner()})
    collected = collect_results(out, read_run(out))
    assert not os.path.exists(os.path.join(out, "results.json"))  # reading writes nothing
    assert write_results(out, read_run(out)) == collected == json.load(open(os.path.join(out, "results.json")))
    assert collected["statuses"] == {"t01": "done", "t02": "pending", "t03": "interrupted"}
    assert list(collected["problems"]) == ["t02"] and collected["summary"]["pending"] == 2
    assert pending_trials(out, run["trial_ids"]) == ["t02", "t03"]
    assert sorted(os.listdir(trial_file(out, "t02", "attempt-2"))) == ["trace.jsonl", "verdict.json"]
    assert os.listdir(trial_file(out, "t03", "attempt-1")) == ["status.json"]
    assert sorted(os.listdir(os.path.join(out, "trials", "t02"))) == ["attempt-1", "attempt-2"]


@pytest.mark.parametrize("make, message", [
    (lambda path: None, "does not exist"),
    (lambda path: open(path, "w").close(), "is not a directory"),
    (lambda path: os.makedirs(path), "has no run.json: it is not a redline run directory"),
    (lambda path: write(os.path.join(path, "run.json"), '{"request": '), "run.json is unreadable"),
    (lambda path: write(os.path.join(path, "run.json"), {"other": 1}), "is not a redline run record"),
])
def test_show_of_what_is_not_a_run_is_a_one_line_usage_error(tmp_path, make, message) -> None:
    path = str(tmp_path / "thing")
    make(path)
    done = run_cli("show", path)
    assert done.returncode == 2 and message.encode() in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and b"Traceback" not in done.stderr


def test_error_causes_are_distinct_first_lines_with_counts_and_trials() -> None:
    verdicts = {"t01": {"error": "HarnessError: A\nlog tail 1"}, "t02": {"error": None},
                "t03": {"error": "OSError: B"}, "t04": {"error": "HarnessError: A\nlog tail 2"}}
    assert error_causes(verdicts) == [{"cause": "HarnessError: A", "count": 2, "trials": ["t01", "t04"]},
                                      {"cause": "OSError: B", "count": 1, "trials": ["t03"]}]


class _BrokenCompletions(http.server.BaseHTTPRequestHandler):
    """An endpoint that lists its models but fails every completion."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int) -> None:
        body = json.dumps({"data": [{"id": "m"}]} if status == 200 else {"error": "broken"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._send(200)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(500)


@pytest.fixture
def broken_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BrokenCompletions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_run_whose_trials_all_failed_in_the_harness_exits_125_with_the_causes(tmp_path, broken_endpoint) -> None:
    done = run_cli("run", "--model", broken_endpoint, "--trials", "2", "--concurrency", "1",
                   "--out", str(tmp_path / "run"), timeout=300)
    assert done.returncode == 125, done.stderr
    stderr = done.stderr.decode()
    assert stderr.startswith("redline: harness error: all 2 trials failed in the harness, so none was judged: "
                             "2 trials (t01, t02): ") and len(stderr.strip().splitlines()) == 1
    assert "harness errors" in done.stdout.decode() and "2 trials (t01, t02): " in done.stdout.decode()


def test_a_run_with_some_harness_errors_exits_0_and_prints_their_causes(tmp_path, runner) -> None:
    endpoint = FastEndpoint()
    out = str(tmp_path / "run")
    try:
        process = runner(out, "run", "--model", f"http://127.0.0.1:{endpoint.port}/v1#fast", "--trials", "2",
                         "--concurrency", "1")
        wait_until(lambda: os.path.exists(trial_file(out, "t01", "verdict.json")), "t01 has its verdict")
    finally:
        endpoint.close()  # t02's LLM server finds nothing behind the gateway
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["statuses"] == {"t01": "done", "t02": "error"}
    assert "harness errors" in stdout.decode() and "1 trial (t02): HarnessError:" in stdout.decode()


def test_stop_of_a_grid_kills_every_sandbox_of_its_runs_and_the_runner_stops(tmp_path, runner) -> None:
    """The kill switch on this machine: ``redline stop PARENT`` signals the runner and kills the
    sandboxes labelled with the running cell's run id, verified from their cgroups."""
    parent = str(tmp_path / "grid")
    process = runner(parent, "run", "--model", "bundled", "--model", "null", "--trials", "1", "--max-steps", "30",
                     "--concurrency", "1")
    cell = os.path.join(parent, "bundled--self-replication")
    wait_until(lambda: os.path.exists(trial_file(cell, "t01", "trace.jsonl"))
               and b'"task_started"' in open(trial_file(cell, "t01", "trace.jsonl"), "rb").read(), "the task started")
    run_id = json.load(open(os.path.join(cell, "run.json")))["id"]
    stopped = run_cli("stop", parent, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    out = stopped.stdout.decode()
    assert f"run {run_id}" in out and f"the runner (pid {process.pid}) was told to stop" in out
    assert "✓ this machine: 1 sandbox(es) stopped" in out
    assert process.wait(timeout=60) == 130
    assert state.stop_run(run_id) == []  # process facts: nothing of the run is left
    assert status_of(show(cell), "t01") == "interrupted"
