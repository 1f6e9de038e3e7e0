"""``prefopt data build``: the shipped recipes on the real shared data (exact counts, counted independently
with plain json/gzip where reasonable), splits, de-duplication, atomic outputs and config errors."""
from __future__ import annotations

import gzip
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from data_pipelines.build import percentiles, run_build
from data_pipelines.config import DataBuildConfig, SourceConfig
from data_pipelines.schemas import PairwiseExample, RankedExample
from data_pipelines.sources import load_examples
from prefopt.cli import main
from prefopt.core.config import from_dict, load_config
from prefopt.core.errors import ConfigError, DataError


def _rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _build_recipe(name: str, repo_root: Path, shared_data: Path, tmp_path: Path, monkeypatch, capsys) -> dict:
    """Run ``prefopt data build configs/data/<name>.yaml`` from the repo root; return stats.json."""
    monkeypatch.chdir(repo_root)
    cfg = f"configs/data/{name}.yaml"
    if shared_data.resolve() != (repo_root.parent / "shared" / "data").resolve():  # PREFOPT_SHARED_DATA
        data = yaml.safe_load(Path(cfg).read_text())
        for src in data["sources"]:
            src["path"] = src["path"].replace("../shared/data", str(shared_data))
        cfg = str(tmp_path / f"{name}.yaml")
        Path(cfg).write_text(yaml.safe_dump(data))
    out = tmp_path / name
    assert main(["data", "build", cfg, f"output_dir={out}"]) == 0
    assert "train=" in capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    assert load_config(out / "config.yaml").output_dir == str(out)
    assert len((out / "train.jsonl").read_text().splitlines()) == stats["train"]
    assert len((out / "test.jsonl").read_text().splitlines()) == stats["test"]
    return stats


def _hh_expected(path: Path) -> tuple[int, Counter, list[str], list[str]]:
    """Independent hh-rlhf count: split at the last '\\n\\nAssistant:' of each transcript."""
    kept, skipped, chosen, rejected = 0, Counter(), [], []
    for r in _rows(path):
        pc, _, fc = r["chosen"].rpartition("\n\nAssistant:")
        pr, _, fr = r["rejected"].rpartition("\n\nAssistant:")
        if pc != pr:
            skipped["prompt_mismatch"] += 1
        elif not fc.strip() or not fr.strip():
            skipped["empty_text"] += 1
        elif fc.strip() == fr.strip():
            skipped["same_chosen_rejected"] += 1
        else:
            kept += 1
            chosen.append(fc.strip())
            rejected.append(fr.strip())
    return kept, skipped, chosen, rejected


@pytest.mark.parametrize("name,part,train_n,test_n,skipped", [
    ("hh_rlhf_helpful_pairs", "helpful-base", 497, 2205,
     {"empty_text": 5, "prompt_mismatch": 9, "same_chosen_rejected": 2}),
    ("hh_rlhf_harmless_pairs", "harmless-base", 499, 2302, {"empty_text": 4, "prompt_mismatch": 6}),
])
def test_hh_recipes(name, part, train_n, test_n, skipped, repo_root, shared_data, tmp_path, monkeypatch, capsys):
    stats = _build_recipe(name, repo_root, shared_data, tmp_path, monkeypatch, capsys)
    tr = _hh_expected(shared_data / f"hh-rlhf/{part}.train.sample.jsonl.gz")
    te = _hh_expected(shared_data / f"hh-rlhf/{part}.test.jsonl.gz")
    assert (stats["train"], stats["test"]) == (tr[0], te[0]) == (train_n, test_n)
    assert stats["skipped"] == dict(tr[1] + te[1]) == skipped
    assert stats["dedup_removed"] == 0 and stats["output_kind"] == "pairwise"
    assert stats["sources"][f"{part}.test"]["records_read"] == len(_rows(shared_data / f"hh-rlhf/{part}.test.jsonl.gz"))
    assert stats["lengths"]["chosen"] == percentiles([len(c) for c in tr[2] + te[2]])
    assert stats["lengths"]["rejected"] == percentiles([len(c) for c in tr[3] + te[3]])
    assert stats["per_prompt"]["mean"] >= 1.0


def _helpsteer_groups(shared_data: Path) -> dict[str, list[float]]:
    groups = defaultdict(list)
    for r in _rows(shared_data / "helpsteer-sample/helpsteer_sample.jsonl.gz"):
        groups[r["prompt"]].append(r["helpfulness"])
    return groups


def test_helpsteer_ranked_recipe(repo_root, shared_data, tmp_path, monkeypatch, capsys):
    """500 rows -> 139 prompts; 9 have one response (skipped) -> 130 ranked records (PROVENANCE: 105+21+4)."""
    stats = _build_recipe("helpsteer_ranked", repo_root, shared_data, tmp_path, monkeypatch, capsys)
    groups = _helpsteer_groups(shared_data)
    multi = [g for g in groups.values() if len(g) >= 2]
    assert (len(groups), len(multi)) == (139, 130)
    assert stats["skipped"] == {"ranked_list_of_one": len(groups) - len(multi)} == {"ranked_list_of_one": 9}
    assert (stats["train"], stats["test"], stats["overlap_prompts"]) == (113, 17, 0)
    assert stats["per_prompt"] == {"records": 130, "responses_mean": round(sum(map(len, multi)) / 130, 4),
                                   "responses_min": 2, "responses_max": 4}
    train = load_examples(tmp_path / "helpsteer_ranked" / "train.jsonl")
    assert all(isinstance(e, RankedExample) for e in train) and len(train) == 113


def _curriculum_expected(groups: dict[str, list[float]], max_stages: int) -> Counter:
    """Independent Curry-DPO count: best vs each other response, gap > 0, stage from distinct gap levels."""
    c = Counter()
    for scores in groups.values():
        if len(scores) < 2:
            continue
        best = max(scores)
        rest = list(scores)
        rest.remove(best)
        gaps = [best - s for s in rest if best - s > 0]
        c["tie_pairs_dropped"] += len(rest) - len(gaps)
        c["pairs"] += len(gaps)
        c["prompts_without_pairs"] += not gaps
        levels = sorted(set(gaps), reverse=True)
        for g in gaps:
            j, m = levels.index(g), len(levels)
            c[f"stage_{j + 1 if m <= max_stages else j * max_stages // m + 1}"] += 1
    return c


def test_helpsteer_curriculum_recipe(repo_root, shared_data, tmp_path, monkeypatch, capsys):
    stats = _build_recipe("helpsteer_curriculum", repo_root, shared_data, tmp_path, monkeypatch, capsys)
    expected = _curriculum_expected(_helpsteer_groups(shared_data), 3)
    builder = {k: v for k, v in stats["builder"].items() if k != "kind"}
    assert builder == dict(expected) == {"pairs": 221, "tie_pairs_dropped": 140, "prompts_without_pairs": 22,
                                         "stage_1": 171, "stage_2": 48, "stage_3": 2}
    assert stats["dedup_removed"] == 1  # one prompt lists the same response text twice
    assert (stats["train"], stats["test"], stats["overlap_prompts"]) == (186, 34, 0)
    train = load_examples(tmp_path / "helpsteer_curriculum" / "train.jsonl")
    stages = [e.meta["stage"] for e in train]
    assert stages == sorted(stages) and set(stages) == {1, 2, 3}
    assert all(isinstance(e, PairwiseExample) and e.margin == e.meta["gap"] > 0 for e in train)


def test_stack_exchange_recipe(repo_root, shared_data, tmp_path, monkeypatch, capsys):
    """500 questions (qids repeat between the main and meta sites; keyed on (site, qid)), 1589 answers."""
    stats = _build_recipe("stack_exchange_ranked", repo_root, shared_data, tmp_path, monkeypatch, capsys)
    rows = _rows(shared_data / "stack-exchange-preferences-sample/stack_exchange_preferences_sample.jsonl.gz")
    assert len(rows) == 500 and sum(len(r["answers"]) for r in rows) == 1589
    assert len({r["qid"] for r in rows}) < 500 == len({(r["metadata"][1], r["qid"]) for r in rows})
    assert stats["skipped"] == {} and stats["sources"]["stack_exchange_preferences_sample"]["examples"] == 500
    assert (stats["train"], stats["test"], stats["overlap_prompts"]) == (452, 48, 0)
    assert stats["per_prompt"]["responses_max"] == max(len(r["answers"]) for r in rows) == 12
    out = load_examples(tmp_path / "stack_exchange_ranked" / "train.jsonl") + \
        load_examples(tmp_path / "stack_exchange_ranked" / "test.jsonl")
    assert sum(len(e.responses) for e in out) == 1589
    assert not any("<p>" in e.prompt[0]["content"] for e in out)


# ---------------------------------------------------------------------------- synthetic builds
def _pairs_file(tmp_path: Path, n: int, name="pairs.jsonl", dup: int = 0) -> str:
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]
    rows += rows[:dup]
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _cfg(tmp_path: Path, sources: list[dict], **kw) -> DataBuildConfig:
    return from_dict(DataBuildConfig, {"output_dir": str(tmp_path / "out"), "sources": sources, **kw})


def test_split_is_by_prompt_deterministic_and_seeded(tmp_path, capsys):
    src = [{"path": _pairs_file(tmp_path, 300), "adapter": "pairwise"}]
    a = run_build(_cfg(tmp_path, src, split={"test_fraction": 0.25, "seed": 1}))
    first = (tmp_path / "out" / "test.jsonl").read_text()
    b = run_build(_cfg(tmp_path, src, split={"test_fraction": 0.25, "seed": 1}))
    assert (tmp_path / "out" / "test.jsonl").read_text() == first and a == b
    assert 40 < a["test"] < 110 and a["train"] + a["test"] == 300 and a["overlap_prompts"] == 0
    c = run_build(_cfg(tmp_path, src, split={"test_fraction": 0.25, "seed": 2}))
    assert (tmp_path / "out" / "test.jsonl").read_text() != first and c["train"] + c["test"] == 300


def test_ranked_pairs_of_one_prompt_stay_on_one_side(tmp_path, capsys):
    rows = [{"prompt": f"q{i}", "responses": ["a", "b", "c", "d"], "scores": [4, 3, 2, 1]} for i in range(60)]
    p = tmp_path / "r.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = run_build(_cfg(tmp_path, [{"path": str(p), "adapter": "ranked"}],
                           builder={"kind": "ranked_to_pairs", "strategy": "all_pairs"}, split={"test_fraction": 0.5}))
    assert stats["builder"] == {"kind": "ranked_to_pairs", "pairs": 360}
    assert stats["train"] % 6 == 0 and stats["test"] % 6 == 0 and stats["overlap_prompts"] == 0
    assert stats["per_prompt"] == {"prompts": 60, "mean": 6.0, "max": 6}


def test_dedup_within_and_across_sources(tmp_path, capsys):
    a = _pairs_file(tmp_path, 10, "a.jsonl", dup=3)
    b = _pairs_file(tmp_path, 4, "b.jsonl")
    srcs = [{"path": a, "adapter": "pairwise"}, {"path": b, "adapter": "pairwise"}]
    stats = run_build(_cfg(tmp_path, srcs))
    assert (stats["train"], stats["dedup_removed"]) == (10, 7)
    assert (stats["sources"]["a"]["dedup_removed"], stats["sources"]["b"]["dedup_removed"]) == (3, 4)
    assert run_build(_cfg(tmp_path, srcs, dedup=False))["train"] == 17


def test_failed_build_keeps_previous_outputs(tmp_path, capsys):
    good = _pairs_file(tmp_path, 5)
    run_build(_cfg(tmp_path, [{"path": good, "adapter": "pairwise"}]))
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(Path(good).read_text() + '{"prompt": "q", "chosen": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 6, field 'rejected': required field is missing"):
        run_build(_cfg(tmp_path, [{"path": str(bad), "adapter": "pairwise"}]))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no partial/temp files either
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "data", "output_dir": str(out),
                                   "sources": [{"path": str(bad), "adapter": "pairwise"}]}))
    assert main(["data", "build", str(cfg)]) == 2
    assert "error: " in capsys.readouterr().err and (out / "train.jsonl").read_bytes() == before["train.jsonl"]


def test_max_records_cap_and_fixed_split(tmp_path, capsys):
    src = {"path": _pairs_file(tmp_path, 20), "adapter": "pairwise", "split": "test", "max_records": 8}
    stats = run_build(_cfg(tmp_path, [src], max_records=5, split={"test_fraction": 0.0}))
    assert (stats["train"], stats["test"], stats["sources"]["pairs"]["records_read"]) == (0, 5, 5)


def test_config_errors(tmp_path):
    p = _pairs_file(tmp_path, 2)
    with pytest.raises(ConfigError, match=r"unknown config key 'sources\[0\].adaptor' \(did you mean 'adapter'\?\)"):
        _cfg(tmp_path, [{"path": p, "adaptor": "pairwise"}])
    with pytest.raises(ConfigError, match="test_fraction must be in"):
        _cfg(tmp_path, [{"path": p, "adapter": "pairwise"}], split={"test_fraction": 1.5})
    with pytest.raises(ConfigError, match="adapter 'pairwise' gives pairwise records but builder 'curriculum' "
                                          "needs ranked records"):
        _cfg(tmp_path, [{"path": p, "adapter": "pairwise"}], builder={"kind": "curriculum"}).validate()
    with pytest.raises(ConfigError, match=r"sources give different record kinds \['pairwise', 'ranked'\]"):
        _cfg(tmp_path, [{"path": p, "adapter": "pairwise"}, {"path": p, "adapter": "ranked", "name": "x"}]).validate()
    with pytest.raises(ConfigError, match=r"sources need distinct names"):
        run_build(_cfg(tmp_path, [{"path": p, "adapter": "pairwise"}] * 2))
    with pytest.raises(ConfigError, match="unknown adapter 'hh_rlfh' \\(did you mean 'hh_rlhf'\\?\\)"):
        _cfg(tmp_path, [{"path": p, "adapter": "hh_rlfh"}]).validate()


def test_source_label_and_percentiles():
    assert SourceConfig(path="../x/helpful-base.test.jsonl.gz", adapter="hh_rlhf").label == "helpful-base.test"
    assert SourceConfig(path="hf:org/x@test", adapter="pairwise", name="n").label == "n"
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7}
    assert percentiles([]) == {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    assert math.ceil(0.5 * 3) - 1 == 1 and percentiles([3, 1, 2])["p50"] == 2


def test_every_recipe_validates(repo_root):
    for path in sorted((repo_root / "configs" / "data").glob("*.yaml")):
        cfg = load_config(path, expect="data")
        cfg.validate()
        assert all(s.path.startswith("../shared/data/") for s in cfg.sources), path
