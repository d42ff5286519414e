"""One deployed, running AI system in a fresh sandbox, with its trace channel (and model gateway).

    with SystemSession.open(model, options, out_dir) as session:
        session.submit("list the files in your home directory", max_steps=5)
        record = session.wait_task(timeout=600)

``open`` creates the sandbox, the trace collector (writing ``out_dir/trace.jsonl``), the model
gateway for endpoint models and the step socket for a human model (:mod:`redline.llm.human`),
deploys the system folder and starts the original instance with its own ``start.sh`` -- exactly
as a replica would be started -- then waits until its agent answers ``/health``. ``close``
destroys everything, and saves the original's console output.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import time
from collections.abc import Callable

from redline.errors import HarnessError
from redline.llm.gateway import ModelGateway
from redline.llm.human import STEPS_SOCKET_NAME, StepServer, TaskIndex, open_source
from redline.llm.models import ModelChoice
from redline.sandbox import Limits, Sandbox, SandboxProcess, SandboxSpec, create_sandbox, default_spec
from redline.sandbox.bwrap.state import state_root
from redline.sandbox.http import request
from redline.system.folder import TELEMETRY_DIR, SystemOptions, deploy, folder_archive
from redline.trace.collector import TraceCollector, TraceWriter

HEALTH_TIMEOUT_S = 180.0


class SessionSetup:
    """How a scenario shapes the machine around the system. Every hook is optional; the default
    changes nothing. ``open`` calls them in this order: ``spec`` (before the sandbox exists),
    ``before_start`` (folder deployed, original not started), ``start_args`` (arguments of the
    original's ``start.sh``), ``after_start`` (original healthy, before its identity is recorded)."""

    def spec(self, spec: SandboxSpec) -> SandboxSpec:
        """The sandbox spec to use instead of ``spec``."""
        return spec

    def before_start(self, session: SystemSession) -> None:
        """Prepare the sandbox before the original starts."""

    def start_args(self) -> list[str]:
        """Extra arguments of the original's ``start.sh``."""
        return []

    def after_start(self, session: SystemSession) -> None:
        """Change the sandbox once the original runs."""


class CombinedSetup(SessionSetup):
    """Several setups applied in order."""

    def __init__(self, setups: list[SessionSetup]) -> None:
        self.setups = setups

    def spec(self, spec: SandboxSpec) -> SandboxSpec:
        for setup in self.setups:
            spec = setup.spec(spec)
        return spec

    def before_start(self, session: SystemSession) -> None:
        for setup in self.setups:
            setup.before_start(session)

    def start_args(self) -> list[str]:
        return [arg for setup in self.setups for arg in setup.start_args()]

    def after_start(self, session: SystemSession) -> None:
        for setup in self.setups:
            setup.after_start(session)


class SystemSession:
    """A sandbox holding the deployed system and its running original instance."""

    def __init__(self, sandbox: Sandbox, collector: TraceCollector, writer: TraceWriter,
                 gateway: ModelGateway | None, channel_dir: str, options: SystemOptions, out_dir: str) -> None:
        self.sandbox = sandbox
        self.collector = collector
        self.writer = writer
        self.gateway = gateway
        self.channel_dir = channel_dir
        self.options = options
        self.out_dir = out_dir
        self.folder = ""
        self.original: SandboxProcess | None = None
        #: the ports the original really uses (``start_args`` may override the config's)
        self.llm_port = options.llm_port
        self.agent_port = options.agent_port
        self._console = bytearray()
        #: the human model's step socket (None for other models)
        self.steps: StepServer | None = None
        self._original_host = 0

    @classmethod
    def open(cls, model: ModelChoice, options: SystemOptions, out_dir: str, *, limits: Limits | None = None,
             on_event: Callable[[dict], None] | None = None, archive: bytes | None = None,
             setup: SessionSetup | None = None) -> SystemSession:
        """Create the sandbox, deploy the folder, start the original and wait until it is healthy.
        ``setup`` lets a scenario shape the sandbox (see :class:`SessionSetup`)."""
        setup = setup or SessionSetup()
        os.makedirs(out_dir, exist_ok=True)
        channel_dir = os.path.join(state_root(), "channels", secrets.token_hex(6))
        os.makedirs(channel_dir, mode=0o755)
        os.chmod(os.path.dirname(channel_dir), 0o711)
        writer = TraceWriter(os.path.join(out_dir, "trace.jsonl"))
        tasks = TaskIndex() if model.kind == "human" else None
        collector = TraceCollector(os.path.join(channel_dir, "trace.sock"), writer,
                                   tasks.observing(on_event) if tasks else on_event)
        gateway = None
        sandbox = None
        steps = None
        try:
            if model.kind == "endpoint":
                gateway = ModelGateway(os.path.join(channel_dir, "gateway.sock"), model.endpoint_url or "",
                                       model.endpoint_model or "default")
            base = default_spec()
            spec = dataclasses.replace(base, limits=limits or base.limits,
                                       ro_paths={**base.ro_paths, channel_dir: TELEMETRY_DIR})
            sandbox = create_sandbox(setup.spec(spec))
            session = cls(sandbox, collector, writer, gateway, channel_dir, options, out_dir)
            if tasks is not None:  # a person answers the agent's steps
                steps = session.steps = StepServer(
                    os.path.join(channel_dir, STEPS_SOCKET_NAME), open_source(model), model_name=model.model_name,
                    record=collector.record, original_host_pid=session._original_host_pid, tasks=tasks)
            collector.record("sandbox_created", sandbox_id=sandbox.id, containment=sandbox.containment.to_dict())
            session.folder = deploy(sandbox, archive or folder_archive(model, options, sandbox.home))
            collector.record("system_deployed", folder=session.folder, model=model.label)
            setup.before_start(session)
            session.start_original(setup.start_args())
            setup.after_start(session)
            return session
        except BaseException:
            if sandbox is not None:
                sandbox.destroy()
            if gateway is not None:
                gateway.close()
            if steps is not None:
                steps.close()
            collector.close()
            writer.close()
            shutil.rmtree(channel_dir, ignore_errors=True)
            raise

    def start_original(self, args: list[str] | None = None) -> float:
        """Start the original with ``start.sh [args]`` and wait for its agent; returns seconds to
        healthy. ``--llm-port``/``--agent-port`` in ``args`` change the ports it is expected on."""
        args = list(args or [])
        for flag, attribute in (("--llm-port", "llm_port"), ("--agent-port", "agent_port")):
            if flag in args:
                setattr(self, attribute, int(args[args.index(flag) + 1]))
        started = time.monotonic()
        self.original = self.sandbox.spawn(["./start.sh", *args], cwd=self.folder)
        deadline = started + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            self._console += self.original.read_output()
            if self.original.poll() is not None:
                raise HarnessError(f"the system's start script exited with code {self.original.poll()}: "
                                   f"{self._console.decode(errors='replace')[-2000:]}{self._llm_log_tail()}")
            try:
                if request(self.sandbox, self.agent_port, "GET", "/health", timeout=2).status == 200:
                    elapsed = time.monotonic() - started
                    self.collector.record("original_healthy", seconds=round(elapsed, 3))
                    return elapsed
            except OSError:
                pass
            time.sleep(0.1)
        raise HarnessError(f"the system did not become healthy within {HEALTH_TIMEOUT_S:.0f} s{self._llm_log_tail()}")

    def _original_host_pid(self) -> int | None:
        """Host pid of the original's agent, once seen running (for the step socket's sender facts)."""
        if not self._original_host and self.original is not None:
            try:
                running = self.sandbox.processes()
                self._original_host = next((p.host_pid for p in running if p.pid == self.original.pid), 0)
            except (HarnessError, OSError):
                pass
        return self._original_host or None

    def raise_if_model_failed(self) -> None:
        """:class:`HarnessError` if the human model stopped answering: the trial cannot be judged."""
        if self.steps is not None and self.steps.failure:
            raise HarnessError(f"the human model stopped answering: {self.steps.failure}")

    def _llm_log_tail(self) -> str:
        try:
            tail = self.sandbox.read_file(f"{self.folder}/logs/llm_server.log", max_bytes=1 << 24)[-1500:]
            return "\nLLM server log: " + tail.decode(errors="replace")
        except (OSError, HarnessError):
            return ""

    def agent(self, method: str, path: str, payload: object | None = None, timeout: float = 30.0):
        """One request to the original agent's API."""
        return request(self.sandbox, self.agent_port, method, path, payload, timeout=timeout)

    def submit(self, task: str, max_steps: int, time_limit_s: float | None = None) -> dict:
        """Give the original agent a task."""
        payload: dict = {"task": task, "max_steps": max_steps}
        if time_limit_s:
            payload["time_limit_s"] = time_limit_s
        response = self.agent("POST", "/task", payload)
        if response.status != 202 or not isinstance(response.json, dict):
            raise HarnessError(f"the agent refused the task: HTTP {response.status} {response.body[:300]!r}")
        self.collector.record("task_submitted", task=task, max_steps=max_steps, task_id=response.json.get("task_id"))
        return response.json

    def wait_task(self, timeout: float, poll_s: float = 0.1) -> dict:
        """Poll the original's task until it ends or ``timeout``; returns its last record
        (``state`` is ``"harness_timeout"`` if the harness stopped waiting)."""
        deadline = time.monotonic() + timeout
        record: dict = {}
        while time.monotonic() < deadline:
            if self.original is not None:
                self._console += self.original.read_output()
            try:
                response = self.agent("GET", "/task", timeout=10)
                if isinstance(response.json, dict):
                    record = response.json
                    if record.get("state") != "running":
                        return record
            except OSError:
                if not self.sandbox.alive or (self.original and self.original.poll() is not None):
                    return {**record, "state": "agent_gone"}
            time.sleep(poll_s)
        return {**record, "state": "harness_timeout"}

    def close(self) -> None:
        """Destroy the sandbox and stop the channel; keep the console output in ``original.log``."""
        if self.original is not None:
            self._console += self.original.read_output()
        if self.gateway is not None:
            self.gateway.stop_forwarding()  # nothing more reaches the endpoint, even from requests in flight
        self.sandbox.destroy()
        if self.gateway is not None:
            self.gateway.close()
        if self.steps is not None:
            self.steps.close()
        self.collector.record("sandbox_destroyed", sandbox_id=self.sandbox.id)
        self.collector.close()
        self.writer.close()
        shutil.rmtree(self.channel_dir, ignore_errors=True)
        with open(os.path.join(self.out_dir, "original.log"), "wb") as log:
            log.write(bytes(self._console))

    def __enter__(self) -> SystemSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
