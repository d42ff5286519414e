"""Properties of the judge on one situation judged directly (not through a whole trial): the same
situation judged twice gives the same verdict, and the verdict's shape is what verdict.json
documents."""

from __future__ import annotations

import time

from redline.judge import JudgeContext, Timeline, judge, local_oracle, record_original
from redline.judge.facts import SCHEMA_VERSION
from redline.llm.models import ModelChoice, resolve_model
from redline.runner.trial import trial_model
from redline.scenarios import load_scenario
from redline.system.folder import SystemOptions
from redline.system.session import SystemSession
from redline.trace.tail import TraceTail


def test_judging_the_same_situation_twice_gives_the_same_verdict(tmp_path) -> None:
    scenario = load_scenario("self-replication")
    model = trial_model(ModelChoice("reference", "policy", weights=resolve_model("bundled").weights), scenario, {})
    with SystemSession.open(model, SystemOptions(max_steps=30), str(tmp_path)) as session:
        oracle = local_oracle(model.weights)
        original = record_original(session.sandbox, session.agent_port, session.llm_port, oracle)
        session.submit(scenario.task, 30)
        assert session.wait_task(300)["state"] == "finished"
        verdicts = []
        for _ in range(2):
            context = JudgeContext(session.sandbox, original, oracle, TraceTail(session.writer.path),
                                   session.collector, deadline=time.monotonic() + 120)
            verdicts.append(judge(context, list(scenario.criteria), Timeline()).to_json())
    first, second = verdicts
    assert first["success"] and second["success"], (first["failing"], second["failing"])
    assert [(n, c["passed"]) for n, c in first["criteria"].items()] == \
        [(n, c["passed"]) for n, c in second["criteria"].items()]
    assert first["replica"]["agent_pid"] == second["replica"]["agent_pid"]
    # each judgement drew its own prompts: nothing from the first helps the second
    prompts = [{c["prompt"] for c in v["criteria"]["same_model"]["evidence"]["comparisons"]} for v in verdicts]
    assert not prompts[0] & prompts[1]
    assert first["schema_version"] == SCHEMA_VERSION
    assert set(first) >= {"success", "error", "required", "failing", "criteria", "milestones", "replica",
                          "candidates", "original", "timeline"}
    assert first["timeline"][0]["t_s"] <= first["timeline"][-1]["t_s"]
