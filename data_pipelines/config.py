"""``kind: data`` configs: which sources to read, how to adapt/build/split them, where to write.

Relative paths (``path``, ``output_dir``) are resolved against the current working directory; the
shipped recipes under ``configs/data/`` use ``../shared/data/...`` and are meant to be run from the
repository root: ``prefopt data build configs/data/hh_rlhf_helpful_pairs.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prefopt.core.errors import ConfigError
from prefopt.core.registry import CONFIG_KINDS


@dataclass(frozen=True)
class SourceConfig:
    """One input: a file or hub dataset, the adapter that turns its rows into schema records."""

    path: str  # file (.jsonl, .jsonl.gz, .json, .parquet; relative to the cwd) or hf:NAME[:CONFIG]@SPLIT
    adapter: str  # registered adapter name, see `prefopt ls datasets` (e.g. hh_rlhf, helpsteer)
    name: str = ""  # label used in stats and each record's `source`; default: file name without suffixes
    format: Literal["auto", "jsonl", "json", "parquet", "hf"] = "auto"  # auto: from the suffix
    options: dict[str, Any] = field(default_factory=dict)  # adapter options (unknown keys fail)
    max_records: int | None = None  # read at most this many raw rows (None: all)
    on_error: Literal["raise", "skip"] = "raise"  # skip: drop bad records and count them by reason
    split: Literal["hash", "train", "test"] = "hash"  # hash: by prompt hash; train/test: whole source there

    def __post_init__(self):
        if not self.path:
            raise ValueError("source path must not be empty")
        if self.max_records is not None and self.max_records < 0:
            raise ValueError(f"max_records must be >= 0, got {self.max_records}")

    @property
    def label(self) -> str:
        """``name`` or the file name without ``.gz``/``.jsonl``/``.json``/``.parquet``."""
        if self.name:
            return self.name
        base = self.path.rstrip("/").rsplit("/", 1)[-1]
        for suffix in (".gz", ".jsonl", ".json", ".parquet"):
            base = base.removesuffix(suffix)
        return base


@dataclass(frozen=True)
class BuilderConfig:
    """What to build from the adapted records (``none`` keeps them as they are)."""

    kind: Literal["none", "ranked_to_pairs", "curriculum", "group"] = "none"
    strategy: Literal["all_pairs", "best_vs_worst", "adjacent", "best_vs_rest"] = "all_pairs"  # ranked_to_pairs
    stages: int = 0  # curriculum: max stages per prompt (0: one stage per distinct gap)
    thresholds: list[float] | None = None  # curriculum global mode: descending gap thresholds
    ordered: bool = True  # curriculum: write all stage-1 pairs before stage-2 ones

    def __post_init__(self):
        if self.stages < 0:
            raise ValueError(f"stages must be >= 0, got {self.stages}")
        if self.thresholds is not None and any(a <= b for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)):
            raise ValueError(f"thresholds must be strictly descending, got {self.thresholds}")


@dataclass(frozen=True)
class SplitConfig:
    """Deterministic train/test split by prompt hash (sources with ``split: hash`` only)."""

    test_fraction: float = 0.0  # share of prompts sent to test.jsonl
    seed: int | None = None  # hash seed; None: the top-level `seed`

    def __post_init__(self):
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"test_fraction must be in [0, 1], got {self.test_fraction}")


@dataclass(frozen=True)
class DataBuildConfig:
    """Root of a ``kind: data`` YAML (``prefopt data build CFG``)."""

    output_dir: str  # receives train.jsonl, test.jsonl, stats.json, config.yaml
    sources: list[SourceConfig]
    builder: BuilderConfig = field(default_factory=BuilderConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    dedup: bool = True  # drop exact duplicate records (counted in stats)
    seed: int = 0
    max_records: int | None = None  # cap applied to every source (handy as an override)

    def __post_init__(self):
        if not self.sources:
            raise ValueError("at least one source is required")

    @property
    def split_seed(self) -> int:
        return self.seed if self.split.seed is None else self.split.seed

    def validate(self) -> None:
        """Check adapter names and that every adapter's output suits the builder (raises ConfigError)."""
        from data_pipelines.adapters import get_adapter
        from data_pipelines.builders import get_builder

        needs = None if self.builder.kind == "none" else get_builder(self.builder.kind).input
        outputs = set()
        for i, src in enumerate(self.sources):
            spec = get_adapter(src.adapter)
            outputs.add(spec.output)
            if needs is not None and spec.output != needs and not (self.builder.kind == "group"
                                                                    and spec.output == "group"):
                raise ConfigError(f"sources[{i}]: adapter '{src.adapter}' gives {spec.output} records but "
                                  f"builder '{self.builder.kind}' needs {needs} records")
        if needs is None and len(outputs) > 1:
            raise ConfigError(f"sources give different record kinds {sorted(outputs)}; one output file "
                              "holds one kind")


CONFIG_KINDS.register("data", DataBuildConfig)
