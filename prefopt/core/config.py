"""YAML -> typed dataclasses, dotted overrides, unknown-key errors, resolved-config dumps.

Defaults live in exactly one place: the dataclass field defaults. YAML files only override them.
Every top-level YAML names its schema with a ``kind:`` key (``data``, ``train``, ``rm``, ``run``,
...); schemas register themselves in :data:`prefopt.core.registry.CONFIG_KINDS`.

Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Optional[X]``, ``X | None``,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, ``Literal[...]``, ``Any`` and nested dataclasses
(also inside lists/dicts).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from prefopt.core.errors import ConfigError
from prefopt.core.registry import CONFIG_KINDS

_NONE_TYPE = type(None)


def _hint(key: str, known: list[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected true/false, got {value!r}")


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _to_float(value: Any, where: str) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):  # YAML reads 1e-6 as a string
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(number):  # no config number means anything as NaN or infinity
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _to_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where}: expected a string, got {value!r}")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _to_union(value: Any, args: tuple, where: str) -> Any:
    """First arm of ``X | Y | None`` that accepts ``value`` (None only through a ``None`` arm)."""
    if value is None and _NONE_TYPE in args:
        return None
    errors = []
    for arm in (a for a in args if a is not _NONE_TYPE):
        try:
            return _convert(value, arm, where)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")


def _to_dataclass(value: Any, tp: type, where: str) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
    return from_dict(tp, value, where)


def _to_sequence(value: Any, origin: type, args: tuple, where: str) -> list | tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    item_tp = args[0] if args else Any
    out = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(out) if origin is tuple else out


def _to_mapping(value: Any, args: tuple, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    val_tp = args[1] if len(args) == 2 else Any
    return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}


def _convert(value: Any, tp: Any, where: str) -> Any:  # noqa: PLR0911 - a type switch
    """Convert a YAML value to type ``tp``; raise :class:`ConfigError` naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _to_union(value, args, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}{_hint(str(value), [str(a) for a in args])}")
        return value
    if dataclasses.is_dataclass(tp):
        return _to_dataclass(value, tp, where)
    if origin in (list, tuple):
        return _to_sequence(value, origin, args, where)
    if origin is dict:
        return _to_mapping(value, args, where)
    if tp in _SCALARS:
        return _SCALARS[tp](value, where)
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys fail with a did-you-mean hint."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key '{path}'{_hint(str(key), list(fields))}; "
                              f"valid keys here: {', '.join(fields)}")
        kwargs[key] = _convert(value, hints[key], path)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or cls.__name__}: missing required key(s): {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def to_dict(cfg: Any) -> Any:
    """Plain-Python view of a (nested) config, suitable for YAML/JSON. A config that defines
    ``unused_keys()`` (dotted keys the run does not read; they hold their defaults, see
    :func:`prefopt.core.sections.resolve_sections`) is written without them."""
    if dataclasses.is_dataclass(cfg):
        out = {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
        for key in getattr(cfg, "unused_keys", lambda: ())():
            _drop(out, key.split("."))
        return out
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _drop(data: dict, keys: list[str]) -> None:
    """Remove a dotted key from nested mappings (absent parents: nothing to remove)."""
    for k in keys[:-1]:
        data = data.get(k)
        if not isinstance(data, dict):
            return
    data.pop(keys[-1], None)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with dotted overrides applied (creating mappings as needed).

    A numeric key addresses a list item: ``sources.0.path=x.jsonl`` edits the first source.
    """
    out = json.loads(json.dumps(data))
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = out
        for i, k in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(f"override '{text}': '{k}' is not an index of a list of {len(node)}")
                if last:
                    node[int(k)] = value
                else:
                    node = node[int(k)]
                continue
            if last:
                node[k] = value
            else:
                if not isinstance(node.get(k), (dict, list)):
                    node[k] = {}
                node = node[k]
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def _import_schemas() -> None:
    """Import the modules that register config kinds (lazy, so core stays light)."""
    import importlib

    for mod in ("data_pipelines.config", "reward_models.config", "prefopt.configs", "prefopt.pipeline",
                "prefopt.data.label_config"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def load_config(path: str | os.PathLike, overrides: list[str] | None = None,
                expect: str | None = None) -> Any:
    """Load a YAML config, apply overrides and build its registered schema.

    Args:
        path: YAML file with a top-level ``kind`` key.
        overrides: ``key.sub=value`` strings applied on top of the file.
        expect: if given, the kind the caller needs (e.g. ``"train"``).
    """
    data = apply_overrides(read_yaml(path), overrides or [])
    kind = data.pop("kind", None)
    if kind is None:
        raise ConfigError(f"{path}: missing top-level 'kind' key (one of: {', '.join(CONFIG_KINDS.names())})")
    _import_schemas()
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"{path}: unknown kind '{kind}'{_hint(kind, CONFIG_KINDS.names())}; "
                          f"known: {', '.join(CONFIG_KINDS.names())}")
    if expect is not None and kind != expect:
        raise ConfigError(f"{path}: this command needs a '{expect}' config, got kind '{kind}'")
    try:
        return from_dict(CONFIG_KINDS.get(kind), data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_kind(cfg: Any) -> str:
    """The registered ``kind`` name of a config object."""
    for name in CONFIG_KINDS.names():
        if type(cfg) is CONFIG_KINDS.get(name):
            return name
    raise ConfigError(f"{type(cfg).__name__} is not a registered config kind")


def save_resolved(cfg: Any, run_dir: str | os.PathLike) -> Path:
    """Write the fully resolved config to ``run_dir/config.yaml`` (atomically)."""
    from prefopt.core.io import atomic_write_text

    data = {"kind": config_kind(cfg), **to_dict(cfg)}
    out = Path(run_dir) / "config.yaml"
    atomic_write_text(out, yaml.safe_dump(data, sort_keys=False))
    return out
