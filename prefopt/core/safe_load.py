"""Refusing pickled model weights: a pickle can run code when it is loaded, so model folders load with
``use_safetensors=True`` and a folder holding weights only as pickles is refused, naming the file,
unless the user opts in with ``PREFOPT_ALLOW_PICKLE=1``."""
from __future__ import annotations

import os
from pathlib import Path

from prefopt.core.errors import ModelLoadError

ALLOW_PICKLE_ENV = "PREFOPT_ALLOW_PICKLE"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def pickle_allowed() -> bool:
    """Pickled weights load only with the explicit opt-in ``PREFOPT_ALLOW_PICKLE=1`` (they can run code)."""
    return os.environ.get(ALLOW_PICKLE_ENV) == "1"


def refuse_pickled_weights(path: str | os.PathLike) -> None:
    """Raise :class:`ModelLoadError` naming the file when a local model folder holds weights only as
    pickles (``pytorch_model.bin``, ``adapter_model.bin``, ...) and no safetensors file."""
    folder = Path(path)
    if not folder.is_dir() or pickle_allowed() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES and f.name != "training_args.bin")
    if pickles:
        raise ModelLoadError(f"{folder}: refusing to load pickled weights {pickles[0]} (a pickle can run code "
                             f"when loaded); convert it to safetensors, or set {ALLOW_PICKLE_ENV}=1 if you trust "
                             "this folder")
