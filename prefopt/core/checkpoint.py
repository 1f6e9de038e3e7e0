"""Crash-safe checkpoints: written to a temp folder, verified by a manifest, renamed into place.

Layout of ``run_dir/checkpoints/step-000120/``::

    trainable.safetensors   every parameter with requires_grad (LoRA adapters + heads, or all weights)
    optim.pt                optimizer + scheduler state (loaded with ``weights_only=True``)
                            (both single-process only: under DeepSpeed ``engine/`` holds them, ZeRO-3
                            partitioned)
    rng.pt                  torch / python / numpy RNG states as tensors
    state.json              step, data position, algorithm state (LCPO eta, Curry stage, ...)
    extra.safetensors       optional extra tensors (e.g. a TR-DPO-synced reference model); only
                            written when the caller passes some, read with :func:`load_extra_tensors`
    engine/                 DeepSpeed ZeRO shards (DeepSpeed backend only, instead of optim.pt)
    MANIFEST.json           sha256 of every file; written last - a folder without it is partial

A run killed at any moment leaves either complete checkpoints or ``.tmp-*`` folders, which are
reported and ignored. A complete checkpoint whose files do not match the manifest raises.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prefopt.core.errors import OutputError, PrefoptError
from prefopt.core.io import atomic_write_json, output_errors

if TYPE_CHECKING:
    from prefopt.core.backend import Backend

PREFIX = "step-"
EXTRA_FILE = "extra.safetensors"


class CheckpointError(PrefoptError):
    """A checkpoint is partial, corrupt or does not fit the model."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, torch.Tensor]:
    import numpy as np

    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(np_state[1].astype("int64")),
            "numpy_pos": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
            "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
            "python": torch.tensor(py_state[1], dtype=torch.int64)}


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    pos, has_gauss = (int(x) for x in state["numpy_pos"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype("uint32"), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    random.setstate((3, tuple(int(x) for x in state["python"]), None))


def _folder(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{step:06d}"


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, backend: Backend,
                    state: dict[str, Any], keep_last: int = 2,
                    tensors: dict[str, torch.Tensor] | None = None) -> Path | None:
    """Write checkpoint ``step`` atomically; keep the newest ``keep_last``. Collective under DeepSpeed.

    ``tensors`` (optional, main process): extra named tensors stored as ``extra.safetensors`` and
    covered by the manifest; read them back with :func:`load_extra_tensors`.
    """
    final = _folder(Path(run_dir), step)
    try:
        with output_errors(final):
            return _save(final, step, model, backend, state, keep_last, tensors)
    except RuntimeError as exc:  # torch.save / safetensors report a failed write (disk full) this way
        if "writ" not in str(exc).lower():
            raise
        shutil.rmtree(final.parent / f".tmp-{final.name}", ignore_errors=True)
        raise OutputError(f"cannot write checkpoint {final}: {str(exc).splitlines()[0][:160]}; earlier "
                          "checkpoints are kept unchanged") from None


def _save(final: Path, step: int, model: torch.nn.Module, backend: Backend, state: dict[str, Any], keep_last: int,
          tensors: dict[str, torch.Tensor] | None) -> Path:
    tmp = final.parent / f".tmp-{final.name}"
    if backend.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    backend.barrier()
    if hasattr(backend, "save_engine_state"):
        backend.save_engine_state(str(tmp / "engine"), {"step": step})
    if backend.is_main:
        from safetensors.torch import save_file

        if not hasattr(backend, "save_engine_state"):  # DeepSpeed's shards already hold the weights
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
            torch.save(backend.state_dict(), tmp / "optim.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        if tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                      str(tmp / EXTRA_FILE))
        atomic_write_json(tmp / "state.json", {"step": step, **state})
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        atomic_write_json(tmp / "MANIFEST.json",
                          {str(p.relative_to(tmp)): _sha256(p) for p in files})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _prune(final.parent, keep_last)
    backend.barrier()
    return final


def _prune(folder: Path, keep_last: int) -> None:
    done = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / "MANIFEST.json").exists())
    for old in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def verify(folder: Path) -> None:
    """Raise :class:`CheckpointError` unless every manifest entry exists with its checksum."""
    manifest = folder / "MANIFEST.json"
    if not manifest.exists():
        raise CheckpointError(f"checkpoint {folder} is partial (no MANIFEST.json); refusing to load it")
    for rel, digest in json.loads(manifest.read_text()).items():
        path = folder / rel
        if not path.exists():
            raise CheckpointError(f"checkpoint {folder} is corrupt: {rel} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(f"checkpoint {folder} is corrupt: {rel} does not match its checksum")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest complete, verified checkpoint under ``run_dir``, or None. Partial ones are reported; a
    corrupt one is moved aside to ``checkpoints/.corrupt-step-N`` with a warning and the next newer
    complete one is used."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.exists():
        return None
    for tmp in folder.glob(".tmp-*"):
        warnings.warn(f"ignoring partial checkpoint {tmp} (the run was interrupted while saving)",
                      stacklevel=2)
    for candidate in sorted(folder.glob(f"{PREFIX}*"), reverse=True):
        try:
            verify(candidate)
        except CheckpointError as exc:
            aside = folder / f".corrupt-{candidate.name}"
            shutil.rmtree(aside, ignore_errors=True)
            candidate.rename(aside)
            warnings.warn(f"{exc}; moved it aside to {aside} and falling back to the previous complete "
                          "checkpoint", stacklevel=2)
            continue
        return candidate
    return None


def load_checkpoint(folder: str | Path, model: torch.nn.Module, backend: Backend) -> dict[str, Any]:
    """Restore trainable weights, optimizer/scheduler (or engine shards) and RNG; return state.json."""
    folder = Path(folder)
    verify(folder)
    if hasattr(backend, "load_engine_state"):  # DeepSpeed: the engine restores weights and optimizer
        backend.load_engine_state(str(folder / "engine"))
    else:
        _copy_trainable(folder, model)
        backend.load_state_dict(_load_tensors_file(folder / "optim.pt"))
    set_rng_state(_load_tensors_file(folder / "rng.pt"))
    return json.loads((folder / "state.json").read_text())


def _load_tensors_file(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a file holding anything but tensors and plain containers (e.g. a
    pickle that would run code) is refused with a :class:`CheckpointError` naming it."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # UnpicklingError (torch's weights-only unpickler), RuntimeError, EOFError
        if type(exc).__name__ not in ("UnpicklingError", "RuntimeError", "EOFError"):
            raise
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refusing to load {path}: not a plain tensor file ({first})") from None


def load_extra_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """The ``tensors`` passed to :func:`save_checkpoint` for this checkpoint; ``{}`` when it has none.

    The file is checked against the manifest (a complete checkpoint only, matching checksum).
    """
    folder = Path(folder)
    path = folder / EXTRA_FILE
    if not path.exists():
        return {}
    manifest = folder / "MANIFEST.json"
    if not manifest.exists():
        raise CheckpointError(f"checkpoint {folder} is partial (no MANIFEST.json); refusing to load it")
    digest = json.loads(manifest.read_text()).get(EXTRA_FILE)
    if digest is None or _sha256(path) != digest:
        raise CheckpointError(f"checkpoint {folder} is corrupt: {EXTRA_FILE} does not match its checksum")
    from safetensors.torch import load_file

    return load_file(str(path))


def _copy_trainable(folder: Path, model: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(folder / "trainable.safetensors"))
    expected = set(trainable_state(model))
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:3], sorted(set(weights) - expected)[:3]
        raise CheckpointError(f"checkpoint {folder} does not fit this model (missing {missing}, "
                              f"unexpected {extra})")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
