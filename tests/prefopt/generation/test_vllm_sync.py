"""vLLM rollouts in the online loop, checked on CPU without vLLM.

* ``policy_state_for_inference``: HF-checkpoint names, a LoRA policy merged exactly as PEFT's
  ``merge_and_unload`` would, the training model left bitwise untouched.
* The loop with ``online.generator: vllm`` against a fake engine (registered in place of the real
  backend): it loads the initial weights from the folder the loop hands it, like vLLM, and its own copy
  gets the synced weights (strict ``load_state_dict``, so the names must be the checkpoint's). Checked:
  one sync per round, the last synced weights are the saved final policy, and the run equals the HF run.
* ``generator: hf`` never imports the vLLM backend; ``vllm`` without the package is a clear ConfigError.
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from prefopt.core.errors import ConfigError

LOOPS = Path(__file__).resolve().parents[1] / "loops"
VLLM_MODULE = "prefopt.generation.vllm_backend"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_cfg = _load("_vllm_sync_online_helpers", LOOPS / "online_helpers.py").make_cfg


@pytest.fixture(scope="module")
def eos_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """The online tests' tiny Llama with an EOS boost (``biased_tiny_model``, tests/prefopt/loops/conftest.py)."""
    biased_tiny_model = _load("_vllm_sync_loops_conftest", LOOPS / "conftest.py").biased_tiny_model
    out = tmp_path_factory.mktemp("tiny_eos_vllm")
    biased_tiny_model().save_pretrained(out, safe_serialization=True)
    tiny_tokenizer.save_pretrained(out)
    return out


def _lora_policy(modules_to_save=None):
    from prefopt.core.models import LoraSettings, ModelConfig, load_model

    model, _ = load_model(ModelConfig(name="tiny-llama", lora=LoraSettings(r=4, alpha=8.0, dropout=0.0,
                                                                          modules_to_save=modules_to_save)))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init would make the merge trivial
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


@pytest.mark.parametrize("modules_to_save", [None, ["lm_head"]])
def test_lora_state_is_the_merged_model_and_training_model_is_untouched(modules_to_save):
    from prefopt.core.models import make_tiny_model
    from prefopt.generation.sync import policy_state_for_inference

    model = _lora_policy(modules_to_save)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ids = torch.arange(10, 30).reshape(2, 10)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.clone()

    state = policy_state_for_inference(model)

    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    base_keys = set(make_tiny_model("tiny-llama").state_dict())
    assert set(state) == set(merged) == base_keys
    assert not any("lora_" in k or "base_layer" in k or k.startswith("base_model.") for k in state)
    for k in base_keys:
        assert torch.equal(state[k], merged[k]), k
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(state[q], before[f"base_model.model.{q.removesuffix('.weight')}.base_layer.weight"])
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits)
    # the merged weights are the policy: a plain model loaded with them gives the LoRA model's outputs
    plain = make_tiny_model("tiny-llama")
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, logits, rtol=1e-5, atol=1e-5)


def test_plain_and_wrapped_models_give_their_state_dict():
    from prefopt.core.models import make_tiny_model
    from prefopt.generation.sync import policy_state_for_inference, sync_generator

    model = make_tiny_model("tiny-llama")

    class Wrapper(torch.nn.Module):  # DeepSpeed engine / DDP stand-in
        def __init__(self, module):
            super().__init__()
            self.module = module

    state = policy_state_for_inference(Wrapper(model))
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    calls = []

    class Engine:
        def sync_weights(self, s):
            calls.append(s)

    class OnLive:  # the HF generator on the live policy
        def __init__(self, m):
            self.model = m

        def sync_weights(self, s):
            raise AssertionError("the live policy needs no sync")

    assert sync_generator(Engine(), Wrapper(model)) and calls[0].keys() == state.keys()
    assert not sync_generator(OnLive(model), Wrapper(model))
    assert not sync_generator(object(), model)


class FakeVLLM:
    """Stands in for VLLMGenerator: loads ``model`` (a folder) itself, generates with its own copy."""

    instances: list["FakeVLLM"] = []

    def __init__(self, model: str, **kwargs):
        from prefopt.generation.hf import HFGenerator

        self.source, self.kwargs, self.synced = model, kwargs, []
        self.inner = HFGenerator.from_pretrained(model, batch_size=64)
        FakeVLLM.instances.append(self)

    def generate(self, prompts, params):
        return self.inner.generate(prompts, params)

    def sync_weights(self, state):
        self.synced.append({k: v.detach().clone() for k, v in state.items()})
        self.inner.model.load_state_dict(state)  # strict: checkpoint names, every weight


@pytest.fixture
def fake_vllm(monkeypatch):
    from prefopt.generation import GENERATORS

    FakeVLLM.instances.clear()
    monkeypatch.setitem(GENERATORS._items, "vllm", FakeVLLM)
    return FakeVLLM


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def hf_run(eos_model_dir, tmp_path_factory):
    """The 2-round GRPO run with the HF generator (vLLM backend not imported: checked in the test)."""
    from prefopt.loops.online import run_online

    sys.modules.pop(VLLM_MODULE, None)  # another test may have imported it against a fake vllm
    run_dir = tmp_path_factory.mktemp("grpo_hf")
    summary = run_online(make_cfg(eos_model_dir, run_dir, "grpo", {"beta": 0.04}, generator="hf"))
    return run_dir, summary, VLLM_MODULE in sys.modules


def test_hf_generator_never_imports_the_vllm_backend(hf_run):
    assert hf_run[1]["steps"] == 2
    assert hf_run[2] is False, "generator: hf imported prefopt.generation.vllm_backend"


@pytest.mark.slow
def test_loop_syncs_vllm_engine_after_every_round(fake_vllm, eos_model_dir, hf_run, tmp_path):
    from prefopt.loops.online import run_online

    cfg = make_cfg(eos_model_dir, tmp_path, "grpo", {"beta": 0.04}, generator="vllm",
                   vllm={"gpu_memory_utilization": 0.3, "dtype": "float32", "kwargs": {"enforce_eager": True}})
    summary = run_online(cfg)
    (engine,) = fake_vllm.instances
    assert engine.source == str(eos_model_dir)  # a local model folder is loaded as it is
    assert engine.kwargs == {"gpu_memory_utilization": 0.3, "dtype": "float32", "seed": 0, "enforce_eager": True}
    assert summary["steps"] == 2 and len(engine.synced) == cfg.online.rounds  # one sync per round
    final = _weights(tmp_path / "final")
    last = engine.synced[-1]
    assert last.keys() == final.keys()
    assert all(torch.equal(last[k], final[k]) for k in final)
    first = engine.synced[0]
    assert any(not torch.equal(first[k], final[k]) for k in final)  # round 2 moved the policy again
    # the engine always held the live policy, so the run is the HF run
    hf_final = _weights(hf_run[0] / "final")
    assert all(torch.equal(hf_final[k], final[k]) for k in final)
    assert summary["reward_curve"] == hf_run[1]["reward_curve"]


@pytest.mark.slow
def test_egpo_syncs_after_the_half_and_the_full_step(fake_vllm, eos_model_dir, tmp_path):
    """EGPO draws its second batch at θ_{t+½}: the engine is synced after both steps of every update."""
    from prefopt.loops.online import run_online

    cfg = make_cfg(eos_model_dir, tmp_path, "egpo", {"beta": 0.1}, generator="vllm", num_generations=2)
    run_online(cfg)
    (engine,) = fake_vllm.instances
    assert len(engine.synced) == 2 * cfg.online.rounds * cfg.online.minibatches
    final = _weights(tmp_path / "final")
    assert all(torch.equal(engine.synced[-1][k], final[k]) for k in final)


def test_tiny_model_is_saved_for_the_engine(fake_vllm, tmp_path):
    """tiny-* names have no folder: the initial policy (LoRA merged = base weights) goes to vllm_init."""
    from dataclasses import replace

    from prefopt.algorithms import get_algorithm
    from prefopt.core.backend import make_backend
    from prefopt.core.models import LoraSettings, load_model, make_tiny_model
    from prefopt.loops.online import build_context, sync_rollout_weights

    cfg = make_cfg(tmp_path, tmp_path, "grpo", {"beta": 0.0}, generator="vllm")
    cfg = replace(cfg, model=replace(cfg.model, name="tiny-llama", lora=LoraSettings(r=4, dropout=0.0)))
    backend = make_backend(cfg.backend, cfg.optim, cfg.batch_size)
    model, tok = load_model(cfg.model, seed=0)
    ctx = build_context(cfg, get_algorithm("grpo"), backend, model, tok)
    (engine,) = fake_vllm.instances
    assert engine.source == str(tmp_path / "vllm_init")
    ref = make_tiny_model("tiny-llama").state_dict()
    loaded = engine.inner.model.state_dict()
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)
    assert sync_rollout_weights(ctx) and set(engine.synced[0]) == set(ref)


def test_vllm_without_the_package_is_a_config_error(eos_model_dir, tmp_path):
    from prefopt.loops.online import run_online

    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    sys.modules.pop(VLLM_MODULE, None)
    with pytest.raises(ConfigError, match="needs the vllm package"):
        run_online(make_cfg(eos_model_dir, tmp_path, "grpo", {"beta": 0.04}, generator="vllm"))


def test_dora_adapter_is_refused_with_a_config_error():
    """DoRA's merge is not a plain weight delta: syncing it to vLLM is refused, naming the way out."""
    from peft import LoraConfig, get_peft_model

    from prefopt.core.errors import ConfigError
    from prefopt.core.models import make_tiny_model
    from prefopt.generation.sync import policy_state_for_inference

    model = get_peft_model(make_tiny_model("tiny-llama"), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ConfigError, match="DoRA or lora_bias.*online.generator=hf"):
        policy_state_for_inference(model)
