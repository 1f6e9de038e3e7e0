"""Adapters: raw records -> schema records (``PairwiseExample``, ``RankedExample``, ...), with validation.

Each adapter is registered in :data:`prefopt.core.registry.DATASETS` as an :class:`AdapterSpec` under a
plain name (``hh_rlhf``, ``helpsteer``, ``stack_exchange``, ``rewardbench``, ``alpacaeval``,
``trl_standard``, ``trl_conversational``, ``pairwise``, ``ranked``, ``group``, ``prompt``); builders are
registered under ``builder.*`` names (see :mod:`data_pipelines.builders`). Call :func:`adapt`.

Every bad record raises a :class:`~data_pipelines.errors.RecordError` naming file, line and field; with
``on_error: skip`` it is counted by reason instead (``Issues.skipped``).
"""
from __future__ import annotations

from data_pipelines.adapters import pairwise, ranked  # noqa: F401  (register the adapters)
from data_pipelines.adapters.base import (
    AdaptContext,
    AdapterSpec,
    NoOptions,
    adapt,
    adapter_names,
    get_adapter,
    per_record,
    record_meta,
    register_adapter,
)
from data_pipelines.adapters.pairwise import parse_transcript, split_final_reply

__all__ = ["AdaptContext", "AdapterSpec", "NoOptions", "adapt", "adapter_names", "get_adapter", "per_record",
           "record_meta", "register_adapter", "parse_transcript", "split_final_reply"]
