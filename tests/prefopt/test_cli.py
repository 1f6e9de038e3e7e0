"""The `prefopt` entry point: listing registries, validating configs, clear one-line errors."""
from __future__ import annotations

import subprocess
import sys

import yaml

from prefopt.cli import main


def test_ls_lists_every_registry(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for heading in ("losses:", "algorithms:", "datasets:", "reward_models:", "advantages:"):
        assert heading + "\n" in out
    assert "  dpo\n" in out and "  hh_rlhf\n" in out


def test_ls_one_kind_and_unknown_kind(capsys):
    assert main(["ls", "algorithms"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("algorithms:\n") and "  curry_dpo\n" in out and "losses" not in out
    assert main(["ls", "widgets"]) == 2
    assert "nothing called 'widgets' to list" in capsys.readouterr().err


def test_validate_reports_unknown_key_with_hint(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "train", "algorithm": "dpo", "optim": {"lrr": 1e-5}}))
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lrr' (did you mean 'lr'?)" in err
    assert main(["validate", str(cfg), "optim={lr: 1.0e-5}"]) == 0


def test_unknown_algorithm_lists_known(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "train", "algorithm": "dpoo"}))
    assert main(["validate", str(cfg)]) == 2
    assert "unknown algorithm 'dpoo' (did you mean 'dpo'?)" in capsys.readouterr().err


def test_unknown_command_and_wrong_kind(tmp_path, capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "train"}))
    assert main(["data", "build", str(cfg)]) == 2
    assert "this command needs a 'data' config, got kind 'train'" in capsys.readouterr().err


def test_console_script_runs_and_accepts_launcher_rank():
    """The installed `prefopt` script works and tolerates `--local_rank` (deepspeed launcher)."""
    res = subprocess.run([sys.executable, "-m", "prefopt.cli", "--local_rank=0", "ls", "algorithms"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "dpo" in res.stdout


def test_every_subcommand_answers_help_with_exit_0(capsys):
    from prefopt.cli import ARGV_COMMANDS, CONFIG_COMMANDS

    for words in [*CONFIG_COMMANDS, *ARGV_COMMANDS, ("eval",), ("rm",), ("data",), ("model",)]:
        try:
            code = main([*words, "--help"])
        except SystemExit as exc:  # argparse-based commands exit from print_help
            code = exc.code
        out = capsys.readouterr().out
        assert code in (0, None), words
        assert "usage: prefopt" in out or "usage:" in out, words
    assert main(["eval"]) == 2 and "prefopt eval rewardbench" in capsys.readouterr().err


def test_version_and_reward_fns_listed(capsys):
    import prefopt

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"prefopt {prefopt.__version__}"
    assert main(["ls", "reward_fns"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reward_fns:\n") and len(out.splitlines()) > 1


def test_done_line_names_the_output_folder():
    from types import SimpleNamespace

    from prefopt.cli import _done_line

    cfg = SimpleNamespace(run=SimpleNamespace(output_dir="runs/dpo_tiny"))
    line = _done_line(("train",), cfg, {"steps": 8, "final_eval": {"eval/accuracy": 0.625}})
    assert line == "done: prefopt train -> runs/dpo_tiny, 8 steps, final eval/accuracy 0.625"
    assert _done_line(("data", "build"), SimpleNamespace(output_dir="runs/data/x"), {}) == \
        "done: prefopt data build -> runs/data/x"
