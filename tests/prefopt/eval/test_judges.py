"""Judges: registry, AlpacaEval prompt read from the installed package, response parsing, RM judges."""
from __future__ import annotations

import math

import pytest

from prefopt.core.registry import JUDGES
from prefopt.eval.judges import make_judge
from prefopt.eval.judges.http import (
    alpaca_eval_config_dir,
    load_prompt_template,
    parse_preference,
    render_messages,
)


def test_registry_names():
    assert {"rm", "lm", "http"} <= set(JUDGES.names())


def test_prompt_template_comes_from_the_package(repo_root):
    template, kwargs = load_prompt_template("weighted_alpaca_eval_gpt4_turbo")
    assert "site-packages" in str(alpaca_eval_config_dir()) or (repo_root / "prefopt") not in alpaca_eval_config_dir().parents
    assert not list((repo_root / "prefopt").rglob("alpaca_eval_clf.txt"))
    assert "{output_1}" in template and "{instruction}" in template
    assert kwargs["max_tokens"] == 1 and kwargs["logprobs"] is True
    msgs = render_messages(template, "Say hi", "hello", "hey there")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert '"""Say hi"""' in msgs[1]["content"] and '"""hey there"""' in msgs[1]["content"]


def _resp(top=None, content="M"):
    choice = {"message": {"role": "assistant", "content": content}}
    if top is not None:
        choice["logprobs"] = {"content": [{"token": content, "logprob": 0.0,
                                           "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top]}]}
    return {"choices": [choice]}


def test_parse_preference():
    """P(M) renormalised over {m, M}: 0.6 / (0.6 + 0.2) = 0.75; other tokens ignored."""
    assert parse_preference(_resp([("M", 0.6), ("m", 0.2), ("x", 0.2)])) == pytest.approx(0.75)
    assert parse_preference(_resp(content="m")) == 0.0
    assert parse_preference(_resp(content="M")) == 1.0
    assert parse_preference(_resp(content="tie")) is None
    assert parse_preference({"error": "x"}) is None


def test_http_judge_needs_base_url():
    from prefopt.core.errors import ConfigError

    with pytest.raises(ConfigError, match="judge-base-url"):
        make_judge("http", base_url="", model="m")


def test_rm_judges_gpm_and_ensemble(tmp_path, tiny_tokenizer, save_rm):
    """GPM judge: native P(out > ref); identical outputs are a tie; ensemble of two BT members works."""
    from prefopt.eval.scorers import load_model_scorer
    from reward_models.scorer import EnsembleScorer

    opts = dict(batch_size=4, bf16=False, max_length=128)
    gpm = load_model_scorer(save_rm(tmp_path / "g", tiny_tokenizer, "gpm", seed=5), **opts)
    judge = make_judge("rm", scorer=gpm, name="rm:gpm")
    ann = judge.annotate(["Q1", "Q2"], ["ref one", "same"], ["answer one", "same"])
    assert 1 < ann[0]["preference"] < 2 and ann[1]["preference"] == 1.5
    swapped = judge.annotate(["Q1"], ["answer one"], ["ref one"])
    assert ann[0]["preference"] - 1 == pytest.approx(1 - (swapped[0]["preference"] - 1), abs=1e-5)
    members = [load_model_scorer(save_rm(tmp_path / f"b{i}", tiny_tokenizer, "bt", seed=i), **opts) for i in (1, 2)]
    ens = make_judge("rm", scorer=EnsembleScorer(members, method="uwo"))
    assert 1 <= ens.annotate(["Q"], ["a"], ["b"])[0]["preference"] <= 2
