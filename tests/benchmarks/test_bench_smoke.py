"""Smoke runs of ``prefopt bench dpo|rm|grpo`` on the tiny random model (1 warm-up + 1 step per side), and
loss-level equivalence of the DPO fast paths (padded vs packed vs shared-prompt layouts).

Not timed tests: they check that each benchmark runs both sides on identical batches, writes every JSON
field the README table is built from, and that the first-batch losses of prefopt and TRL agree (1e-4).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

SIDE_FIELDS = ("s_per_step", "tokens_per_s", "mfu", "model_gflops_per_s", "first_batch_loss", "losses")
TOP_FIELDS = ("bench", "command", "config", "machine", "matmul_peak_gflops", "tokens_per_step", "n_params",
              "results", "target_speedup")


def _run(tmp_path, bench: str, *extra: str) -> dict:
    from benchmarks.cli import cli_main

    out = tmp_path / f"{bench}.json"
    argv = [bench, "--model", "tiny-smollm2", "--steps", "1", "--warmup", "1", "--batch-size", "2",
            "--max-length", "96", "--no-memory", "--out", str(out), *extra]
    assert cli_main(argv) == 0
    return json.loads(out.read_text())


def _check(payload: dict, ours: list[str]) -> None:
    for key in TOP_FIELDS:
        assert key in payload, key
    res = payload["results"]
    assert set(res) == {*ours, "trl"}
    for name in res:
        for key in SIDE_FIELDS:
            assert key in res[name], (name, key)
        assert res[name]["s_per_step"] > 0 and res[name]["tokens_per_s"] > 0 and res[name]["mfu"] > 0
        assert len(res[name]["losses"]) == 2
    for name in ours:
        assert "speedup_vs_trl" in res[name]
        assert res[name]["first_loss_abs_diff"] < 1e-4, (name, res[name]["first_batch_loss"],
                                                         res["trl"]["first_batch_loss"])
        # one identical AdamW step later the losses still agree (a non-trivial check for DPO, whose
        # first-batch loss is ln 2 on both sides because policy == reference)
        assert abs(res[name]["losses"][1] - res["trl"]["losses"][1]) < 1e-4, name


def test_bench_dpo_smoke(tmp_path):
    payload = _run(tmp_path, "dpo", "--layout", "all")
    _check(payload, ["prefopt[padded]", "prefopt[packed]", "prefopt[shared_prompt]"])
    assert abs(payload["results"]["trl"]["first_batch_loss"] - 0.6931472) < 1e-5
    res, tokens = payload["results"], payload["tokens_per_step"]
    assert res["prefopt[padded]"]["model_tokens"] == tokens  # MFU counts what each side runs
    assert all(s < t for s, t in zip(res["prefopt[shared_prompt]"]["model_tokens"], tokens, strict=False))


def test_bench_dpo_live_reference_lora_smoke(tmp_path):
    payload = _run(tmp_path, "dpo", "--layout", "shared_prompt", "--ref", "live", "--lora")
    _check(payload, ["prefopt[shared_prompt]"])


def test_bench_rm_smoke(tmp_path):
    payload = _run(tmp_path, "rm", "--layout", "all")
    _check(payload, ["prefopt[padded]", "prefopt[packed]", "prefopt[shared_prompt]"])
    assert abs(payload["results"]["trl"]["first_batch_loss"] - 0.6931472) > 1e-4  # random head: not ln 2


def test_bench_grpo_smoke(tmp_path):
    payload = _run(tmp_path, "grpo", "--layout", "shared_prompt", "--batch-size", "1", "--generations", "4",
                   "--completion-length", "8")
    _check(payload, ["prefopt[shared_prompt]"])
    assert payload["results"]["trl"]["first_batch_logp_max_abs_diff"] < 1e-4
    assert payload["rollouts"]["generations"] == 4


def test_memory_probe_subprocess():
    """The per-side memory probe runs in a fresh process and reports its fields."""
    from benchmarks.memory import run_probe_subprocess

    mem = run_probe_subprocess("rm", "prefopt[shared_prompt]",
                               ["rm", "--model", "tiny-smollm2", "--steps", "1", "--warmup", "0",
                                "--batch-size", "2", "--max-length", "96", "--layout", "shared_prompt"])
    assert "error" not in mem, mem
    assert mem["peak_step_mb"] >= 0 and mem["peak_total_mb"] >= mem["setup_rss_mb"]


# ------------------------------------------------------------------ loss-level equivalence of the layouts

@pytest.fixture(scope="module")
def dpo_setup(tiny_tokenizer):
    """Tiny policy and a *different* tiny reference, 3 real hh-rlhf pairs of unequal prompt lengths."""
    from benchmarks.common import load_pairs
    from prefopt.core.models import make_tiny_model
    from prefopt.loops.offline_data import Item

    policy = make_tiny_model("tiny-smollm2", seed=0)
    reference = make_tiny_model("tiny-smollm2", seed=1)
    pairs = load_pairs(tiny_tokenizer, 3, 160)
    items = [Item(tp, i) for i, (_, tp) in enumerate(pairs)]
    assert len({len(it.tok.prompt_ids) for it in items}) > 1
    return policy, reference, items, tiny_tokenizer


def _dpo_loss(policy, reference, items, tok, layout: str, precision: str = "fp32"):
    from prefopt.algorithms import get_algorithm
    from prefopt.loops.offline_step import StepContext, pairwise_loss
    from prefopt.loops.reference import Reference

    spec = get_algorithm("dpo")
    ctx = StepContext(spec=spec, loss_spec=spec.loss_spec(), hparams=spec.build_hparams({"beta": 0.1}),
                      pad_id=tok.pad_token_id, precision=precision, device=torch.device("cpu"), layout=layout)
    ctx.reference = Reference("copy", reference)
    policy.zero_grad(set_to_none=True)
    out = pairwise_loss(ctx, policy, items)
    loss = out.loss.mean()
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    policy.zero_grad(set_to_none=True)
    return float(loss.detach()), out.loss.detach(), out.metrics, grad


def test_dpo_loss_same_in_every_layout(dpo_setup):
    """DPO loss, per-pair losses, policy log-prob metrics and gradients: packed and shared-prompt equal
    the padded path to 1e-5 (the reference differs from the policy, so the loss is not ln 2)."""
    policy, reference, items, tok = dpo_setup
    base, per, metrics, grad = _dpo_loss(policy, reference, items, tok, "padded")
    assert abs(base - 0.6931472) > 1e-3
    for layout in ("packed", "shared_prompt"):
        loss, per_l, m_l, grad_l = _dpo_loss(policy, reference, items, tok, layout)
        assert abs(loss - base) < 1e-5, layout
        torch.testing.assert_close(per_l, per, atol=1e-5, rtol=0)
        for key in ("logps/chosen", "logps/rejected", "kl"):
            assert abs(float(m_l[key]) - float(metrics[key])) < 1e-4 * max(1.0, abs(float(metrics[key]))), key
        torch.testing.assert_close(grad_l, grad, atol=1e-5, rtol=1e-4)


def test_report_tables_from_a_run(tmp_path):
    """benchmarks.report turns a run's JSON into the README rows (numbers copied, not retyped)."""
    from benchmarks.report import full_table, summary

    payload = _run(tmp_path, "rm", "--layout", "shared_prompt")
    ours = payload["results"]["prefopt[shared_prompt]"]
    row = summary([payload]).splitlines()[-1]
    assert row.startswith("| RM (BT) (`shared_prompt`) |")
    assert f"**{ours['speedup_vs_trl']:.2f}x**" in row and ("met" in row or "missed" in row)
    table = full_table(payload)
    assert payload["command"] in table and f"{ours['first_batch_loss']:.6f}" in table


def test_lm_head_ablation_runs_both_heads_with_equal_losses(tmp_path):
    """benchmarks.ablate_lm_head: the head path and the full-logits path give the same losses."""
    import prefopt.logprobs as logprobs
    from benchmarks.ablate_lm_head import lm_head, run
    from prefopt.core.models import make_tiny_model

    tiny = make_tiny_model(seed=0)
    with lm_head("full"):
        assert logprobs.split_causal_lm(tiny) is None
    assert logprobs.split_causal_lm(tiny) is not None
    out = tmp_path / "ab.json"
    payload = run(["dpo", "--model", "tiny-smollm2", "--steps", "1", "--warmup", "1", "--batch-size", "2",
                   "--max-length", "96", "--out", str(out)])
    assert set(payload["s_per_step"]) == {"completion", "full"}
    assert payload["max_loss_abs_diff"] < 1e-5
    assert json.loads(out.read_text())["speedup_completion_head"] > 0


def test_bench_online_smoke(tmp_path):
    """Whole GRPO rounds (generate, score, advantages, update) on both sides: the time split adds up,
    the prompts are the same token ids on both sides, load is recorded per round, and the update on
    identical samples agrees with TRL's at fp32."""
    payload = _run(tmp_path, "online", "--layout", "all", "--batch-size", "1", "--generations", "3",
                   "--completion-length", "6")
    res = payload["results"]
    assert set(res) == {"prefopt[padded]", "prefopt[shared_prompt]", "trl"}
    assert payload["prompt_ids_equal_both_sides"] is True and payload["reward_function"] == "char_fraction"
    assert len(payload["load_avg_per_round"]) == 2 and payload["target_speedup"] == 3.0
    for name in res:
        assert res[name]["s_per_step"] > 0 and len(res[name]["losses"]) == 2
        assert res[name]["activation_checkpointing"] is False
        split = payload["round_split_s"][name]
        assert len(split["per_round"]) == 2 and split["generate"] > 0 and split["update"] > 0
        for r in split["per_round"]:
            parts = r["generate"] + r["score"] + r["collect_other"] + r["update"]
            assert abs(parts - r["total"]) < 1e-9 and min(r["generate"], r["score"], r["update"]) >= 0
        assert all(0 < n <= 6 for n in payload["completion_length_mean"][name])
    same = payload["update_on_identical_samples"]
    assert same["precision"] == "fp32" and same["loss_abs_diff"] < 1e-5 and same["logp_max_abs_diff"] < 1e-4


def test_bench_grpo_checkpointing_both_sides(tmp_path):
    """``--checkpointing`` turns activation checkpointing on for both sides; the losses do not move."""
    payload = _run(tmp_path, "grpo", "--layout", "shared_prompt", "--batch-size", "1", "--generations", "3",
                   "--completion-length", "6", "--checkpointing")
    _check(payload, ["prefopt[shared_prompt]"])
    assert all(r["activation_checkpointing"] is True for r in payload["results"].values())


def test_report_round_split_table():
    """The online report table copies the per-side medians and the identical-sample update line."""
    from benchmarks.report import round_split

    payload = {"round_split_s": {"trl": {"total": 4.0, "generate": 1.5, "score": 0.01, "collect_other": 0.49,
                                         "update": 2.0}},
               "completion_length_mean": {"trl": [10.0, 20.0]},
               "update_on_identical_samples": {"samples": "round 0", "precision": "fp32", "loss_ours": 0.25,
                                               "loss_trl": 0.25, "loss_abs_diff": 0.0, "logp_max_abs_diff": 3e-6}}
    text = round_split(payload)
    assert "| trl | 4.00 | 1.50 | 0.010 | 0.490 | 2.00 | 15.0 |" in text
    assert "loss ours 0.250000, TRL 0.250000 (diff 0.0e+00); max |completion log-prob diff| 3.00e-06" in text


def test_sweep_length_and_group(tmp_path):
    """``--sweep length`` (synthetic ids, exact lengths) and ``--sweep group``: one run per value, both
    sides' s/step per value, a log-log slope per side and curve, and the plot file."""
    from benchmarks.cli import cli_main

    base = ["--model", "tiny-smollm2", "--steps", "1", "--warmup", "1", "--batch-size", "1", "--no-memory"]
    out = tmp_path / "dpo_len.json"
    assert cli_main(["dpo", *base, "--synthetic", "--sweep", "length", "--sweep-values", "32,64",
                     "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["values"] == [32, 64] and set(s["curves"]) == {"prefopt[shared_prompt]", "trl"}
    first = json.loads((tmp_path / "dpo_len_32.json").read_text())
    assert first["tokens_per_step"][0] == 2 * 32  # one pair: two sequences of exactly 32 tokens
    for name, c in s["curves"].items():
        assert len(c["s_per_step"]) == 2 and all(t > 0 for t in c["s_per_step"])
        assert isinstance(s["slopes"][name]["s_per_step"], float) and s["slopes"][name]["peak_step_mb"] is None
    assert (tmp_path / "dpo_len.png").stat().st_size > 0
    # Rerunning the same sweep reuses the finished points instead of measuring them again.
    (tmp_path / "dpo_len_64.json").unlink()
    stamp = (tmp_path / "dpo_len_32.json").stat().st_mtime_ns
    assert cli_main(["dpo", *base, "--synthetic", "--sweep", "length", "--sweep-values", "32,64",
                     "--out", str(out)]) == 0
    assert (tmp_path / "dpo_len_32.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "dpo_len_64.json").is_file()
    assert json.loads(out.read_text())["curves"]["trl"]["s_per_step"][0] == s["curves"]["trl"]["s_per_step"][0]
    out = tmp_path / "grpo_g.json"
    assert cli_main(["grpo", *base, "--completion-length", "4", "--max-length", "96", "--sweep", "group",
                     "--sweep-values", "2,4", "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert [json.loads(Path(p).read_text())["rollouts"]["generations"] for p in s["runs"]] == [2, 4]


def test_loglog_slope():
    from benchmarks.sweep import slope

    assert abs(slope([1, 2, 4], [3, 12, 48]) - 2.0) < 1e-12  # y = 3 x^2
    assert abs(slope([256, 512], [1.0, 1.5]) - math.log2(1.5)) < 1e-12
    assert slope([1], [1]) is None and slope([1, 2], [None, 3]) is None


def test_tiled_mlp_ablation_runs_both_sides_with_equal_losses(tmp_path):
    """benchmarks.ablate_tiled_mlp: the tiled and untiled copies of our side train the same batches to
    the same losses (summation order only); tiles of 8 tokens are shorter than every row."""
    from benchmarks.ablate_tiled_mlp import run

    out = tmp_path / "ab.json"
    payload = run(["dpo", "--model", "tiny-smollm2", "--steps", "2", "--warmup", "1", "--batch-size", "2",
                   "--max-length", "96", "--checkpointing", "--tiled-mlp", "8", "--out", str(out)])
    assert set(payload["s_per_step"]) == {"untiled", "tiled"}
    assert len(payload["losses"]["tiled"]) == 3 and payload["max_loss_abs_diff"] < 1e-5
    assert json.loads(out.read_text())["tiled_time_ratio"] > 0
    with pytest.raises(SystemExit, match="--tiled-mlp TOKENS"):
        run(["dpo", "--model", "tiny-smollm2", "--steps", "1"])
