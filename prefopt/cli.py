"""The one ``prefopt`` command line.

Config-driven commands take a YAML file plus dotted overrides::

    prefopt validate configs/quickstart.yaml
    prefopt data build configs/data/hh_rlhf_pairs.yaml data.max_records=100
    prefopt train configs/dpo/tiny.yaml optim.lr=1e-6
    prefopt rm train configs/rm/bt_tiny.yaml
    prefopt run configs/quickstart.yaml
    prefopt ls losses

Handlers are imported lazily so ``prefopt ls`` and ``prefopt validate`` stay fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from prefopt.core.errors import PrefoptError

# Modules whose import fills the registries (listed once; `prefopt ls` and config loading use it).
PLUGIN_MODULES = (
    "data_pipelines.config",
    "reward_models.config",
    "prefopt.configs",
    "prefopt.pipeline",
    "data_pipelines.adapters",
    "data_pipelines.builders",
    "prefopt.losses",
    "reward_models",
    "prefopt.algorithms",
    "prefopt.eval",
    "prefopt.generation",
    "prefopt.data.label_config",
    "prefopt.data.label_scorers",
)

# Config-driven commands: (words) -> (config kind expected, "module:function" taking the config).
CONFIG_COMMANDS: dict[tuple[str, ...], tuple[str | None, str]] = {
    ("data", "build"): ("data", "data_pipelines.build:run_build"),
    ("data", "label"): ("label", "prefopt.data.label:run_label"),
    ("train",): ("train", "prefopt.train:run_train"),
    ("rm", "train"): ("rm", "reward_models.train:run_rm_train"),
    ("run",): ("run", "prefopt.pipeline:run_pipeline"),
}

# Where each config-driven command writes (a dotted key of its config); that folder is locked for the
# whole command and, except for `run` (whose stages keep their own), holds the run's fingerprint.
OUTPUT_FOLDER_KEY: dict[tuple[str, ...], tuple[str, bool]] = {
    ("data", "build"): ("output_dir", True),
    ("data", "label"): ("output_dir", False),
    ("train",): ("run.output_dir", True),
    ("rm", "train"): ("run.output_dir", True),
    ("run",): ("output_dir", False),
}

# Commands with their own argument parsers: (words) -> "module:function" taking argv.
ARGV_COMMANDS: dict[tuple[str, ...], str] = {
    ("eval", "rewardbench"): "prefopt.eval.rewardbench:cli_main",
    ("eval", "alpacaeval"): "prefopt.eval.alpacaeval:cli_main",
    ("eval", "headline"): "prefopt.eval.headline:cli_main",
    ("eval", "bon"): "prefopt.eval.bon:cli_main",
    ("eval", "judge-agreement"): "prefopt.eval.judge_agreement:cli_main",
    ("eval", "head2head"): "prefopt.eval.head2head:cli_main",
    ("bench",): "benchmarks.cli:cli_main",
    ("report",): "prefopt.report:cli_main",
    ("model", "prepare"): "prefopt.core.models:cli_prepare",
}


def load_plugins() -> None:
    """Import every module that registers losses, algorithms, datasets, judges, ..."""
    for name in PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not an absent optional module
                raise


def _resolve(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


def _cmd_ls(args: Sequence[str]) -> int:
    from prefopt.core.registry import _ALL

    load_plugins()
    wanted = args[0].rstrip("s") if args else None
    aliases = {"losse": "loss", "algorithm": "algorithm", "judge": "judge", "dataset": "dataset",
               "reward_model": "reward_model", "rm": "reward_model"}
    if wanted is not None:
        wanted = aliases.get(wanted, wanted)
        if wanted not in _ALL:
            raise PrefoptError(f"nothing called '{args[0]}' to list; try one of: "
                               + ", ".join(_plural(k) for k in sorted(_ALL)))
    for kind in sorted(_ALL):
        if wanted is None or kind == wanted:
            print(f"{_plural(kind)}:")
            for name in _ALL[kind].names():
                print(f"  {name}")
    return 0


def _cmd_validate(args: Sequence[str]) -> int:
    from prefopt.core.config import config_kind, load_config, to_dict

    if not args:
        raise PrefoptError("usage: prefopt validate CONFIG.yaml [key=value ...]")
    cfg = load_config(args[0], list(args[1:]))
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    print(f"OK: {args[0]} is a valid '{config_kind(cfg)}' config ({len(to_dict(cfg))} sections)")
    return 0


def _dotted(cfg: object, key: str) -> object:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _run_config_command(words: tuple[str, ...], args: Sequence[str]) -> int:
    from prefopt.core.config import load_config, to_dict
    from prefopt.core.rundir import config_fingerprint, guarded_folder

    expect, target = CONFIG_COMMANDS[words]
    overwrite = "--overwrite" in args
    args = [a for a in args if a != "--overwrite"]
    if not args or args[0].startswith("-"):
        raise PrefoptError(f"usage: prefopt {' '.join(words)} CONFIG.yaml [key=value ...] [--overwrite]")
    cfg = load_config(args[0], list(args[1:]), expect=expect)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    key, fingerprinted = OUTPUT_FOLDER_KEY[words]
    fp = config_fingerprint(to_dict(cfg)) if fingerprinted else None
    with guarded_folder(str(_dotted(cfg, key)), fp, overwrite=overwrite, command=f"prefopt {' '.join(words)}",
                        what=f"'{' '.join(words)}' run"):
        result = _resolve(target)(cfg)
    return int(result) if isinstance(result, int) else 0


def _usage() -> str:
    cmds = ["ls [losses|algorithms|datasets|judges|reward_models|...]", "validate CONFIG [k=v ...]"]
    cmds += [f"{' '.join(w)} CONFIG [k=v ...] [--overwrite]" for w in CONFIG_COMMANDS]
    cmds += [f"{' '.join(w)} ..." for w in ARGV_COMMANDS]
    return "usage: prefopt COMMAND\n\ncommands:\n" + "\n".join(f"  prefopt {c}" for c in cmds)


def dispatch(argv: Sequence[str]) -> int:
    """Route ``argv`` (without the program name) to its handler."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "ls":
        return _cmd_ls(argv[1:])
    if argv[0] == "validate":
        return _cmd_validate(argv[1:])
    for table in (CONFIG_COMMANDS, ARGV_COMMANDS):
        for words in sorted(table, key=len, reverse=True):
            if tuple(argv[: len(words)]) == words:
                rest = argv[len(words):]
                if table is CONFIG_COMMANDS:
                    return _run_config_command(words, rest)
                result = _resolve(ARGV_COMMANDS[words])(rest)
                return int(result) if isinstance(result, int) else 0
    raise PrefoptError(f"unknown command '{' '.join(argv[:2])}'\n{_usage()}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: prints a one-line error (no traceback) for expected failures."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None)  # deepspeed launcher
    known, rest = parser.parse_known_args(argv)
    try:
        return dispatch(rest)
    except PrefoptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
