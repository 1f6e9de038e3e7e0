"""``prefopt data build CFG``: read -> adapt -> build -> de-duplicate -> split -> write jsonl + stats.

Outputs in ``cfg.output_dir`` (each written atomically, and only after every source was processed
without error, so a failed build never replaces a previous good file): ``train.jsonl``,
``test.jsonl`` (one schema record per line, see ``to_record``), ``stats.json`` and the resolved
``config.yaml``. Load them back with :func:`data_pipelines.sources.load_examples`.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from data_pipelines.adapters import adapt, get_adapter
from data_pipelines.builders import get_builder
from data_pipelines.config import BuilderConfig, DataBuildConfig, SourceConfig
from data_pipelines.errors import Issues
from data_pipelines.schemas import PairwiseExample, PromptExample, prompt_text
from data_pipelines.sources import RawRecord, read_records
from data_pipelines.splits import dedup, split_by_prompt
from prefopt.core.config import save_resolved
from prefopt.core.errors import ConfigError, DataError
from prefopt.core.io import atomic_write_json, atomic_write_text


class _Counted:
    """Wraps a record iterator and counts what passes through."""

    def __init__(self, records: Iterable[RawRecord]):
        self.records, self.n = records, 0

    def __iter__(self) -> Iterator[RawRecord]:
        for rec in self.records:
            self.n += 1
            yield rec


def _cap(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def read_source(src: SourceConfig, max_records: int | None = None) -> tuple[list, dict]:
    """Read and adapt one source; return ``(examples, per-source stats)``."""
    issues = Issues(src.on_error)
    raw = _Counted(read_records(src.path, src.format, issues, _cap(src.max_records, max_records)))
    examples = list(adapt(src.adapter, raw, src.options, issues, src.label))
    return examples, {"path": src.path, "adapter": src.adapter, "split": src.split, "records_read": raw.n,
                      "examples": len(examples), "skipped": issues.as_dict()}


def apply_builder(examples: list, builder: BuilderConfig, counts: Counter) -> list:
    """Run the configured builder (``none`` returns ``examples`` unchanged)."""
    if builder.kind == "none":
        return examples
    fn = get_builder(builder.kind).fn
    if builder.kind == "ranked_to_pairs":
        return fn(examples, counts, strategy=builder.strategy)
    if builder.kind == "curriculum":
        return fn(examples, counts, stages=builder.stages, thresholds=builder.thresholds, ordered=builder.ordered)
    return fn(examples, counts)


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank p50/p90/p99 and max (``value[ceil(p/100 * n) - 1]`` of the sorted list); zeros if empty."""
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    v = sorted(values)
    pick = lambda p: v[max(0, math.ceil(p / 100 * len(v)) - 1)]  # noqa: E731
    return {"p50": pick(50), "p90": pick(90), "p99": pick(99), "max": v[-1]}


def _prompt_chars(ex: Any) -> int:
    return sum(len(m["content"]) for m in ex.prompt)


def length_stats(examples: list) -> dict[str, dict[str, int]]:
    """Character-length percentiles: prompt (sum of message contents) and chosen/rejected, responses or answer."""
    out = {"prompt": percentiles([_prompt_chars(e) for e in examples])}
    if examples and isinstance(examples[0], PairwiseExample):
        out["chosen"] = percentiles([len(e.chosen) for e in examples])
        out["rejected"] = percentiles([len(e.rejected) for e in examples])
    elif examples and isinstance(examples[0], PromptExample):
        out["answer"] = percentiles([len(e.answer or "") for e in examples])
    elif examples:
        out["responses"] = percentiles([len(r) for e in examples for r in e.responses])
    return out


def per_prompt_stats(examples: list) -> dict[str, float]:
    """Records per distinct prompt (pairs per prompt for pairwise output; responses per record otherwise)."""
    if examples and not isinstance(examples[0], (PairwiseExample, PromptExample)):
        sizes = [len(e.responses) for e in examples]
        return {"records": len(sizes), "responses_mean": round(sum(sizes) / len(sizes), 4),
                "responses_min": min(sizes), "responses_max": max(sizes)}
    per = Counter(prompt_text(e.prompt) for e in examples)
    if not per:
        return {"prompts": 0, "mean": 0.0, "max": 0}
    return {"prompts": len(per), "mean": round(len(examples) / len(per), 4), "max": max(per.values())}


def _split_source(examples: list, src: SourceConfig, cfg: DataBuildConfig) -> tuple[list, list]:
    if src.split == "train":
        return examples, []
    if src.split == "test":
        return [], examples
    return split_by_prompt(examples, cfg.split.test_fraction, cfg.split_seed)


def _stage_sort(examples: list, builder: BuilderConfig) -> list:
    if builder.kind == "curriculum" and builder.ordered:
        return sorted(examples, key=lambda e: e.meta["stage"])
    return examples


def _build_sets(cfg: DataBuildConfig) -> tuple[list, list, dict]:
    """Process every source; return ``(train, test, stats)`` without writing anything."""
    cfg.validate()
    labels = [s.label for s in cfg.sources]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"sources need distinct names (set `name:`), got {labels}")
    train, test, seen = [], [], set()
    stats: dict[str, Any] = {"sources": {}, "builder": {"kind": cfg.builder.kind}}
    totals, skipped, removed = Counter(), Counter(), 0
    for src in cfg.sources:
        examples, sstats = read_source(src, cfg.max_records)
        counts: Counter = Counter()
        built = apply_builder(examples, cfg.builder, counts)
        n_removed = 0
        if cfg.dedup:
            built, n_removed = dedup(built, seen)
        tr, te = _split_source(built, src, cfg)
        sstats.update(built=len(built) + n_removed, dedup_removed=n_removed, train=len(tr), test=len(te))
        if cfg.builder.kind != "none":
            sstats["builder"] = dict(sorted(counts.items()))
        stats["sources"][src.label] = sstats
        train += tr
        test += te
        totals.update(counts)
        skipped.update(sstats["skipped"])
        removed += n_removed
    train, test = _stage_sort(train, cfg.builder), _stage_sort(test, cfg.builder)
    stats["builder"].update(sorted(totals.items()))
    stats.update(skipped=dict(sorted(skipped.items())), dedup_removed=removed, train=len(train), test=len(test))
    return train, test, stats


def _summary(train: list, test: list, cfg: DataBuildConfig) -> dict[str, Any]:
    both = train + test
    kind = get_adapter(cfg.sources[0].adapter).output if cfg.builder.kind == "none" else \
        get_builder(cfg.builder.kind).output
    overlap = {prompt_text(e.prompt) for e in train} & {prompt_text(e.prompt) for e in test}
    return {"output_kind": kind, "overlap_prompts": len(overlap), "lengths": length_stats(both),
            "per_prompt": per_prompt_stats(both)}


def _jsonl(examples: list) -> str:
    return "".join(json.dumps(e.to_record(), ensure_ascii=False) + "\n" for e in examples)


def print_stats(stats: dict[str, Any]) -> None:
    """A short human-readable table of a build's stats."""
    print(f"{'source':<34}{'read':>8}{'kept':>8}{'skipped':>9}{'built':>8}{'train':>8}{'test':>8}")
    for label, s in stats["sources"].items():
        print(f"{label[:33]:<34}{s['records_read']:>8}{s['examples']:>8}{sum(s['skipped'].values()):>9}"
              f"{s['built']:>8}{s['train']:>8}{s['test']:>8}")
    print(f"output: {stats['output_kind']}  train={stats['train']}  test={stats['test']}  "
          f"dedup_removed={stats['dedup_removed']}  skipped={stats['skipped'] or '{}'}")
    if stats["builder"]["kind"] != "none":
        print("builder: " + ", ".join(f"{k}={v}" for k, v in stats["builder"].items()))
    for field, p in stats["lengths"].items():
        print(f"  {field:<10} chars p50={p['p50']} p90={p['p90']} p99={p['p99']} max={p['max']}")


def run_build(cfg: DataBuildConfig) -> dict[str, Any]:
    """Build the data set described by ``cfg``, write it to ``cfg.output_dir`` and return the stats.

    Nothing is written unless every source was read and built without error.
    """
    train, test, stats = _build_sets(cfg)
    if not train and (not test or any(s.split != "test" for s in cfg.sources)):
        read = sum(s["records_read"] for s in stats["sources"].values())
        raise DataError(f"the build has no training records (read {read}; skipped by reason: "
                        f"{stats['skipped'] or 'none'}; builder: {dict(stats['builder'])}; dedup removed "
                        f"{stats['dedup_removed']}; test {stats['test']}); nothing was written to "
                        f"{cfg.output_dir}. Check the sources' paths and adapters, or use on_error: raise to "
                        "see the first bad record", file=", ".join(s.path for s in cfg.sources))
    stats.update(_summary(train, test, cfg))
    out = Path(cfg.output_dir)
    atomic_write_text(out / "train.jsonl", _jsonl(train))
    atomic_write_text(out / "test.jsonl", _jsonl(test))
    atomic_write_json(out / "stats.json", stats)
    save_resolved(cfg, out)
    print_stats(stats)
    return stats
