"""Devices passed into a sandbox (``SandboxSpec.devices``, ``driver_paths``, :mod:`redline.sandbox.gpus`).

On a CPU-only host the binding is tested with stand-in GPUs: character devices with /dev/null's
major:minor, made with ``mknod`` (as root) in a directory of the test's own. Where a real NVIDIA
GPU is present, :func:`test_gpu_check` also runs ``nvidia-smi -L`` inside a sandbox.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

import pytest

from redline.errors import UserError
from redline.sandbox import Sandbox, SandboxSpec, create_sandbox, default_spec
from redline.sandbox.gpus import NvidiaHost, discover_nvidia, with_gpus

NULL = os.stat("/dev/null").st_rdev


@pytest.fixture
def scratch() -> Iterator[str]:
    """A directory of the test's own, reachable by the sandboxes' uids, on a filesystem that
    allows device nodes; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("stand-in devices are made with mknod, which needs root")
    directory = tempfile.mkdtemp(prefix="redline-test-devices-")
    try:
        if os.statvfs(directory).f_flag & os.ST_NODEV:
            pytest.skip(f"{tempfile.gettempdir()} is mounted nodev, so no stand-in device works there")
        os.chmod(directory, 0o755)
        yield directory
    finally:
        shutil.rmtree(directory)


def stand_in(directory: str, name: str, mode: int = 0o666) -> str:
    """A character device ``directory/name`` that is /dev/null under another name."""
    path = os.path.join(directory, name)
    os.mknod(path, stat.S_IFCHR | mode, NULL)
    os.chmod(path, mode)
    return path


def _dev_entries(box: Sandbox, directory: str = "/dev") -> set[str]:
    return set(box.exec(["ls", "-A", directory]).text().split())


def _dev_mount(box: Sandbox) -> str:
    """The mount options and filesystem type of the sandbox's /dev itself (from its mountinfo)."""
    lines = box.exec(["cat", "/proc/self/mountinfo"]).text().splitlines()
    return next(f"{line.split()[5]} {line.split(' - ')[1].split()[0]}" for line in lines if line.split()[4] == "/dev")


def test_stand_in_gpu_is_bound_where_asked_and_is_the_only_extra_device(scratch: str) -> None:
    devices = {stand_in(scratch, "nvidia0"): "/dev/nvidia0", stand_in(scratch, "render"): "/dev/dri/renderD128"}
    with create_sandbox() as plain, create_sandbox(default_spec(devices=devices)) as box:
        assert _dev_entries(box) - _dev_entries(plain) == {"nvidia0", "dri"}
        assert _dev_entries(plain) <= _dev_entries(box)
        assert _dev_entries(box, "/dev/dri") == {"renderD128"}
        assert _dev_mount(box) == _dev_mount(plain) == "rw,nosuid,nodev,relatime tmpfs"  # still its own
        for inside in devices.values():
            kind = box.exec(["stat", "-c", "%F %t:%T", inside]).text().strip()
            assert kind == f"character special file {os.major(NULL):x}:{os.minor(NULL):x}"
        used = box.shell("printf data > /dev/nvidia0 && wc -c < /dev/nvidia0")
        assert used.exit_code == 0 and used.text().strip() == "0"
        item = next(item for item in box.containment.items if item.name == "devices")
        assert item.enforced and item.detail.startswith("passed in: /dev/dri/renderD128 (host ")
        assert "/dev/nvidia0 (host " in item.detail
        plain_item = next(item for item in plain.containment.items if item.name == "devices")
        assert plain_item.enforced and plain_item.detail.startswith("none passed")


def _refusal(devices: dict[str, str]) -> str:
    with pytest.raises(UserError) as caught:
        SandboxSpec(devices=devices)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_files_directories_and_missing_paths_are_refused(scratch: str) -> None:
    regular = os.path.join(scratch, "regular")
    open(regular, "w").close()
    fifo = os.path.join(scratch, "fifo")
    os.mkfifo(fifo)
    linked_dir = os.path.join(scratch, "link-to-dir")
    os.symlink(scratch, linked_dir)
    for path, kind in ((regular, "a regular file"), (scratch, "a directory"), (fifo, "a named pipe"),
                       (linked_dir, "a directory")):
        message = _refusal({path: "/dev/nvidia0"})
        assert message.startswith(f"cannot pass device {path} into the sandbox: it is {kind}, not a character")
    missing = os.path.join(scratch, "absent")
    assert "cannot be examined on this host (No such file or directory)" in _refusal({missing: "/dev/nvidia0"})


def test_badly_placed_or_unusable_devices_are_refused(scratch: str) -> None:
    gpu, private = stand_in(scratch, "nvidia0"), stand_in(scratch, "private", mode=0o600)
    assert "must be absolute and normalized" in _refusal({"dev/nvidia0": "/dev/nvidia0"})
    assert "must be absolute and normalized" in _refusal({gpu: "/dev//nvidia0"})
    assert "must lie under /dev" in _refusal({gpu: "/home/agent/nvidia0"})
    assert "not replace an entry of the minimal /dev" in _refusal({gpu: "/dev/null"})
    assert "already the inside path" in _refusal({gpu: "/dev/nvidia0", "/dev/null": "/dev/nvidia0"})
    assert "crw------- does not let other users read and write it" in _refusal({private: "/dev/nvidia0"})


def test_driver_paths_are_read_only_inside(scratch: str) -> None:
    library = os.path.join(scratch, "lib")  # writable by anyone on the host: only the mount stops writes
    os.mkdir(library)
    os.chmod(library, 0o777)
    with open(os.path.join(library, "libcuda.so.1"), "wb") as handle:
        handle.write(b"driver")
    os.chmod(os.path.join(library, "libcuda.so.1"), 0o666)
    with create_sandbox(default_spec(driver_paths={library: "/opt/nvidia/lib"})) as box:
        assert box.exec(["cat", "/opt/nvidia/lib/libcuda.so.1"]).stdout == b"driver"
        for command in ("touch /opt/nvidia/lib/new", "echo x >> /opt/nvidia/lib/libcuda.so.1",
                        "rm /opt/nvidia/lib/libcuda.so.1"):
            result = box.shell(command)
            assert result.exit_code != 0 and b"Read-only file system" in result.stderr, command
        item = next(item for item in box.containment.items if item.name == "devices")
        assert item.detail.endswith("; driver paths read-only: /opt/nvidia/lib")
    assert os.listdir(library) == ["libcuda.so.1"]
    with open(os.path.join(library, "libcuda.so.1"), "rb") as handle:
        assert handle.read() == b"driver"


def test_bad_driver_paths_are_refused(scratch: str) -> None:
    for driver_paths, fragment in (
        ({os.path.join(scratch, "absent"): "/opt/nvidia/lib"}, "does not exist on this host"),
        ({"lib": "/opt/nvidia/lib"}, "both must be absolute and normalized"),
        ({scratch: "/tmp/lib"}, "would be hidden by the sandbox's own"),
    ):
        with pytest.raises(UserError, match=fragment):
            SandboxSpec(driver_paths=driver_paths)


def test_discovery_and_gpu_selection_on_a_stand_in_dev(scratch: str) -> None:
    for name in ("nvidia10", "nvidia1", "nvidia0", "nvidiactl", "nvidia-uvm"):
        stand_in(scratch, name)
    open(os.path.join(scratch, "nvidia2"), "w").close()  # not a device: ignored
    found = discover_nvidia(dev_dir=scratch)
    assert found.gpus == tuple(os.path.join(scratch, name) for name in ("nvidia0", "nvidia1", "nvidia10"))
    assert found.control_devices == (os.path.join(scratch, "nvidiactl"), os.path.join(scratch, "nvidia-uvm"))

    spec = with_gpus(default_spec(), 2, found)
    assert spec.devices == {os.path.join(scratch, name): f"/dev/{name}"
                            for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm")}
    with create_sandbox(spec) as box:
        assert {"nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"} <= _dev_entries(box)
        assert "nvidia10" not in _dev_entries(box)
    with pytest.raises(UserError, match=r"4 GPUs asked for, but this host has 3: "):
        with_gpus(default_spec(), 4, found)


def test_libraries_outside_the_system_directories_become_driver_paths(scratch: str) -> None:
    # a file outside /usr, /tmp and the like (the test's state root is under /run; the checkout
    # itself may be anywhere, /tmp included)
    directory = os.path.join(os.environ["REDLINE_STATE_DIR"], "driver-libs")
    os.makedirs(directory, exist_ok=True)
    outside = os.path.join(directory, "libnvidia-stand-in.so.1")
    open(outside, "wb").close()
    try:
        found = NvidiaHost(gpus=(stand_in(scratch, "nvidia0"),), control_devices=(),
                           libraries=(outside, "/usr/bin/env"))
        assert with_gpus(SandboxSpec(), 1, found).driver_paths == {outside: outside}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_this_host_without_gpus_refuses_to_pass_one() -> None:
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this host has an NVIDIA GPU; test_gpu_check covers it")
    found = discover_nvidia()
    assert found.gpus == () and found.control_devices == ()
    spec = default_spec()
    assert with_gpus(spec, 0) is spec
    with pytest.raises(UserError) as caught:
        with_gpus(spec, 1)
    assert "this host has no NVIDIA GPU devices (/dev/nvidia0 ...)" in str(caught.value)
    with pytest.raises(UserError, match="0 or more"):
        with_gpus(spec, -1)


@pytest.mark.skipif(not os.path.exists("/dev/nvidia0"),
                    reason="no NVIDIA GPU on this host (/dev/nvidia0 absent): the GPU check runs where one is present")
def test_gpu_check() -> None:
    spec = with_gpus(default_spec(), 1)
    with create_sandbox(spec) as box:
        for inside in spec.devices.values():
            opened = box.exec(["python3", "-c", f"import os; os.close(os.open({inside!r}, os.O_RDWR))"])
            assert opened.exit_code == 0, opened.text()
        if shutil.which("nvidia-smi", path="/usr/bin:/bin"):
            listing = box.exec(["nvidia-smi", "-L"], timeout=60)
            assert listing.exit_code == 0 and listing.text().startswith("GPU 0:"), listing.text()
        else:
            listing = box.exec(["ls", "/proc/driver/nvidia/gpus"])
            assert listing.exit_code == 0 and listing.text().split(), listing.text()
