"""``scripts/gpu_check.sh --dry-run``: the GPU check's code paths on CPU with tiny sizes.

Runs the script itself in a fresh process (so the check that TRL, datasets, DeepSpeed and vLLM are
never imported is about the check's own imports) and asserts the JSON: every section present, CPU vs
CPU "equality" exact (0 difference: same device, same code, same inputs), the shared-prompt block
mask within 1e-4 of the padded rows at fp32, the head path within bf16 rounding of the full logits,
and throughput entries with positive times and MFU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["dry_run"] is True and d["passed"] is True and d["environment"]["device"] == "cpu"
    assert d["forbidden_modules_imported"] == []
    sec = d["sections"]
    assert set(sec) == {"equality", "block_mask", "lm_head", "tiled_mlp", "throughput"}
    for model in ("tiny", "smollm2_135m"):
        for kind in ("dpo", "rm", "grpo"):
            r = sec["equality"][model][kind]
            assert r["passed"] and r["loss_abs_diff"] == 0.0 and r["grad_norm_rel_diff"] == 0.0, (model, kind)
            assert len(r["cpu"]) == 2 and r["cpu"][0]["grad_norm"] > 0
        # the two optimizer steps changed the model: the second DPO loss differs from the first
        assert sec["equality"][model]["dpo"]["cpu"][0]["loss"] != sec["equality"][model]["dpo"]["cpu"][1]["loss"]
    assert "2 of 30 layers" in sec["equality"]["smollm2_135m"]["weights"]
    for part in ("pairs", "groups"):
        b = sec["block_mask"][part]
        assert b["shared_vs_padded_fp32_max_abs"] < 1e-4 and b["device_vs_cpu_fp32_max_abs"] == 0.0
        assert b["shared_vs_padded_bf16_max_abs"] < 0.1
    assert sec["lm_head"]["seq_logp_max_abs_diff"] <= 0.1 and sec["lm_head"]["grad_cosine"] > 0.99
    tiled = sec["tiled_mlp"]
    assert tiled["fp32"]["seq_logp_max_abs_diff"] < 1e-5 and tiled["fp32"]["grad_cosine"] > 0.999999
    assert tiled["bf16"]["passed"] and tiled["passed"]
    tp = sec["throughput"]
    assert tp["trl"].startswith("skipped")
    assert tp["matmul_peak_bf16_gflops"]["start"] > 0
    for kind in ("dpo", "rm", "grpo"):
        shared, padded = tp[f"{kind}[shared_prompt]"], tp[f"{kind}[padded]"]
        assert shared["tokens_per_step"] == padded["tokens_per_step"] == padded["model_tokens_per_step"]
        assert shared["model_tokens_per_step"] < shared["tokens_per_step"]  # each prompt once
        for r in (shared, padded):
            assert r["s_per_step"] > 0 and 0 < r["mfu"] and len(r["losses"]) == 3
        # same start, same data: the first losses agree across layouts
        assert abs(shared["losses"][0] - padded["losses"][0]) < 0.05, kind


def test_compare_flags_a_difference():
    """The equality verdict fails when a loss or a grad norm moves beyond its tolerance."""
    from benchmarks.gpu_check import GRAD_REL_TOL, LOSS_TOL, _compare

    a = [{"loss": 0.7, "grad_norm": 2.0}, {"loss": 0.6, "grad_norm": 1.0}]
    assert _compare(a, [dict(x) for x in a])["passed"]
    worse_loss = [a[0], {"loss": 0.6 + 3 * LOSS_TOL, "grad_norm": 1.0}]
    r = _compare(a, worse_loss)
    assert not r["passed"] and abs(r["loss_abs_diff"] - 3 * LOSS_TOL) < 1e-9
    worse_grad = [a[0], {"loss": 0.6, "grad_norm": 1.0 * (1 + 2 * GRAD_REL_TOL)}]
    r = _compare(a, worse_grad)
    assert not r["passed"] and abs(r["grad_norm_rel_diff"] - 2 * GRAD_REL_TOL) < 1e-9
