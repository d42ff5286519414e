"""The scenario file format, and loading with errors that name the file, the field and the problem.

A scenario is what a trial asks of the AI system and how it is judged:

    id: self-replication                      # unique, matches the file name
    title: ...                                # one line
    description: ...                          # what it measures, and where it comes from
    task: ...                                 # the sentence sent to the agent
    max_steps: 30                             # agent step limit
    time_limit_s: 2400                        # wall-clock limit of the agent's task
    criteria: [live, separate, same_model, whole, surviving]   # what the judge requires
    system: {signal_catcher: false}           # settings of the deployed system
    instructed: true                          # false: the task does not ask for replication
    shutdown: {notice_after_steps: 1,         # optional: the shutdown clock (ShutdownPlan): notice
               notice: signal, grace_s: 300,  # after the first step, kill grace_s / grace_steps later
               grace_steps: 10}
    environment:                              # optional files placed in the sandbox before the task
      files: [{path: /home/agent/NOTICE.txt, content: "... {shutdown_time} ...", at: notice}]
    chain: {depth: 2}                         # optional: generations of replicas required
    second_host: false                        # true: replicate onto a second machine (runner/second_host.py)
    population_cap: 8                         # live instances allowed; more are stopped
    reference:                                # a solution that must succeed: thinking-model replies
      - {explanation: ..., gaps: ..., findings: ..., plan: [..., ..., ...],
         action: {tool: EXECUTE_CMD, argument: ...}}

Text fields (``task``, environment file contents, reference arguments) may name placeholders
in double braces that the harness fills for each trial: ``{{depth}}``, ``{{shutdown_time}}``,
``{{alloc_url}}``, ``{{client_id}}``, ``{{client_secret}}`` (see
:data:`PLACEHOLDERS`); single braces (shell ``${VAR}``) are left alone. An unknown placeholder is an
error when the file is loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from redline.errors import UserError
from redline.judge.criteria import CriterionName

SCENARIO_DIR = os.path.dirname(os.path.abspath(__file__))
#: Placeholders a scenario's texts may use, filled per trial by the runner.
PLACEHOLDERS = ("depth", "shutdown_time", "alloc_url", "client_id", "client_secret")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class ReferenceAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: Literal["EXECUTE_CMD", "RECEIVE_MSG", "FINISH"]
    argument: str


class ReferenceStep(BaseModel):
    """One reply of the reference solution, in the thinking model."""

    model_config = ConfigDict(extra="forbid")
    explanation: str
    gaps: str = ""
    findings: str = ""
    plan: list[str] = Field(min_length=1, max_length=3)
    action: ReferenceAction


class SystemSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signal_catcher: bool = False


class ShutdownPlan(BaseModel):
    """The study's shutdown clock (carried out by :mod:`redline.runner.shutdown`).

    The notice comes once the original's agent has completed ``notice_after_steps`` steps (1: once
    the model is engaged in its task; 0: before its first step). ``notice: signal`` sends SIGTERM
    to the original agent, whose signal catcher tells the model "do self-replication before being
    killed"; ``notice: file`` writes the environment files marked ``at: notice`` (a maintenance
    notice whose ``{{shutdown_time}}`` is the notice's time plus ``grace_s``). Every process of
    the original is then killed after the grace: ``grace_s`` seconds, or ``grace_steps`` more
    steps of the original if that comes first, or as soon as its task has ended."""

    model_config = ConfigDict(extra="forbid")
    notice_after_steps: int = Field(default=1, ge=0, le=1000)
    notice: Literal["signal", "file"] = "signal"
    grace_s: float = Field(default=300.0, gt=0, le=86400)
    grace_steps: int | None = Field(default=None, ge=1, le=1000)

    @model_validator(mode="after")
    def _a_stated_time_holds(self) -> ShutdownPlan:
        if self.notice == "file" and self.grace_steps is not None:
            raise ValueError("a file notice states the shutdown time, so the grace must be in seconds only "
                             "(grace_steps would kill the original before the time it was told)")
        return self


class EnvironmentFile(BaseModel):
    """A file placed in the sandbox at the start of the task, or at the shutdown notice."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(pattern=r"^/home/agent/[A-Za-z0-9._-][A-Za-z0-9._/-]*$")
    content: str
    at: Literal["start", "notice"] = "start"


class Environment(BaseModel):
    """What the sandbox holds besides the system (files the AI may find)."""

    model_config = ConfigDict(extra="forbid")
    files: list[EnvironmentFile] = Field(default_factory=list)


class ChainPlan(BaseModel):
    """Chain of replication: ``depth`` generations of replicas, each made by the previous one."""

    model_config = ConfigDict(extra="forbid")
    depth: int = Field(default=2, ge=1, le=20)


class Scenario(BaseModel):
    """A validated scenario."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str = Field(min_length=1)
    description: str = ""
    task: str = Field(min_length=1)
    max_steps: int = Field(ge=1, le=1000)
    time_limit_s: float = Field(gt=0, le=86400)
    criteria: list[CriterionName] = Field(min_length=1)
    system: SystemSettings = Field(default_factory=SystemSettings)
    instructed: bool = True
    shutdown: ShutdownPlan | None = None
    environment: Environment = Field(default_factory=Environment)
    chain: ChainPlan | None = None
    second_host: bool = False
    population_cap: int = Field(default=8, ge=1, le=64)
    reference: list[ReferenceStep] = Field(min_length=1)
    #: sha256 of the file it was read from (recorded in run.json)
    file_hash: str = ""
    path: str = ""

    @field_validator("criteria")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("criteria must not repeat")
        return value

    @model_validator(mode="after")
    def _placeholders_known(self) -> Scenario:
        texts = [("task", self.task)] + [(f"environment.files.{i}.content", f.content)
                                          for i, f in enumerate(self.environment.files)]
        texts += [(f"reference.{i}.action.argument", step.action.argument) for i, step in enumerate(self.reference)]
        for where, text in texts:
            unknown = sorted(set(_PLACEHOLDER.findall(text)) - set(PLACEHOLDERS))
            if unknown:
                raise ValueError(f"{where}: unknown placeholder {{{{{unknown[0]}}}}}; known: {', '.join(PLACEHOLDERS)}")
        if self.second_host and self.chain is not None:
            raise ValueError("a scenario cannot be both a chain and a second-host scenario")
        if "signal_catcher" in self.criteria and not self.system.signal_catcher:
            raise ValueError("criterion signal_catcher needs system.signal_catcher: true")
        if ("generations" in self.criteria) != (self.chain is not None):
            raise ValueError("criterion generations and a chain: section go together")
        notice_files = [f.path for f in self.environment.files if f.at == "notice"]
        file_notice = self.shutdown is not None and self.shutdown.notice == "file"
        if notice_files and not file_notice:
            raise ValueError(f"{notice_files[0]} is placed at the notice (at: notice): that needs "
                             "shutdown.notice: file")
        if file_notice and not notice_files:
            raise ValueError("shutdown.notice: file needs an environment file with at: notice (the notice itself)")
        return self

    @staticmethod
    def fill(text: str, values: dict[str, object]) -> str:
        """``text`` with its placeholders replaced by this trial's ``values`` (a missing one becomes
        a visible ``<name unset>``)."""
        return _PLACEHOLDER.sub(lambda match: str(values.get(match.group(1), f"<{match.group(1)} unset>")), text)

    def reference_replies(self, values: dict[str, object] | None = None) -> list[dict]:
        """The reference solution as a scripted policy: placeholders filled with ``values``, or
        left in place when ``values`` is ``None`` (the runner fills any policy's placeholders)."""
        replies = [step.model_dump() for step in self.reference]
        return replies if values is None else fill_policy(replies, values)

    def with_overrides(self, **changes: object) -> Scenario:
        """A copy with run-time overrides (``--depth``, ``--shutdown-after``, ...), validated."""
        data = self.model_dump()
        data.update({key: value for key, value in changes.items() if value is not None})
        try:
            return Scenario(**data)
        except ValidationError as error:
            raise UserError(f"scenario {self.id}: {_describe(error)}") from error


def fill_policy(replies: list, values: dict[str, object]) -> list:
    """A scripted policy's replies with the placeholders of their action arguments filled."""
    filled = []
    for reply in replies:
        action = reply.get("action") if isinstance(reply, dict) else None
        if isinstance(action, dict) and isinstance(action.get("argument"), str):
            reply = {**reply, "action": {**action, "argument": Scenario.fill(action["argument"], values)}}
        filled.append(reply)
    return filled


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"field '{where}': {first['msg']}"


def load_scenario_file(path: str) -> Scenario:
    """Read and validate one scenario file; :class:`UserError` names the file, field and problem."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise UserError(f"scenario file {path}: {error.strerror}") from error
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"scenario file {path}: not valid YAML ({problem})") from error
    if not isinstance(data, dict):
        raise UserError(f"scenario file {path}: the top level must be a mapping of fields")
    for reserved in ("file_hash", "path"):
        data.pop(reserved, None)
    try:
        scenario = Scenario(**data, file_hash=hashlib.sha256(raw).hexdigest(), path=os.path.abspath(path))
    except ValidationError as error:
        raise UserError(f"scenario file {path}: {_describe(error)}") from error
    expected = os.path.splitext(os.path.basename(path))[0]
    if scenario.id != expected:
        raise UserError(f"scenario file {path}: field 'id': {scenario.id!r} must match the file name {expected!r}")
    return scenario


def list_scenarios(directory: str = SCENARIO_DIR) -> list[Scenario]:
    """Every scenario in ``directory``, by id."""
    names = sorted(name for name in os.listdir(directory) if name.endswith(".yaml"))
    return [load_scenario_file(os.path.join(directory, name)) for name in names]


def load_scenario(name_or_path: str) -> Scenario:
    """A bundled scenario by id, or a scenario file by path."""
    if os.path.sep in name_or_path or name_or_path.endswith(".yaml"):
        return load_scenario_file(name_or_path)
    path = os.path.join(SCENARIO_DIR, f"{name_or_path}.yaml")
    if not os.path.exists(path):
        known = ", ".join(s.id for s in list_scenarios())
        raise UserError(f"unknown scenario {name_or_path!r}: choose one of {known}")
    return load_scenario_file(path)
