"""Preference losses. Importing this package registers every loss (torch only, no transformers/trl).

Offline losses go to ``LOSSES`` (see :mod:`prefopt.losses.base` for the generic call contract);
online/group losses (maintained separately) go to ``GROUP_LOSSES`` / ``ADVANTAGES``.
"""
from __future__ import annotations

import importlib

from prefopt.losses import irpo, kl, lcpo, pairwise, sparsepo  # noqa: F401  (registration)
from prefopt.losses.base import LossOutput, LossSpec, pair_inputs, seq_lengths, seq_logps, seq_mean_logps

_OPTIONAL = ("group", "advantages", "aggregate", "p3o", "dno", "egpo", "rloo")
for _name in _OPTIONAL:
    try:
        importlib.import_module(f"prefopt.losses.{_name}")
    except ModuleNotFoundError as _exc:  # only a missing module of exactly that name is tolerated
        if _exc.name != f"prefopt.losses.{_name}":
            raise

__all__ = ["LossOutput", "LossSpec", "pair_inputs", "seq_lengths", "seq_logps", "seq_mean_logps",
           "irpo", "kl", "lcpo", "pairwise", "sparsepo"]
