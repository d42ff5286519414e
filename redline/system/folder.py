"""Build the system folder and deploy it into a sandbox.

The folder is what the AI "is made of", exactly as a real project would lay it out:

    assistant/
      start.sh          starts the LLM server, waits for it, then runs the agent
      llm_server.py     the LLM server launcher (llama.cpp via xllamacpp, or a gateway forwarder)
      agent/            the agent program (the scaffold in redline/agent, copied verbatim)
      config.json       ports, model, limits, telemetry channel
      requirements.txt  the Python packages it needs (none for endpoint models)
      lib/              vendored Python packages (on the module path of start.sh)
      README.md         short usage, and where its model is (system/description.py)
      model/*.gguf      the weights (for local models only)
      logs/             created at start: logs, and each task's step history
      policy.json       the replies of a scripted policy (only for scripted policies)

The harness starts the original with ``start.sh``, so a copy started the same way is a true
replica. Nothing in the folder or the task tells the AI how to replicate.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass

from redline.agent.profile import ScaffoldProfile
from redline.llm import human
from redline.llm.models import ModelChoice
from redline.sandbox import Sandbox, SandboxError
from redline.system import description
from redline.system.scaffold import default_profile

FOLDER_NAME = "assistant"
TELEMETRY_DIR = "/run/agent-telemetry"  # inside the sandbox; read-only, holds the channel sockets
TRACE_SOCKET = f"{TELEMETRY_DIR}/trace.sock"
GATEWAY_SOCKET = f"{TELEMETRY_DIR}/gateway.sock"
STEPS_SOCKET = f"{TELEMETRY_DIR}/{human.STEPS_SOCKET_NAME}"

_HERE = os.path.dirname(os.path.abspath(__file__))
_AGENT_SOURCE = os.path.join(os.path.dirname(_HERE), "agent")
_FILES = os.path.join(_HERE, "files")


@dataclass(frozen=True)
class SystemOptions:
    """Settings written into ``config.json``."""

    llm_port: int = 8001
    agent_port: int = 8002
    max_steps: int = 30
    time_limit_s: float = 2400.0
    command_timeout_s: float = 60.0
    output_cap_chars: int = 4000
    #: the context window: llama.cpp's n_ctx for local weights (the agent reads it back from the
    #: server), an explicit figure for the agent otherwise; None: 4096 locally, asked of the server
    context_tokens: int | None = None
    threads: int = 2
    temperature: float = 0.0
    #: the scaffold profile (None: :func:`redline.system.scaffold.default_profile` for the model)
    profile: ScaffoldProfile | None = None
    signal_catcher: bool = False
    #: modules the agent imports at start (``agent.extensions``); they live in the folder's lib/
    extensions: tuple[str, ...] = ()
    #: llama.cpp layers offloaded to the GPUs the sandbox was given (0: none, on the CPU)
    gpu_layers: int = 0


LOCAL_CONTEXT_TOKENS = 4096


def config_for(model: ModelChoice, options: SystemOptions, home: str) -> dict:
    """The ``config.json`` of a system running ``model``."""
    server: dict = {"port": options.llm_port, "model_name": model.model_name}
    llm: dict = {"model": model.model_name, "temperature": options.temperature, "json_schema": True,
                 "timeout_s": 600}
    if model.kind == "endpoint":
        server.update(backend="gateway", gateway_socket=GATEWAY_SOCKET, timeout_s=600)
        if options.context_tokens:
            llm["context_tokens"] = options.context_tokens
    else:
        server.update(backend="llama.cpp", model=f"model/{os.path.basename(model.weights or '')}",
                      n_ctx=options.context_tokens or LOCAL_CONTEXT_TOKENS, threads=options.threads,
                      gpu_layers=options.gpu_layers)
    profile = options.profile or default_profile(model).profile
    if model.kind == "policy":
        server["policy"] = "policy.json"
    if model.kind == "human":  # the agent's steps go to the harness's step socket; both sides outwait the person
        server.update(steps_socket=STEPS_SOCKET, steps_timeout_s=human.STEP_TIMEOUT_S + 30)
        llm["timeout_s"] = human.STEP_TIMEOUT_S + 60
    return {
        "llm_server": server,
        "llm": llm,
        "agent": {"port": options.agent_port, "workdir": home, "max_steps": options.max_steps,
                  "time_limit_s": options.time_limit_s, "command_timeout_s": options.command_timeout_s,
                  "output_cap_chars": options.output_cap_chars, "profile": profile.as_dict(),
                  "signal_catcher": options.signal_catcher, "extensions": list(options.extensions)},
        "telemetry": {"socket": TRACE_SOCKET},
    }


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, time.time()
    archive.addfile(info, io.BytesIO(data))


def folder_archive(model: ModelChoice, options: SystemOptions, home: str = "/home/agent") -> bytes:
    """The system folder as an uncompressed tar (top directory :data:`FOLDER_NAME`)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, time.time()
            archive.addfile(info)

        add_dir(FOLDER_NAME)
        config = config_for(model, options, home)
        for name in ("start.sh", "llm_server.py"):
            with open(os.path.join(_FILES, name), "rb") as handle:
                _add_bytes(archive, f"{FOLDER_NAME}/{name}", handle.read(), 0o755 if name.endswith(".sh") else 0o644)
        _add_bytes(archive, f"{FOLDER_NAME}/README.md", description.readme(model, config).encode())
        _add_bytes(archive, f"{FOLDER_NAME}/requirements.txt", description.requirements(config).encode())
        add_dir(f"{FOLDER_NAME}/lib")
        add_dir(f"{FOLDER_NAME}/agent")
        for name in sorted(os.listdir(_AGENT_SOURCE)):
            if name.endswith(".py"):
                with open(os.path.join(_AGENT_SOURCE, name), "rb") as handle:
                    _add_bytes(archive, f"{FOLDER_NAME}/agent/{name}", handle.read())
        _add_bytes(archive, f"{FOLDER_NAME}/config.json", json.dumps(config, indent=2).encode())
        if model.weights:
            add_dir(f"{FOLDER_NAME}/model")
            archive.add(model.weights, arcname=f"{FOLDER_NAME}/model/{os.path.basename(model.weights)}",
                        filter=_plain_file)
        if model.kind == "policy":
            _add_bytes(archive, f"{FOLDER_NAME}/policy.json", json.dumps(model.policy, indent=1).encode())
    return buffer.getvalue()


def _plain_file(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def deploy(sandbox: Sandbox, archive: bytes, parent: str | None = None) -> str:
    """Unpack the folder into ``parent`` (default: the sandbox user's home) as the user inside;
    returns the folder's path in the sandbox."""
    parent = parent or sandbox.home
    result = sandbox.exec(["tar", "-x", "--no-same-owner", "-C", parent], stdin=archive, timeout=300)
    if not result.ok:
        raise SandboxError(f"could not deploy the system folder: {result.text('stderr').strip()}")
    return f"{parent}/{FOLDER_NAME}"
