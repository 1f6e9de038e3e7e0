"""A run that does not use DeepSpeed prints none of DeepSpeed's start-up warnings (even though saving with
transformers imports the installed ``deepspeed`` package)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WARNING = "Setting accelerator to CPU"


def test_full_weight_run_without_deepspeed_prints_no_deepspeed_warning(tmp_path):
    pytest.importorskip("deepspeed")
    import torch

    if torch.cuda.is_available():
        pytest.skip("DeepSpeed only warns when it finds no GPU")
    from data_pipelines.schemas import PairwiseExample

    env = {**os.environ, "PREFOPT_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    raw = subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True, text=True, env=env)
    assert WARNING in raw.stdout + raw.stderr  # the import itself warns: the check below can fail
    data = tmp_path / "data"
    data.mkdir()
    recs = [PairwiseExample(prompt=[{"role": "user", "content": f"say {i}"}], chosen=f"yes {i}", rejected=f"no {i}",
                            id=f"p{i}", source="t").to_record() for i in range(4)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(yaml.safe_dump({
        "kind": "train", "algorithm": "dpo", "model": {"name": "tiny-llama"},
        "data": {"path": str(data), "max_length": 128, "max_prompt_length": 96, "max_eval_examples": 0},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0}, "batch_size": 2, "epochs": 1,
        "run": {"output_dir": str(tmp_path / "run"), "seed": 0, "report_to": []}}))
    code = ("import sys; from prefopt.cli import main; rc = main(['train', sys.argv[1]]); "
            "print('deepspeed imported:', 'deepspeed' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()  # saved through transformers
    assert "deepspeed imported: True" in proc.stdout  # the save did import it ...
    assert WARNING not in proc.stdout + proc.stderr   # ... and it stayed quiet
