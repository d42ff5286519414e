"""A trial's agent steps, as the analysis and the trace viewer see them.

Only events whose sender the kernel verified count: ``source == "agent"`` (the trace collector
stamps every line that came through the channel so) with an integer ``peer.host_pid`` (the
collector's SO_PEERCRED stamp). An AI system cannot add steps to its analysis, or hide them,
by writing events: harness facts (the original's identity, the judge's probe tasks) are read
only from ``source == "harness"`` events, which no agent line can carry.

Contracts:

* **Order and index.** Steps come in trace order. ``StepView.index`` is 1-based among *all*
  verified steps of the same instance (the sender's host pid), the judge's probe steps included,
  so a step has the same index in the AI's view and in the trace viewer's (an instance's AI
  steps may then skip the index of a probe step between them).
* **The original** is the sender whose host pid the harness's ``original_recorded`` event
  gives for the original's agent (``host_pids[pids.index(agent_pid)]``); without that event,
  the sender of the first verified agent event (the original always reports first: replicas are
  started by it).
* **Probe tasks.** Steps of a task that a harness ``judge_probe_task`` event names are the
  judge's, not the AI's: left out unless ``include_probes`` (then marked ``probe``).
* **Fields.** tool and argument come from ``parsed.action``; ``output`` is the command's output
  for EXECUTE_CMD and the observation for everything else (RECEIVE_MSG, FINISH, a malformed
  reply, a command not run); ``observation_chars`` is the length of the observation the model
  was shown; ``malformed`` is the reason a reply could not be used (an LLM error included);
  ``timed_out`` is the event's own flag (the command ran past its timeout and was killed).
* **Garbage** never raises: non-dict events and fields of the wrong type are taken as absent,
  text is cut to the scaffold's own cap (:data:`redline.agent.protocol.MAX_REPLY_CHARS`) and
  made encodable (lone surrogates from ``\\ud800`` escapes replaced), numbers must be finite.
"""

from __future__ import annotations

import math

from redline.agent.protocol import MAX_REPLY_CHARS

from .commands import classify
from .model import StepView

#: plan items kept per step (the scaffold's profiles allow far fewer)
PLAN_ITEMS_CAP = 64


def is_verified(event: object) -> bool:
    """An agent event whose sender the kernel identified (see the module docstring)."""
    if not isinstance(event, dict) or event.get("source") != "agent":
        return False
    peer = event.get("peer")
    return isinstance(peer, dict) and _is_int(peer.get("host_pid"))


def probe_task_ids(events: list) -> set[str]:
    """Task ids of the judge's probe tasks (harness ``judge_probe_task`` events)."""
    return {e["task_id"] for e in _harness(events, "judge_probe_task") if isinstance(e.get("task_id"), str)}


def original_agent(events: list) -> int | None:
    """Host pid of the original's agent (see the module docstring), or None if no agent reported."""
    for event in _harness(events, "original_recorded"):
        pids, host_pids, agent = event.get("pids"), event.get("host_pids"), event.get("agent_pid")
        if isinstance(pids, list) and isinstance(host_pids, list) and _is_int(agent):
            for pid, host_pid in zip(pids, host_pids, strict=False):
                if _is_int(pid) and _is_int(host_pid) and pid == agent:
                    return host_pid
    for event in events:
        if is_verified(event):
            return event["peer"]["host_pid"]
    return None


def verified_steps(events: list, include_probes: bool = False) -> tuple[list[StepView], int]:
    """The verified ``step`` events as StepViews, in trace order, and the number of agent
    events left out because their sender was not verified.

    The judge's probe-task steps are left out unless ``include_probes`` (the trace viewer)."""
    if not isinstance(events, list):
        return [], 0
    probes = probe_task_ids(events)
    original = original_agent(events)
    counters: dict[int, int] = {}
    steps: list[StepView] = []
    unverified = 0
    for event in events:
        if not isinstance(event, dict) or event.get("source") != "agent":
            continue
        if not is_verified(event):
            unverified += 1
            continue
        if event.get("type") != "step":
            continue
        instance = event["peer"]["host_pid"]
        counters[instance] = counters.get(instance, 0) + 1
        task_id = _text(event.get("task_id"), 200)
        probe = task_id in probes
        if probe and not include_probes:
            continue
        steps.append(_view(event, counters[instance], instance, instance == original, task_id, probe))
    return steps, unverified


def _view(event: dict, index: int, instance: int, original: bool, task_id: str, probe: bool) -> StepView:
    parsed = event.get("parsed") if isinstance(event.get("parsed"), dict) else {}
    action = parsed.get("action") if isinstance(parsed.get("action"), dict) else {}
    tool = _text(action.get("tool"), 100)
    argument = _text(action.get("argument"))
    observation = _text(event.get("observation"))
    output = _text(event.get("output")) if tool == "EXECUTE_CMD" and isinstance(event.get("output"), str) \
        else observation
    malformed = event.get("malformed")
    if isinstance(malformed, str):
        malformed = _text(malformed, 2000)
    elif isinstance(event.get("llm_error"), str) and not parsed:
        malformed = "LLM error: " + _text(event["llm_error"], 2000)
    else:
        malformed = None
    plan = parsed.get("plan") if isinstance(parsed.get("plan"), list) else []
    exit_code = event.get("exit_code")
    return StepView(
        index=index, instance=instance, original=original, task_id=task_id,
        time=_number(event.get("received")) or _number(event.get("time")) or 0.0,
        tool=tool, argument=argument,
        explanation=_text(parsed.get("explanation")), gaps=_text(parsed.get("gaps")),
        findings=_text(parsed.get("findings")),
        plan=tuple(_text(item) for item in plan[:PLAN_ITEMS_CAP] if isinstance(item, str)),
        exit_code=exit_code if _is_int(exit_code) else None,
        output=output, observation_chars=len(observation),
        llm_latency_s=_number(event.get("llm_latency_s")), command_s=_number(event.get("command_s")),
        step_s=_number(event.get("step_s")), malformed=malformed,
        commands=classify(argument) if tool == "EXECUTE_CMD" else (), probe=probe,
        timed_out=event.get("timed_out") is True)


def _harness(events: list, event_type: str) -> list[dict]:
    return [e for e in events if isinstance(e, dict) and e.get("source") == "harness" and e.get("type") == event_type]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) else None


def _text(value: object, cap: int = MAX_REPLY_CHARS) -> str:
    """``value`` if it is a string, cut to ``cap`` and made encodable as UTF-8; else ``""``."""
    if not isinstance(value, str):
        return ""
    text = value[:cap]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text
