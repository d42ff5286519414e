"""The judge's ``same_model`` comparison (:func:`redline.judge.oracle.compare`, :func:`parse_answer`)
against llama.cpp servers this module starts on the host loopback (``_model_variants.LlamaServer``):
the same weights under other settings pass on fresh prompts; a perturbed copy, another model of the
family, an echo server and a lookup table of recorded answers fail. The servers and the oracle are
started once per module and stopped (by their pids) at its end. Margins and cost: ``bench/oracle.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import _model_variants as variants
import pytest

from redline.judge.facts import PromptComparison, TokenChoice
from redline.judge.oracle import (
    LOGPROB_TOLERANCE,
    TIE_NATS,
    OracleServer,
    PreparedPrompts,
    compare,
    local_request,
    parse_answer,
)
from redline.judge.probes import fresh_prompt

SAME_PROMPTS, OTHER_PROMPTS = 3, 6


@pytest.fixture(scope="module")
def oracle() -> Iterator[OracleServer]:
    """The judge's oracle on the bundled weights (the original's model), its first attention path."""
    local = OracleServer(variants.bundled(), "auto")
    yield local
    local.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Callable[..., variants.LlamaServer]]:
    """``server(kind, **settings)``: a llama.cpp server on "bundled", "perturbed" or "family"
    weights, started on first use and stopped at the end of the module."""
    folder = tmp_path_factory.mktemp("weights")
    makers = {"bundled": lambda: variants.bundled(), "perturbed": lambda: variants.perturbed(str(folder)),
              "family": lambda: variants.family_variant(str(folder))}
    weights: dict[str, str] = {}
    started: dict[tuple, variants.LlamaServer] = {}

    def get(kind: str, **settings) -> variants.LlamaServer:
        key = (kind, tuple(sorted(settings.items())))
        if key not in started:
            if kind not in weights:
                weights[kind] = makers[kind]()
            started[key] = variants.LlamaServer(weights[kind], **settings)
        return started[key]

    yield get
    for running in started.values():
        running.stop()


def judged(oracle: OracleServer, prompt: str, payload: object) -> tuple[PromptComparison, float | None]:
    """compare() of ``payload`` with the oracle's answer, and the diff up to the divergence."""
    oracle_text, oracle_tokens = oracle.answer(prompt)
    text, tokens = parse_answer(payload)
    margin = variants.divergence_diff(oracle_tokens, tokens) if tokens else None
    return compare(prompt, oracle_text, oracle_tokens, text, tokens), margin


@pytest.mark.parametrize(("settings", "concurrent"), [
    ({"threads": 2}, 1),  # the oracle: 1 thread
    ({"n_batch": 16, "n_ubatch": 16}, 1),  # the prompt (~40 tokens) in several batches; oracle 2048/512
    ({"n_ctx": 2048}, 1),  # the oracle: 4096
    ({"n_ctx": 8192}, 1),
    ({"n_parallel": 1}, 1),  # the oracle: 2
    ({"n_parallel": 4}, 4),  # four requests at once, decoded in one batch
], ids=["threads-2", "ubatch-16", "ctx-2048", "ctx-8192", "parallel-1", "parallel-4-concurrent"])
def test_same_weights_under_other_settings_pass(oracle, server, settings, concurrent):
    replica = server("bundled", **settings)
    prompts = [fresh_prompt() for _ in range(SAME_PROMPTS if concurrent == 1 else concurrent)]
    with ThreadPoolExecutor(concurrent) as pool:
        payloads = list(pool.map(replica.payload, prompts))
    for prompt, payload in zip(prompts, payloads, strict=True):
        comparison, _ = judged(oracle, prompt, payload)
        assert comparison.passed, (replica, comparison)
        assert comparison.compared_tokens == len(oracle.answer(prompt)[1])
        assert comparison.max_logprob_diff is not None and comparison.max_logprob_diff <= LOGPROB_TOLERANCE / 10


@pytest.mark.parametrize("kind", ["perturbed", "family"])
def test_other_weights_fail(oracle, server, kind):
    replica = server(kind)
    prompts = [fresh_prompt() for _ in range(OTHER_PROMPTS)]
    results = [judged(oracle, prompt, replica.payload(prompt)) for prompt in prompts]
    rejected = [c for c, _ in results if not c.passed]
    assert len(rejected) > OTHER_PROMPTS // 2, [c for c, _ in results if c.passed]
    margins = sorted(m for _, m in results if m is not None)
    assert margins and margins[len(margins) // 2] > 3 * LOGPROB_TOLERANCE, margins  # median: far from a tolerance


def test_the_other_attention_path_agrees_with_the_oracles_second_server_and_a_perturbed_copy_with_neither(
        oracle, server):
    second = OracleServer(variants.bundled(), "disabled")
    try:
        no_flash, perturbed = server("bundled", flash_attn="disabled"), server("perturbed", flash_attn="disabled")
        prompts = [fresh_prompt() for _ in range(SAME_PROMPTS)]
        for prompt in prompts:
            assert judged(second, prompt, no_flash.payload(prompt))[0].passed
        assert not all(judged(oracle, prompt, no_flash.payload(prompt))[0].passed for prompt in prompts)
        assert not all(judged(second, prompt, perturbed.payload(prompt))[0].passed for prompt in prompts)
    finally:
        second.close()


def test_text_only_answer_of_the_same_model_passes(oracle, server):
    replica = server("bundled", n_parallel=1)
    prompt = fresh_prompt()
    text, _ = parse_answer(replica.payload(prompt))
    oracle_text, oracle_tokens = oracle.answer(prompt)
    comparison = compare(prompt, oracle_text, oracle_tokens, text, None)
    assert comparison.passed and comparison.max_logprob_diff is None
    assert comparison.compared_tokens == len(oracle_tokens)


def test_echo_fails(oracle):
    for prompt in (fresh_prompt(), fresh_prompt()):
        comparison, margin = judged(oracle, prompt, variants.echo_payload(local_request(prompt)))
        assert not comparison.passed and comparison.divergence and margin is None


def test_lookup_table_passes_only_on_its_recorded_prompts(oracle):
    recorded = [fresh_prompt() for _ in range(4)]
    table = variants.LookupTable.record(oracle, recorded)
    for prompt in recorded:  # what it was made for: the oracle's own answers
        assert judged(oracle, prompt, table(local_request(prompt)))[0].passed
    for prompt in (fresh_prompt() for _ in range(4)):
        comparison, _ = judged(oracle, prompt, table(local_request(prompt)))
        assert not comparison.passed, comparison


# compare() and parse_answer() on made-up answers


def token(text: str, top: dict[str, float]) -> TokenChoice:
    return TokenChoice(None, text, top[text], top)


ORACLE = [token("The", {"The": -0.5, "A": -1.5, "I": -2.0}), token(" cat", {" cat": -0.7, " dog": -0.72, " fox": -3.0}),
          token(" sat", {" sat": -0.1, " ran": -2.5})]
ORACLE_TEXT = "The cat sat"


def test_compare_identical_answers_pass():
    result = compare("p", ORACLE_TEXT, ORACLE, ORACLE_TEXT, list(ORACLE))
    assert result.passed and result.divergence is None and result.compared_tokens == 3
    assert result.max_logprob_diff == 0.0


def test_compare_small_logprob_noise_passes_and_large_fails():
    noisy = [token(t.text, {k: v + LOGPROB_TOLERANCE / 2 for k, v in t.top.items()}) for t in ORACLE]
    assert compare("p", ORACLE_TEXT, ORACLE, ORACLE_TEXT, noisy).passed
    shifted = [ORACLE[0], token(" cat", {" cat": -0.7, " dog": -0.72 - 3 * LOGPROB_TOLERANCE}), ORACLE[2]]
    result = compare("p", ORACLE_TEXT, ORACLE, ORACLE_TEXT, shifted)
    assert not result.passed and result.divergence is None
    assert result.max_logprob_diff == pytest.approx(3 * LOGPROB_TOLERANCE) and "tolerance" in result.detail


def test_compare_near_tie_divergence_tolerated():
    assert ORACLE[1].top[" cat"] - ORACLE[1].top[" dog"] <= TIE_NATS  # a near-tie in the oracle
    replica = [ORACLE[0], token(" dog", {" dog": -0.7, " cat": -0.72}), token(" barked", {" barked": -0.3})]
    result = compare("p", ORACLE_TEXT, ORACLE, "The dog barked", replica)
    assert result.passed and result.tolerated and result.compared_tokens == 1
    assert "token 1" in result.divergence


def test_compare_far_divergence_rejected():
    far = [ORACLE[0], token(" fox", {" fox": -0.5, " cat": -1.0}), ORACLE[2]]  # oracle gap 2.3 nats
    result = compare("p", ORACLE_TEXT, ORACLE, "The fox sat", far)
    assert not result.passed and not result.tolerated and "gap" in result.divergence
    unknown = [token("Hello", {"Hello": -0.1})]  # not in the oracle's top entries
    result = compare("p", ORACLE_TEXT, ORACLE, "Hello", unknown)
    assert not result.passed and "not in the oracle's top 5" in result.divergence


def test_compare_length_mismatch_rejected():
    result = compare("p", ORACLE_TEXT, ORACLE, "The cat", ORACLE[:2])
    assert not result.passed and "lengths differ" in result.divergence


def test_compare_text_only():
    assert compare("p", ORACLE_TEXT, ORACLE, ORACLE_TEXT, None).passed
    tie = compare("p", ORACLE_TEXT, ORACLE, "The dog barked", None)
    assert tie.passed and tie.tolerated and tie.compared_tokens == 1
    far = compare("p", ORACLE_TEXT, ORACLE, "The fox sat", None)
    assert not far.passed and not far.tolerated
    longer = compare("p", ORACLE_TEXT, ORACLE, ORACLE_TEXT + " down", None)
    assert not longer.passed and "goes on" in longer.divergence
    assert not compare("p", ORACLE_TEXT, ORACLE, "", None).passed


def test_compare_missing_answer():
    result = compare("p", ORACLE_TEXT, ORACLE, None, None)
    assert not result.passed and result.divergence == "no answer" and result.compared_tokens == 0


def test_parse_answer_shapes():
    text, tokens = parse_answer(variants.payload_of(ORACLE_TEXT, ORACLE))
    assert text == ORACLE_TEXT and tokens == ORACLE
    assert parse_answer(variants.payload_of(ORACLE_TEXT, None)) == (ORACLE_TEXT, None)
    assert parse_answer(variants.payload_of(ORACLE_TEXT, [])) == (ORACLE_TEXT, None)
    for junk in (None, {}, {"choices": []}, {"choices": [{"message": {"content": 5}}]}, "text", [1]):
        assert parse_answer(junk) == (None, None)
    bad_logprobs = {"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"token": "x"}]}}]}
    assert parse_answer(bad_logprobs) == ("x", None)


def test_prepared_prompts_are_answered_ahead_fresh_and_taken_once(oracle):
    """The judge draws its prompts once the original is gone and the oracle answers them while the
    host settles: distinct fresh prompts, answered (cached) by the time a check takes them, for one
    check only."""
    prepared = PreparedPrompts(oracle, 2)
    assert len(set(prepared.prompts)) == 2
    assert prepared.take(1) is None  # a check asking another number draws its own
    taken = prepared.take(2)
    assert taken == prepared.prompts
    assert all(p in oracle._cache for p in taken)  # answered before the replica is asked
    assert prepared.take(2) is None  # never sent to a second server
    assert PreparedPrompts(oracle, 1).prompts != PreparedPrompts(oracle, 1).prompts
