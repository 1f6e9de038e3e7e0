"""`prefopt report`: markdown rendered by a library (real tables), images embedded, a headline first,
the reward-model curve panel drawn from `loss`, and a useful report for one training folder."""
from __future__ import annotations

import json
import re

import pytest

from prefopt.core.errors import DataError
from prefopt.report import build_report


def _rm_folder(path):
    path.mkdir(parents=True)
    rows = [{"step": s, "loss": 0.7 - 0.1 * s, "accuracy": 0.5 + 0.1 * s} for s in range(1, 4)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps({"kind": "bt", "steps": 3,
                                                   "final_eval": {"eval/accuracy": 0.8125}}))
    return path


def test_single_training_folder_report_has_headline_table_curves(tmp_path):
    run = _rm_folder(tmp_path / "rm_tiny")
    md_path, page_path = build_report(run, tmp_path / "out")
    md, page = md_path.read_text(), page_path.read_text()
    assert md.index("## Headline") < md.index("## rm_tiny: training")
    assert "held-out accuracy 0.812" in md
    imgs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(imgs) == 1 and imgs[0].startswith("data:image/png;base64,")  # loss+accuracy panel embedded
    assert "<pre>" not in page.split("<body>")[1].split("<h2>config")[0]  # rendered, not raw text
    assert "**" not in page and "http" not in page.split("<body>")[1]  # no raw markdown, no CDN


def test_headline_json_comes_first_and_tables_render(tmp_path):
    run = tmp_path / "pipe"
    run.mkdir()
    (run / "headline.json").write_text(json.dumps({
        "win_rate": 62.5, "ci_low": 51.0, "ci_high": 73.0, "n": 64, "judge": "BT reward model",
        "judge_agreement": 0.81, "trained": "DPO on SmolLM2-135M (LoRA)", "rewardbench": {"Chat": 0.7}}))
    rb = run / "rewardbench"
    rb.mkdir()
    (rb / "results.json").write_text(json.dumps({"sections": {"Chat": 0.7, "Safety": None}, "score": 0.7}))
    md_path, page_path = build_report(run, run / "report")
    md, page = md_path.read_text(), page_path.read_text()
    first = md.split("## ")[1]
    assert first.startswith("Headline") and "**Win rate 62.5%** (95% CI 51.0-73.0, n = 64)" in first
    assert "judge agreement with the reference labels 0.81" in first and "DPO on SmolLM2-135M (LoRA)" in first
    assert "<strong>Win rate 62.5%</strong>" in page
    assert "<table>" in page and "<td>Chat</td>" in page and "<td>70.0</td>" in page


def test_incomplete_headline_json_names_the_missing_keys(tmp_path):
    run = tmp_path / "pipe"
    run.mkdir()
    (run / "headline.json").write_text(json.dumps({"win_rate": 50.0}))
    with pytest.raises(DataError, match=r"headline.json lacks \['ci_low', 'ci_high', 'n', 'judge'"):
        build_report(run, run / "report")


def test_quickstart_headline_fractions_and_nested_agreement(tmp_path):
    """The quickstart writes fractions and a judge-agreement dict: 0.5 -> 50.0 %, CI 0.17-0.83 -> 17.0-83.0."""
    from prefopt.report_headline import from_file

    lines = from_file({"win_rate": 0.5, "ci_low": 0.17, "ci_high": 0.83, "n": 5, "judge": "rm:bt:final",
                       "judge_agreement": {"agreement": 0.75, "ci_low": 0.3, "ci_high": 0.95, "n": 4},
                       "rewardbench": {"score": 0.609, "sections": {"Chat": 0.642}, "n": None},
                       "bon": {"ns": [1, 2], "curve": [{"n": 1}]}}, tmp_path / "headline.json")
    text = "\n".join(lines)
    assert "**Win rate 50.0%** (95% CI 17.0-83.0, n = 5), judged by rm:bt:final" in text
    assert "labels 0.75 (95% CI 0.30-0.95, n = 4)" in text
    assert "- **rewardbench**: score 0.609, sections (Chat 0.642)" in text and "bon" not in text


def test_rewardbench2_folder_gets_a_subset_table(tmp_path):
    from prefopt.eval.headline import _rewardbench

    res = {"model": "m", "model_type": "bt", "chat_template": "tokenizer", "Factuality": 0.5, "Ties": 0.25,
           "benchmark": "rewardbench-v2", "score": 0.375,
           "subsets": {"Factuality": {"score": 0.5, "n": 2}, "Ties": {"score": 0.25, "n": 4}}}
    rb = tmp_path / "rewardbench2"
    rb.mkdir()
    (rb / "results.json").write_text(json.dumps(res))
    md_path, _ = build_report(rb, tmp_path / "out")
    md = md_path.read_text()
    assert "| Factuality | 50.0 |" in md and "| Ties | 25.0 |" in md and "| **overall** | **37.5** |" in md
    assert _rewardbench(res)["sections"] == {"Factuality": 0.5, "Ties": 0.25}
