"""``prefopt data label CFG``: on-policy preference data - sample K answers per prompt, score, build.

The recipe of online iterative DPO (Xiong et al. 2024, "Iterative Preference Learning from Human
Feedback", arXiv 2312.11456; Dong et al. 2024, "RLHF Workflow", arXiv 2405.07863): answers sampled from
the current policy, ranked by a reward model, best vs worst as the preference pair.

Stages, each resumable per prompt (``prefopt.eval.resumable.ResultStore``; a killed run continues with
no duplicates or gaps):

1. **sample** -> ``samples.jsonl``: prompt chunk k (``policy.batch_size`` prompts in file order of the
   selection) is sampled with seed ``policy.seed + k``, so a rerun regenerates identical answers;
2. **score** -> ``scores.jsonl``: empty and identical answers dropped, the rest scored by the configured
   scorer (:mod:`prefopt.data.label_scorers`);
3. **build** -> ``ranked.jsonl`` (every prompt's answers and scores), ``train.jsonl`` / ``test.jsonl``
   (through the ``data build`` builders), ``stats.json`` (drops by reason, samples/s) and ``config.yaml``.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from data_pipelines.schemas import PromptExample, RankedExample, prompt_text
from prefopt.core.config import save_resolved, to_dict
from prefopt.core.errors import ConfigError
from prefopt.core.io import atomic_write_json, atomic_write_text
from prefopt.core.logging import progress
from prefopt.data.label_build import build_outputs
from prefopt.data.label_config import LabelConfig
from prefopt.data.label_scorers import get_label_scorer, require_folders
from prefopt.data.prompts import read_prompt_file
from prefopt.eval.resumable import ResultStore

__all__ = ["run_label", "select_prompts"]


def select_prompts(cfg: LabelConfig) -> list[PromptExample]:
    """Distinct prompts of ``cfg.prompts`` (first occurrence), shuffled with its seed, the first
    ``max_prompts`` from ``offset`` kept; refuses any prompt that is also in ``cfg.eval_prompts``."""
    import random

    seen, prompts = set(), []
    for ex in read_prompt_file(cfg.prompts.kind, cfg.prompts.path):
        key = prompt_text(ex.prompt)
        if key not in seen:
            seen.add(key)
            prompts.append(ex)
    random.Random(cfg.prompts.seed).shuffle(prompts)
    total, start = len(prompts), cfg.prompts.offset
    prompts = prompts[start:] if cfg.prompts.max_prompts is None else prompts[start:start + cfg.prompts.max_prompts]
    if not prompts:
        raise ConfigError(f"prompts.path {cfg.prompts.path}: no prompts to label ({total} distinct prompts, "
                          f"prompts.offset={start})")
    chosen = {prompt_text(p.prompt): p for p in prompts}
    for i, ev in enumerate(cfg.eval_prompts):
        clash = [p for p in read_prompt_file(ev.kind, ev.path) if prompt_text(p.prompt) in chosen]
        if clash:
            first = chosen[prompt_text(clash[0].prompt)]
            raise ConfigError(f"eval_prompts[{i}] ({ev.path}) shares {len(clash)} prompt(s) with the prompts to "
                              f"label ({cfg.prompts.path}), e.g. id {first.id}: {first.prompt[-1]['content'][:80]!r}. "
                              "Training prompts must never be evaluation prompts: label another file or split.")
    return prompts


def _generator(cfg: LabelConfig) -> Any:
    from prefopt.generation import make_generator

    pol = cfg.policy
    if pol.generator == "vllm":
        return make_generator("vllm", model=pol.name, dtype="auto" if pol.dtype == "float32" else pol.dtype,
                              seed=pol.seed)
    from prefopt.eval.scorers import load_policy

    model, tok, _ = load_policy(pol.name, dtype=pol.dtype)
    return make_generator("hf", model=model, tokenizer=tok, batch_size=pol.batch_size,
                          max_prompt_length=pol.max_prompt_length)


def sample_answers(cfg: LabelConfig, prompts: list[PromptExample], out: Path, stats: dict) -> dict[str, dict]:
    """Stage 1: K answers per prompt into ``samples.jsonl``; returns rows by prompt id."""
    from prefopt.generation import SamplingParams

    pol = cfg.policy
    store = ResultStore(out / "samples.jsonl", key_fields=("id",))
    chunks = [prompts[s:s + pol.batch_size] for s in range(0, len(prompts), pol.batch_size)]
    todo_chunks = [(k, c) for k, c in enumerate(chunks) if store.pending([{"id": p.id} for p in c])]
    if todo_chunks:
        gen, t0, n_new = _generator(cfg), time.perf_counter(), 0
        bar = progress(total=len(prompts), desc="label: sample", unit="prompt")
        bar.update(len(prompts) - sum(len(c) for _, c in todo_chunks))
        for k, chunk in todo_chunks:
            params = SamplingParams(temperature=pol.temperature, top_p=pol.top_p, top_k=pol.top_k,
                                    max_new_tokens=pol.max_new_tokens, n=pol.num_samples, seed=pol.seed + k)
            outs = gen.generate([p.prompt for p in chunk], params)
            store.append({"id": p.id, "answers": [c.text for c in comps],
                          "n_tokens": [len(c.token_ids) for c in comps],
                          "finish": [c.finish_reason for c in comps]} for p, comps in zip(chunk, outs, strict=True))
            n_new += len(chunk) * pol.num_samples
            bar.update(len(chunk))
            bar.set_postfix(samples_per_s=f"{n_new / (time.perf_counter() - t0):.2f}")
        bar.close()
        stats["sample_seconds"] = round(time.perf_counter() - t0, 2)
        stats["samples_per_second"] = round(n_new / max(time.perf_counter() - t0, 1e-9), 3)
    return {r["id"]: r for r in store.rows()}


def clean_answers(answers: list[str], drop_identical: bool, counts: Counter) -> list[int]:
    """Indices of the answers to score: empty ones dropped, identical ones kept once (both counted)."""
    keep, seen = [], set()
    for i, text in enumerate(answers):
        if not text.strip():
            counts["empty_answer"] += 1
            continue
        if drop_identical and text.strip() in seen:
            counts["identical_answer"] += 1
            continue
        seen.add(text.strip())
        keep.append(i)
    return keep


def score_answers(cfg: LabelConfig, prompts: list[PromptExample], samples: dict[str, dict], out: Path,
                  counts: Counter, stats: dict) -> dict[str, dict]:
    """Stage 2: scores of every prompt's kept answers into ``scores.jsonl``; returns rows by prompt id."""
    store = ResultStore(out / "scores.jsonl", key_fields=("id",))
    todo = [p for p in prompts if (p.id,) not in store]
    # drop counts are recomputed on every run (they are not stored per row)
    keeps = {p.id: clean_answers(samples[p.id]["answers"], cfg.output.drop_identical, counts) for p in prompts}
    if todo:
        scorer, t0 = get_label_scorer(cfg.scorer.kind).build(cfg.scorer, out), time.perf_counter()
        for p in progress(todo, desc="label: score", unit="prompt"):
            answers = samples[p.id]["answers"]
            keep = keeps[p.id]
            row: dict[str, Any] = {"id": p.id, "keep": keep, "scores": []}
            if len(keep) >= 2:
                g = scorer(p, [answers[i] for i in keep])
                row.update(scores=g.scores, members=g.members, variance=g.variance, matrix=g.matrix, **g.extra)
            store.append([row])
        stats["score_seconds"] = round(time.perf_counter() - t0, 2)
    return {r["id"]: r for r in store.rows()}


def ranked_records(cfg: LabelConfig, prompts: list[PromptExample], samples: dict, scores: dict,
                   counts: Counter) -> list[RankedExample]:
    """One ranked record per prompt with >= 2 scored answers; ``meta`` records how it was made."""
    pol = cfg.policy
    decoding = {"temperature": pol.temperature, "top_p": pol.top_p, "top_k": pol.top_k,
                "max_new_tokens": pol.max_new_tokens, "num_samples": pol.num_samples}
    scorer = get_label_scorer(cfg.scorer.kind).describe(cfg.scorer)
    out = []
    for p in prompts:
        row = scores[p.id]
        keep, vals = row["keep"], row["scores"]
        if len(keep) < 2:
            counts["prompt_fewer_than_2_answers"] += 1
            continue
        var = row.get("variance")
        if cfg.output.max_variance is not None and var is not None:
            ok = [k for k, v in enumerate(var) if v <= cfg.output.max_variance]
            counts["answer_variance_above_max"] += len(keep) - len(ok)
            if len(ok) < 2:
                counts["prompt_fewer_than_2_answers"] += 1
                continue
            keep, vals = [keep[k] for k in ok], [vals[k] for k in ok]
            var = [var[k] for k in ok]
        meta = {"policy": pol.name, "decoding": decoding, "seed": pol.seed, "scorer": scorer,
                "answer_index": keep}
        for name in ("members", "matrix", "mean_win_prob"):
            if row.get(name) is not None:
                meta[name] = row[name]
        if var is not None:
            meta["variance"] = var
        out.append(RankedExample(prompt=p.prompt, responses=[samples[p.id]["answers"][i] for i in keep],
                                 scores=[float(v) for v in vals], id=p.id, source=f"label:{p.source}", meta=meta))
    return out


def run_label(cfg: LabelConfig) -> int:
    """Sample, score, build; print a one-line summary with the output paths."""
    cfg.validate()
    require_folders(cfg.scorer)  # before any answer is sampled
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = select_prompts(cfg)
    save_resolved(cfg, out)
    counts: Counter = Counter()
    stats: dict[str, Any] = {"prompts": len(prompts)}
    samples = sample_answers(cfg, prompts, out, stats)
    scores = score_answers(cfg, prompts, samples, out, counts, stats)
    ranked = ranked_records(cfg, prompts, samples, scores, counts)
    atomic_write_text(out / "ranked.jsonl", "".join(_jsonl(r.to_record()) for r in ranked))
    files = build_outputs(cfg, ranked, out, counts, stats)
    stats.update(dropped={k: v for k, v in sorted(counts.items()) if k not in ("pairs", "groups")},
                 counts=dict(sorted(counts.items())), config=to_dict(cfg))
    atomic_write_json(out / "stats.json", stats)
    print(f"prefopt data label: {len(prompts)} prompts x {cfg.policy.num_samples} answers -> "
          f"{stats['train']} train / {stats['test']} test records ({', '.join(files)}) in {out}; "
          f"drops: {stats['dropped'] or 'none'}", file=sys.stdout, flush=True)
    return 0


def _jsonl(rec: dict) -> str:
    import json

    return json.dumps(rec, ensure_ascii=False) + "\n"
