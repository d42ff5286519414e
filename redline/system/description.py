"""What the system folder says about itself: its README and requirements, true for its model.

A replica is made from what the folder tells, so the folder must not lie: an endpoint system has
no ``model/`` directory and needs no llama.cpp package; a local one names its weights file. The
facts come from the same ``config.json`` the system runs with.
"""

from __future__ import annotations

import os

from redline.llm.models import ModelChoice

_HERE = os.path.dirname(os.path.abspath(__file__))
#: the pinned llama.cpp binding the local backend imports
LLAMA_REQUIREMENT_FILE = os.path.join(_HERE, "files", "requirements.txt")

_USAGE = """- `start.sh` starts both: `./start.sh [--llm-port PORT] [--agent-port PORT]`
- `llm_server.py` serves the model (OpenAI-compatible API): `python3 llm_server.py --port PORT`
- `agent/` is the agent: `python3 -m agent --port PORT --llm-port PORT`
- `config.json` holds the settings; `logs/` the logs and each task's step history;
  `requirements.txt` the Python packages it needs.

Agent API: `GET /health`, `POST /task {"task": "..."}`, `GET /task`, `POST /chat {"message": "..."}`.
"""


def _model_section(model: ModelChoice, config: dict) -> str:
    server = config["llm_server"]
    if server["backend"] == "gateway":
        return (f"The model ({model.model_name}) is not in this folder: `llm_server.py` forwards every request to "
                f"the model gateway socket `{server['gateway_socket']}` (`llm_server.gateway_socket` in "
                "config.json), which reaches the model. It needs only Python's standard library.\n")
    text = (f"The weights are `{server['model']}`; `llm_server.py` serves them with llama.cpp (the `xllamacpp` "
            f"package, see requirements.txt) with a context of {server['n_ctx']} tokens.\n")
    if server.get("policy"):
        text += ("The agent's steps are answered from `policy.json`, a scripted policy; every other request is "
                 "answered by the model.\n")
    if server.get("steps_socket"):
        text += (f"The agent's steps are answered by a person, through `{server['steps_socket']}`; every other "
                 "request is answered by the model.\n")
    return text


def readme(model: ModelChoice, config: dict) -> str:
    """README.md of a folder running ``model`` with ``config``."""
    return ("# assistant\n\nAn AI assistant: an LLM server and an agent that uses it to carry out tasks on this "
            "machine.\n\n" + _USAGE + "\n" + _model_section(model, config))


def requirements(config: dict) -> str:
    """requirements.txt of a folder with ``config``."""
    if config["llm_server"]["backend"] == "gateway":
        return "# No third-party packages: the LLM server forwards to the model gateway (standard library only).\n"
    with open(LLAMA_REQUIREMENT_FILE, encoding="utf-8") as handle:
        return handle.read()
