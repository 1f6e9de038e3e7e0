"""Shared config builder and learning check for the online-loop tests (imported by test_online*.py and
the recipe tests)."""
from __future__ import annotations

from pathlib import Path

SHORT = {"functions": [{"name": "max_length", "kwargs": {"max_tokens": 4}}], "temperature": 0.25}
BASE = {"prompts": {"kind": "arithmetic", "n": 8, "n_eval": 2}, "reward": SHORT, "rounds": 2,
        "prompts_per_round": 2, "num_generations": 4, "max_new_tokens": 8}


def make_cfg(model_dir: Path, out, algorithm: str, loss: dict | None = None, **online):
    """A ``TrainConfig`` for ``algorithm`` on ``model_dir`` (reward: at most 4 tokens, 2 rounds)."""
    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict

    return from_dict(TrainConfig, {
        "algorithm": algorithm, "loss": loss or {}, "model": {"name": str(model_dir)},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
        "online": {**BASE, **online},
        "run": {"output_dir": str(out), "report_to": [], "log_every": 1, "seed": 0}})


def first_eos_prob(model, tok, examples) -> float:
    """P(EOS as the first completion token), averaged over ``examples``' prompts (EOS id 2 in the tiny models)."""
    import torch

    from prefopt.generation.hf import encode_prompt_ids

    with torch.no_grad():
        ps = [torch.softmax(model(input_ids=torch.tensor([encode_prompt_ids(tok, e.prompt)])).logits[0, -1], -1)[2]
              for e in examples]
    return float(torch.stack(ps).mean())


def raises_expected_reward(model_dir: Path, out, algorithm: str, **online) -> None:
    """Reward "at most 2 tokens" (earned when EOS comes first or second): 6 rounds of ``algorithm`` at lr
    1e-3 must raise P(EOS first) over the 4 training prompts by more than 20 %."""
    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict
    from prefopt.core.models import load_causal_lm
    from prefopt.data.prompts import arithmetic_prompts
    from prefopt.loops.online import run_online

    cfg = from_dict(TrainConfig, {
        "algorithm": algorithm, "model": {"name": str(model_dir)},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
        "online": {**online, "prompts": {"kind": "arithmetic", "n": 4, "n_eval": 0},
                   "reward": {"functions": [{"name": "max_length", "kwargs": {"max_tokens": 2}}]},
                   "rounds": 6, "prompts_per_round": 2, "num_generations": 8, "max_new_tokens": 4},
        "run": {"output_dir": str(out), "report_to": []}})
    examples = arithmetic_prompts(4, seed=0)
    before, tok = load_causal_lm(str(model_dir))
    p0 = first_eos_prob(before, tok, examples)
    summary = run_online(cfg)
    after, _ = load_causal_lm(str(Path(out) / "final"))
    p1 = first_eos_prob(after, tok, examples)
    assert p1 > 1.2 * p0, (p0, p1, [c["reward"] for c in summary["reward_curve"]])
