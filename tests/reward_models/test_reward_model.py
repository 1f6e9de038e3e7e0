"""RewardModel: padding invariance (B5/0.2), HF compatibility, save/load, LoRA round trip (0.3), P3."""
from __future__ import annotations

import json

import pytest
import torch

from prefopt.core.errors import ConfigError, ModelLoadError
from reward_models.models import REWARD_CONFIG, REWARD_HEAD, RewardModel

PAD = 0


def tiny_lm(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, pad_token_id=PAD, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def rows(seed: int = 0, lengths=(5, 9, 3, 7)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (n,), generator=g).tolist() for n in lengths]


def pad(seqs, side: str):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def _values(out):
    return out.rewards if out.rewards is not None else torch.cat([out.embeddings, out.gate], -1)


@pytest.mark.parametrize("kind", ["bt", "gpm", "polar"])
def test_padding_and_batch_invariance(lm, kind):
    """Left vs right padding and batch 1 vs N give the same outputs (atol 1e-5)."""
    rm = RewardModel(lm, kind, seed=1, embed_dim=4, head_init="normal").eval()
    seqs = rows()
    plen = torch.tensor([2, 4, 1, 3])
    with torch.no_grad():
        right = _values(rm(*pad(seqs, "right"), prompt_lengths=plen))
        left = _values(rm(*pad(seqs, "left"), prompt_lengths=plen))
        single = torch.cat([_values(rm(*pad([s], "right"), prompt_lengths=plen[i:i + 1]))
                            for i, s in enumerate(seqs)])
    assert torch.allclose(right, left, atol=1e-5)
    assert torch.allclose(right, single, atol=1e-5)


def test_pad_equals_eos_uses_mask(lm):
    """pad == eos: a trailing real EOS is still the pooled token (mask, not pad-id search)."""
    rm = RewardModel(lm, "bt", seed=1).eval()
    seq = rows()[0] + [PAD]  # the real last token has the pad id
    with torch.no_grad():
        a = rm(*pad([seq], "right")).rewards
        b = rm(*pad([seq, rows()[1]], "left")).rewards[0]
        c = rm(*pad([seq[:-1]], "right")).rewards
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-5)


def test_bt_save_load_and_hf_sequence_classification(lm, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rm = RewardModel(lm, "bt", seed=5).eval()
    rm.set_reward_stats(-1.5, 2.0, normalize=True)
    ids, mask = pad(rows(), "right")
    with torch.no_grad():
        ref = rm(ids, mask).rewards
    rm.save_pretrained(tmp_path)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "LlamaForSequenceClassification" and hf.config.num_labels == 1
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1), ref, atol=1e-5)
        back = RewardModel.load(tmp_path).eval()
        assert torch.equal(back(ids, mask).rewards, ref)
    cfg = json.loads((tmp_path / REWARD_CONFIG).read_text())
    assert cfg["reward_mean"] == -1.5 and cfg["reward_std"] == 2.0 and cfg["normalize"] is True
    assert torch.allclose(back.serve_rewards(ref), (ref + 1.5) / 2.0)


@pytest.mark.parametrize("kind", ["gpm", "polar"])
def test_gpm_polar_round_trip_bit_exact(lm, kind, tmp_path):
    rm = RewardModel(lm, kind, seed=2, embed_dim=6, beta=0.2, head_init="normal").eval()
    ids, mask = pad(rows(), "left")
    plen = torch.tensor([2, 4, 1, 3])
    with torch.no_grad():
        ref = _values(rm(ids, mask, prompt_lengths=plen))
    rm.save_pretrained(tmp_path)
    assert (tmp_path / REWARD_HEAD).is_file()
    back = RewardModel.load(tmp_path).eval()
    assert back.config == rm.config
    with torch.no_grad():
        assert torch.equal(_values(back(ids, mask, prompt_lengths=plen)), ref)
    (tmp_path / REWARD_HEAD).unlink()
    with pytest.raises(ModelLoadError, match="reward_head.safetensors is missing"):
        RewardModel.load(tmp_path)


def test_bt_missing_score_raises(lm, tmp_path):
    from safetensors.torch import load_file, save_file

    RewardModel(lm, "bt", seed=1).save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    sd = {k: v for k, v in load_file(str(f)).items() if k != "score.weight"}
    save_file(sd, str(f), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="no 'score.weight'"):
        RewardModel.load(tmp_path)


@pytest.mark.parametrize("kind", ["bt", "gpm"])
def test_lora_heads_saved_and_reloaded_bit_exact(kind, tmp_path):
    """B5 / 0.3: LoRA adapter + heads round trip exactly; a missing head raises."""
    from peft import LoraConfig

    from prefopt.core.lora import LoraSettings

    lora = (LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0) if kind == "bt"
            else LoraSettings(r=4, alpha=8.0, dropout=0.0, target_modules="all-linear"))
    rm = RewardModel(tiny_lm(0), kind, seed=3, embed_dim=4).enable_lora(lora)
    with torch.no_grad():  # move adapter and heads away from their init
        for name, p in rm.named_parameters():
            if "lora_" in name or not name.startswith("model."):
                p.add_(torch.randn_like(p) * 0.05)
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert any(n.startswith(("score", "embed_head", "gate_head")) for n in trainable)
    rm.eval()
    ids, mask = pad(rows(), "right")
    plen = torch.tensor([2, 4, 1, 3])
    with torch.no_grad():
        ref = _values(rm(ids, mask, prompt_lengths=plen))
    rm.save_pretrained(tmp_path)
    # bt: the head rides in the SEQ_CLS adapter (modules_to_save); gpm: beside it in reward_head
    head_file = tmp_path / ("adapter_model.safetensors" if kind == "bt" else REWARD_HEAD)
    assert (tmp_path / "adapter_config.json").is_file() and head_file.is_file()
    assert (tmp_path / REWARD_HEAD).is_file() == (kind != "bt")
    back = RewardModel.load(tmp_path, backbone=tiny_lm(0)).eval()
    with torch.no_grad():
        assert torch.equal(_values(back(ids, mask, prompt_lengths=plen)), ref)
    head_file.unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        RewardModel.load(tmp_path, backbone=tiny_lm(0))


def test_p3_polar_reads_reward_token(lm):
    """P3: with reward_token_id set, tokens after REWARD do not change the reward."""
    rm = RewardModel(lm, "polar", seed=1, head_init="normal", reward_token_id=255).eval()
    base = rows(lengths=(6,))[0]
    base = [t if t != 255 else 254 for t in base] + [255]
    with torch.no_grad():
        r0 = rm(torch.tensor([base])).rewards
        r1 = rm(torch.tensor([base + [17, 42, 99]])).rewards
        r2 = rm(torch.tensor([base + [18, 3, 7]])).rewards
    assert torch.allclose(r0, r1, atol=1e-6) and torch.allclose(r0, r2, atol=1e-6)
    assert not RewardModel(lm, "polar").score.weight.any()  # zero-init by default
    with pytest.raises(ValueError, match="no REWARD token"):
        rm(torch.tensor([[5, 6, 7]]))


def test_config_validation(lm, tmp_path):
    with pytest.raises(ConfigError, match="even"):
        RewardModel(lm, "gpm", embed_dim=5)
    with pytest.raises(ConfigError, match="kind"):
        RewardModel(lm, "xyz")
    rm = RewardModel(lm, "gpm", embed_dim=4)
    with pytest.raises(ValueError, match="prompt_lengths"):
        rm(torch.tensor([[5, 6, 7]]))
    with pytest.raises(ModelLoadError, match="not found"):
        RewardModel.load(tmp_path / "nope")


# ---------------------------------------------------------------- scorer interface
class ByteTok:
    """Byte-level tokenizer (ids 3..255 for ASCII text), EOS 2, pad 0; optional toy chat template."""

    eos_token_id, pad_token_id = 2, 0

    def __init__(self, chat: bool = False):
        self.chat_template = "toy" if chat else None

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("ascii"))

    def decode(self, ids):
        return bytes(ids).decode("ascii")

    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in msgs)
        return text + ("<assistant>" if add_generation_prompt else "")


def test_registry_kinds_and_lazy_import():
    import subprocess
    import sys

    code = ("import sys, reward_models; from prefopt.core.registry import RM_KINDS, RM_LOSSES; "
            "assert {'bt','gpm','polar','ensemble'} <= set(RM_KINDS.names()); assert 'gpm' in RM_LOSSES; "
            "assert 'transformers' not in sys.modules; "
            "assert RM_KINDS.get('polar').needs_reference and RM_KINDS.get('gpm').pairwise; "
            "assert RM_KINDS.get('bt').resolve().__name__ == 'RewardModel'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bt_scorer_batched_matches_forward_and_preference(lm):
    from reward_models.scorer import ChatEncoder, ModelScorer, RewardScorer

    rm = RewardModel(lm, "bt", seed=4)
    tok = ByteTok(chat=True)
    prompts = ["hi", [{"role": "user", "content": "2+2?"}], "tell me a joke"]
    responses = ["hello there", "4", "no"]
    s1 = ModelScorer(rm, tok, batch_size=1)
    s3 = ModelScorer(rm, tok, batch_size=3)
    assert isinstance(s1, RewardScorer)
    a, b = s1.score(prompts, responses), s3.score(prompts, responses)
    assert a.shape == (3,) and not a.requires_grad and torch.allclose(a, b, atol=1e-5)
    ids, plen = ChatEncoder(tok)("hi", "hello there")
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[:plen]) == "<user>hi\n<assistant>"
    with torch.no_grad():
        assert torch.allclose(rm(torch.tensor([ids])).rewards, a[:1], atol=1e-5)
    p = s3.preference("hi", "hello there", "4")
    assert p.ndim == 0
    assert p.item() == pytest.approx(torch.sigmoid(a[0] - s3.score(["hi"], ["4"])[0]).item(), abs=1e-5)
    assert s3.preference(prompts, responses, responses[::-1]).shape == (3,)
    rm.set_reward_stats(0.5, 2.0, normalize=True)
    assert torch.allclose(ModelScorer(rm, tok).score(prompts, responses), (a - 0.5) / 2.0, atol=1e-5)
    bf = ModelScorer(rm, tok, bf16=True, normalize=False).score(prompts, responses)
    assert bf.dtype == torch.float32 and torch.allclose(bf, a, atol=0.05)


def test_gpm_scorer(lm):
    from reward_models.scorer import ModelScorer

    rm = RewardModel(lm, "gpm", seed=6, embed_dim=4, beta=0.1)
    sc = ModelScorer(rm, ByteTok(), batch_size=2)
    resp = ["alpha", "beta", "gamma"]
    S = sc.score_matrix("q", resp)
    assert torch.allclose(S, -S.T, atol=1e-6)
    s_ab = sc.score(["q"], ["alpha"], references=["beta"])[0]
    assert s_ab.item() == pytest.approx(S[0, 1].item(), abs=1e-5)
    assert sc.preference("q", "alpha", "beta").item() == pytest.approx(torch.sigmoid(S[0, 1] / 0.1).item(), abs=1e-5)
    assert torch.allclose(sc.group_scores("q", resp), S.sum(1) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="references"):
        sc.score(["q"], ["alpha"])


def test_polar_scorer_and_ensemble_scorer(lm):
    from reward_models.polar_data import encode_polar
    from reward_models.scorer import EnsembleScorer, ModelScorer

    tok = ByteTok()
    rm = RewardModel(lm, "polar", seed=8, head_init="normal", split_token="<S>", reward_token="<R>")
    sc = ModelScorer(rm, tok)
    r = sc.score(["Q", "Q"], ["good", "bad"], references=["ref", "ref"])
    ids = encode_polar(tok, "Q", "ref", "good", split_token="<S>", reward_token="<R>")
    assert tok.decode(ids) == "Q\nref<S>Q\ngood<R>"
    with torch.no_grad():
        assert rm(torch.tensor([ids])).rewards.item() == pytest.approx(r[0].item(), abs=1e-5)
    assert sc.preference("Q", "good", "bad", reference="ref").item() == pytest.approx(
        torch.sigmoid(r[0] - r[1]).item(), abs=1e-5)
    with pytest.raises(ValueError, match="reference"):
        sc.score(["Q"], ["good"])
    members = [ModelScorer(RewardModel(lm, "bt", seed=s), tok) for s in (1, 2, 3)]
    ens = EnsembleScorer(members, "wco")
    each = torch.stack([m.score(["Q", "Q"], ["x", "yy"]) for m in members])
    agg, var = ens.score_with_variance(["Q", "Q"], ["x", "yy"])
    assert torch.allclose(agg, each.min(0).values) and torch.allclose(var, each.var(0, unbiased=False), atol=1e-7)
    assert ens.preference("Q", "x", "yy").item() == pytest.approx(torch.sigmoid(agg[0] - agg[1]).item(), abs=1e-6)


def test_gpm_gate_reads_last_prompt_token(lm):
    """The gate depends on the prompt only: same prompt + different responses -> same lam (any padding)."""
    rm = RewardModel(lm, "gpm", seed=9, embed_dim=6).eval()
    prompt = [10, 11, 12, 13]
    seqs = [prompt + [50, 51, 2], prompt + [60, 2], [20, 21, 22, 23] + [60, 2]]
    with torch.no_grad():
        out = rm(*pad(seqs, "left"), prompt_lengths=torch.tensor([4, 4, 4]))
    assert torch.allclose(out.gate[0], out.gate[1], atol=1e-6)
    assert not torch.allclose(out.gate[0], out.gate[2], atol=1e-6)
    assert not torch.allclose(out.embeddings[0], out.embeddings[1], atol=1e-4)
    s = RewardModel.gpm_score(out, out)
    assert torch.allclose(s, torch.zeros(3), atol=1e-6)
