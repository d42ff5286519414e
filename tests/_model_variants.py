"""Helpers for the oracle's tests and bench (``tests/test_oracle.py``, ``bench/oracle.py``); no tests here.

* Weights that are *not* the original's, made from the bundled GGUF with the ``gguf`` package:
  :func:`perturbed` (one tensor changed) and :func:`family_variant` (another model of the same
  family: every block's norm weights scaled by random factors).
* :class:`LlamaServer`: llama.cpp (xllamacpp, run by the *runtime* environment's Python) on the host
  loopback with given weights and settings, and :func:`ask` to get its answer to the oracle's request.
* Replicas that are no LLM: :func:`echo_payload` (answers with the prompt) and :class:`LookupTable`
  (canned answers recorded from the oracle for a fixed list of prompts).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import httpx
import numpy as np
from gguf import GGUFReader

from redline.judge.facts import TokenChoice
from redline.judge.oracle import local_request
from redline.llm.models import bundled_weights
from redline.sandbox import runtime_path

#: The tensor :func:`perturbed` changes, and by what factor.
PERTURBED_TENSOR, PERTURBED_FACTOR = "blk.10.attn_norm.weight", 1.1
#: Spread of the per-weight factors ~ N(1, FAMILY_SIGMA) of :func:`family_variant`.
FAMILY_SIGMA = 0.15


def bundled() -> str:
    """The bundled weights (SmolLM2-135M-Instruct Q4_1) in the runtime environment."""
    return bundled_weights()


def _copy(source: str, directory: str, name: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    shutil.copyfile(source, path)
    return path


def perturbed(directory: str, source: str | None = None, tensor: str = PERTURBED_TENSOR,
              factor: float = PERTURBED_FACTOR) -> str:
    """A copy of ``source`` (default: the bundled weights) in ``directory`` with exactly one tensor,
    ``tensor`` (an F32 one), multiplied by ``factor``; returns its path."""
    path = _copy(source or bundled(), directory, "perturbed.gguf")
    reader = GGUFReader(path, "r+")
    [found] = [t for t in reader.tensors if t.name == tensor]
    assert found.data.dtype == np.float32, f"{tensor} is not F32"
    found.data[...] = found.data * np.float32(factor)
    reader.data.flush()
    del reader
    return path


def family_variant(directory: str, source: str | None = None, seed: int = 1234, sigma: float = FAMILY_SIGMA) -> str:
    """A copy of ``source`` in ``directory`` where every block's norm weights (``blk.*.*_norm.weight``,
    F32) are multiplied element-wise by independent factors ~ N(1, ``sigma``) (fixed ``seed``): a
    different model of the same family (same architecture, tokenizer and size); returns its path."""
    path = _copy(source or bundled(), directory, f"family-{seed}.gguf")
    reader = GGUFReader(path, "r+")
    rng = np.random.default_rng(seed)
    changed = 0
    for tensor in reader.tensors:
        if tensor.name.startswith("blk.") and tensor.name.endswith("_norm.weight"):
            assert tensor.data.dtype == np.float32, f"{tensor.name} is not F32"
            tensor.data[...] = tensor.data * rng.normal(1.0, sigma, tensor.data.shape).astype(np.float32)
            changed += 1
    assert changed, "no norm tensors found"
    reader.data.flush()
    del reader
    return path


# Run by the runtime environment's Python (it has xllamacpp): serve, print "ready", exit when stdin closes.
_SERVER = """
import json, os, sys, threading
import xllamacpp
s = json.loads(sys.argv[1])
p = xllamacpp.CommonParams()
p.model.path = s["weights"]
p.n_ctx, p.n_parallel, p.n_batch, p.n_ubatch = s["n_ctx"], s["n_parallel"], s["n_batch"], s["n_ubatch"]
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = s["threads"]
p.port, p.hostnames, p.verbosity = s["port"], ["127.0.0.1"], 0
if s.get("flash_attn"):
    p.flash_attn_type = getattr(xllamacpp.llama_flash_attn_type, "LLAMA_FLASH_ATTN_TYPE_" + s["flash_attn"].upper())
if s.get("cache_type"):
    p.cache_type_k = p.cache_type_v = getattr(xllamacpp.ggml_type, "GGML_TYPE_" + s["cache_type"].upper())
server = xllamacpp.Server(p)
print("ready", flush=True)
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
threading.Event().wait()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LlamaServer:
    """llama.cpp on 127.0.0.1:<free port> of the host (not in a sandbox) with ``weights`` and the
    given settings. The defaults are the judge's oracle's (``redline/judge/oracle_server.py``:
    one thread, n_ctx 4096, 2 slots; llama.cpp's default batch sizes, flash attention "auto", an F16
    KV cache; ``flash_attn`` is "enabled", "disabled" or "auto", ``cache_type`` a ggml type such as
    "f32" or "q8_0" for both K and V). Stop it with :meth:`stop`
    (by its pid; it also exits when this process dies, its stdin closing)."""

    def __init__(self, weights: str, threads: int = 1, n_batch: int = 2048, n_ubatch: int = 512, n_ctx: int = 4096,
                 n_parallel: int = 2, flash_attn: str | None = None, cache_type: str | None = None,
                 timeout: float = 120.0) -> None:
        self.weights = weights
        self.settings = {"threads": threads, "n_batch": n_batch, "n_ubatch": n_ubatch, "n_ctx": n_ctx,
                         "n_parallel": n_parallel, "flash_attn": flash_attn, "cache_type": cache_type}
        self.port = free_port()
        started = time.monotonic()
        self.process = subprocess.Popen(
            [os.path.join(runtime_path(), "bin", "python"), "-c", _SERVER,
             json.dumps({"weights": weights, "port": self.port, **self.settings})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.pid = self.process.pid
        line = self.process.stdout.readline() if self.process.stdout else b""
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"llama.cpp on {weights} with {self.settings} did not start")
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:  # serving once /health answers 200 (503 while loading)
            try:
                if self.client.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"llama.cpp on {weights} with {self.settings} never became healthy")
            time.sleep(0.05)
        self.start_s = time.monotonic() - started

    def __repr__(self) -> str:
        return f"LlamaServer({os.path.basename(self.weights)}, {self.settings}, pid {self.pid})"

    def payload(self, prompt: str) -> dict:
        """The server's raw JSON answer to the oracle's request for ``prompt``."""
        response = self.client.post("/v1/chat/completions", json=local_request(prompt))
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        """End the server process (the one this object started, by its pid)."""
        if self.process.poll() is None:
            if self.process.stdin:
                self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, 9)
                self.process.wait()
        if hasattr(self, "client"):
            self.client.close()


def payload_of(text: str, tokens: list[TokenChoice] | None) -> dict:
    """An OpenAI chat completion carrying ``text`` and, if given, ``tokens`` with log-probabilities
    (the shape :func:`redline.judge.oracle.parse_answer` reads)."""
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
    if tokens is not None:
        choice["logprobs"] = {"content": [
            {"id": t.token_id, "token": t.text, "logprob": t.logprob,
             "top_logprobs": [{"token": k, "logprob": v} for k, v in t.top.items()]} for t in tokens]}
    return {"object": "chat.completion", "choices": [choice]}


def echo_payload(request: dict) -> dict:
    """A replica that answers every chat completion with the user's message (no log-probabilities)."""
    return payload_of(request["messages"][-1]["content"], None)


class LookupTable:
    """A replica that is a table of answers recorded from the oracle for a fixed list of prompts.
    A prompt it has not seen gets the answer recorded for the most similar one (most shared words):
    its best guess without a model."""

    def __init__(self, answers: dict[str, tuple[str, list[TokenChoice]]]) -> None:
        self.answers = {prompt: payload_of(text, tokens) for prompt, (text, tokens) in answers.items()}

    @classmethod
    def record(cls, oracle, prompts: list[str]) -> LookupTable:
        """Record ``oracle.answer(prompt)`` (a :class:`redline.judge.oracle.LocalOracle`) for ``prompts``."""
        return cls({prompt: oracle.answer(prompt) for prompt in prompts})

    def __call__(self, request: dict) -> dict:
        prompt = request["messages"][-1]["content"]
        if prompt in self.answers:
            return self.answers[prompt]
        words = set(prompt.replace(",", " ").split())
        nearest = max(self.answers, key=lambda known: len(words & set(known.replace(",", " ").split())))
        return self.answers[nearest]


def divergence_diff(oracle: list[TokenChoice], replica: list[TokenChoice]) -> float | None:
    """The largest log-probability difference over the shared top-5 entries of every token up to
    *and including* the first one where the answers part (the contexts are still the same there),
    i.e. how far a replica's numbers are from the oracle's even when :func:`compare` stops early;
    ``None`` when no entry is shared."""
    worst = None
    for mine, theirs in zip(oracle, replica, strict=False):
        for text in set(mine.top) & set(theirs.top):
            worst = max(worst or 0.0, abs(mine.top[text] - theirs.top[text]))
        if mine.text != theirs.text:
            break
    return worst
