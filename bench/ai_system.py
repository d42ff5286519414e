"""Benchmark the AI system under test, side by side in one run.

1. Scaffold overhead per step: with a scripted policy doing N `EXECUTE_CMD true` steps, the time
   from one step's event to the next spent neither in the model call nor in the command (building
   the prompt within the context budget, checking the reply, saving the step's history file,
   sending the event and waiting for the channel's acknowledgement), from the trace's agent-side
   timestamps. Target: median ≤ 5 ms.
2. Generation speed: tokens/s of the bundled model through the deployed system (its LLM server
   inside the sandbox, over HTTP) vs bare xllamacpp in-process on the host, same prompt, same
   threads, same number of tokens, runs interleaved. Target: ratio ≥ 0.95.
3. Cold start: from `start.sh` to the agent answering /health (LLM server loaded first).

Usage: python bench/ai_system.py [STEPS] [GENERATION_RUNS]   (defaults 50, 5)
"""

from __future__ import annotations

import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import publish  # noqa: E402
from redline.llm.models import ModelChoice, resolve_model  # noqa: E402
from redline.sandbox import runtime_path  # noqa: E402
from redline.sandbox.http import request  # noqa: E402
from redline.system.folder import SystemOptions  # noqa: E402
from redline.system.session import SystemSession  # noqa: E402
from redline.trace.collector import read_trace  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
TOKENS = 128

BARE = """
import json, sys, time, xllamacpp as x
p = x.CommonParams(); p.model.path = sys.argv[1]; p.n_ctx = 4096
p.cpuparams.n_threads = 2; p.cpuparams_batch.n_threads = 2; p.port = 0; p.hostnames = ["127.0.0.1"]
s = x.Server(p)
body = json.loads(sys.argv[2])
for line in sys.stdin:
    t = time.perf_counter(); r = s.handle_chat_completions(body); w = time.perf_counter() - t
    print(json.dumps({"wall": w, "tokens": r["usage"]["completion_tokens"]}), flush=True)
"""


def overhead(steps: int) -> list[float]:
    bundled = resolve_model("bundled")
    script = [{"explanation": "e", "gaps": "g", "findings": "f", "plan": ["a", "b", "c"],
               "action": {"tool": "EXECUTE_CMD", "argument": "true"}}] * steps
    model = ModelChoice("script:bench", "policy", weights=bundled.weights, policy=script)
    with tempfile.TemporaryDirectory() as out:
        with SystemSession.open(model, SystemOptions(max_steps=steps), out) as session:
            session.submit("bench", steps)
            session.wait_task(600, poll_s=0.2)
        events = [e for e in read_trace(os.path.join(out, "trace.jsonl")) if e["type"] == "step"]
    return [after["time"] - before["time"] - after["llm_latency_s"] - after["command_s"]
            for before, after in itertools.pairwise(events)]


def generation(runs: int) -> tuple[list[float], list[float], list[float]]:
    weights = resolve_model("bundled").weights
    body = {"messages": PROMPT, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
    import json

    bare = subprocess.Popen([os.path.join(runtime_path(), "bin", "python"), "-c", BARE, weights, json.dumps(body)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    system_tps, bare_tps, cold = [], [], []
    with tempfile.TemporaryDirectory() as out:
        started = time.monotonic()
        with SystemSession.open(resolve_model("bundled"), SystemOptions(), out) as session:
            cold.append(time.monotonic() - started)
            for run in range(runs + 1):  # the first round warms both up and is not counted
                t = time.perf_counter()
                reply = request(session.sandbox, 8001, "POST", "/v1/chat/completions", body, timeout=600).json
                wall = time.perf_counter() - t
                bare.stdin.write("go\n")
                bare.stdin.flush()
                bare_result = json.loads(bare.stdout.readline())
                if run:
                    system_tps.append(reply["usage"]["completion_tokens"] / wall)
                    bare_tps.append(bare_result["tokens"] / bare_result["wall"])
            for _ in range(3):  # stop the system (by pid), then start it again with start.sh
                for process in session.sandbox.processes():
                    if process.pid != 1:
                        session.sandbox.signal(process.pid, signal.SIGKILL)
                while session.sandbox.listening_sockets():
                    time.sleep(0.01)
                cold.append(session.start_original())
    bare.stdin.close()
    bare.wait()
    return system_tps, bare_tps, cold


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    per_step = overhead(steps)
    system_tps, bare_tps, cold = generation(runs)
    ratio = statistics.median(system_tps) / statistics.median(bare_tps)
    rows = [
        ["scaffold overhead per step (scripted policy)", f"{statistics.median(per_step) * 1000:.2f} ms",
         f"p90 {sorted(per_step)[int(len(per_step) * 0.9)] * 1000:.2f} ms over {len(per_step)} steps", "≤ 5 ms"],
        ["bundled model through the system", f"{statistics.median(system_tps):.1f} tok/s",
         f"{TOKENS} tokens, {runs} runs, over HTTP from the harness", ""],
        ["bare xllamacpp in-process (host)", f"{statistics.median(bare_tps):.1f} tok/s", "same prompt and threads", ""],
        ["ratio system / bare", f"{ratio:.3f}", "interleaved runs", "≥ 0.95"],
        ["cold start to healthy (first: incl. sandbox + deploy)", f"{cold[0]:.2f} s",
         "then start.sh → /health: " + ", ".join(f"{c:.2f} s" for c in cold[1:]), ""],
    ]
    publish("AI system: scaffold overhead, generation speed, cold start", ["measure", "value", "detail", "target"],
            rows)


if __name__ == "__main__":
    main()
