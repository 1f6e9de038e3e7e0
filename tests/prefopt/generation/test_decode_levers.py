"""HF generator decode levers (prefopt.generation.decode): preallocated KV cache, own sampling loop,
dropping finished rows. Each must draw the same tokens as transformers ``generate`` with the same seed."""
from __future__ import annotations

import pytest
import torch

from prefopt.generation import SamplingParams
from prefopt.generation.decode import PreallocLayer, hf_warpers
from prefopt.generation.hf import HFGenerator

PROMPTS = [[{"role": "user", "content": "Tell me about the sea."}], "Hi", [{"role": "user", "content": "2+2?"}]]
LEVERS = [dict(kv_cache="prealloc"), dict(decode="loop"), dict(decode="loop", kv_cache="prealloc"),
          dict(decode="loop", drop_finished=True), dict(decode="loop", kv_cache="prealloc", drop_finished=True)]


def _samples(model, tok, params, **kw):
    out = HFGenerator(model, tok, batch_size=3, **kw).generate(PROMPTS, params)
    return [[(c.token_ids, c.logprobs, c.finish_reason) for c in group] for group in out]


def _eos_biased(model, tok, alpha: float = 20.0):
    """Point the EOS row of the LM head along the model's mean hidden state (EOS logit about ``alpha``
    there), so that rows finish at different steps (exercises EOS handling and row dropping)."""
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([tok("Tell me about the sea and the sky.")["input_ids"]]))
        d = h.last_hidden_state[0].mean(0)
        model.lm_head.weight[tok.eos_token_id] = alpha * d / d.norm() ** 2
    return model


@pytest.mark.parametrize("lever", LEVERS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9),
                                      dict(temperature=0.0)])
def test_lever_draws_the_same_tokens_as_generate(tiny_model, tiny_tokenizer, lever, sampling):
    model = _eos_biased(tiny_model, tiny_tokenizer)
    n = 1 if sampling["temperature"] == 0.0 else 4
    params = SamplingParams(max_new_tokens=12, n=n, seed=11, **sampling)
    ref = _samples(model, tiny_tokenizer, params)
    got = _samples(model, tiny_tokenizer, params, **lever)
    if n > 1:  # rows finish at different steps, some by EOS
        assert "stop" in {r for g in ref for _, _, r in g} and len({len(t) for g in ref for t, _, _ in g}) > 2
    for rg, gg in zip(ref, got, strict=True):
        assert [t for t, _, _ in gg] == [t for t, _, _ in rg]
        assert [r for _, _, r in gg] == [r for _, _, r in rg]
        for (_, a, _), (_, b, _) in zip(gg, rg, strict=True):
            assert a == pytest.approx(b, abs=1e-5)


def test_loop_without_prefill_once_matches_generate(tiny_model, tiny_tokenizer):
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=2)
    ref = _samples(tiny_model, tiny_tokenizer, params, prefill_once=False)
    got = _samples(tiny_model, tiny_tokenizer, params, prefill_once=False, decode="loop", kv_cache="prealloc")
    assert [[t for t, _, _ in g] for g in got] == [[t for t, _, _ in g] for g in ref]


def test_multinomial_is_argmax_over_exponential_noise():
    """The identity decode_loop relies on: torch.multinomial(p, 1) == argmax(p / Exp(1)) drawn on [rows, V]."""
    p = torch.softmax(torch.randn(5, 300), -1)
    torch.manual_seed(3)
    a = torch.multinomial(p, 1).squeeze(1)
    torch.manual_seed(3)
    b = (p / torch.empty_like(p).exponential_(1)).argmax(-1)
    assert a.tolist() == b.tolist()


def test_prealloc_layer_writes_in_place_and_grows():
    k, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    layer = PreallocLayer(k, v, capacity=5)
    buf = layer._k
    k2, v2 = layer.update(torch.ones(2, 3, 1, 5), torch.zeros(2, 3, 1, 5))
    assert layer._k is buf and k2.shape == (2, 3, 5, 5) and layer.get_seq_length() == 5
    assert torch.equal(k2[:, :, :4], k) and torch.equal(v2[:, :, 4], torch.zeros(2, 3, 5))
    k3, _ = layer.update(torch.full((2, 3, 2, 5), 7.0), torch.zeros(2, 3, 2, 5))  # past capacity: doubles
    assert k3.shape[2] == 7 and layer._k.shape[2] == 10 and torch.equal(k3[:, :, :4], k)
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.keys.shape == (1, 3, 7, 5) and torch.equal(layer.keys[0, :, :4], k[1])


def test_warpers_follow_transformers_order_and_defaults():
    assert hf_warpers(1.0, 0, 1.0) == []
    names = [type(w).__name__ for w in hf_warpers(0.5, 10, 0.9)]
    assert names == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"]


def test_bad_lever_settings_are_clear_errors(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="drop_finished needs decode='loop'"):
        HFGenerator(tiny_model, tiny_tokenizer, drop_finished=True)
    with pytest.raises(ValueError, match="kv_cache"):
        HFGenerator(tiny_model, tiny_tokenizer, kv_cache="paged")


def test_static_cache_without_compile_draws_the_same_tokens(tiny_model, tiny_tokenizer):
    """transformers' static cache (every prompt encoded n times) gives the same samples as the default."""
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=4)
    ref = _samples(tiny_model, tiny_tokenizer, params)
    got = _samples(tiny_model, tiny_tokenizer, params, kv_cache="static")
    assert [[t for t, _, _ in g] for g in got] == [[t for t, _, _ in g] for g in ref]
    with pytest.raises(ValueError, match="compile needs kv_cache='static'"):
        HFGenerator(tiny_model, tiny_tokenizer, compile=True)


def test_online_hf_section_reaches_the_generator(tiny_model, tiny_tokenizer):
    from types import SimpleNamespace

    from prefopt.core.config import from_dict
    from prefopt.core.errors import ConfigError
    from prefopt.core.models import ModelConfig
    from prefopt.loops.online import _rollout_generator
    from prefopt.loops.online_config import OnlineConfig

    oc = from_dict(OnlineConfig, {"hf": {"decode": "loop", "kv_cache": "prealloc", "drop_finished": True}})
    cfg = SimpleNamespace(model=ModelConfig(name="tiny-smollm2"), run=SimpleNamespace(output_dir="unused", seed=0))
    one_process = SimpleNamespace(rank=0, world_size=1, zero_stage=0)
    gen = _rollout_generator(cfg, oc, one_process, tiny_model, tiny_tokenizer)
    assert (gen.decode, gen.kv_cache, gen.drop_finished, gen.compile) == ("loop", "prealloc", True, False)
    with pytest.raises(ConfigError, match="drop_finished needs online.hf.decode: loop"):
        from_dict(OnlineConfig, {"hf": {"drop_finished": True}})
    with pytest.raises(ConfigError, match="kv_cache"):
        from_dict(OnlineConfig, {"hf": {"kv_cache": "paged"}})
