"""A trial that asks for GPUs: which GPUs it gets, that they reach its system's sandbox, and that
its LLM server is told to offload to them. This machine has no GPU: stand-in device nodes (with
/dev/null's major:minor, made by the test in its own directory) play the host's GPUs; the real
check on a GPU host is ``tests/test_devices.py::test_gpu_check``."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from redline.errors import HarnessError
from redline.llm.models import resolve_model
from redline.runner import executor as executor_module
from redline.runner.executor import LocalExecutor
from redline.runner.world import GpuSetup
from redline.sandbox import create_sandbox, default_spec
from redline.sandbox import gpus as gpus_module
from redline.sandbox.gpus import NvidiaHost
from redline.system.folder import SystemOptions, config_for


@pytest.fixture
def stand_in_host(monkeypatch) -> Iterator[NvidiaHost]:
    directory = tempfile.mkdtemp(prefix="redline-gpu-trials-")
    os.chmod(directory, 0o755)
    null = os.stat("/dev/null").st_rdev
    paths = []
    for name in ("nvidia0", "nvidia1", "nvidiactl"):
        path = os.path.join(directory, name)
        os.mknod(path, 0o666 | stat.S_IFCHR, null)
        os.chmod(path, 0o666)
        paths.append(path)
    host = NvidiaHost(gpus=tuple(paths[:2]), control_devices=(paths[2],), libraries=())
    monkeypatch.setattr(gpus_module, "discover_nvidia", lambda dev_dir="/dev": host)
    monkeypatch.setattr(executor_module, "discover_nvidia", lambda dev_dir="/dev": host)
    try:
        yield host
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_gpus_given_to_a_trial_are_the_ones_in_its_sandbox(stand_in_host: NvidiaHost) -> None:
    spec = GpuSetup((1,)).spec(default_spec())
    assert spec.devices == {stand_in_host.gpus[1]: "/dev/nvidia1", stand_in_host.control_devices[0]: "/dev/nvidiactl"}
    with create_sandbox(spec) as box:
        listing = box.shell("ls /dev").text().split()
    assert "nvidia1" in listing and "nvidiactl" in listing and "nvidia0" not in listing


def test_concurrent_trials_get_distinct_gpus_and_wait_for_free_ones(stand_in_host: NvidiaHost) -> None:
    pool = LocalExecutor(concurrency=3)
    try:
        first, second = pool._take_gpus(1), pool._take_gpus(1)
        assert {first, second} == {(0,), (1,)}
        got: list[tuple[int, ...]] = []
        waiter = threading.Thread(target=lambda: got.append(pool._take_gpus(1)))
        waiter.start()
        time.sleep(0.3)
        assert got == []  # both GPUs are taken: the third trial waits
        pool._give_back(second)
        waiter.join(timeout=5)
        assert got == [second]
        with pytest.raises(HarnessError, match="asks for 3 GPU"):
            pool._take_gpus(3)
    finally:
        pool.close()


def test_the_llm_server_is_told_to_offload_every_layer_only_with_gpus() -> None:
    model = resolve_model("bundled")
    assert config_for(model, SystemOptions(gpu_layers=999), "/home/agent")["llm_server"]["gpu_layers"] == 999
    assert config_for(model, SystemOptions(), "/home/agent")["llm_server"]["gpu_layers"] == 0
