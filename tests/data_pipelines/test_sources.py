"""Readers: every format yields the same records with (file, 1-based line); hub specs; loading built files."""
from __future__ import annotations

import gzip
import json
import sys
import types

import pytest

from data_pipelines.schemas import PairwiseExample, RankedExample
from data_pipelines.sources import detect_format, infer_kind, load_examples, parse_hf_spec, read_records
from prefopt.core.errors import DataError

ROWS = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "z", "rejected": "w"}]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _datas(path, **kw):
    return [(r.data, r.line) for r in read_records(str(path), **kw)]


def test_jsonl_lines_are_one_based_and_blank_lines_count(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    assert _datas(p) == [(ROWS[0], 1), (ROWS[1], 3)]
    assert {r.file for r in read_records(str(p))} == {str(p)}


def test_jsonl_gz_same_records(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write(_jsonl(ROWS))
    assert _datas(p) == [(ROWS[0], 1), (ROWS[1], 2)]


def test_json_array_and_object_of_lists(tmp_path):
    arr, cols = tmp_path / "a.json", tmp_path / "c.json"
    arr.write_text(json.dumps(ROWS))
    cols.write_text(json.dumps({k: [r[k] for r in ROWS] for k in ROWS[0]}))
    assert _datas(arr) == _datas(cols) == [(ROWS[0], 1), (ROWS[1], 2)]


def test_json_object_of_lists_with_ragged_columns_fails(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"prompt": ["a", "b"], "chosen": ["x"]}))
    with pytest.raises(DataError, match=r"c.json: object-of-lists has columns of different lengths"):
        list(read_records(str(p)))


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    assert _datas(p) == [(ROWS[0], 1), (ROWS[1], 2)]


def test_max_records_stops_early(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(_jsonl(ROWS * 5))
    assert len(_datas(p, max_records=3)) == 3
    assert len(_datas(p, max_records=0)) == 0


def test_missing_file_names_the_path_and_cwd(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope.jsonl \(relative paths resolve against"):
        list(read_records(str(tmp_path / "nope.jsonl")))


def test_format_detection():
    assert detect_format("x/y.jsonl.gz") == "jsonl"
    assert detect_format("y.JSON") == "json"
    assert detect_format("y.parquet") == "parquet"
    assert detect_format("hf:org/name@test") == "hf"
    with pytest.raises(DataError, match="cannot tell the format of 'y.csv'"):
        detect_format("y.csv")


def test_hf_spec_parsing():
    assert parse_hf_spec("hf:Anthropic/hh-rlhf@test") == ("Anthropic/hh-rlhf", None, "test")
    assert parse_hf_spec("hf:allenai/reward-bench:default@filtered") == ("allenai/reward-bench", "default", "filtered")
    assert parse_hf_spec("hf:org/x") == ("org/x", None, "train")
    with pytest.raises(DataError, match="empty dataset name"):
        parse_hf_spec("hf:@train")


def test_hf_reader_calls_load_dataset_lazily(monkeypatch):
    """No network: a fake ``datasets`` module records the call and returns rows."""
    calls = []
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, config, split: calls.append((name, config, split)) or ROWS
    monkeypatch.setitem(sys.modules, "datasets", fake)
    recs = list(read_records("hf:org/prefs:cfg@test"))
    assert calls == [("org/prefs", "cfg", "test")]
    assert [(r.data, r.file, r.line) for r in recs] == [(ROWS[0], "hf:org/prefs:cfg@test", 1),
                                                          (ROWS[1], "hf:org/prefs:cfg@test", 2)]


def test_load_examples_round_trip(tmp_path):
    pair = PairwiseExample(prompt=[{"role": "user", "content": "q"}], chosen="a", rejected="b", margin=1.0,
                           id="1", source="s", meta={"stage": 2})
    ranked = RankedExample(prompt=[{"role": "user", "content": "q"}], responses=["a", "b"], scores=[2.0, 1.0])
    p = tmp_path / "train.jsonl"
    p.write_text(_jsonl([pair.to_record(), ranked.to_record()]))
    assert load_examples(p) == [pair, ranked]
    assert infer_kind(pair.to_record()) == "pairwise" and infer_kind(ranked.to_record()) == "ranked"
    with pytest.raises(DataError, match=r"train.jsonl, line 2, field 'chosen': required field is missing"):
        load_examples(p, kind="pairwise")


@pytest.mark.parametrize("meta", [{"annotator_id": "a"}, {"annotator_id": -1}, {"stage": 1.5}, {"stage": True}])
def test_integer_meta_fields_are_checked(tmp_path, meta):
    """Curry-DPO's ``meta.stage`` and LCPO's ``meta.annotator_id`` are read as integers by the loops."""
    p = tmp_path / "train.jsonl"
    row = {"prompt": "q", "chosen": "a", "rejected": "b", "meta": {"stage": 1}}
    p.write_text(_jsonl([row, {**row, "meta": meta}]))
    key = next(iter(meta))
    with pytest.raises(DataError, match=rf"train.jsonl, line 2, field 'meta.{key}': .*non-negative integer"):
        load_examples(p, kind="pairwise")


def test_json_file_errors_name_file_and_line(tmp_path):
    scalar, broken, corrupt = tmp_path / "s.json", tmp_path / "b.json", tmp_path / "c.parquet"
    scalar.write_text("3")
    broken.write_text('[\n{"prompt": "a"},\n{"prompt": }\n]')
    corrupt.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"s.json: top level must be a JSON array of objects or an object of"):
        list(read_records(str(scalar)))
    with pytest.raises(DataError) as info:
        list(read_records(str(broken)))
    assert str(info.value) == f"{broken}, line 3: malformed JSON: Expecting value at column 12"
    with pytest.raises(DataError, match=r"c.parquet: cannot read parquet file"):
        list(read_records(str(corrupt)))
