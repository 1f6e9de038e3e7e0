"""Config sections every training kind shares: ``run:`` (where and how a run writes) and ``data:`` (built
records and their tokenisation). ``kind: train`` (:mod:`prefopt.configs`) and ``kind: rm``
(:mod:`reward_models.config`) subclass them, adding only their own fields or other defaults; each field
has one meaning and is documented once, here. Lives in ``prefopt.core`` so that ``reward_models`` may
import it (import rule in CONTRIBUTING.md).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["RunSectionBase", "DataSectionBase", "resolve_sections"]


@dataclass(frozen=True)
class RunSectionBase:
    """Where and how a run writes: run directory, seed, logging, evaluation and checkpoint cadence."""

    output_dir: str = "runs/train"
    # Seeds initialisation, data order and the data.max_train_examples subset.
    seed: int = 0
    # Log metrics every N optimizer steps.
    log_every: int = 1
    # Held-out evaluation (policies: implicit-reward accuracy; reward models: accuracy) every N optimizer
    # steps (0 = only at the start and the end).
    eval_every: int = 0
    # Save a resumable checkpoint every N optimizer steps (online runs: rounds); 0 = none (the final
    # model is always saved).
    save_every: int = 0
    # Checkpoints kept on disk (oldest removed first).
    keep_last: int = 2
    # Resume from the newest complete checkpoint in output_dir when one exists.
    resume: bool = True
    # Metric sinks besides metrics.jsonl (TRL's convention): "tensorboard" (run_dir/tb), "wandb".
    report_to: tuple[Literal["tensorboard", "wandb"], ...] = ("tensorboard",)
    # On a NaN/inf loss or gradient: "stop" (raise, the last good checkpoint kept) or "skip" (skip and count).
    on_nonfinite: Literal["stop", "skip"] = "stop"

    def __post_init__(self) -> None:
        for name in ("log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"run.{name} must be >= 0 (0 = off), got {getattr(self, name)}")


@dataclass(frozen=True)
class DataSectionBase:
    """Built records (``prefopt data build`` output, or a .jsonl file) and their tokenisation policy."""

    # A folder holding train.jsonl (+ test.jsonl) written by `prefopt data build`, or a .jsonl file.
    path: str = ""
    # Held-out records; default: <path>/test.jsonl when it exists.
    eval_path: str | None = None
    # A seeded random subset of the valid training records, kept in file order (seed: run.seed;
    # None = all). The same records for every kind of run with the same file and seed.
    max_train_examples: int | None = None
    # The first N valid held-out records (None = all; 0 = no held-out evaluation).
    max_eval_examples: int | None = 200
    # Total tokens of prompt + completion; longer examples follow `overlong`.
    max_length: int = 512
    max_prompt_length: int = 256
    overlong: Literal["drop", "truncate_left", "truncate_right"] = "drop"
    # Shuffle the training order every epoch (seeded by run.seed).
    shuffle: bool = True
    # Batch layout: "padded" (one row per sequence), "packed" (padding-free rows) or "shared_prompt"
    # (each prompt encoded once, its responses after it under a block mask; sdpa/eager attention only;
    # fastest in every documented run, up to ~1k tokens per sequence; past ~1.5k tokens padded is faster
    # on CPU, see the length sweep in benchmarks/README.md). Same log-probs / rewards to 1e-5. "auto":
    # shared_prompt wherever it is exact, else padded with one console line saying why (e.g. SparsePO's
    # full-logit KL, listwise losses, POLAR, flash_attention_2, sliding-window attention). The run's
    # config.yaml holds the resolved layout.
    layout: Literal["auto", "padded", "packed", "shared_prompt"] = "auto"
    # A bad record (checked exactly as `prefopt data build` checks it): "raise" names file, line and
    # field; "skip" drops it and counts it by reason in data_stats.json and on the console.
    on_error: Literal["raise", "skip"] = "raise"

    def __post_init__(self) -> None:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("data.max_prompt_length must be smaller than data.max_length")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ValueError(f"data.max_train_examples must be >= 1 (or null = all), got {self.max_train_examples}")
        if self.max_eval_examples is not None and self.max_eval_examples < 0:
            raise ValueError(f"data.max_eval_examples must be >= 0 (or null = all), got {self.max_eval_examples}")


def _default(owner: Any, name: str) -> Any:
    spec = {f.name: f for f in dataclasses.fields(owner)}[name]
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


def _optional_section(owner: Any, name: str) -> type | None:
    """The dataclass of an ``X | None = None`` field (an optional section), else None."""
    if _default(owner, name) is not None:
        return None
    arms = typing.get_args(typing.get_type_hints(type(owner))[name])
    return next((a for a in arms if dataclasses.is_dataclass(a)), None)


def resolve_sections(cfg: Any, reader: str) -> None:
    """Make a config's sections truthful, in place (from ``__post_init__``): the run's config.yaml holds
    every resolved value and nothing unused.

    * An optional section (``X | None = None``) the run reads and that is None gets its defaults ``X()``.
    * Each dotted key of ``cfg.unused_keys()`` (what ``reader`` does not read, left out of config.yaml by
      :func:`prefopt.core.config.to_dict`) must hold its default; an optional section there is stored as
      None. Anything else raises, naming the keys, since the settings would be ignored.
    """
    unused = cfg.unused_keys()
    for f in dataclasses.fields(cfg):
        section = _optional_section(cfg, f.name)
        if section is not None and f.name not in unused and getattr(cfg, f.name) is None:
            object.__setattr__(cfg, f.name, section())
    unused = cfg.unused_keys()  # the filled sections may leave sub-sections unused
    bad = []
    for key in unused:
        *parents, name = key.split(".")
        owner = cfg
        for part in parents:
            owner = getattr(owner, part)
        if owner is None:  # inside a section that is itself absent
            continue
        value, section = getattr(owner, name), _optional_section(owner, name)
        if section is not None and value in (None, section()):
            object.__setattr__(owner, name, None)
        elif value != _default(owner, name):
            bad.append(key)
    if bad:
        raise ValueError(f"{', '.join(bad)}: not read by {reader}, so these settings would be ignored; remove "
                         f"{'it' if len(bad) == 1 else 'them'} from the config")
