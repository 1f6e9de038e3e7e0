"""VLLMGenerator against a stand-in ``vllm`` module (no GPU): parameter mapping, outputs, weight sync, LoRA."""
from __future__ import annotations

import importlib
import sys
import types
from types import SimpleNamespace as NS

import pytest
import torch

from prefopt.generation import SamplingParams


class _FakeLLM:
    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.loaded = kwargs, [], []
        model = NS(load_weights=lambda weights: self.loaded.extend(weights))
        self.llm_engine = NS(model_executor=NS(driver_worker=NS(model_runner=NS(model=model))))
        self.reset = 0

    def get_tokenizer(self):
        return NS(__call__=None, encode=lambda t, add_special_tokens=False: [5, 6])

    def generate(self, prompts, sampling, lora_request=None, use_tqdm=False):
        self.calls.append((prompts, sampling, lora_request))
        out = NS(token_ids=[7, 8], text="hi", finish_reason="length",
                 logprobs=[{7: NS(logprob=-0.5)}, {8: NS(logprob=-1.5)}])
        return [NS(outputs=[out] * sampling.kwargs["n"], prompt_token_ids=p["prompt_token_ids"]) for p in prompts]

    def reset_prefix_cache(self):
        self.reset += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = _FakeLLM
    mod.SamplingParams = lambda **kw: NS(kwargs=kw)
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, i, path: (name, i, path)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora)
    monkeypatch.delitem(sys.modules, "prefopt.generation.vllm_backend", raising=False)
    yield importlib.import_module("prefopt.generation.vllm_backend")
    sys.modules.pop("prefopt.generation.vllm_backend", None)


def test_generate_maps_params_and_outputs(fake_vllm, monkeypatch):
    import prefopt.generation.hf as hf

    monkeypatch.setattr(hf, "encode_prompt_ids", lambda tok, p: [1, 2, 3])
    gen = fake_vllm.VLLMGenerator("m", lora_path="/adapters/a", seed=3)
    assert gen.llm.kwargs["enable_lora"] is True and gen.llm.kwargs["seed"] == 3
    out = gen.generate(["x", [{"role": "user", "content": "y"}]],
                       SamplingParams(temperature=0.7, top_k=0, n=2, max_new_tokens=9, stop=("\n",), seed=4))
    prompts, sp, lora = gen.llm.calls[0]
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}] * 2
    assert sp.kwargs == dict(n=2, temperature=0.7, top_p=1.0, top_k=-1, max_tokens=9, stop=["\n"], seed=4, logprobs=0)
    assert lora == ("policy-1", 1, "/adapters/a")
    c = out[1][1]
    assert (c.token_ids, c.text, c.logprobs, c.finish_reason, c.prompt_ids) == ([7, 8], "hi", [-0.5, -1.5], "length", [1, 2, 3])
    gen.set_lora("/adapters/b")
    gen.generate(["x"], SamplingParams())
    assert gen.llm.calls[-1][2] == ("policy-2", 2, "/adapters/b")


def test_sync_weights_loads_state_and_resets_cache(fake_vllm):
    gen = fake_vllm.VLLMGenerator("m")
    lin = torch.nn.Linear(2, 2)
    gen.sync_weights(lin)
    assert [n for n, _ in gen.llm.loaded] == ["weight", "bias"] and gen.llm.reset == 1
