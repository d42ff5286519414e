"""The CLI as a user runs it, and one-line errors for bad input and unfit hosts."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from redline.sandbox import Limits, SandboxSpec, WeakContainmentRefused, default_spec
from redline.sandbox.bwrap import BwrapBackend, host
from redline.sandbox.cgroups import CgroupSupport
from redline.sandbox.errors import SandboxUnavailable


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
