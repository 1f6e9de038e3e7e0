"""Generation interface: HF backend (left-padded batches, sampling, stops, log-probs) and lazy vLLM."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from prefopt.core.errors import ConfigError
from prefopt.generation import Completion, Generator, SamplingParams, make_generator
from prefopt.generation.hf import HFGenerator

MSG = [{"role": "user", "content": "Write a short poem about the sea."}]
PROMPTS = [MSG, [{"role": "user", "content": "Hi"}], "Plain text prompt:"]


@pytest.fixture
def gen(tiny_model, tiny_tokenizer):
    return HFGenerator(tiny_model, tiny_tokenizer, batch_size=3)


def test_protocol_and_shapes(gen):
    assert isinstance(gen, Generator)
    out = gen.generate(PROMPTS, SamplingParams(temperature=1.0, n=2, max_new_tokens=6, seed=1))
    assert [len(o) for o in out] == [2, 2, 2]
    for samples in out:
        for c in samples:
            assert isinstance(c, Completion)
            assert 1 <= len(c.token_ids) <= 6 and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0.0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length")


def test_batched_left_padding_matches_single_prompt(gen):
    """Greedy output of a prompt must not depend on the other (longer/shorter) prompts in the batch."""
    p = SamplingParams(temperature=0.0, max_new_tokens=8)
    batched = gen.generate(PROMPTS, p)
    single = [gen.generate([q], p)[0] for q in PROMPTS]
    for b, s in zip(batched, single, strict=False):
        assert b[0].token_ids == s[0].token_ids
        assert b[0].logprobs == pytest.approx(s[0].logprobs, abs=1e-4)


def test_greedy_logprobs_are_model_logprobs(gen, tiny_model, tiny_tokenizer):
    """For greedy decoding the returned log-probs equal log_softmax of a fresh forward pass."""
    c = gen.generate([MSG], SamplingParams(temperature=0.0, max_new_tokens=5))[0][0]
    ids = torch.tensor([c.prompt_ids + c.token_ids])
    with torch.no_grad():
        logits = tiny_model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    n0 = len(c.prompt_ids)
    ref = [lp[n0 - 1 + t, tok].item() for t, tok in enumerate(c.token_ids)]
    assert c.logprobs == pytest.approx(ref, abs=1e-4)


def test_seeded_sampling_is_reproducible(gen):
    p = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, n=2, max_new_tokens=6, seed=7)
    a, b = gen.generate(PROMPTS, p), gen.generate(PROMPTS, p)
    assert [[c.token_ids for c in s] for s in a] == [[c.token_ids for c in s] for s in b]


def test_stop_strings_cut_text(gen, tiny_tokenizer):
    free = gen.generate([MSG], SamplingParams(temperature=0.0, max_new_tokens=12))[0][0]
    assert len(free.text) > 3
    stop = free.text[2:4]
    c = gen.generate([MSG], SamplingParams(temperature=0.0, max_new_tokens=12, stop=(stop,)))[0][0]
    assert c.text == free.text[: free.text.find(stop)]
    assert c.finish_reason == "stop" and len(c.token_ids) <= len(free.token_ids)


def test_registry_and_bad_params():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    from prefopt.core.registry import registry

    assert {"hf", "vllm"} <= set(registry("generator").names())


def test_vllm_is_lazy_and_missing_vllm_is_a_clear_error():
    code = ("import sys, prefopt.generation as g\n"
            "assert 'vllm' not in sys.modules and 'prefopt.generation.vllm_backend' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="needs the vllm package"):
        make_generator("vllm", model="tiny-llama")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prefill_once_gives_the_same_samples(tiny_model, tiny_tokenizer, temperature):
    """K samples per prompt from one shared prompt encoding equal ``num_return_sequences`` sampling:
    the same token ids and log-probs (to 1e-5), with prompts of different lengths (left padding)."""
    from prefopt.generation import SamplingParams
    from prefopt.generation.hf import HFGenerator

    prompts = [[{"role": "user", "content": "Tell me about the sea."}], "Hi", [{"role": "user", "content": "2+2?"}]]
    params = SamplingParams(temperature=temperature, max_new_tokens=7, n=3, seed=5)
    fast = HFGenerator(tiny_model, tiny_tokenizer, batch_size=3).generate(prompts, params)
    if temperature == 0.0:  # transformers refuses greedy num_return_sequences > 1: compare with n=1, repeated
        one = SamplingParams(temperature=0.0, max_new_tokens=7, n=1)
        slow = [c * 3 for c in HFGenerator(tiny_model, tiny_tokenizer, batch_size=3).generate(prompts, one)]
    else:
        slow = HFGenerator(tiny_model, tiny_tokenizer, batch_size=3, prefill_once=False).generate(prompts, params)
    for fs, ss in zip(fast, slow, strict=False):
        assert [c.token_ids for c in fs] == [c.token_ids for c in ss]
        for a, b in zip(fs, ss, strict=False):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    if temperature:
        assert len({tuple(c.token_ids) for c in fast[0]}) > 1  # the K samples differ
