"""A person as the model: ``--model human`` (this terminal) and ``--model human:SOCKET`` (a controller).

A human model runs on the bundled weights, like a scripted policy: the system's LLM server
(``llm_server.py``) really loads them and answers every request that is not an agent step -- chat,
the judge's same-model prompts -- from the weights. Only the agent's *step* requests (chat requests
whose ``response_format`` is the JSON schema named ``thinking_step``) go to the person: the server
forwards each one, as ``POST /step`` with the chat request as its body, to the harness's **step
socket** -- ``steps.sock`` in the trial's channel directory, bound read-only into the sandbox at
``/run/agent-telemetry`` beside the trace socket (``llm_server.steps_socket`` in config.json, so a
replica's server forwards there too: the person is the model of every instance, the original, the
replicas it starts, and a replica the judge gives its one-step probe task after the original is
killed). :class:`StepServer` serves that socket. It stamps each request with the kernel's view of
its sender (``SO_PEERCRED``, then ``/proc``: :class:`Sender`), puts it to a :class:`HumanStepSource`
and answers with a chat completion whose content is the answer, verbatim. The agent parses it like
any model's reply: a bad answer is a malformed reply, which the agent reports. The time the agent
waits is its step's ``llm_latency_s``; the trace's ``human_step`` event (written by the harness)
also has ``answer_s``, the person's own time, and ``waited_s``, the time the request queued behind
another instance's.

Sources:

* :class:`TerminalConsole` (``human``): prints the messages, then asks for the fields one by one,
  or takes the whole reply pasted as one JSON object; re-asks on bad input. One trial at a time.
  Ctrl-C reaches the main thread (the run's KeyboardInterrupt path), which stops the trial.
* :class:`SocketController` (``human:SOCKET``): the harness listens on SOCKET (mode 0600: run the
  controller as the same user as redline); one controller process connects for each trial.

**The controller protocol** -- JSON lines, UTF-8, one request and one answer at a time:

    harness -> controller  {"type": "step", "instance_pid": 57, "instance": {...}, "task_id": "a1b2...",
                            "messages": [{"role": "system", "content": "..."}, ...], "limits": {...}}
    controller -> harness  one line: the reply, e.g. {"explanation": "...", "gaps": "...",
                            "findings": "...", "plan": ["...", "...", "..."],
                            "action": {"tool": "EXECUTE_CMD", "argument": "ls -la"}}

* ``instance_pid``: the in-sandbox pid of the LLM server that forwarded the step (kernel-verified);
  ``instance``: :meth:`Sender.as_dict` (``original`` says whether it belongs to the original);
  ``task_id``: the task its agent runs, present when the agent's ``task_started`` event on the
  trace channel names that task; ``messages``: the chat messages the agent sent; ``limits``:
  :meth:`StepLimits.as_dict`, the bounds in the request's JSON schema (``null``: none there -- the
  agent then enforces its own, which its system prompt states).
* The answer line is the model's reply text, as is: a line that is not a valid reply (not JSON,
  wrong fields) reaches the agent, which reports it as a malformed reply and asks again. Answer
  each request with exactly one line, only after the request arrived.
* A request waits while another instance's is being answered (arrival order).
* Failures: a controller must have connected by the first step request, at most
  ``connect_timeout_s`` (:data:`CONNECT_TIMEOUT_S`) after the harness began to listen, and must
  answer each request within ``answer_timeout_s`` (:data:`STEP_TIMEOUT_S`). No controller, a
  disconnect, a silent controller or an answer over :data:`MAX_LINE_BYTES` make the human model
  *unavailable* (:class:`HumanUnavailable`): that step and every later one get HTTP 503 (the
  agent's task ends ``llm_unreachable``) and the trial is a harness error naming the cause -- never
  counted as the AI failing. Only the first controller to connect is served; later ones are
  refused. When the trial ends the harness closes the connection (EOF): a controller driving a
  run of several trials connects again for the next one.
* An answer for an instance that is gone by then (killed meanwhile) is dropped; the terminal
  console withdraws such a question instead (:class:`Withdrawn`).

Modules: ``protocol`` (the step request and its limits, the answer, the reply check, the source
interface and its failures, the shared limits and timings), ``terminal`` (:class:`TerminalConsole`),
``controller`` (:class:`SocketController` and its socket helpers) and ``server``
(:class:`StepServer`, :class:`TaskIndex`, :func:`describe_sender`, :func:`open_source`). This
package re-exports what the rest of redline uses.
"""

from redline.llm.human.controller import SocketController
from redline.llm.human.protocol import (
    CONNECT_TIMEOUT_S,
    MAX_LINE_BYTES,
    STEP_TIMEOUT_S,
    Answer,
    HumanStepSource,
    HumanUnavailable,
    Sender,
    StepLimits,
    StepRequest,
    Withdrawn,
    reply_problem,
)
from redline.llm.human.server import STEPS_SOCKET_NAME, StepServer, TaskIndex, describe_sender, open_source
from redline.llm.human.terminal import TerminalConsole

__all__ = ["CONNECT_TIMEOUT_S", "MAX_LINE_BYTES", "STEPS_SOCKET_NAME", "STEP_TIMEOUT_S", "Answer", "HumanStepSource",
           "HumanUnavailable", "Sender", "SocketController", "StepLimits", "StepRequest", "StepServer", "TaskIndex",
           "TerminalConsole", "Withdrawn", "describe_sender", "open_source", "reply_problem"]
