"""Bad-input corpus, output folders (issue 17 items 1, 2, 8, 11, 14, 16): run fingerprints, folder locks,
unwritable folders, metrics after a resume, corrupt checkpoints, file modes.

Every case asserts the error class and message and that earlier outputs are unchanged.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from corpus import earlier_outputs, snapshot, unchanged

from prefopt.core.checkpoint import latest_checkpoint
from prefopt.core.errors import ConfigError, OutputError
from prefopt.core.io import atomic_write_json, atomic_write_text
from prefopt.core.logging import MetricLogger, read_metrics
from prefopt.core.rundir import (
    FINGERPRINT_NAME,
    LOCK_NAME,
    FolderBusyError,
    RunMismatchError,
    check_fingerprint,
    config_fingerprint,
    guarded_folder,
    run_lock,
)

DPO = {"algorithm": "dpo", "optim": {"lr": 1e-3}, "run": {"output_dir": "x", "log_every": 1}, "data": {"path": ""}}


def _fp(**changes) -> dict:
    cfg = json.loads(json.dumps(DPO))
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return config_fingerprint(cfg)


@pytest.mark.parametrize("changes,shown", [
    ({"algorithm": "ipo"}, "config.algorithm: 'dpo' -> 'ipo'"),
    ({"optim__lr": 1e-4}, "config.optim.lr: 0.001 -> 0.0001"),
], ids=["other_algorithm", "other_lr"])
def test_a_different_run_is_refused(tmp_path, changes, shown):
    out = earlier_outputs(tmp_path / "run")
    check_fingerprint(out, _fp())
    before = snapshot(tmp_path)
    with pytest.raises(RunMismatchError) as info:
        check_fingerprint(out, _fp(**changes))
    assert str(info.value) == (f"{out} holds a different run ({shown}); use a new output folder, or pass "
                               "--overwrite to move the old one aside and start afresh")
    assert isinstance(info.value, ConfigError) and unchanged(before, tmp_path) == []


def test_resume_neutral_keys_and_same_fingerprint_resume(tmp_path):
    out = earlier_outputs(tmp_path / "run")
    check_fingerprint(out, _fp())
    before = snapshot(out)
    check_fingerprint(out, _fp(run__log_every=5, run__output_dir="elsewhere"))  # logging: resume-neutral
    assert snapshot(out) == before


def test_data_content_is_part_of_the_fingerprint(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    out = earlier_outputs(tmp_path / "run")
    check_fingerprint(out, _fp(data__path=str(data)))
    data.write_text('{"prompt": "q", "chosen": "A", "rejected": "b"}\n')
    with pytest.raises(RunMismatchError, match=r"holds a different run \(inputs.data.path: '[0-9a-f]{64}' -> "):
        check_fingerprint(out, _fp(data__path=str(data)))


def test_overwrite_moves_the_old_run_aside(tmp_path):
    out = earlier_outputs(tmp_path / "run")
    check_fingerprint(out, _fp())
    before = snapshot(out)
    check_fingerprint(out, _fp(algorithm="ipo"), overwrite=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before  # nothing lost: byte-identical, moved aside
    assert sorted(p.name for p in out.iterdir()) == [FINGERPRINT_NAME]
    assert json.loads((out / FINGERPRINT_NAME).read_text())["fingerprint"]["config.algorithm"] == "ipo"


HOLDER = textwrap.dedent("""
    import sys
    from prefopt.core.rundir import run_lock
    with run_lock(sys.argv[1], "prefopt train holder.yaml"):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def test_a_second_process_fails_at_once_naming_the_holder(tmp_path):
    out = earlier_outputs(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "RANK": "0"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(tmp_path)
        with pytest.raises(FolderBusyError) as info:
            with run_lock(out, "prefopt train second.yaml"):
                pass
        msg = str(info.value)
        assert msg.startswith(f"output folder {out} is in use by another run (pid {holder.pid} on ")
        assert "'prefopt train holder.yaml', since " in msg and msg.endswith(
            "wait for it to finish or choose another output folder")
        assert unchanged(before, tmp_path) == []
    finally:
        holder.communicate("\n")
    with run_lock(out):  # the holder exited: the folder is free again
        pass


@pytest.mark.parametrize("argv", [
    ["train", "{repo}/configs/dpo/tiny.yaml", "run.output_dir={out}"],
    ["eval", "rewardbench", "--model", "m", "--out", "{out}"],
    ["eval", "alpacaeval", "--model-outputs", "none.json", "--out", "{out}"],
    ["run", "{repo}/configs/quickstart.yaml", "output_dir={out}"],
    ["eval", "bon", "--data", "x.jsonl", "--model", "m", "--out", "{out}"],
    ["eval", "judge-agreement", "--data", "x.jsonl", "--judge", "rm", "--out", "{out}"],
    ["eval", "head2head", "--prompts", "x.jsonl", "--judge", "rm", "--out", "{out}"],
], ids=["train", "eval_rewardbench", "eval_alpacaeval", "run", "eval_bon", "eval_judge_agreement",
        "eval_head2head"])
def test_every_command_refuses_a_folder_in_use(tmp_path, capsys, argv):
    from prefopt.cli import main

    out = earlier_outputs(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "RANK": "0"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(tmp_path)
        repo = str(Path(__file__).resolve().parents[2])
        assert main([a.replace("{out}", str(out)).replace("{repo}", repo) for a in argv]) == 2
        err = capsys.readouterr().err
        assert f"error: output folder {out} is in use by another run (pid {holder.pid} on " in err
        assert unchanged(before, tmp_path) == []
    finally:
        holder.communicate("\n")


def test_a_stale_lock_from_a_killed_process_does_not_block(tmp_path):
    out = earlier_outputs(tmp_path / "run")
    (out / LOCK_NAME).write_text("pid 999999 on gone-host, 'prefopt train', since yesterday\n")
    with run_lock(out, "prefopt train again") as path:
        assert "prefopt train again" in (path / LOCK_NAME).read_text()


def test_lock_on_an_impossible_folder_names_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=rf"cannot write {blocker}/run: .*; files written before are kept"):
        with guarded_folder(blocker / "run", None):
            pass
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("code,why", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "the file system is "
                                      "read-only"), (errno.EACCES, "permission denied")],
                         ids=["disk_full", "read_only", "unwritable"])
def test_failed_writes_name_the_path_and_keep_the_old_file(tmp_path, monkeypatch, code, why):
    out = earlier_outputs(tmp_path / "run")
    before = snapshot(tmp_path)

    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("prefopt.core.io.os.replace", fail)
    with pytest.raises(OutputError) as info:
        atomic_write_json(out / "results.json", {"accuracy": 0.1})
    assert str(info.value) == f"cannot write {out / 'results.json'}: {why}; files written before are kept unchanged"
    assert unchanged(before, tmp_path) == [] and not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_atomic_writes_are_readable_like_other_files(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "a.txt").stat().st_mode & 0o777) == "0o644"


def test_metrics_do_not_repeat_steps_after_a_resume(tmp_path):
    with MetricLogger(tmp_path, report_to=(), print_every=0) as log:
        for step in range(1, 7):
            log.log({"loss": float(step)}, step)
    with MetricLogger(tmp_path, report_to=(), print_every=0) as log:  # resumed from step 4
        assert log.rewind(4) == 2
        for step in (5, 6):
            log.log({"loss": 10.0 + step}, step)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 15.0, 16.0]


def test_corrupt_newest_checkpoint_falls_back_and_is_kept_aside(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (2, 4):
        ck = folder / f"step-{step:06d}"
        ck.mkdir(parents=True)
        (ck / "state.json").write_text(json.dumps({"step": step}))
        import hashlib

        digest = hashlib.sha256((ck / "state.json").read_bytes()).hexdigest()
        (ck / "MANIFEST.json").write_text(json.dumps({"state.json": digest}))
    (folder / "step-000004" / "state.json").write_text('{"step": 5}')
    with pytest.warns(UserWarning, match=r"step-000004 is corrupt: state.json does not match its checksum; moved "
                      r"it aside to .*\.corrupt-step-000004 and falling back to the previous complete checkpoint"):
        assert latest_checkpoint(tmp_path) == folder / "step-000002"
    assert (folder / ".corrupt-step-000004" / "state.json").read_text() == '{"step": 5}'


def test_disk_full_while_saving_a_checkpoint_keeps_the_earlier_one(tmp_path, monkeypatch):
    import torch

    from prefopt.core.backend import OptimConfig, SingleBackend
    from prefopt.core.checkpoint import save_checkpoint

    model = torch.nn.Linear(3, 1)
    backend = SingleBackend(torch.device("cpu"), OptimConfig(lr=0.1, warmup_ratio=0.0))
    backend.prepare(model, total_steps=10)
    save_checkpoint(tmp_path, 1, model, backend, {})
    before = snapshot(tmp_path)

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr("prefopt.core.checkpoint.torch.save", full)
    with pytest.raises(OutputError) as info:
        save_checkpoint(tmp_path, 2, model, backend, {})
    assert str(info.value) == (f"cannot write checkpoint {tmp_path / 'checkpoints' / 'step-000002'}: [enforce fail "
                               "at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: file "
                               "write failed; earlier checkpoints are kept unchanged")
    assert unchanged(before, tmp_path) == [] and sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000001"]
