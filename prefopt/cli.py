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
    "prefopt.loops.online_drivers",
    "prefopt.data.label_config",
    "prefopt.data.label_scorers",
    "prefopt.rewards",
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
    ("data", "label"): ("output_dir", True),
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
    ("export",): "prefopt.export:cli_main",
}

# What each config-driven command does (its `--help`).
CONFIG_HELP = {
    ("data", "build"): "Build train.jsonl/test.jsonl from raw sources (adapters, builders, validation).",
    ("data", "label"): "Sample K answers per prompt from a policy, score them with a reward model, GPM, "
                       "ensemble, rule or judge, and write preference pairs / ranked sets (on-policy data).",
    ("train",): "Train a policy (offline DPO family or online GRPO family); data.path takes built data or "
                "TRL standard/conversational preference .jsonl directly.",
    ("rm", "train"): "Train a reward model (BT, GPM, POLAR, ensembles); data.path as for train.",
    ("run",): "Run a whole pipeline (data -> train -> rm -> eval -> report) from one YAML.",
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
    usage = f"usage: prefopt {' '.join(words)} CONFIG.yaml [key=value ...] [--overwrite]"
    if args and args[0] in ("-h", "--help"):
        print(f"{usage}\n\n{CONFIG_HELP[words]}\nOverrides are dotted keys, e.g. optim.lr=1e-5 "
              "run.report_to=[tensorboard,wandb]. --overwrite moves an earlier, different run in the output "
              "folder aside. Check a config with `prefopt validate CONFIG`.")
        return 0
    overwrite = "--overwrite" in args
    args = [a for a in args if a != "--overwrite"]
    if not args or args[0].startswith("-"):
        raise PrefoptError(usage)
    cfg = load_config(args[0], list(args[1:]), expect=expect)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    key, fingerprinted = OUTPUT_FOLDER_KEY[words]
    fp = config_fingerprint(to_dict(cfg)) if fingerprinted else None
    with guarded_folder(str(_dotted(cfg, key)), fp, overwrite=overwrite, command=f"prefopt {' '.join(words)}",
                        what=f"'{' '.join(words)}' run"):
        result = _resolve(target)(cfg)
    print(_done_line(words, cfg, result), flush=True)
    return int(result) if isinstance(result, int) else 0


def _done_line(words: tuple[str, ...], cfg: object, result: object) -> str:
    """One line saying where the outputs are (and the final held-out accuracy when there is one)."""
    run = getattr(cfg, "run", None)
    out = getattr(cfg, "output_dir", None) or getattr(run, "output_dir", None) or "."
    extra = ""
    if isinstance(result, dict):
        final = result.get("final_eval") or {}
        if isinstance(final, dict) and "eval/accuracy" in final:
            extra = f", final eval/accuracy {final['eval/accuracy']:.3f}"
        if "steps" in result:
            extra = f", {result['steps']} steps" + extra
    return f"done: prefopt {' '.join(words)} -> {out}{extra}"


def _group_help(word: str) -> str | None:
    """Usage of a command group (``prefopt eval``, ``prefopt rm``, ...) or None if ``word`` is none."""
    subs = [w for table in (CONFIG_COMMANDS, ARGV_COMMANDS) for w in table if len(w) > 1 and w[0] == word]
    if not subs:
        return None
    return f"usage: prefopt {word} SUBCOMMAND ...\n\nsubcommands:\n" + "\n".join(
        f"  prefopt {' '.join(w)}  (see `prefopt {' '.join(w)} --help`)" for w in subs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prefopt")
    except PackageNotFoundError:
        import prefopt

        return prefopt.__version__


def _usage() -> str:
    cmds = ["--version", "ls [losses|algorithms|datasets|judges|reward_models|reward_fns|...]",
            "validate CONFIG [k=v ...]"]
    cmds += [f"{' '.join(w)} CONFIG [k=v ...] [--overwrite]" for w in CONFIG_COMMANDS]
    cmds += [f"{' '.join(w)} ..." for w in ARGV_COMMANDS]
    return "usage: prefopt COMMAND\n\ncommands:\n" + "\n".join(f"  prefopt {c}" for c in cmds)


def dispatch(argv: Sequence[str]) -> int:
    """Route ``argv`` (without the program name) to its handler."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        print(f"prefopt {_version()}")
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
    group = _group_help(argv[0])
    if group is not None:
        if argv[1:2] in (["-h"], ["--help"]):
            print(group)
            return 0
        raise PrefoptError(f"unknown or missing subcommand after '{argv[0]}'\n{group}")
    raise PrefoptError(f"unknown command '{' '.join(argv[:2])}'\n{_usage()}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: prints a one-line error (no traceback) for expected failures."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None)  # deepspeed launcher
    known, rest = parser.parse_known_args(argv)
    from prefopt.core.logging import quiet_unused_deepspeed

    quiet_unused_deepspeed()
    try:
        return dispatch(rest)
    except PrefoptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
