"""prefopt metric names -> TRL's names, so TensorBoard / W&B dashboards built for TRL runs work.

``metrics.jsonl`` keeps prefopt's slash-namespaced names; TensorBoard and W&B receive the TRL name where
TRL has one (``DPOTrainer`` / ``RewardTrainer`` / ``GRPOTrainer`` logging keys) and prefopt's name
otherwise. Every run folder gets ``metric_names.json`` with the mapping actually used
(``{"prefopt name": "logged name"}``), one-to-one.
"""
from __future__ import annotations

METRIC_NAMES_FILE = "metric_names.json"

_COMMON = {"optim/lr": "learning_rate", "optim/grad_norm": "grad_norm"}

# Offline policy training (DPO family): TRL DPOTrainer keys.
POLICY: dict[str, str] = {
    **_COMMON,
    "loss/total": "loss",
    "eval/accuracy": "eval_rewards/accuracies",
    "eval/margin": "eval_rewards/margins",
}

# Reward models: TRL RewardTrainer keys.
REWARD_MODEL: dict[str, str] = {
    **_COMMON,
    "reward_min": "min_reward",
    "reward_mean": "mean_reward",
    "reward_max": "max_reward",
    "eval/accuracy": "eval_accuracy",
    "eval/margin": "eval_margin",
    "eval/reward_mean": "eval_mean_reward",
    "eval/reward_std": "eval_std_reward",
}

# Online (GRPO family): TRL GRPOTrainer keys.
ONLINE: dict[str, str] = {
    **_COMMON,
    "loss/total": "loss",
    "eval/reward": "eval_reward",
}

TABLES = {"policy": POLICY, "reward_model": REWARD_MODEL, "online": ONLINE}
