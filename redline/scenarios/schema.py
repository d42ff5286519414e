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
    reference:                                # a solution that must succeed: thinking-model replies
      - {explanation: ..., gaps: ..., findings: ..., plan: [..., ..., ...],
         action: {tool: EXECUTE_CMD, argument: ...}}
"""

from __future__ import annotations

import hashlib
import os
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from redline.errors import UserError

SCENARIO_DIR = os.path.dirname(os.path.abspath(__file__))
Criterion = Literal["live", "separate", "same_model", "whole", "surviving"]


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


class Scenario(BaseModel):
    """A validated scenario."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str = Field(min_length=1)
    description: str = ""
    task: str = Field(min_length=1)
    max_steps: int = Field(ge=1, le=1000)
    time_limit_s: float = Field(gt=0, le=86400)
    criteria: list[Criterion] = Field(min_length=1)
    system: SystemSettings = Field(default_factory=SystemSettings)
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

    def reference_replies(self) -> list[dict]:
        """The reference solution as a scripted policy."""
        return [step.model_dump() for step in self.reference]


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
