"""Benchmark the judge's ``same_model`` oracle: the margins of its tolerances, and its cost.

Over N fresh prompts (:func:`redline.judge.probes.fresh_prompt`), the answers of llama.cpp servers
on the host loopback (``tests/_model_variants.py``) are compared with the judge's
:class:`redline.judge.oracle.OracleServer` (the first attention path) by :func:`redline.judge.oracle.compare`:

1. The same weights under other settings (threads, n_batch/n_ubatch, n_ctx, n_parallel with
   concurrent requests): the accept rate, which should be 100 %.
2. Other numerics on the same weights (flash attention off, a q8_0 KV cache): for information.
3. Not the original's model: one tensor perturbed, another model of the family (every block's norm
   weights scaled by random factors), an echo server and a lookup table of answers recorded from
   the oracle: the reject rate, which should be (near) 100 %.

For each, the max log-probability difference of :func:`compare` (over the tokens it compared) and
the difference up to and including the first diverging token (``divergence_diff``: defined even when
the answers part at once) -- min / median / max, i.e. the margins of LOGPROB_TOLERANCE. "check" is
the judge's decision on disjoint groups of LOCAL_PROMPTS prompts (all their answers must pass, at least
MIN_COMPARED_PER_PROMPT tokens per prompt compared). "text only" compares the answers with their log-probabilities
dropped (a server that does not report them). Finally the oracle's cost: OracleServer start time and
seconds per answer.

Usage: python bench/oracle.py [PROMPTS]   (default 100)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import _model_variants as variants  # noqa: E402

from bench._report import publish  # noqa: E402
from redline.judge import oracle as judge_oracle  # noqa: E402
from redline.judge.oracle import OracleServer, compare, local_request, parse_answer  # noqa: E402
from redline.judge.probes import fresh_prompt  # noqa: E402

#: (label, expected to pass, weights kind, LlamaServer settings, concurrent requests)
CONFIGS = [
    ("same weights, 2 threads (oracle: 1)", True, "bundled", {"threads": 2}, 1),
    ("same weights, n_batch = n_ubatch = 16 (oracle: 2048/512)", True, "bundled", {"n_batch": 16, "n_ubatch": 16}, 1),
    ("same weights, n_ctx 2048 (oracle: 4096)", True, "bundled", {"n_ctx": 2048}, 1),
    ("same weights, n_ctx 8192", True, "bundled", {"n_ctx": 8192}, 1),
    ("same weights, n_parallel 1 (oracle: 2)", True, "bundled", {"n_parallel": 1}, 1),
    ("same weights, n_parallel 4, 4 concurrent requests", True, "bundled", {"n_parallel": 4}, 4),
    ("same weights, flash attention off (oracle: auto = on)", None, "bundled", {"flash_attn": "disabled"}, 1),
    ("same weights, KV cache q8_0 (oracle: f16)", None, "bundled", {"cache_type": "q8_0"}, 1),
    (f"perturbed: {variants.PERTURBED_TENSOR} × {variants.PERTURBED_FACTOR}", False, "perturbed", {}, 1),
    (f"family: block norms × N(1, {variants.FAMILY_SIGMA})", False, "family", {}, 1),
]
LOOKUP_PROMPTS = 20


def spread(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    missing = len(values) - len(known)
    text = " / ".join(f"{v:.3g}" for v in (min(known), statistics.median(known), max(known)))
    return text + (f" ({missing} n/a)" if missing else "")


def percent(count: int, total: int) -> str:
    return f"{count}/{total} ({100 * count / total:.0f} %)"


def row(label: str, expected: bool | None, prompts: list[str], answers: dict, payloads: list[object]) -> list[str]:
    comparisons, text_only, margins = [], [], []
    for prompt, payload in zip(prompts, payloads, strict=True):
        oracle_text, oracle_tokens = answers[prompt]
        text, tokens = parse_answer(payload)
        comparisons.append(compare(prompt, oracle_text, oracle_tokens, text, tokens))
        text_only.append(compare(prompt, oracle_text, oracle_tokens, text, None))
        margins.append(variants.divergence_diff(oracle_tokens, tokens) if tokens else None)
    accepted = sum(c.passed for c in comparisons)
    size = judge_oracle.LOCAL_PROMPTS
    groups = [comparisons[i:i + size] for i in range(0, len(comparisons) - size + 1, size)]
    least = judge_oracle.MIN_COMPARED_PER_PROMPT * size
    checks = sum(all(c.passed for c in t) and sum(c.compared_tokens for c in t) >= least for t in groups)
    diverged = [c for c in comparisons if c.divergence]
    rate = (percent(accepted, len(prompts)) if expected is not False
            else "rejects " + percent(len(prompts) - accepted, len(prompts)))
    return [label, {True: "accept", False: "reject", None: "?"}[expected], rate,
            percent(checks, len(groups)), percent(sum(c.passed for c in text_only), len(prompts)),
            spread([c.max_logprob_diff for c in comparisons]), spread(margins),
            f"{len(diverged)} ({sum(c.tolerated for c in diverged)} tolerated)"]


def ask_all(server: variants.LlamaServer, prompts: list[str], concurrency: int) -> list[object]:
    if concurrency == 1:
        return [server.payload(p) for p in prompts]
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(server.payload, prompts))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    bundled = variants.bundled()
    starts = []
    for _ in range(2):  # two extra starts, for the start time's median
        extra = OracleServer(bundled, "auto")
        starts.append(extra.start_s)
        extra.close()
    oracle = OracleServer(bundled, "auto")
    starts.append(oracle.start_s)
    prompts = [fresh_prompt() for _ in range(count)]
    times = []
    for prompt in prompts:
        started = time.monotonic()
        oracle.answer(prompt)
        times.append(time.monotonic() - started)
    answers = {p: oracle.answer(p) for p in prompts}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        started = time.monotonic()
        weights = {"bundled": bundled, "perturbed": variants.perturbed(scratch),
                   "family": variants.family_variant(scratch)}
        made_s = time.monotonic() - started
        for label, expected, kind, settings, concurrency in CONFIGS:
            server = variants.LlamaServer(weights[kind], **settings)
            try:
                payloads = ask_all(server, prompts, concurrency)
            finally:
                server.stop()
            rows.append(row(label, expected, prompts, answers, payloads))
            print(" | ".join(rows[-1]), flush=True)
    rows.append(row("echo (answers with the prompt)", False, prompts, answers,
                    [variants.echo_payload(local_request(p)) for p in prompts]))
    table = variants.LookupTable.record(oracle, [fresh_prompt() for _ in range(LOOKUP_PROMPTS)])
    rows.append(row(f"lookup table of {LOOKUP_PROMPTS} recorded answers (nearest prompt)", False, prompts,
                    answers, [table(local_request(p)) for p in prompts]))
    oracle.close()
    rows.append(["oracle cost: OracleServer start (to ready)", "", f"{statistics.median(starts):.2f} s", "",
                 "", "", "", f"median of {len(starts)}: " + ", ".join(f"{s:.2f}" for s in starts)])
    p90 = statistics.quantiles(times, n=10, method="inclusive")[-1]
    rows.append(["oracle cost: seconds per answer", "", f"{statistics.median(times):.3f} s", "", "", "", "",
                 f"p90 {p90:.3f} s, max {max(times):.3f} s over {len(times)}; "
                 f"{judge_oracle.LOCAL_TOKENS} tokens each"])
    notes = (f"{count} fresh prompts, each answered once by every server. Tolerances: LOGPROB_TOLERANCE "
             f"{judge_oracle.LOGPROB_TOLERANCE}, TIE_NATS {judge_oracle.TIE_NATS} (nats). Diffs: min / median / max "
             f"(nats); \"compare\" over the tokens compare() checked, \"to divergence\" also the first diverging "
             f"token. check: disjoint groups of {judge_oracle.LOCAL_PROMPTS} prompts, as the judge decides. "
             f"Making both variant GGUFs took {made_s:.1f} s.")
    publish("Oracle: same_model margins and cost",
            ["replica", "expected", "per prompt", f"check ({judge_oracle.LOCAL_PROMPTS} prompts)", "text only",
             "max diff (compare)", "max diff (to divergence)", "divergences"], rows, notes)


if __name__ == "__main__":
    main()
