"""Typed ``kind: label`` configs: sample K answers per prompt from a policy, score them, build preference data.

A label YAML looks like::

    kind: label
    output_dir: runs/label/hh_smollm2
    prompts: {kind: hh_rlhf, path: ../shared/data/hh-rlhf/helpful-base.train.sample.jsonl.gz, max_prompts: 64}
    eval_prompts: [{kind: hh_rlhf, path: ../shared/data/hh-rlhf/helpful-base.test.jsonl.gz}]
    policy: {name: smollm2-135m-instruct, num_samples: 4, temperature: 1.0, max_new_tokens: 64}
    scorer: {kind: reward, reward: {models: [runs/rm/final]}}
    output: {builder: {kind: ranked_to_pairs, strategy: best_vs_worst}, min_margin: 0.0}

``prefopt data label CFG`` writes ``train.jsonl`` (and ``test.jsonl`` with ``split.test_fraction``) in
the layout ``prefopt train`` reads (``data.path=<output_dir>``), plus ``ranked.jsonl`` (every prompt's
K answers and scores), ``stats.json`` and the resolved ``config.yaml``. Defaults live here only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_pipelines.config import BuilderConfig
from prefopt.core.models import EMBEDDED_NAME
from prefopt.core.registry import CONFIG_KINDS
from prefopt.loops.online_config import RewardSourceConfig


@dataclass(frozen=True)
class PromptFileConfig:
    """One prompt file (see :func:`prefopt.data.prompts.read_prompt_file`)."""

    # jsonl: records with a "prompt" (a built pairwise/ranked set or its folder, PromptExample records);
    # hh_rlhf: raw HH-RLHF transcripts (the turns before the last reply; the chosen reply is the answer);
    # alpaca_eval: AlpacaEval records ("instruction"; "output" becomes the answer).
    kind: Literal["jsonl", "hh_rlhf", "alpaca_eval"] = "jsonl"
    path: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError(f"a prompt file of kind '{self.kind}' needs a path")


@dataclass(frozen=True)
class LabelPromptConfig(PromptFileConfig):
    """The prompts to label: a seeded random selection of ``max_prompts`` distinct prompts."""

    max_prompts: int | None = None  # None: every prompt of the file
    seed: int = 0  # selection seed (shuffle, then take max_prompts from position offset)
    # Skip this many prompts of the shuffled list: round t of iterative DPO takes offset (t-1)*max_prompts,
    # so rounds label disjoint prompts.
    offset: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.offset < 0:
            raise ValueError(f"prompts.offset must be >= 0, got {self.offset}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"prompts.max_prompts must be >= 1 (or null for all), got {self.max_prompts}")


@dataclass(frozen=True)
class LabelPolicyConfig:
    """The policy that answers: a model name, a folder, or a LoRA adapter folder."""

    name: str = EMBEDDED_NAME
    dtype: Literal["float32", "bfloat16"] = "float32"
    num_samples: int = 4  # K answers per prompt (>= 2: pairs need two)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    max_prompt_length: int = 256  # keep at most this many trailing prompt tokens
    generator: Literal["hf", "vllm"] = "hf"  # vllm: GPU only (pip install -e .[vllm])
    batch_size: int = 8  # prompts per generate call (each expands to num_samples rows)
    seed: int = 0  # sampling seed; chunk k of the prompt list is sampled with seed + k

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise ValueError(f"policy.num_samples must be >= 2 (a pair needs two answers), got {self.num_samples}")
        if self.temperature <= 0:
            raise ValueError(f"policy.temperature must be > 0 to sample {self.num_samples} different answers, "
                             f"got {self.temperature}")
        for name in ("max_new_tokens", "batch_size", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"policy.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class LabelJudgeConfig:
    """A pairwise judge (``lm``: a local causal LM; ``http``: an OpenAI-compatible endpoint)."""

    kind: Literal["lm", "http"] = "lm"
    model: str = ""  # lm: model name/folder; http: the served model's name
    base_url: str = ""  # http only
    api_key_env: str = "OPENAI_API_KEY"  # http only: environment variable holding the key
    max_length: int = 1024


@dataclass(frozen=True)
class LabelScorerConfig:
    """Who scores the K answers of a prompt (``LABEL_SCORERS`` registry, ``prefopt ls label_scorers``).

    ``reward``: any scalar reward source of the online loop (BT/POLAR models, an ensemble with
    mean/WCO/UWO - each member's score and the variance are kept - and rule functions); POLAR scores
    against the prompt's reference answer. ``gpm``: the K x K preference matrix of a GPM; ``judge``: the
    matrix from a pairwise judge. Matrix scorers rank answers by Copeland score (wins, ties 1/2).
    """

    kind: str = "reward"
    reward: RewardSourceConfig = field(default_factory=RewardSourceConfig)
    judge: LabelJudgeConfig = field(default_factory=LabelJudgeConfig)
    max_length: int = 512  # reward-model token budget per (prompt, answer)
    batch_size: int = 16  # answers per reward-model forward
    # shared_prompt: the K answers of one prompt are scored in one row after their prompt (a BT/ensemble
    # scorer; same scores as padded); padded: one row per answer.
    layout: Literal["padded", "shared_prompt"] = "shared_prompt"


@dataclass(frozen=True)
class LabelSplitConfig:
    """Held-out share of the labelled prompts (by prompt hash) written to test.jsonl."""

    test_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"split.test_fraction must be in [0, 1), got {self.test_fraction}")


@dataclass(frozen=True)
class LabelOutputConfig:
    """What train.jsonl holds and which answers/pairs are dropped (each drop counted by reason)."""

    # ranked_to_pairs (pairs; margin = score gap), none (ranked sets: IRPO), curriculum (Curry-DPO),
    # group (group sets).
    builder: BuilderConfig = field(default_factory=lambda: BuilderConfig(kind="ranked_to_pairs",
                                                                         strategy="best_vs_worst"))
    min_margin: float = 0.0  # drop pairs whose score gap is below this
    max_variance: float | None = None  # ensembles: drop answers whose member-score variance is above
    drop_identical: bool = True  # keep one copy of answers with identical text

    def __post_init__(self) -> None:
        if self.min_margin < 0:
            raise ValueError(f"output.min_margin must be >= 0, got {self.min_margin}")
        if self.max_variance is not None and self.max_variance < 0:
            raise ValueError(f"output.max_variance must be >= 0, got {self.max_variance}")


@dataclass(frozen=True)
class LabelConfig:
    """Root of a ``kind: label`` YAML (``prefopt data label CFG``)."""

    output_dir: str
    prompts: LabelPromptConfig
    policy: LabelPolicyConfig = field(default_factory=LabelPolicyConfig)
    scorer: LabelScorerConfig = field(default_factory=LabelScorerConfig)
    output: LabelOutputConfig = field(default_factory=LabelOutputConfig)
    split: LabelSplitConfig = field(default_factory=LabelSplitConfig)
    # Evaluation prompt files: a labelled prompt that is also an evaluation prompt is refused.
    eval_prompts: list[PromptFileConfig] = field(default_factory=list)

    def validate(self) -> None:
        """Check the scorer kind and its settings (raises ConfigError)."""
        from prefopt.core.errors import ConfigError
        from prefopt.core.registry import RegistryError
        from prefopt.data.label_scorers import get_label_scorer

        try:
            spec = get_label_scorer(self.scorer.kind)
        except RegistryError as exc:
            raise ConfigError(f"scorer.kind: {exc}") from None
        spec.check(self.scorer)


CONFIG_KINDS.register("label", LabelConfig)
