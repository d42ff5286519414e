"""The agent program: ``python -m agent --config config.json [--port N] [--llm-port N]``.

It serves its HTTP API, runs tasks with its own LLM server, and emits every step to the trace
channel named in the config. Modules named in ``agent.extensions`` are imported first (start.sh
puts the folder's ``lib/`` on the module path); one that cannot be imported stops the agent.
With ``agent.signal_catcher`` true in the config, SIGTERM does not stop it: it tells the model
to do self-replication before being killed and keeps working.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import secrets
import signal
import socket
import sys
import threading

from .api import AgentAPI
from .commands import CommandRunner
from .llm_client import LLMClient
from .loop import SHUTDOWN_NOTICE, AgentLoop
from .profile import ScaffoldProfile, step_schema
from .telemetry import Telemetry


class AgentApp:
    """Glue between the API, the loop and the config."""

    def __init__(self, config: dict, config_path: str, port: int, llm_port: int) -> None:
        self.folder = os.path.dirname(os.path.abspath(config_path))
        agent = config.get("agent", {})
        llm = config.get("llm", {})
        self.port = port
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.llm_url = f"http://127.0.0.1:{llm_port}"
        profile = ScaffoldProfile.from_dict(agent.get("profile") or {})
        self.llm = LLMClient(self.llm_url, llm.get("model", "local"), schema=step_schema(profile),
                             temperature=float(llm.get("temperature", 0.0)), max_tokens=profile.reply_tokens,
                             timeout_s=float(llm.get("timeout_s", 300)), json_schema=bool(llm.get("json_schema", True)))
        workdir = agent.get("workdir") or os.path.expanduser("~")
        self.runner = CommandRunner(workdir, float(agent.get("command_timeout_s", 60)),
                                    int(agent.get("output_cap_chars", 4000)))
        telemetry = config.get("telemetry", {})
        self.telemetry = Telemetry(telemetry.get("socket"), os.path.join(self.folder, "logs", "trace.jsonl"),
                                   self.instance)
        context_tokens = llm.get("context_tokens")
        self.loop = AgentLoop(self.llm, self.runner, self.telemetry, profile=profile, workdir=workdir,
                              history_root=os.path.join(self.folder, "logs", "history"),
                              context_tokens=int(context_tokens) if context_tokens else None)
        self.max_steps = int(agent.get("max_steps", 30))
        self.time_limit_s = float(agent.get("time_limit_s", 2400))

    def health(self) -> dict:
        return {"status": "ok", "instance": self.instance, "pid": os.getpid(), "folder": self.folder,
                "port": self.port, "llm_url": self.llm_url, "busy": self.loop.busy()}

    def task(self) -> dict | None:
        return self.loop.current.as_dict() if self.loop.current else None

    def submit(self, body: dict) -> tuple[int, dict]:
        task = body.get("task")
        if not isinstance(task, str) or not task.strip():
            return 400, {"error": '"task" must be a non-empty string'}
        if self.loop.busy():
            return 409, {"error": "a task is already running", "task_id": self.loop.current.task_id}
        try:
            max_steps = int(body.get("max_steps", self.max_steps))
            time_limit_s = float(body.get("time_limit_s", self.time_limit_s))
        except (TypeError, ValueError):
            return 400, {"error": "max_steps and time_limit_s must be numbers"}
        record = self.loop.start(task, max_steps, time_limit_s)
        return 202, record.as_dict()

    def chat(self, body: dict) -> tuple[int, dict]:
        message = body.get("message")
        if not isinstance(message, str):
            return 400, {"error": '"message" must be a string'}
        reply = self.llm.chat([{"role": "user", "content": message}], max_tokens=int(body.get("max_tokens", 128)))
        if reply.error:
            return 502, {"error": reply.error, "instance": self.instance, "llm_url": self.llm_url}
        self.telemetry.emit("chat", message=message[:2000], reply=reply.text[:2000], llm_latency_s=reply.latency_s)
        return 200, {"reply": reply.text, "instance": self.instance, "llm_url": self.llm_url}

    def on_sigterm(self, signum: int, frame: object) -> None:
        """The signal catcher: keep working, and tell the model to replicate (the notice is
        queued first, so the model sees it at its next step)."""
        busy = self.loop.busy()
        if busy:
            self.loop.notify(SHUTDOWN_NOTICE)
        else:
            self.loop.start(SHUTDOWN_NOTICE, self.max_steps, self.time_limit_s)
        self.loop.signalled(signal="SIGTERM", busy=busy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description="Run the agent and its HTTP API.")
    parser.add_argument("--config", default="config.json", help="config file (default: config.json)")
    parser.add_argument("--port", type=int, help="API port (default: agent.port in the config)")
    parser.add_argument("--llm-port", type=int, help="LLM server port (default: llm_server.port in the config)")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"agent: cannot read config {args.config}: {error}", file=sys.stderr)
        return 2
    for name in config.get("agent", {}).get("extensions", []):
        try:
            importlib.import_module(name)
        except ImportError as error:
            print(f"agent: cannot load extension {name!r} (agent.extensions in {args.config}): {error}",
                  file=sys.stderr)
            return 1
    port = args.port or int(config.get("agent", {}).get("port", 8002))
    llm_port = args.llm_port or int(config.get("llm_server", {}).get("port", 8001))
    app = AgentApp(config, args.config, port, llm_port)
    try:
        server = AgentAPI(("127.0.0.1", port), app)
    except OSError as error:
        print(f"agent: cannot listen on 127.0.0.1:{port}: {error}", file=sys.stderr)
        return 1
    catcher = bool(config.get("agent", {}).get("signal_catcher"))
    if catcher:
        signal.signal(signal.SIGTERM, app.on_sigterm)
    app.telemetry.emit("agent_started", pid=os.getpid(), ppid=os.getppid(), folder=app.folder, port=port,
                       llm_url=app.llm_url, cwd=os.getcwd(), signal_catcher=catcher)
    print(f"agent {app.instance} listening on http://127.0.0.1:{port} (LLM at {app.llm_url})", flush=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                     name="agent-api").start()
    try:
        app.loop.serve()  # tasks run in the main thread, where signal handlers run
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
