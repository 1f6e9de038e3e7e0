"""DeepSpeed ZeRO-2 / ZeRO-3 with 2 CPU processes through the project's own entry point:
``deepspeed --num_gpus 2 $(which prefopt) train cfg.yaml backend.kind=deepspeed backend.zero_stage=N``.

The same global batch of 4 pairs (single process: batch_size 4; 2 processes x batch_size 2 - rank r
takes pairs [2r, 2r+2) of each global batch) gives the same first-step loss, reward margin and
gradient norm (1e-5), and the second step (after one optimizer update) agrees too. The first launch
on a fresh machine JIT-builds DeepSpeed's shm comm op (~2 min).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from offline_helpers import make_cfg, pair_records, train_rows, write_set


def _launch(cfg_path: Path, zero: int, out: Path) -> subprocess.CompletedProcess:
    prefopt = shutil.which("prefopt") or str(Path(sys.executable).parent / "prefopt")
    deepspeed = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [deepspeed, "--num_gpus", "2", "--master_port", str(29500 + zero), prefopt, "train", str(cfg_path),
           "backend.kind=deepspeed", f"backend.zero_stage={zero}", f"run.output_dir={out}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("zero", [2, 3])
def test_two_process_zero_matches_single_process(tmp_path, zero):
    from prefopt.core.config import to_dict
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", pair_records(8))
    run_offline(make_cfg(data, tmp_path / "single", batch_size=4, max_steps=2))
    cfg = make_cfg(data, tmp_path / "ds", batch_size=2, max_steps=2)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({"kind": "train", **to_dict(cfg)}))
    proc = _launch(cfg_path, zero, tmp_path / "ds")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single, dist = train_rows(tmp_path / "single"), train_rows(tmp_path / "ds")
    assert len(single) == len(dist) == 2
    for k in ("loss", "rewards/margins", "logps/chosen", "optim/grad_norm"):
        assert dist[0][k] == pytest.approx(single[0][k], abs=1e-5, rel=1e-5), k
    assert dist[1]["loss"] == pytest.approx(single[1]["loss"], abs=1e-4)
    assert (tmp_path / "ds" / "final" / "model.safetensors").exists()
    assert (tmp_path / "ds" / "summary.json").exists()
