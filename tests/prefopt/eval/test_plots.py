"""PNG charts: files are written atomically, headless, and carry the benchmark label."""
from __future__ import annotations

import json

from prefopt.eval import alpacaeval_metrics as ae
from prefopt.eval import plots
from prefopt.eval import rewardbench_metrics as rb

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_rewardbench_png(shared_data, tmp_path):
    path = shared_data / "reward-bench" / "reward_bench_filtered.dev10per_subset.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    scored = [{"id": r["id"], "subset": r["subset"], "chosen_score": len(r["chosen"]),
               "rejected_score": len(r["rejected"])} for r in rows]
    res = rb.score_rewardbench(scored, metadata={"model": "pick-longer"})
    out = plots.plot_rewardbench(res, tmp_path / "figs" / "rb.png")
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
    assert not list(out.parent.glob(".*.tmp"))
    # A partial result (one section only) still plots.
    part = rb.score_rewardbench([{"id": 1, "subset": "hep-go", "correct": 1}])
    assert plots.plot_rewardbench(part, tmp_path / "part.png").read_bytes()[:8] == PNG_MAGIC


def test_alpacaeval_leaderboard_png(shared_data, tmp_path):
    ann_dir = shared_data / "alpaca-eval" / "annotations_weighted_alpaca_eval_gpt4_turbo"
    results = {m: ae.alpacaeval_metrics(ae.load_annotations(ann_dir / f"{m}.jsonl.gz"), compute_lc=False)
               for m in ("alpaca-7b", "oasst-sft-pythia-12b")}
    results["toy (local judge)"] = {"win_rate": 61.0, "standard_error": 1.7, "length_controlled_winrate": 55.0,
                                    "lc_standard_error": 0.4, "benchmark": "AlpacaEval-style"}
    out = plots.plot_alpacaeval_leaderboard(results, tmp_path / "ae.png")
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
