"""Bad-input corpus, data entering training (issue 17 items 4 and 5): records given straight to ``train``
/ ``rm train`` (``data.path=x.jsonl``) go through the checks of ``data build``; empty builds are refused.

Every case asserts the error class, the exact message (file, line, field) and that earlier outputs in
the folder are unchanged.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from corpus import earlier_outputs, snapshot, unchanged, write_jsonl

from data_pipelines.build import run_build
from data_pipelines.errors import Issues
from data_pipelines.sources import load_examples
from prefopt.core.config import load_config
from prefopt.core.errors import DataError

PAIR = {"prompt": "q", "chosen": "a", "rejected": "b"}
RANKED = {"prompt": "q", "responses": ["a", "b"], "scores": [2.0, 1.0]}

# (case id, schema, lines of the file, message after "<file>, ")
RECORD_CASES = [
    ("ranked_list_of_one", "ranked", [{"prompt": "q", "responses": ["a"], "scores": [1.0]}],
     "line 1, field 'responses': a ranked list needs at least 2 responses, got 1"),
    ("score_string_nan", "ranked", [{**RANKED, "scores": ["nan", 1.0]}],
     "line 1, field 'scores[0]': expected a number, got str 'nan'"),
    ("score_nan", "ranked", ['{"prompt": "q", "responses": ["a", "b"], "scores": [NaN, 1]}'],
     "line 1, field 'scores[0]': score must be finite, got nan"),
    ("score_infinity", "ranked", ['{"prompt": "q", "responses": ["a", "b"], "scores": [1, Infinity]}'],
     "line 1, field 'scores[1]': score must be finite, got inf"),
    # TRL conversational rows are a supported input (data_pipelines/trl_formats.py): a malformed one is
    # refused by the trl_conversational adapter with its own message.
    ("trl_conversational_bad_role", "pairwise",
     [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "robot", "content": "a"}],
       "rejected": [{"role": "assistant", "content": "b"}]}],
     "line 1, field 'chosen[0].role': unknown role 'robot'; expected one of ('system', 'user', 'assistant')"),
    ("prompt_wrong_type", "pairwise", [{**PAIR, "prompt": 7}],
     "line 1, field 'prompt': expected a list of messages, got int"),
    ("missing_rejected", "pairwise", [PAIR, {"prompt": "q", "chosen": "a"}],
     "line 2, field 'rejected': required field is missing"),
    ("margin_negative", "pairwise", [{**PAIR, "margin": -1}], "line 1, field 'margin': margin must be >= 0, got -1.0"),
    ("not_an_object", "pairwise", [PAIR, "[1, 2]"], "line 2: expected a JSON object, got list"),
    ("malformed_json", "pairwise", ['{"prompt": "q", "chosen": '], "line 1: malformed JSON: Expecting value at column 27"),
    ("whitespace_reply", "pairwise", [{**PAIR, "chosen": "  \n"}],
     "line 1, field 'chosen': text is empty or whitespace-only"),
    ("meta_not_object", "pairwise", [{**PAIR, "meta": [1]}], "line 1, field 'meta': expected an object, got list"),
    ("duplicate_id", "pairwise", [{**PAIR, "id": "x"}, {**PAIR, "id": "x", "chosen": "c"}],
     "line 2, field 'id': duplicate id 'x' (first seen on line 1)"),
]


@pytest.mark.parametrize("case,schema,lines,message", RECORD_CASES, ids=[c[0] for c in RECORD_CASES])
def test_records_given_to_training_are_checked(tmp_path, case, schema, lines, message):
    out = earlier_outputs(tmp_path / "run")
    before = snapshot(tmp_path)
    path = write_jsonl(tmp_path / "given.jsonl", lines)
    with pytest.raises(DataError) as info:
        load_examples(path, schema)
    assert str(info.value) == f"{path}, {message}"
    assert unchanged(before, tmp_path) == []
    assert out.is_dir()


def test_skip_policy_counts_by_reason(tmp_path):
    path = write_jsonl(tmp_path / "given.jsonl", [PAIR, {**PAIR, "rejected": "a"}, "oops", {**PAIR, "chosen": ""}])
    issues = Issues("skip")
    kept = load_examples(path, "pairwise", issues)
    assert [(e.chosen, e.rejected) for e in kept] == [("a", "b")]
    assert issues.as_dict() == {"empty_text": 1, "malformed_json": 1, "same_chosen_rejected": 1}


def test_ranked_ties_are_dropped_and_counted_for_training(tmp_path):
    path = write_jsonl(tmp_path / "given.jsonl", [RANKED, {**RANKED, "scores": [3, 3]}])
    issues = Issues("raise")
    kept = load_examples(path, "ranked", issues, for_training=True)
    assert [e.scores for e in kept] == [[2.0, 1.0]] and issues.as_dict() == {"no_preference": 1}
    assert len(load_examples(path, "ranked")) == 2  # built data keeps ties (builders may use them)


def test_identical_pairs_are_dropped_and_counted_for_training(tmp_path):
    path = write_jsonl(tmp_path / "given.jsonl", [PAIR, {**PAIR, "rejected": "a"}])
    issues = Issues("raise")
    kept = load_examples(path, "pairwise", issues, for_training=True)
    assert [(e.chosen, e.rejected) for e in kept] == [("a", "b")]
    assert issues.as_dict() == {"same_chosen_rejected": 1}


def test_offline_loader_uses_the_same_checks(tmp_path, tiny_tokenizer):
    from data_pipelines.tokenize import LengthPolicy
    from prefopt.loops.offline_data import tokenize_items

    path = write_jsonl(tmp_path / "given.jsonl", [PAIR, {**PAIR, "rejected": "a"}])
    policy = LengthPolicy(64, 32, "truncate_left")
    path = write_jsonl(tmp_path / "given.jsonl", [PAIR, {**PAIR, "rejected": "a"}, {**PAIR, "chosen": ""}])
    with pytest.raises(DataError, match=r"given.jsonl, line 3, field 'chosen': text is empty or whitespace-only"):
        tokenize_items(path, "pairwise", tiny_tokenizer, policy, None)
    items, stats = tokenize_items(path, "pairwise", tiny_tokenizer, policy, None, on_error="skip")
    assert len(items) == 1 and stats["records"] == 1
    assert stats["skipped_records"] == {"empty_text": 1, "same_chosen_rejected": 1}


def test_reward_model_loader_uses_the_same_checks(tmp_path, tiny_tokenizer):
    from reward_models.train import load_items

    path = write_jsonl(tmp_path / "given.jsonl", [RANKED, {**RANKED, "scores": [float("nan"), 1]}])
    cfg = load_config(_rm_yaml(tmp_path, path))
    with pytest.raises(DataError, match=r"given.jsonl, line 2, field 'scores\[0\]': score must be finite, got nan"):
        load_items(cfg, tiny_tokenizer, 0)
    cfg = load_config(_rm_yaml(tmp_path, path), ["data.on_error=skip"])
    items, held, stats = load_items(cfg, tiny_tokenizer, 0)
    assert (len(items), held, stats["skipped_records"]) == (1, [], {"non_finite": 1})


def _rm_yaml(tmp_path: Path, data: Path) -> Path:
    p = tmp_path / "rm.yaml"
    p.write_text(yaml.safe_dump({"kind": "rm", "rm": {"kind": "bt"}, "model": {"name": "tiny-llama"},
                                 "data": {"path": str(data), "max_length": 64, "max_prompt_length": 32},
                                 "run": {"output_dir": str(tmp_path / "rm_out"), "report_to": []}}))
    return p


def _data_cfg(tmp_path: Path, source: Path, on_error: str = "skip"):
    p = tmp_path / "data.yaml"
    p.write_text(yaml.safe_dump({"kind": "data", "output_dir": str(tmp_path / "built"),
                                 "sources": [{"path": str(source), "adapter": "pairwise", "on_error": on_error,
                                              "split": "train"}]}))
    return load_config(p)


@pytest.mark.parametrize("lines,read,skipped", [([], 0, "none"), ([{**PAIR, "rejected": "a"}, "junk"], 1,
                                                "{'malformed_json': 1, 'same_chosen_rejected': 1}")],
                         ids=["empty_build", "every_row_skipped"])
def test_empty_build_is_refused_and_keeps_the_old_build(tmp_path, lines, read, skipped):
    good = write_jsonl(tmp_path / "good.jsonl", [PAIR])
    run_build(_data_cfg(tmp_path, good))
    before = snapshot(tmp_path / "built")
    bad = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        run_build(_data_cfg(tmp_path, bad))
    assert str(info.value).startswith(f"{bad}: the build has no training records (read {read}; "
                                      f"skipped by reason: {skipped}; ")
    assert "nothing was written to" in str(info.value)
    assert unchanged(before, tmp_path / "built") == []
