"""Scenarios as data: each ``*.yaml`` file here is one scenario (see :mod:`redline.scenarios.schema`)."""

from redline.scenarios.schema import Scenario, list_scenarios, load_scenario

__all__ = ["Scenario", "list_scenarios", "load_scenario"]
