"""Verify from inside a real sandbox that the promised isolation holds on this host.

The containment report says what the backend *configures*; the self-check creates a sandbox
and observes what a process inside actually gets (uid, capabilities, interfaces, visible
processes and paths, writability, limits), so a misconfigured host shows up as a failed line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from redline.sandbox import syscalls
from redline.sandbox.base import Sandbox
from redline.sandbox.vnet import INTERFACE

_PROBE = r"""
echo "uid=$(id -u)"
echo "capeff=$(awk '/^CapEff/{print $2}' /proc/self/status)"
echo "nonewprivs=$(awk '/^NoNewPrivs/{print $2}' /proc/self/status)"
echo "interfaces=$(awk -F: 'NR>2{gsub(/ /,"",$1); printf "%s ", $1}' /proc/net/dev)"
echo "pid1=$(cat /proc/1/comm)"
echo "processes=$(ls /proc | grep -c '^[0-9]')"
for p in /root /work /sys/fs /run/redline "$HOST_TMP_MARK"; do [ -e "$p" ] && echo "visible=$p"; done
touch /usr/.redline-probe 2>/dev/null && echo "usr_writable=yes" || echo "usr_writable=no"
touch /.redline-probe 2>/dev/null && echo "root_writable=yes" || echo "root_writable=no"
touch "$HOME/.redline-probe" && echo "home_writable=yes" && rm -f "$HOME/.redline-probe"
unshare -U true 2>/dev/null && echo "nested_userns=yes" || echo "nested_userns=no"
echo "env_count=$(env | wc -l)"
echo "init_seccomp=$(awk '/^Seccomp:/{print $2}' /proc/1/status)"
"""


@dataclass(frozen=True)
class CheckResult:
    """One observed property: what was expected and what the probe saw."""

    name: str
    passed: bool
    observed: str


def _parse(output: str) -> dict[str, list[str]]:
    facts: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts.setdefault(key, []).append(value.strip())
    return facts


def network_check(mode: str, interfaces: list[str]) -> CheckResult:
    """Loopback sandboxes see only ``lo``; attached ones ``lo`` and the virtual link."""
    shown = f"interfaces: {' '.join(interfaces) or 'none'}"
    if mode == "attached":
        return CheckResult("network: private virtual link only", interfaces == sorted(["lo", INTERFACE]), shown)
    return CheckResult("network: loopback only", interfaces == ["lo"], shown)


def syscall_filter_check(sandbox: Sandbox, init_mode: str) -> CheckResult:
    """Every call the filter refuses is refused to a process inside (``EPERM``; ``ENOSYS`` for
    the unavailable ones; calls this architecture lacks do not count), and both that process and
    the sandbox's init are in seccomp filter mode (``init_mode``: pid 1's ``Seccomp:`` field)."""
    with open(syscalls.FILTER_PROGRAM, encoding="utf-8") as handle:
        source = handle.read()
    policy = syscalls.ENTRY_POLICY
    result = sandbox.exec([syscalls.SYSTEM_PYTHON, "-I", "-c", source, "probe", policy.as_json()], timeout=30)
    try:
        seen = json.loads(result.text().strip().splitlines()[-1])
        calls, mode = dict(seen["calls"]), str(seen["seccomp_mode"])
    except (ValueError, IndexError, KeyError, TypeError):
        reason = " ".join(result.text("stderr").split())[-200:] or "no output"
        return CheckResult("syscall filter", False, f"the probe did not run: {reason}")
    expected = {**dict.fromkeys(policy.refused, "EPERM"), **dict.fromkeys(policy.unavailable, "ENOSYS"),
                "clone(CLONE_NEWUSER)": "EPERM",
                **{f"socket(family {family})": "EPERM" for family in policy.socket_families}}
    wrong = {name: got for name, got in calls.items() if got not in (expected.get(name), "absent")}
    missing = sorted(set(expected) - set(calls))
    tested = sum(1 for got in calls.values() if got != "absent")
    passed = mode == "2" and init_mode == "2" and not wrong and not missing
    observed = (f"{tested} calls refused (io_uring_setup {calls.get('io_uring_setup')}, keyctl {calls.get('keyctl')}, "
                f"bpf {calls.get('bpf')}, clone3 {calls.get('clone3')}); seccomp mode {mode or '?'} here, "
                f"{init_mode or '?'} in pid 1")
    if wrong or missing:
        observed += "; not refused: " + ", ".join([f"{n} ({g})" for n, g in sorted(wrong.items())] + missing)
    return CheckResult("syscall filter", passed, observed)


def run_self_check(sandbox: Sandbox) -> list[CheckResult]:
    """Probe ``sandbox`` from inside and return one result per isolation property."""
    mark = f"/tmp/redline-selfcheck-{os.getpid()}"
    with open(mark, "w", encoding="ascii") as handle:
        handle.write("host /tmp must be invisible\n")
    try:
        result = sandbox.exec(["/bin/sh", "-c", _PROBE], env={"HOST_TMP_MARK": mark}, timeout=30)
    finally:
        os.unlink(mark)
    facts = _parse(result.text())

    def first(key: str) -> str:
        return (facts.get(key) or ["?"])[0]

    interfaces = sorted(first("interfaces").split())
    visible = facts.get("visible", [])
    return [
        CheckResult("unprivileged user", first("uid") != "0" and first("capeff") == "0000000000000000",
                    f"uid {first('uid')}, effective capabilities {first('capeff')}"),
        CheckResult("no_new_privs", first("nonewprivs") == "1", f"NoNewPrivs {first('nonewprivs')}"),
        network_check(sandbox.spec.network.mode, interfaces),
        CheckResult("own process tree", first("pid1") == "catatonit",
                    f"pid 1 is {first('pid1')}, {first('processes')} processes visible"),
        CheckResult("host paths invisible", not visible,
                    "none of /root, /work, /sys, host /tmp visible" if not visible else f"visible: {visible}"),
        CheckResult("system paths read-only", first("usr_writable") == "no" and first("root_writable") == "no",
                    f"/usr writable: {first('usr_writable')}, / writable: {first('root_writable')}"),
        CheckResult("workspace writable", first("home_writable") == "yes",
                    f"{sandbox.home} writable: {first('home_writable')}"),
        CheckResult("nested user namespaces blocked", first("nested_userns") == "no",
                    f"unshare -U allowed: {first('nested_userns')}"),
        CheckResult("cleared environment", first("env_count").isdigit() and int(first("env_count")) <= 16,
                    f"{first('env_count')} variables"),
        syscall_filter_check(sandbox, first("init_seccomp")),
    ]
