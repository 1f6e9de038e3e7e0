"""Fixtures for the online-loop tests: a tiny Llama that stops on its own sometimes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


def biased_tiny_model(eos_logit: float = 8.0, seed: int = 0):
    """tiny-llama whose EOS logit is ≈ ``eos_logit`` above the (near-uniform) rest at every position.

    Hidden dim 0 of every token embedding is set to a constant, so after the final RMSNorm it carries a
    roughly constant value h0 > 0; the EOS row of ``lm_head`` reads only that dim. With 49152 tokens,
    P(EOS) ≈ e^z / (e^z + 49151): z = 8 → ≈ 6% per token, so "at most N tokens" rewards are earned on
    some samples and GRPO can raise them.
    """
    from prefopt.core.models import make_tiny_model

    model = make_tiny_model("tiny-llama", seed=seed)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 1.0
        ids = torch.arange(0, 2000, 7).reshape(1, -1)
        h = model.model(input_ids=ids).last_hidden_state[0, :, 0].mean()
        model.lm_head.weight[2].zero_()
        model.lm_head.weight[2, 0] = eos_logit / float(h)
    return model


@pytest.fixture(scope="session")
def eos_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """Saved :func:`biased_tiny_model` + SmolLM2 tokenizer (load with ``model.name: <dir>``)."""
    out = tmp_path_factory.mktemp("tiny_eos")
    biased_tiny_model().save_pretrained(out, safe_serialization=True)
    tiny_tokenizer.save_pretrained(out)
    return out
