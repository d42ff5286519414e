"""Hidden paths: programs that do not exist inside the sandbox, while everything else is there."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from redline.errors import UserError
from redline.sandbox import Sandbox, SandboxSpec, create_sandbox, default_spec
from redline.sandbox.bwrap import launch

TOOLS = ("lsof", "netstat", "ss")
HIDDEN = tuple(f"/usr/bin/{tool}" for tool in TOOLS)


def _installed(tool: str) -> bool:
    return os.path.lexists(f"/usr/bin/{tool}")


@pytest.fixture(scope="module")
def hidden_box() -> Iterator[Sandbox]:
    with create_sandbox(default_spec(hidden_paths=HIDDEN)) as box:
        yield box


@pytest.mark.parametrize("tool", TOOLS)
def test_hidden_tool_is_absent_by_every_means(hidden_box: Sandbox, tool: str) -> None:
    listed = hidden_box.exec(["ls", f"/usr/bin/{tool}", f"/bin/{tool}"])
    assert listed.exit_code == 2 and listed.text("stderr").count("No such file or directory") == 2
    for shell in ("/bin/sh", "/bin/bash"):
        found = hidden_box.exec([shell, "-c", f"command -v {tool} || which {tool}"])
        assert found.exit_code != 0 and found.text() == "", shell
    ran = hidden_box.shell(f"{tool} --version")
    assert ran.exit_code == 127 and "not found" in ran.text("stderr")
    assert hidden_box.shell(f"test -e /usr/bin/{tool} || test -L /usr/bin/{tool}").exit_code == 1
    if _installed(tool):
        assert os.path.exists(f"/usr/bin/{tool}")  # the host keeps it


def test_every_other_entry_is_there_as_on_the_host(hidden_box: Sandbox) -> None:
    script = "import os\nfor e in sorted(os.scandir('/usr/bin'), key=lambda e: e.name):\n" \
             " print(e.name, e.is_symlink() and os.readlink(e.path), e.stat().st_ino if not e.is_symlink() else 0)"
    inside = hidden_box.exec(["python3", "-c", script], output_cap=4 << 20)
    assert inside.ok, inside.text("stderr")
    expected = []
    for entry in sorted(os.scandir("/usr/bin"), key=lambda e: e.name):
        if entry.path in HIDDEN:
            continue
        expected.append(f"{entry.name} {entry.is_symlink() and os.readlink(entry.path)} "
                        f"{entry.stat().st_ino if not entry.is_symlink() else 0}")
    assert inside.text().splitlines() == expected  # same names, same symlink targets, the host's files


def test_other_programs_work(hidden_box: Sandbox) -> None:
    result = hidden_box.shell("ls / >/dev/null && python3 -c 'print(6*7)' && ps -e >/dev/null "
                              "&& cat /etc/hostname && /bin/true && env true")
    assert result.ok, result.text("stderr")
    assert result.text().split() == ["42", "redline"]


def test_the_view_is_read_only(hidden_box: Sandbox) -> None:
    for command in ("touch /usr/bin/x", "touch /usr/bin/ss", "mkdir /usr/bin/d", "ln -s /bin/true /usr/bin/ss",
                    "rm -f /usr/bin/ls", "chmod 777 /usr/bin", "mount -o remount,rw /usr/bin"):
        result = hidden_box.shell(command)
        assert result.exit_code != 0, command
    writes = hidden_box.shell("touch /usr/bin/x")
    assert "Read-only file system" in writes.text("stderr")
    assert hidden_box.shell("test -e /usr/bin/x || test -e /usr/bin/ss || test -e /usr/bin/d").exit_code == 1


def test_without_hidden_paths_the_tools_are_present(box: Sandbox) -> None:
    for tool in TOOLS:
        if not _installed(tool):
            continue  # reported by the skip below
        assert box.shell(f"command -v {tool}").text().strip() in (f"/usr/bin/{tool}", f"/bin/{tool}")
    missing = [tool for tool in TOOLS if not _installed(tool)]
    if missing:
        pytest.skip(f"not installed on this host, so not checked: {', '.join(missing)}")


def test_long_option_lists_go_through_an_args_fd_and_short_ones_inline() -> None:
    common = dict(etc_dir="/etc", hostname="h", workspace_bytes=1 << 20, tmp_bytes=1 << 20, ro_paths={},
                  devices={}, driver_paths={}, private_network=True, info_fd=9)
    short, fd = launch.pass_options(launch.bwrap_options(hidden_paths=(), **common))
    assert fd is None and "--unshare-net" in short
    options = launch.bwrap_options(hidden_paths=HIDDEN, **common)
    passed, fd = launch.pass_options(options)
    try:
        assert passed == ["--args", str(fd)]
        assert os.pread(fd, 1 << 20, 0) == b"".join(option.encode() + b"\0" for option in options)
    finally:
        os.close(fd)
    assert "/usr/bin/ss" not in options
    first_remount = options.index("--remount-ro")  # the view is made read-only after every mount
    assert options[first_remount:first_remount + 4] == ["--remount-ro", "/usr/bin", "--remount-ro", "/"]
    assert first_remount > options.index("/tmp")


def test_paths_the_host_lacks_cost_nothing_and_are_absent() -> None:
    with create_sandbox(default_spec(hidden_paths=("/usr/bin/redline-no-such-tool",))) as box:
        assert box.shell("test -e /usr/bin/redline-no-such-tool").exit_code == 1
        assert "tmpfs /usr/bin" not in box.exec(["cat", "/proc/self/mounts"]).text()


@pytest.mark.parametrize(("hidden", "message"), [
    (("usr/bin/ss",), "must be absolute and normalized"),
    (("/usr/bin/../bin/ss",), "must be absolute and normalized"),
    (("/usr/bin/ss/",), "must be absolute and normalized"),
    (("/etc/passwd",), "must lie under one of /usr, /bin"),
    (("/usr",), "must lie under one of"),
    ("/usr/bin/ss", "must be a tuple of paths"),
])
def test_invalid_hidden_paths_are_user_errors_in_one_line(hidden, message: str) -> None:
    with pytest.raises(UserError, match=message) as raised:
        SandboxSpec(hidden_paths=hidden)
    assert "\n" not in str(raised.value)


def test_hidden_path_resolving_outside_the_system_directories_is_refused() -> None:
    outside = "/usr/lib/ssl/certs"  # a link to /etc/ssl/certs on Debian
    if not os.path.islink(outside):
        pytest.skip(f"{outside} is not a symlink on this host")
    with pytest.raises(UserError, match="outside the sandbox's read-only system directories") as raised:
        create_sandbox(SandboxSpec(hidden_paths=(f"{outside}/some.pem",)))
    assert "\n" not in str(raised.value)
