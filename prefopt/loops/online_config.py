"""Typed ``online:`` section of a ``kind: train`` YAML (online algorithms; defaults live here only).

Example (GRPO on single-digit sums with an exact-match reward)::

    online:
      prompts: {kind: arithmetic, n: 256, max_operand: 9}
      reward: {functions: [{name: math_exact, weight: 1.0}]}
      rounds: 20              # rollout rounds (GRPO: optimizer steps when minibatches = iterations = 1)
      prompts_per_round: 4
      num_generations: 8      # K samples per prompt
      max_new_tokens: 16
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prefopt.losses.dno import DNOPairParams


@dataclass(frozen=True)
class PromptSourceConfig:
    """Where prompts come from (see :mod:`prefopt.data.prompts`)."""

    # arithmetic: generated "What is a + b?" sums (answer = PromptExample.answer); jsonl: records with a
    # "prompt" (built data or PromptExample records); hh_rlhf: raw HH-RLHF transcripts (prompt turns);
    # urpo: URPO mixture of verifiable sums, 2-candidate referee items and open-ended prompts.
    kind: Literal["arithmetic", "jsonl", "hh_rlhf", "urpo"] = "arithmetic"
    path: str = ""
    # Number of prompts kept (generated for arithmetic/urpo).
    n: int = 256
    # Arithmetic: operands drawn from 0..max_operand (9 = single-digit sums).
    max_operand: int = 9
    # Appended to every arithmetic question (e.g. "Reply with the number only.").
    instruction: str = ""
    # URPO task mixture (verifiable : pref_rank : open), default 1:1:1 (our design; docs/online.md).
    urpo_mix: tuple[float, ...] = (1.0, 1.0, 1.0)
    # Held-out prompts (win rate vs the reference, URPO referee accuracy); taken from the end.
    n_eval: int = 8


@dataclass(frozen=True)
class RewardFnConfig:
    """One registered rule-based reward function (``prefopt ls`` REWARD_FNS) and its weight."""

    name: str = "math_exact"
    weight: float = 1.0
    # Keyword arguments of the function (e.g. {max_tokens: 8} for max_length).
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardSourceConfig:
    """Rewards r(x, y) and the preference oracle P(a > b | x) behind one interface.

    Scalar reward = Σ_k w_k R_k over ``functions`` plus ``model_weight`` × the reward model score.
    Oracle: a GPM model's native preference σ(s(a > b) / temperature), else the BT adapter
    σ((r(a) − r(b)) / temperature) over the combined scalar reward.
    """

    functions: tuple[RewardFnConfig, ...] = ()
    # Reward model directory (reward_models RewardModel.save_pretrained); several = an ensemble.
    models: tuple[str, ...] = ()
    model_weight: float = 1.0
    # Ensemble aggregation (reward_models.ensemble): mean | wco | uwo.
    ensemble_method: str = "mean"
    ensemble_lam: float = 0.5
    # Oracle temperature (BT adapter and GPM): below 1 sharpens a weak oracle's probabilities.
    temperature: float = 1.0
    # Clip scalar rewards to ±clip (P3O: 10; 0 = off).
    clip: float = 0.0
    # URPO: add the policy itself as referee for open-ended prompts (self-ranking rewards).
    policy_referee: bool = False


@dataclass(frozen=True)
class DNOConfig(DNOPairParams):
    """DNO-Prct pair building: judge scores are integers 1 + round(5 · s), s ∈ [0, 1] the sample's
    mean oracle win probability against the other K − 1 samples (or its scalar reward in [0, 1]).
    The pair rule (``min_positive``, ``teacher_margin``, ``student_margin``) is
    :class:`prefopt.losses.dno.DNOPairParams`."""
    # "preference": s = mean_j P(y_i > y_j) from the oracle; "reward": s = clamp(reward, 0, 1).
    score_from: Literal["preference", "reward"] = "preference"
    # Add PromptExample.answer as the teacher (gold) candidate.
    use_gold: bool = False
    # Most pairs kept per prompt (0 = all qualifying pairs).
    max_pairs_per_prompt: int = 0


@dataclass(frozen=True)
class EGPOConfig:
    """EGPO / online-IPO sampling (Zhou, Fazel, Du 2025, arXiv 2503.08942; docs/online.md)."""

    # Contrast pair (y, y') sampler μ: temperature / top-k and token-level geometric mixture
    # (1 − c)·log π_θ + c·log π_ref (c = 0: π_θ alone; Nash-MD baseline: 0.125).
    temperature: float = 1.0
    top_k: int = 0
    mixture_coef: float = 0.0
    # Use the cheaper target P(y > y') − ½ when y, y', y'' share one untruncated distribution.
    cheap_target: bool = False
    # Keep the parameter/optimizer backup on CPU.
    snapshot_on_cpu: bool = False


@dataclass(frozen=True)
class VLLMConfig:
    """In-process vLLM engine for ``online.generator: vllm`` (GPU only: ``pip install -e .[vllm]``).

    The engine loads the policy's initial weights and gets the current ones pushed in after every
    policy update (a LoRA policy: the adapter merged into the base weights); see docs/online.md.
    """

    # Fraction of GPU memory the engine may take (the rest is left to training).
    gpu_memory_utilization: float = 0.4
    # Engine dtype: auto (the checkpoint's) | bfloat16 | float16 | float32.
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Further keyword arguments of vllm.LLM (e.g. {enforce_eager: true, max_model_len: 1024}).
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"online.vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclass(frozen=True)
class HFGenerationConfig:
    """Decode loop of ``online.generator: hf`` (:class:`prefopt.generation.hf.HFGenerator`), measured by
    ``python -m benchmarks.gen_levers`` (benchmarks/README.md). Every setting draws the same tokens as
    transformers ``generate`` for the same seed (tests/prefopt/generation/test_decode_levers.py)."""

    # KV cache: dynamic (transformers' cache, concatenated every step) | prealloc (buffers sized once per
    # call for prompt + max_new_tokens) | static (transformers' static cache; prompts encoded K times).
    kv_cache: Literal["dynamic", "prealloc", "static"] = "dynamic"
    # hf (transformers generate) | loop (prefopt's own sampling loop over the prefilled cache).
    decode: Literal["hf", "loop"] = "hf"
    # (decode: loop) drop rows that produced EOS from the decode batch.
    drop_finished: bool = False
    # (kv_cache: static) torch.compile the decode step, also on CPU.
    compile: bool = False

    def __post_init__(self) -> None:
        if self.drop_finished and self.decode != "loop":
            raise ValueError("online.hf.drop_finished needs online.hf.decode: loop")
        if (self.kv_cache == "static" and self.decode != "hf") or (self.compile and self.kv_cache != "static"):
            raise ValueError("online.hf.kv_cache: static needs decode: hf, and online.hf.compile needs kv_cache: static")


@dataclass(frozen=True)
class OnlineConfig:
    """Rollouts, rewards and update schedule of the online loop (docs/online.md)."""

    prompts: PromptSourceConfig = field(default_factory=PromptSourceConfig)
    reward: RewardSourceConfig = field(default_factory=RewardSourceConfig)
    # Rollout rounds (DNO: iterations). Optimizer steps = rounds × num_iterations × minibatches
    # (EGPO: one full extragradient update per minibatch).
    rounds: int = 20
    prompts_per_round: int = 4
    # K samples per prompt (P3O uses 2; EGPO draws y, y' and y'' itself).
    num_generations: int = 8
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # μ: passes over each round's rollouts (old log-probs come from the rollout policy).
    num_iterations: int = 1
    # Optimizer steps per pass (each split further into optim.grad_accum micro-batches).
    minibatches: int = 1
    # Advantage estimator (ADVANTAGES registry) and its scale (group | batch | none; read by grpo only,
    # another estimator refuses a non-default value: prefopt.losses.advantages.CONFIG_OPTIONS).
    advantage: str = "grpo"
    scale_rewards: str = "group"
    # Zero the loss of completions that hit max_new_tokens without EOS.
    mask_truncated: bool = False
    # Rollout backend: hf (transformers generate on the live policy) | vllm (in-process vLLM engine,
    # GPU only, weights synced after every update; settings in online.vllm).
    generator: Literal["hf", "vllm"] = "hf"
    # Training forward of the rollouts: "padded" rows, or "shared_prompt" (each prompt encoded once
    # for its group of samples under a block mask, Prefix Grouper; same log-probs; sdpa/eager only).
    # "auto": shared_prompt unless the model cannot take the block mask exactly (flash_attention_2,
    # sliding-window attention), then padded with one console line.
    layout: Literal["auto", "padded", "shared_prompt"] = "auto"
    generation_batch_size: int = 64
    max_prompt_length: int = 256
    # Decode settings of the hf generator.
    hf: HFGenerationConfig = field(default_factory=HFGenerationConfig)
    # Oracle win rate vs the reference (greedy, held-out prompts) every N rounds (0 = start/end only
    # when an oracle exists; -1 = never).
    win_rate_every: int = 0
    dno: DNOConfig = field(default_factory=DNOConfig)
    egpo: EGPOConfig = field(default_factory=EGPOConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def __post_init__(self) -> None:
        for name in ("rounds", "prompts_per_round", "num_generations", "num_iterations", "minibatches",
                     "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"online.{name} must be >= 1, got {getattr(self, name)}")
