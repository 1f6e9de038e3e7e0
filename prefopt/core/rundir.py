"""Output folders that are never silently shared or mixed: an advisory lock and a run fingerprint.

Two guarantees for every command that writes into a folder (training, data build, evaluations, ``run``):

* **One writer.** :func:`run_lock` holds an exclusive ``flock`` on ``<folder>/.prefopt.lock`` for the
  whole command. A second process asking for the same folder fails at once with a
  :class:`FolderBusyError` naming the holder (pid, host, command, start time). The kernel drops the lock
  when its process dies, so a lock file left by a killed run never blocks the next one.
* **One run per folder.** :func:`check_fingerprint` compares what defines the run (resolved config
  without resume-neutral keys, content hashes of its data, the model) with ``run_fingerprint.json``
  in the folder. The same fingerprint resumes; a different one is refused with the differing keys,
  unless the caller asked to overwrite, in which case the old run is moved aside (never deleted) to
  ``<folder>.replaced-<UTC time>``.

Usage from any command::

    from prefopt.core.rundir import guarded_folder
    with guarded_folder(out_dir, {"config": cfg_dict, "data": path_digest(data)}, overwrite=False,
                        command="prefopt eval bon"):
        ...  # write outputs

Only the main process (``RANK`` 0) takes the lock and writes; other ranks check the fingerprint only.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

from prefopt.core.errors import ConfigError, OutputError
from prefopt.core.io import atomic_write_json, describe_os_error

LOCK_NAME = ".prefopt.lock"
FINGERPRINT_NAME = "run_fingerprint.json"
_HELD: dict[str, int] = {}  # lock path -> nesting depth in this process (re-entrant per process)


class FolderBusyError(ConfigError):
    """Another live process holds the folder's lock."""


class RunMismatchError(ConfigError):
    """The folder holds a different run (its fingerprint differs from this one)."""


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and parents); :class:`OutputError` naming it when that is impossible."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path)) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {path} is not writable (permission denied); choose another folder "
                          "or fix its permissions")
    return path


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, command: str = "") -> Iterator[Path]:
    """Hold the advisory lock of ``folder`` (created if missing) for the body of the ``with``.

    Raises:
        FolderBusyError: another live process holds it (the message names pid, host and command).
        OutputError: the folder cannot be created or written.
    """
    path = ensure_writable(folder)
    lock = path / LOCK_NAME
    key = str(lock.resolve())
    if not _is_main() or key in _HELD:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    try:
        fh = open(lock, "a+", encoding="utf-8")
    except OSError as exc:
        raise OutputError(describe_os_error(exc, lock)) from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            raise FolderBusyError(f"output folder {path} is in use by another run ({holder}); wait for it "
                                  "to finish or choose another output folder") from None
        fh.seek(0)
        fh.truncate()
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, "
                 f"'{command or ' '.join(sys.argv[:4])}', since {stamp}\n")
        fh.flush()
        _HELD[key] = 1
        try:
            yield path
        finally:
            del _HELD[key]
    finally:
        fh.close()  # closing the descriptor releases the flock


def path_digest(path: str | os.PathLike | None, max_bytes: int = 1 << 30) -> str | None:
    """sha256 over a file's bytes, or over a folder's files (relative names + bytes), hidden files and
    lock files skipped; ``None`` for no path; the plain string for names that are not local paths
    (hub names, ``hf:`` specs). Files above ``max_bytes`` contribute their size only."""
    if path is None or str(path) == "":
        return None
    p = Path(path)
    if not p.exists():
        return f"name:{path}"
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()
                                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
    for f in files:
        h.update(str(f.relative_to(p) if f != p else f.name).encode())
        size = f.stat().st_size
        if size > max_bytes:
            h.update(f"size:{size}".encode())
            continue
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "s": [{"p": 2}]}`` -> ``{"a.b": 1, "s.0.p": 2}`` (lists of scalars stay values)."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(data, (list, tuple)) and any(isinstance(v, Mapping) for v in data):
        out = {}
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: data}


# Keys that do not change what a run computes (where it writes, how often it logs or saves).
RESUME_NEUTRAL = frozenset({"output_dir", "log_every", "save_every", "keep_last", "resume", "tensorboard",
                            "eval_every", "print_every", "on_nonfinite"})
# Keys whose value names an input file or folder: its content hash joins the fingerprint.
INPUT_KEYS = ("path", "eval_path", "model.name")


def config_fingerprint(config: Mapping[str, Any], neutral: frozenset[str] = RESUME_NEUTRAL) -> dict[str, Any]:
    """What defines a run: the flattened resolved config without ``neutral`` keys (matched on the last
    component) plus ``inputs``: the content hash (:func:`path_digest`) of every input path it names."""
    flat = flatten(config)
    defining = {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] not in neutral}
    inputs = {k: path_digest(v) for k, v in flat.items()
              if isinstance(v, str) and v and any(k == s or k.endswith("." + s) for s in INPUT_KEYS)}
    return {"config": defining, "inputs": inputs}


def _differences(old: dict[str, Any], new: dict[str, Any], limit: int = 8) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys[:limit]]
    more = f"; and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more


def move_aside(folder: str | os.PathLike) -> Path | None:
    """Move every entry of ``folder`` except its lock into ``<folder>.replaced-<UTC time>``; return it."""
    src = Path(folder)
    entries = [e for e in src.iterdir() if e.name != LOCK_NAME] if src.is_dir() else []
    if not entries:
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    dest = src.with_name(f"{src.name}.replaced-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = src.with_name(f"{src.name}.replaced-{stamp}-{n}")
    dest.mkdir(parents=True)
    for entry in entries:
        shutil.move(str(entry), str(dest / entry.name))
    print(f"moved the previous contents of {src} aside to {dest}", file=sys.stderr, flush=True)
    return dest


def _has_outputs(folder: Path) -> bool:
    return folder.is_dir() and any(not e.name.startswith(".") for e in folder.iterdir())


def check_fingerprint(folder: str | os.PathLike, fingerprint: Mapping[str, Any], *, overwrite: bool = False,
                      what: str = "run") -> None:
    """Record ``fingerprint`` in ``folder``; refuse a folder that holds a different run.

    A folder with outputs but no fingerprint file (written by an older version, or by hand) is adopted
    with a warning. With ``overwrite`` a different run is moved aside first.

    Raises:
        RunMismatchError: the folder holds a run with another fingerprint (message lists the keys).
    """
    path = Path(folder)
    new = {k: v for k, v in flatten(json.loads(json.dumps(dict(fingerprint), default=str))).items()}
    stored = path / FINGERPRINT_NAME
    old = None
    if stored.is_file():
        try:
            old = json.loads(stored.read_text(encoding="utf-8")).get("fingerprint")
        except (json.JSONDecodeError, AttributeError):
            old = {"<unreadable run_fingerprint.json>": True}
    if old is not None and old != new:
        if not overwrite:
            raise RunMismatchError(
                f"{path} holds a different {what} ({_differences(old, new)}); use a new output folder, "
                "or pass --overwrite to move the old one aside and start afresh")
        if _is_main():
            move_aside(path)
    elif old is None and overwrite and _is_main():
        move_aside(path)
    elif old is None and _has_outputs(path) and _is_main():
        print(f"warning: {path} has outputs but no {FINGERPRINT_NAME}; adopting them as this {what}",
              file=sys.stderr, flush=True)
    if _is_main():
        atomic_write_json(stored, {"fingerprint": new})


@contextlib.contextmanager
def guarded_folder(folder: str | os.PathLike, fingerprint: Mapping[str, Any] | None, *, overwrite: bool = False,
                   command: str = "", what: str = "run") -> Iterator[Path]:
    """:func:`run_lock` + :func:`check_fingerprint` (skipped when ``fingerprint`` is None)."""
    with run_lock(folder, command) as path:
        if fingerprint is not None:
            check_fingerprint(path, fingerprint, overwrite=overwrite, what=what)
        elif overwrite and _is_main():
            move_aside(path)
        yield path
