"""Model/tokenizer loading, the embedded-model cache, tiny models, LoRA and ModelConfig."""
from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from prefopt.core import models as M
from prefopt.core.config import from_dict
from prefopt.core.errors import ConfigError, ModelLoadError


def _ids(tok, text="Hello there, how are you?"):
    return torch.tensor([tok(text)["input_ids"]])


def test_tiny_tokenizer_is_smollm2(tiny_tokenizer):
    """SmolLM2: vocab 49152, <|im_start|> = 1 (bos), <|im_end|> = 2 (eos and pad), chat template set."""
    tok = tiny_tokenizer
    assert len(tok) == M.SMOLLM2_VOCAB
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (M.SMOLLM2_BOS, M.SMOLLM2_EOS, M.SMOLLM2_EOS)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_tiny_model_shape_and_seed(tiny_model):
    cfg = tiny_model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size) == (2, 64, 4, 2, 128, 49152)
    same = M.make_tiny_model("tiny-llama", seed=0)
    other = M.make_tiny_model("tiny-llama", seed=1)
    pairs = list(zip(tiny_model.state_dict().values(), same.state_dict().values(), strict=False))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not torch.equal(tiny_model.model.layers[0].mlp.up_proj.weight, other.model.layers[0].mlp.up_proj.weight)


def test_tiny_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    M.make_tiny_model(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_smollm2_alias_ties_embeddings():
    model, tok = M.load_causal_lm("tiny-smollm2", dtype="bfloat16", seed=3)
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.pad_token_id == M.SMOLLM2_EOS


def test_load_by_path_matches_fresh_model(tiny_model_dir, tiny_model, tiny_tokenizer):
    model, tok = M.load_causal_lm(str(tiny_model_dir))
    assert tok.pad_token_id == tiny_tokenizer.pad_token_id and tok.chat_template
    ids = _ids(tok)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, tiny_model(input_ids=ids).logits)


@pytest.mark.parametrize("bad", ["/no/such/dir", "./missing-model", "a/b/c"])
def test_missing_path_names_path_and_special_names(bad):
    with pytest.raises(ModelLoadError) as exc:
        M.load_causal_lm(bad)
    assert bad in str(exc.value) and "does not exist" in str(exc.value)
    assert all(name in str(exc.value) for name in M.SPECIAL_NAMES)


def test_unknown_hub_name_offline_raises(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model.*smollm2-135m-instruct"):
        M.load_tokenizer("no-such-org/no-such-model")


def test_file_instead_of_dir_and_dir_without_model(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a directory"):
        M.load_causal_lm(str(f))
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        M.load_causal_lm(str(tmp_path))


def test_bad_dtype_and_tiny_name():
    with pytest.raises(ConfigError, match="float64"):
        M.torch_dtype("float64")
    with pytest.raises(ModelLoadError, match="tiny-llama"):
        M.make_tiny_model("tiny-gpt")


def test_model_config_from_yaml_dict():
    cfg = from_dict(M.ModelConfig, {"name": "tiny-llama", "dtype": "bfloat16",
                                    "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}})
    assert cfg.lora == M.LoraSettings(r=4, target_modules=["q_proj", "v_proj"])
    assert from_dict(M.ModelConfig, {"lora": {"r": 2}}).lora.target_modules == "all-linear"
    with pytest.raises(ConfigError, match="dtype"):
        from_dict(M.ModelConfig, {"dtype": "float64"})
    with pytest.raises(ConfigError, match="lora.r"):
        from_dict(M.ModelConfig, {"lora": {"r": 0}})


def test_apply_lora_trains_only_adapters(tiny_tokenizer):
    base = M.make_tiny_model(seed=0)
    ids = _ids(tiny_tokenizer)
    with torch.no_grad():
        ref = base(input_ids=ids).logits
    model = M.apply_lora(base, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".q_proj." in n or ".v_proj." in n for n in trainable)
    with torch.no_grad():  # B is initialised to zero: the adapter starts as the identity
        assert torch.allclose(model(input_ids=ids).logits, ref)


def test_load_model_lora_gradient_checkpointing_backward(tiny_tokenizer):
    cfg = M.ModelConfig(name="tiny-llama", gradient_checkpointing=True,
                        lora=M.LoraSettings(r=2, alpha=4, dropout=0.0, modules_to_save=["lm_head"]))
    model, _ = M.load_model(cfg)
    model.train()
    model(input_ids=_ids(tiny_tokenizer)).logits.float().logsumexp(-1).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in grads) and any("lm_head" in n for n in grads)
    assert all(g is not None for g in grads.values())


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))
    assert M.cache_root() == tmp_path
    monkeypatch.delenv("PREFOPT_CACHE")
    assert M.cache_root().name == "prefopt"


def test_prepare_dir_builds_once_under_concurrency(tmp_path):
    """Four threads race; flock serialises them, the builder runs once, the result is complete."""
    calls = []

    def build(out):
        calls.append(out)
        time.sleep(0.2)
        (out / "weights").write_text("w")
        return {"n": len(calls)}

    final = tmp_path / "models" / "m"
    threads = [threading.Thread(target=M._prepare_dir, args=(final, build)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert (final / "weights").read_text() == "w"
    assert json.loads((final / M.MARKER).read_text()) == {"n": 1}
    assert not list(final.parent.glob(".m.tmp-*"))


def test_prepare_dir_repairs_incomplete_and_failed_builds(tmp_path):
    final = tmp_path / "m"
    final.mkdir()
    (final / "half-written").write_text("x")  # no marker: an incomplete directory
    (tmp_path / ".m.tmp-stale").mkdir()  # left behind by a killed process

    def boom(out):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        M._prepare_dir(final, boom)
    assert not list(tmp_path.glob(".m.tmp-*"))  # failure cleans its temp dir (and the stale one)
    M._prepare_dir(final, lambda out: (out / "ok").write_text("1") and {})
    assert (final / "ok").exists() and not (final / "half-written").exists()


def test_cli_prepare_reports_ready_cache(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))
    done = tmp_path / "models" / M.EMBEDDED_NAME
    done.mkdir(parents=True)
    (done / M.MARKER).write_text("{}")
    assert M.cli_prepare([]) == 0
    assert str(done) in capsys.readouterr().out
    assert M.prepare_embedded_tokenizer() == done  # a converted model also serves the tokenizer


@pytest.mark.slow
def test_embedded_model_matches_gguf_logits():
    """The safetensors conversion reproduces the GGUF-loaded model's logits exactly (same fp32 weights)."""
    from transformers import AutoModelForCausalLM

    model, tok = M.load_causal_lm(M.EMBEDDED_NAME)
    assert tok.chat_template and tok.pad_token_id is not None
    assert not hasattr(model.config, "quantization_config")
    gguf = M.embedded_gguf_path()
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                                add_generation_prompt=True, tokenize=True)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, src(input_ids=ids).logits, atol=1e-5, rtol=0)
