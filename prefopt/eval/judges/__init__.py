"""Pairwise judges for AlpacaEval (registered in :data:`prefopt.core.registry.JUDGES`) and RewardBench.

* ``rm``: any reward scorer (BT, GPM, POLAR, ensemble): P(output beats reference) from the scorer.
* ``lm``: a local causal LM asked which of two answers is better, in both orders (position bias
  cancels); probabilities from the logits of the answer labels "A"/"B".
* ``http``: an OpenAI-compatible chat-completions endpoint with AlpacaEval's own ranking prompt
  (read at run time from the installed ``alpaca_eval`` package).

A judge annotates ``(instruction, reference output, model output)`` triples with an AlpacaEval
``preference`` in [1, 2] (2 = the model's output is better; identical outputs give 1.5). Heavy modules
are imported only when a judge is built: ``make_judge(kind, **kwargs)``.
"""
from __future__ import annotations

import importlib
from typing import Any

from prefopt.core.registry import JUDGES
from prefopt.eval.judges.base import Judge

_TARGETS = {"rm": "prefopt.eval.judges.base:RMJudge", "lm": "prefopt.eval.judges.lm:LMJudge",
            "http": "prefopt.eval.judges.http:HTTPJudge"}


def _lazy(target: str):
    def factory(**kwargs: Any) -> Judge:
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)(**kwargs)

    factory.__doc__ = f"Build {target} (imported on first use)."
    return factory


for _name, _target in _TARGETS.items():
    if _name not in JUDGES:
        JUDGES.register(_name, _lazy(_target))


def make_judge(kind: str, **kwargs: Any) -> Judge:
    """Build the judge registered as ``kind`` (``rm`` | ``lm`` | ``http``); ``kwargs`` go to its class."""
    return JUDGES.get(kind)(**kwargs)


__all__ = ["Judge", "make_judge"]
