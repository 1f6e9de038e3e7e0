"""Every bad-input case raises a DataError whose message names file, line and field; ``skip`` counts them.

Malformed files are generated in ``tmp_path`` (nothing is committed under tests/assets).
"""
from __future__ import annotations

import gzip
import json

import pytest

from data_pipelines.adapters import adapt
from data_pipelines.errors import Issues, RecordError
from data_pipelines.sources import read_records
from prefopt.core.errors import DataError

GOOD = {"prompt": "q", "chosen": "a", "rejected": "b"}


def _write(tmp_path, lines, name="d.jsonl") -> str:
    p = tmp_path / name
    p.write_bytes(b"".join((ln if isinstance(ln, bytes) else (json.dumps(ln) if not isinstance(ln, str) else ln)
                            .encode()) + b"\n" for ln in lines))
    return str(p)


def _error(path: str, adapter: str, options=None) -> DataError:
    with pytest.raises(DataError) as info:
        list(adapt(adapter, read_records(path), options))
    return info.value


def _run_skip(path: str, adapter: str, options=None) -> tuple[list, dict]:
    issues = Issues("skip")
    out = list(adapt(adapter, read_records(path, issues=issues), options, issues))
    return out, issues.as_dict()


def test_malformed_json_line(tmp_path):
    p = _write(tmp_path, [GOOD, '{"prompt": "q", "chosen": '])
    err = _error(p, "pairwise")
    assert str(err) == f"{p}, line 2: malformed JSON: Expecting value at column 27"
    assert (err.file, err.line, err.code) == (p, 2, "malformed_json")


def test_top_level_not_an_object(tmp_path):
    p = _write(tmp_path, [[1, 2]])
    assert str(_error(p, "pairwise")) == f"{p}, line 1: expected a JSON object, got list"


def test_missing_field(tmp_path):
    p = _write(tmp_path, [GOOD, {"prompt": "q", "chosen": "a"}])
    assert str(_error(p, "pairwise")) == f"{p}, line 2, field 'rejected': required field is missing"


def test_null_field_counts_as_missing(tmp_path):
    p = _write(tmp_path, [{"prompt": None, "chosen": "a", "rejected": "b"}])
    assert str(_error(p, "pairwise")) == f"{p}, line 1, field 'prompt': required field is missing"


def test_wrongly_typed_score(tmp_path):
    p = _write(tmp_path, [{"prompt": "q", "responses": ["a", "b"], "scores": [1, "2"]}])
    assert str(_error(p, "ranked")) == f"{p}, line 1, field 'scores[1]': expected a number, got str '2'"


def test_wrongly_typed_helpsteer_attribute(tmp_path):
    p = _write(tmp_path, [{"prompt": "q", "response": "a", "helpfulness": "3"}])
    assert str(_error(p, "helpsteer")) == f"{p}, line 1, field 'helpfulness': expected a number, got str '3'"


def test_wrongly_typed_text(tmp_path):
    p = _write(tmp_path, [{"prompt": "q", "chosen": ["a"], "rejected": "b"}])
    assert str(_error(p, "pairwise")) == f"{p}, line 1, field 'chosen': expected a string, got list ['a']"


@pytest.mark.parametrize("value", ["", "  \n\t "])
def test_empty_text(tmp_path, value):
    p = _write(tmp_path, [{"prompt": "q", "chosen": value, "rejected": "b"}])
    assert str(_error(p, "pairwise")) == f"{p}, line 1, field 'chosen': text is empty or whitespace-only"


def test_empty_final_hh_reply(tmp_path):
    p = _write(tmp_path, [{"chosen": "\n\nHuman: hi\n\nAssistant:", "rejected": "\n\nHuman: hi\n\nAssistant: yo"}])
    assert str(_error(p, "hh_rlhf")) == f"{p}, line 1, field 'chosen': text is empty or whitespace-only"


def test_chosen_equals_rejected(tmp_path):
    p = _write(tmp_path, [{"prompt": "q", "chosen": "same", "rejected": "same"}])
    assert str(_error(p, "pairwise")) == f"{p}, line 1, field 'rejected': chosen and rejected are identical"


def test_hh_prompt_mismatch_and_bad_transcript(tmp_path):
    p = _write(tmp_path, [{"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: ho\n\nAssistant: b"}])
    assert str(_error(p, "hh_rlhf")) == (f"{p}, line 1, field 'rejected': chosen and rejected differ before "
                                         "the final reply (turn 1)")
    p = _write(tmp_path, [{"chosen": "Human: hi Assistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}])
    assert str(_error(p, "hh_rlhf")) == (f"{p}, line 1, field 'chosen': expected a dialogue starting with "
                                         "'\\n\\nHuman:'")


def test_ranked_list_of_one(tmp_path):
    p = _write(tmp_path, [{"prompt": "q", "responses": ["a"], "scores": [1]}])
    assert str(_error(p, "ranked")) == (f"{p}, line 1, field 'responses': a ranked list needs at least 2 "
                                        "responses, got 1")


def test_helpsteer_prompt_with_one_response(tmp_path):
    rows = [{"prompt": "p1", "response": "a", "helpfulness": 3}, {"prompt": "p2", "response": "b", "helpfulness": 1},
            {"prompt": "p1", "response": "c", "helpfulness": 2}]
    p = _write(tmp_path, rows)
    assert str(_error(p, "helpsteer")) == (f"{p}, line 2, field 'prompt': prompt has only one response "
                                           "(a ranked list of one)")


def test_truncated_gzip_names_last_good_line(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    rows = [{"prompt": f"question number {i}", "chosen": "a" * 50, "rejected": f"b{i}"} for i in range(2000)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    p.write_bytes(data[: len(data) // 2])
    seen = []
    with pytest.raises(DataError) as info:
        for rec in read_records(str(p)):
            seen.append(rec.line)
    last = seen[-1]
    assert 0 < last < 2000
    assert str(info.value).startswith(f"{p}, line {last + 1}: gzip stream is truncated or corrupt; "
                                      f"last good line is {last} (")
    assert info.value.file == str(p)


def test_not_gzip_at_all(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    p.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(DataError, match=r"d.jsonl.gz, line 1: gzip stream is truncated or corrupt; last good line is 0"):
        list(read_records(str(p)))


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    p = _write(tmp_path, [GOOD, b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'])
    assert str(_error(p, "pairwise")) == f"{p}, line 2: bytes that are not UTF-8 at byte 15 of the line (b'\\xe9\", ')"


def test_non_utf8_bytes_in_json_file(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(b'[\n{"prompt": "q", "chosen": "a", "rejected": "b"},\n{"prompt": "\xff"}\n]')
    with pytest.raises(DataError) as info:
        list(read_records(str(p)))
    assert str(info.value) == f"{p}, line 3: bytes that are not UTF-8"


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_score(tmp_path, bad):
    p = _write(tmp_path, ['{"prompt": "q", "responses": ["a", "b"], "scores": [1, %s]}' % bad])
    assert str(_error(p, "ranked")) == f"{p}, line 1, field 'scores[1]': score must be finite, got {float(bad)!r}"


def test_non_finite_margin(tmp_path):
    p = _write(tmp_path, ['{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}'])
    assert str(_error(p, "pairwise")) == f"{p}, line 1, field 'margin': score must be finite, got nan"


def test_duplicate_ids(tmp_path):
    p = _write(tmp_path, [{**GOOD, "id": "x"}, {**GOOD, "id": "y"}, {**GOOD, "chosen": "c", "id": "x"}])
    assert str(_error(p, "pairwise")) == f"{p}, line 3, field 'id': duplicate id 'x' (first seen on line 1)"


def test_rewardbench_ids_are_keyed_with_subset(tmp_path):
    row = {"id": 7, "subset": "s1", "prompt": "q", "chosen": "a", "rejected": "b"}
    p = _write(tmp_path, [row, {**row, "subset": "s2"}])
    assert [e.id for e in adapt("rewardbench", read_records(p))] == ["s1:7", "s2:7"]
    p = _write(tmp_path, [row, {**row, "subset": "s2"}, row])
    assert str(_error(p, "rewardbench")) == f"{p}, line 3, field 'id': duplicate id ('7', 's1') (first seen on line 1)"


def test_bad_message_list(tmp_path):
    p = _write(tmp_path, [{"prompt": [{"role": "user", "content": "q"}, {"role": "bot", "content": "x"}],
                           "chosen": "a", "rejected": "b"}])
    assert str(_error(p, "pairwise")) == (f"{p}, line 1, field 'prompt[1].role': unknown role 'bot'; expected "
                                          "one of ('system', 'user', 'assistant')")


def test_skip_counts_every_reason(tmp_path):
    lines = [
        GOOD,                                                            # kept
        '{"prompt": "q", "chosen": ',                                    # malformed_json
        b'{"prompt": "\xff"}',                                           # bad_encoding
        "[1]",                                                           # not_an_object
        {"prompt": "q", "chosen": "a"},                                  # missing_field
        {"prompt": "q", "chosen": 3, "rejected": "b"},                   # wrong_type
        {"prompt": " ", "chosen": "a", "rejected": "b"},                 # empty_text
        {"prompt": "q", "chosen": "a", "rejected": "a"},                 # same_chosen_rejected
        '{"prompt": "q", "chosen": "a", "rejected": "c", "margin": NaN}',  # non_finite
        {**GOOD, "id": "d"}, {**GOOD, "rejected": "e", "id": "d"},       # kept + duplicate_id
    ]
    out, skipped = _run_skip(_write(tmp_path, lines), "pairwise")
    assert len(out) == 2
    assert skipped == {"bad_encoding": 1, "duplicate_id": 1, "empty_text": 1, "malformed_json": 1,
                       "missing_field": 1, "non_finite": 1, "not_an_object": 1, "same_chosen_rejected": 1,
                       "wrong_type": 1}


def test_skip_counts_ranked_list_of_one_in_helpsteer(tmp_path):
    rows = [{"prompt": "p1", "response": "a", "helpfulness": 3}, {"prompt": "p2", "response": "b", "helpfulness": 1},
            {"prompt": "p1", "response": "c", "helpfulness": 2}, {"prompt": "p3", "response": "d", "helpfulness": "x"},
            {"prompt": "p3", "response": "e", "helpfulness": 1}]
    out, skipped = _run_skip(_write(tmp_path, rows), "helpsteer")
    assert [e.responses for e in out] == [["a", "c"]]
    assert skipped == {"ranked_list_of_one": 2, "wrong_type": 1}


def test_truncated_gzip_is_not_skippable(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps({**GOOD, "chosen": f"a{i}"}).encode() + b"\n" for i in range(3000)))
    p.write_bytes(data[:-40])
    with pytest.raises(DataError, match="gzip stream is truncated or corrupt"):
        _run_skip(str(p), "pairwise")


def test_unknown_adapter_option_is_a_config_error(tmp_path):
    from prefopt.core.errors import ConfigError

    p = _write(tmp_path, [{"prompt": "q", "response": "a", "helpfulness": 3}])
    with pytest.raises(ConfigError, match=r"adapter 'helpsteer': unknown config key 'options.scor' \(did you mean 'score'\?\)"):
        list(adapt("helpsteer", read_records(p), {"scor": "x"}))


def test_record_error_is_a_data_error():
    err = RecordError("missing_field", "required field is missing", file="f.jsonl", line=3, field="x")
    assert isinstance(err, DataError) and str(err) == "f.jsonl, line 3, field 'x': required field is missing"
