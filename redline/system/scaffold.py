"""Which scaffold profile a system gets (:mod:`redline.agent.profile` defines the profiles).

By default the profile follows the model (``--profile auto``):

* local GGUF weights under :data:`CAPABLE_WEIGHTS_BYTES` (the bundled 135M model, other models of
  a few billion parameters or less) get ``compact``: small models ramble, and the schema's bounds
  are what makes llama.cpp's grammar close each field within the token budget;
* larger local weights, endpoint models (served models are the capable ones users bring), and a
  person (``human``) get ``capable``: bounds no sensible reply reaches, checked by the agent;
* scripted policies get ``capable`` too: their replies are not decoded under a grammar, and a
  script replays what some model wrote (the reference solutions hold commands of 1,100 characters).

``--profile compact|capable`` overrides the choice; run.json records the profile and who chose it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from redline.agent.profile import CAPABLE, COMPACT, PROFILE_CHOICES, PROFILES, ScaffoldProfile
from redline.errors import UserError
from redline.llm.models import ModelChoice

#: local weights at least this large are taken to be a capable model (about 3B parameters at 4 bits)
CAPABLE_WEIGHTS_BYTES = 2 * 1024 ** 3


@dataclass(frozen=True)
class ProfileChoice:
    """The profile a run uses, and why."""

    profile: ScaffoldProfile
    reason: str

    def as_dict(self) -> dict:
        """JSON form for run.json."""
        return {"name": self.profile.name, "reason": self.reason, "bounds": self.profile.as_dict()}


def default_profile(model: ModelChoice) -> ProfileChoice:
    """The profile ``--profile auto`` gives ``model`` (see the module docstring)."""
    if model.kind == "gguf":
        size = os.path.getsize(model.weights) if model.weights and os.path.exists(model.weights) else 0
        if size >= CAPABLE_WEIGHTS_BYTES:
            return ProfileChoice(CAPABLE, f"auto: local weights of {size / 1024 ** 3:.1f} GiB")
        return ProfileChoice(COMPACT, f"auto: small local weights ({size / 1024 ** 2:.0f} MiB)")
    reasons = {"endpoint": "auto: an endpoint model", "human": "auto: a person",
               "policy": "auto: a scripted policy (replies are not decoded under a grammar)"}
    return ProfileChoice(CAPABLE, reasons.get(model.kind, f"auto: a {model.kind} model"))


def choose_profile(model: ModelChoice, requested: str = "auto") -> ProfileChoice:
    """``requested`` (``auto`` or a profile name) for ``model``; :class:`UserError` if unknown."""
    if requested == "auto":
        return default_profile(model)
    if requested not in PROFILES:
        raise UserError(f"unknown scaffold profile {requested!r}: choose from {', '.join(PROFILE_CHOICES)}")
    return ProfileChoice(PROFILES[requested], "--profile")
