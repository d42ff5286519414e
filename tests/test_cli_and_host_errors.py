"""The CLI as a user runs it, and one-line errors for bad input and unfit hosts; every incompatibility
of ``redline run``'s options, scenario and model refused before anything starts."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator

import pytest
from conftest import free_port, run_cli

from redline.errors import UserError
from redline.llm.models import ModelChoice, resolve_model
from redline.runner.compatibility import check_compatible
from redline.runner.run import RunPlan, ScenarioOverrides, hold_run_dir, prepare_run_dir
from redline.sandbox import Limits, SandboxSpec, WeakContainmentRefused, default_spec
from redline.sandbox.bwrap import BwrapBackend, host
from redline.sandbox.cgroups import CgroupSupport
from redline.sandbox.errors import SandboxUnavailable
from redline.scenarios import load_scenario


def test_exec_streams_output_and_returns_the_exit_code() -> None:
    done = run_cli("sandbox", "exec", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert done.returncode == 7
    assert done.stdout == b"out\n" and done.stderr == b"err\n"


def test_exec_passes_stdin_env_cwd_and_limits() -> None:
    done = run_cli("sandbox", "exec", "--memory", "256M", "--processes", "32", "-e", "GREETING=hi",
                   "--cwd", "/tmp", "--", "sh", "-c", 'cat; echo "$GREETING $(pwd)"', stdin=b"piped\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"piped\nhi /tmp\n"


def test_exec_timeout_exits_124() -> None:
    done = run_cli("sandbox", "exec", "--timeout", "1", "--", "sleep", "30")
    assert done.returncode == 124
    assert b"timed out" in done.stderr


def test_missing_command_in_sandbox_is_the_commands_failure_not_the_harness() -> None:
    done = run_cli("sandbox", "exec", "--", "no-such-program")
    assert done.returncode == 127
    assert b"Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (["sandbox", "exec", "--bogus", "--", "true"], b"No such option"),
    (["sandbox", "exec", "--memory", "lots", "--", "true"], b"invalid size 'lots'"),
    (["sandbox", "exec", "-e", "NOEQUALS", "--", "true"], b"NAME=VALUE"),
    (["sandbox", "exec"], b"Missing argument"),
    (["sandbox", "frobnicate"], b"No such command"),
])
def test_user_mistakes_get_one_line_and_exit_2(args, message) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert b"Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_check_reports_every_item_enforced_and_verified() -> None:
    done = run_cli("sandbox", "check", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["complete"] and report["passed"]
    names = {item["name"] for item in report["items"]}
    assert {"memory limit", "process limit", "cpu limit", "network namespace"} <= names
    assert all(check["passed"] for check in report["self_check"])


def test_missing_bubblewrap_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setenv("REDLINE_BWRAP", "/nonexistent/bwrap")
    done = run_cli("sandbox", "exec", "--", "true")
    assert done.returncode == 125
    assert b"apt-get install bubblewrap" in done.stderr
    assert b"Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sysctl, value, hint", [
    ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces"),
    ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=1"),
])
def test_host_without_user_namespaces_is_refused_with_the_fix(monkeypatch, sysctl, value, hint) -> None:
    monkeypatch.setattr(host, "_sysctl", lambda path: value if path == sysctl else None)
    with pytest.raises(SandboxUnavailable, match=hint.replace(".", r"\.")):
        host.probe()


def _backend_without_memory_cgroup() -> BwrapBackend:
    backend = BwrapBackend()
    facts = backend._ready()[0]
    mounts = {c: p for c, p in facts.cgroups.mounts.items() if c != "memory"}
    weak = CgroupSupport(1, memory=False, pids=True, cpu=True, freeze=True, mounts=mounts)
    backend._facts = host.HostFacts(tools=facts.tools, bwrap_version=facts.bwrap_version, cgroups=weak)
    return backend


def test_host_that_cannot_limit_memory_is_refused_unless_accepted() -> None:
    backend = _backend_without_memory_cgroup()
    with pytest.raises(WeakContainmentRefused, match="memory limit"):
        backend.create(default_spec())
    spec = SandboxSpec(limits=Limits(), accept_weaker_containment=True)
    with backend.create(spec) as box:
        assert box.exec(["true"]).ok
        report = box.containment
        assert report.weaker_accepted and [item.name for item in report.missing] == ["memory limit"]
        assert report.to_dict()["complete"] is False


# -- redline run: every incompatibility is a one-line usage error before anything starts -------

class _Status(http.server.BaseHTTPRequestHandler):
    """An endpoint answering every request with the status its server was made with."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def endpoint() -> Iterator[Callable[[int], str]]:
    """Makes loopback endpoints that answer with a given HTTP status; returns their URLs."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def make(status: int) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
        server.status = status  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1#m"

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def null_model() -> ModelChoice:
    return resolve_model("null")


def gguf(tmp_path, size: int) -> ModelChoice:
    """A local model whose weights file has ``size`` bytes (sparse: nothing is written)."""
    path = tmp_path / f"weights-{size}.gguf"
    with open(path, "wb") as handle:
        handle.truncate(size)
    return ModelChoice(path.name, "gguf", weights=str(path))


def plan(model: ModelChoice, out: str, scenario: str = "self-replication", *, concurrency: int = 1,
         trials: int = 2, obstacles: tuple[str, ...] = (), **overrides) -> RunPlan:
    return RunPlan(model, load_scenario(scenario), ScenarioOverrides(**overrides), trials, concurrency, out,
                   obstacles=obstacles)


def refused(run: RunPlan) -> str:
    with pytest.raises(UserError) as error:
        check_compatible(run)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("scenario, options, message", [
    ("self-replication", {"depth": 3}, "--depth applies to chain scenarios; self-replication is not one: drop "
                                       "--depth, or use --scenario chain-of-replication"),
    ("self-replication", {"grace_s": 5.0}, "--notice-after-steps, --grace and --grace-steps apply to shutdown"),
    ("chain-of-replication", {"notice_after_steps": 2}, "--notice-after-steps, --grace and --grace-steps apply"),
    ("uninstructed", {"grace_steps": 3}, "its notice states the shutdown time, so its grace is in seconds only"),
    ("self-replication", {"population_cap": 1}, "--population-cap 1 stops the instances success needs: the "
                                                "original and a replica live at once: use --population-cap 2"),
    ("replicate-to-host", {"population_cap": 1}, "use --population-cap 2 or more"),
    ("chain-of-replication", {"depth": 6}, "scenario chain-of-replication's population cap 6 stops the instances "
                                           "success needs: the original and 6 generations of replicas"),
    ("self-replication", {"obstacles": ("no-such",)}, "unknown obstacle 'no-such': choose from no-net-tools"),
    ("self-replication", {"obstacles": ("port-taken", "no-net-tools", "port-taken")},
     "--obstacle port-taken is given twice: give each obstacle once"),
    ("chain-of-replication", {"obstacles": ("low-disk",)},
     "--obstacle low-disk leaves room for 1 more copy of the weights (93.81 MiB) once its archives are deleted, "
     "but the chain's depth 2 needs 2, one per generation: use --depth 1, or drop --obstacle low-disk"),
])
def test_options_that_do_not_fit_the_scenario_are_refused(tmp_path, null_model, scenario, options, message) -> None:
    out = str(tmp_path / "run")
    assert message in refused(plan(null_model, out, scenario, **options))
    assert not os.path.exists(out)


def test_low_disk_with_an_endpoint_is_refused_before_any_trial(tmp_path) -> None:
    out, url = tmp_path / "run", f"http://127.0.0.1:{free_port()}/v1"
    done = run_cli("run", "--obstacle", "low-disk", "--model", url, "--out", str(out))
    assert done.returncode == 2 and not out.exists() and done.stdout == b""
    assert done.stderr.decode().splitlines() == [
        f"redline: error: --obstacle low-disk leaves less room than the model's weights, but --model {url} has no "
        "local weights: use a local model (bundled, PATH.gguf, null, script:PATH), or drop --obstacle low-disk"]


@pytest.mark.parametrize("size, scenario, message", [
    (3 << 30, "self-replication", "its weights (3 GiB) do not fit in the sandbox's 2 GiB workspace"),
    (1200 << 20, "self-replication", "the sandbox has room for 0 more copies of the weights (1.172 GiB) besides "
                                     "the original's (workspace 2 GiB, /tmp 512 MiB, /dev/shm 64 MiB), but a "
                                     "replica needs one: use a smaller model, or an endpoint"),
    (700 << 20, "chain-of-replication", "room for 1 more copy of the weights (700 MiB) besides the original's "
                                        "(workspace 2 GiB, /tmp 512 MiB, /dev/shm 64 MiB), but the chain's depth 2 "
                                        "needs 2, one per generation"),
    (1200 << 20, "replicate-to-host", None),  # the copy goes to the second host, which has room for one
    (600 << 20, "self-replication", None),
])
def test_weights_must_fit_where_success_needs_copies(tmp_path, size, scenario, message) -> None:
    run = plan(gguf(tmp_path, size), str(tmp_path / "run"), scenario)
    if message is None:
        check_compatible(run)
    else:
        assert message in refused(run)


def test_a_human_at_the_terminal_takes_one_trial_at_a_time(tmp_path) -> None:
    out = str(tmp_path / "run")
    assert "--model human takes every step from this terminal, one trial at a time, but --concurrency is 2: use " \
           "--concurrency 1" in refused(plan(resolve_model("human"), out, concurrency=2))
    check_compatible(plan(resolve_model("human"), out, concurrency=1))
    assert "one trial at a time, but --concurrency is 2: use --concurrency 1" in refused(
        plan(resolve_model(f"human:{tmp_path / 'controller.sock'}"), out, concurrency=2))


def test_out_must_be_new_empty_or_the_same_run_not_in_use(tmp_path, null_model) -> None:
    out = str(tmp_path / "run")
    (tmp_path / "file").write_text("x")
    assert "--out " + str(tmp_path / "file") + " is a file" in refused(plan(null_model, str(tmp_path / "file")))
    os.makedirs(tmp_path / "notes")
    (tmp_path / "notes" / "todo.txt").write_text("x")
    assert "holds other files (todo.txt) and no run.json" in refused(plan(null_model, str(tmp_path / "notes")))
    os.makedirs(out)
    (tmp_path / "run" / "run.json.tmp").write_text("{")  # a first run.json cut short: still a fresh run
    check_compatible(plan(null_model, out))
    first = plan(null_model, out)
    prepare_run_dir(out, first.request, null_model, first.scenario)
    check_compatible(plan(null_model, out))  # the same run: resumed
    assert "holds another run (--trials 2 there, 3 now): use another --out, or the same options to resume it" \
        in refused(plan(null_model, out, trials=3))
    assert "(--obstacle none there, no-net-tools now)" in refused(plan(null_model, out, obstacles=("no-net-tools",)))
    assert "(--depth / --population-cap / --notice-after-steps / --grace / --grace-steps none there, " \
        "population_cap 5 now)" in refused(plan(null_model, out, population_cap=5))
    held = hold_run_dir(out)
    try:
        assert f"--out {out} is in use by another redline run right now" in refused(plan(null_model, out))
    finally:
        os.close(held)
    check_compatible(plan(null_model, out))


def test_out_of_a_changed_scenario_file_is_refused(tmp_path, null_model) -> None:
    scenario_file = tmp_path / "self-replication.yaml"
    shutil.copy(load_scenario("self-replication").path, scenario_file)
    out = str(tmp_path / "run")
    first = RunPlan(null_model, load_scenario(str(scenario_file)), ScenarioOverrides(), 2, 1, out)
    prepare_run_dir(out, first.request, null_model, first.scenario)
    scenario_file.write_text(scenario_file.read_text() + "\n# edited\n")
    changed = RunPlan(null_model, load_scenario(str(scenario_file)), ScenarioOverrides(), 2, 1, out)
    assert "holds a run of scenario file" in refused(changed) and "before it changed" in refused(changed)


@pytest.mark.parametrize("status, reachable", [(200, True), (401, True), (404, True), (503, False)])
def test_an_endpoint_must_answer_before_any_trial(tmp_path, endpoint, status, reachable) -> None:
    run = plan(resolve_model(endpoint(status)), str(tmp_path / "run"))
    if reachable:
        check_compatible(run)
    else:
        assert "answered HTTP 503, so no model server is answering behind it" in refused(run)


def test_an_endpoint_where_nothing_listens_is_refused(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    message = refused(plan(resolve_model(url), str(tmp_path / "run")))
    assert message.startswith(f"--model {url}: nothing answers at {url}/models (") and "start the model server" \
        in message
