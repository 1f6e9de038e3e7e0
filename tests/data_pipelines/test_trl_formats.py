"""TRL preference rows (standard / conversational, explicit / implicit prompt) load straight from data.path,
validated by the same adapters (and with the same error text) as ``prefopt data build``."""
from __future__ import annotations

import json

import pytest

from data_pipelines.adapters import adapt
from data_pipelines.errors import RecordError
from data_pipelines.sources import load_examples, read_records
from data_pipelines.trl_formats import detect_trl

USER = {"role": "user", "content": "What color is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}
ROWS = {  # TRL's documented examples of each preference format
    "standard_explicit": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    "standard_implicit": {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    "conversational_explicit": {"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]},
    "conversational_implicit": {"chosen": [USER, BLUE], "rejected": [USER, GREEN]},
}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_each_trl_format_becomes_a_pairwise_record(fmt, tmp_path):
    f = _write(tmp_path / f"{fmt}.jsonl", [ROWS[fmt]] * 2)
    ex = load_examples(f)
    assert len(ex) == 2
    if fmt.startswith("conversational"):
        assert ex[0].prompt == [USER] and (ex[0].chosen, ex[0].rejected) == ("It is blue.", "It is green.")
    elif fmt == "standard_explicit":
        assert ex[0].prompt == [{"role": "user", "content": "The sky is"}]
        assert (ex[0].chosen, ex[0].rejected) == (" blue.", " green.")
    else:  # implicit: the common prefix cut back to a whitespace boundary is the prompt
        assert ex[0].prompt == [{"role": "user", "content": "The sky is "}]
        assert (ex[0].chosen, ex[0].rejected) == ("blue.", "green.")
    assert ex[0].source == detect_trl(ROWS[fmt]) and ex[0].id != ex[1].id


def test_built_prefopt_records_are_not_converted():
    assert detect_trl({"id": "a", "source": "hh_rlhf", "prompt": "x", "chosen": "y", "rejected": "z"}) is None
    assert detect_trl({"prompt": "x"}) is None


def test_bad_row_has_the_data_build_message(tmp_path):
    bad = {"prompt": [USER], "chosen": [USER, BLUE], "rejected": [GREEN]}
    f = _write(tmp_path / "bad.jsonl", [ROWS["conversational_explicit"], bad])
    with pytest.raises(RecordError) as built:  # what `prefopt data build` (adapter trl_conversational) says
        list(adapt("trl_conversational", read_records(str(f)), source="trl_conversational"))
    with pytest.raises(RecordError) as loaded:
        load_examples(f)
    assert str(loaded.value) == str(built.value)
    assert "bad.jsonl" in str(loaded.value) and "line 2" in str(loaded.value) and "chosen" in str(loaded.value)


def test_trl_rows_cannot_feed_a_ranked_loader(tmp_path):
    from prefopt.core.errors import DataError

    f = _write(tmp_path / "t.jsonl", [ROWS["standard_explicit"]])
    with pytest.raises(DataError, match="TRL preference rows give pairwise records, but ranked"):
        load_examples(f, "ranked")
