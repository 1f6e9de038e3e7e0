"""``prefopt run CFG``: a pipeline of stages (data build, reward model, evaluation, alignment, report).

Each stage runs one ``prefopt`` command into its own folder ``<output_dir>/<stage name>``. A stage
that finished writes ``.stage-done.json`` holding a fingerprint of its command, config file,
overrides, arguments, the content hashes of its input files and the fingerprints of the stages before
it; a rerun skips every stage whose fingerprint still matches, so a second invocation repeats nothing,
and an interrupted run restarts at the first unfinished stage (training stages also resume from their
own checkpoints, but only when ``.stage-started.json`` shows the same fingerprint: a stage whose inputs
changed restarts clean, its old outputs moved aside to ``<stage>.replaced-<time>``). Every stage's
config and arguments are checked before the first stage starts.

In overrides and arguments, ``{out}`` is the pipeline folder, ``{stage:NAME}`` the folder of an
earlier stage, e.g. ``data.path={stage:data}``, and ``{var:NAME}`` a value from the config's ``vars``
table, which the command line can override like any key (``prefopt run cfg.yaml vars.steps=2``): one
pipeline file serves a tiny CI budget and the documented real budget.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prefopt.core.config import save_resolved
from prefopt.core.errors import ConfigError
from prefopt.core.io import atomic_write_json
from prefopt.core.registry import CONFIG_KINDS

Command = Literal["data build", "data label", "train", "rm train", "eval rewardbench", "eval alpacaeval",
                  "eval bon", "eval judge-agreement", "eval head2head", "eval headline", "report"]
# Where each config-driven command takes its output folder, and the config kind it reads.
OUTPUT_KEY = {"data build": "output_dir", "data label": "output_dir", "train": "run.output_dir",
              "rm train": "run.output_dir"}
CONFIG_KIND = {"data build": "data", "data label": "label", "train": "train", "rm train": "rm"}
DONE = ".stage-done.json"
STARTED = ".stage-started.json"


@dataclass(frozen=True)
class StageConfig:
    """One step of the pipeline."""

    name: str
    command: Command
    # YAML config for config-driven commands (data build, train, rm train).
    config: str | None = None
    # Dotted overrides applied to that config ({out} and {stage:NAME} are substituted).
    overrides: list[str] = field(default_factory=list)
    # Arguments for argument-driven commands (eval ..., report); `--out <stage dir>` is added.
    args: list[str] = field(default_factory=list)
    enabled: bool = True

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) or set(self.name) == {"."}:
            raise ValueError(f"stage name {self.name!r} may only hold letters, digits, '_', '.', '-' "
                             "(and not only dots: it names a folder inside the pipeline folder)")
        if self.command in OUTPUT_KEY and not self.config:
            raise ValueError(f"stage '{self.name}': command '{self.command}' needs a config file")


@dataclass(frozen=True)
class RunConfig:
    """Root of a ``kind: run`` YAML: the pipeline folder and its stages, run in order."""

    output_dir: str = "runs/quickstart"
    stages: list[StageConfig] = field(default_factory=list)
    # Named values substituted for {var:NAME} in stage overrides and arguments.
    vars: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vars", {str(k): str(v) for k, v in self.vars.items()})
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate stage names: {', '.join(dupes)}")
        for i, stage in enumerate(self.stages):
            for ref in re.findall(r"\{stage:([^}]+)\}", " ".join(stage.overrides + stage.args)):
                if ref not in names[:i]:
                    raise ValueError(f"stage '{stage.name}' refers to {{stage:{ref}}}, which is not an "
                                     f"earlier stage (earlier: {', '.join(names[:i]) or 'none'})")
            for ref in re.findall(r"\{var:([^}]+)\}", " ".join(stage.overrides + stage.args)):
                if ref not in self.vars:
                    raise ValueError(f"stage '{stage.name}' uses {{var:{ref}}}, which is not in vars "
                                     f"(known: {', '.join(sorted(self.vars)) or 'none'})")

    def validate(self) -> None:
        """Check every stage before any starts: configs with their overrides, CLI arguments of the others
        (used by `prefopt validate` and at the start of `prefopt run`)."""
        from prefopt.core.config import load_config

        for stage in self.stages:
            if not stage.enabled:
                continue
            if stage.config:
                try:
                    # schema and values only: a stage's own validate() may look for files earlier stages make
                    load_config(stage.config, _substitute(stage.overrides, self, stage),
                                expect=CONFIG_KIND[stage.command])
                except ConfigError as exc:
                    raise ConfigError(f"stage '{stage.name}': {exc}") from None
            else:
                check_stage_args(stage.name, _argv(self, stage))


CONFIG_KINDS.register("run", RunConfig)


def stage_dir(cfg: RunConfig, name: str) -> Path:
    return Path(cfg.output_dir) / name


def _substitute(items: list[str], cfg: RunConfig, stage: StageConfig) -> list[str]:
    def one(text: str) -> str:
        text = re.sub(r"\{var:([^}]+)\}", lambda m: cfg.vars[m.group(1)], text)
        text = text.replace("{out}", str(cfg.output_dir))
        return re.sub(r"\{stage:([^}]+)\}", lambda m: str(stage_dir(cfg, m.group(1))), text)

    return [one(t) for t in items]


def _argv(cfg: RunConfig, stage: StageConfig) -> list[str]:
    out = str(stage_dir(cfg, stage.name))
    words = stage.command.split()
    if stage.command in OUTPUT_KEY:
        return words + [stage.config] + _substitute(stage.overrides, cfg, stage) + [f"{OUTPUT_KEY[stage.command]}={out}"]
    return words + _substitute(stage.args, cfg, stage) + ["--out", out]


def check_stage_args(name: str, argv: list[str]) -> None:
    """Parse an argument-driven stage's arguments with its command's parser; ConfigError on a bad one."""
    import contextlib
    import importlib
    import io

    from prefopt.cli import ARGV_COMMANDS

    words = next((w for w in ARGV_COMMANDS if tuple(argv[:len(w)]) == w), None)
    if words is None:
        return
    module = importlib.import_module(ARGV_COMMANDS[words].split(":")[0])
    parser = getattr(module, "build_parser", None)
    if parser is None:
        return
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser().parse_args(argv[len(words):])
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        raise ConfigError(f"stage '{name}': {lines[-1] if lines else 'invalid arguments'}") from None


def _input_digests(cfg: RunConfig, stage: StageConfig) -> dict:
    """Content hashes of what the stage reads (config-driven: data and model paths; others: file args)."""
    from prefopt.core.rundir import config_fingerprint, path_digest

    if stage.config:
        from prefopt.core.config import load_config, to_dict

        loaded = load_config(stage.config, _substitute(stage.overrides, cfg, stage))
        return config_fingerprint(to_dict(loaded))["inputs"]
    return {a: path_digest(a) for a in _substitute(stage.args, cfg, stage) if Path(a).is_file()}


def fingerprint(cfg: RunConfig, stage: StageConfig, upstream: list[str]) -> str:
    """Hash of the stage's command line, config file, input contents and the stages before it."""
    h = hashlib.sha256(json.dumps(_argv(cfg, stage)).encode())
    if stage.config and Path(stage.config).is_file():
        h.update(Path(stage.config).read_bytes())
    h.update(json.dumps(_input_digests(cfg, stage), sort_keys=True).encode())
    for fp in upstream:
        h.update(fp.encode())
    return h.hexdigest()[:24]


def _marker(folder: Path, name: str) -> str | None:
    try:
        return json.loads((folder / name).read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _is_done(folder: Path, fp: str) -> bool:
    return _marker(folder, DONE) == fp


def _prepare_stage(folder: Path, fp: str) -> None:
    """Resume an interrupted stage with the same fingerprint; otherwise move old outputs aside."""
    from prefopt.core.rundir import LOCK_NAME, move_aside, run_lock

    if _marker(folder, STARTED) != fp and folder.is_dir() and any(e.name != LOCK_NAME for e in folder.iterdir()):
        with run_lock(folder, "prefopt run (restarting a changed stage)"):
            print(f"stage {folder.name}: its inputs changed; restarting it clean", file=sys.stderr, flush=True)
            move_aside(folder)
    atomic_write_json(folder / STARTED, {"fingerprint": fp})


def run_pipeline(cfg: RunConfig) -> int:
    """Run the enabled stages in order, skipping those already complete; print a summary line."""
    from prefopt.cli import dispatch

    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, cfg.output_dir)
    upstream: list[str] = []
    report: list[tuple[str, str, float]] = []
    start = time.time()
    for stage in [s for s in cfg.stages if s.enabled]:
        fp = fingerprint(cfg, stage, upstream)
        folder = stage_dir(cfg, stage.name)
        upstream.append(fp)
        if _is_done(folder, fp):
            report.append((stage.name, "skipped (done)", 0.0))
            continue
        print(f"== stage {stage.name}: prefopt {' '.join(_argv(cfg, stage))}", file=sys.stderr, flush=True)
        _prepare_stage(folder, fp)
        t0 = time.time()
        code = dispatch(_argv(cfg, stage))
        if code:
            raise ConfigError(f"stage '{stage.name}' failed with exit code {code}")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / DONE, {"fingerprint": fp, "seconds": round(time.time() - t0, 1)})
        report.append((stage.name, "done", time.time() - t0))
    total = time.time() - start
    parts = ", ".join(f"{n} {s}" + (f" {t:.0f}s" if t else "") for n, s, t in report)
    print(f"prefopt run: {len(report)} stages in {total:.0f}s -> {cfg.output_dir} ({parts})", flush=True)
    atomic_write_json(Path(cfg.output_dir) / "pipeline.json",
                      {"stages": [{"name": n, "status": s, "seconds": round(t, 1)} for n, s, t in report],
                       "seconds": round(total, 1)})
    return 0
