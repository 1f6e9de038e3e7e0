"""``prefopt train CFG``: dispatch a ``kind: train`` config to the offline or online loop."""
from __future__ import annotations

from typing import Any

from prefopt.algorithms import get_algorithm


def run_train(cfg: Any) -> dict[str, Any]:
    """Run the loop the algorithm's spec names; returns the run summary."""
    spec = get_algorithm(cfg.algorithm)
    if spec.loop == "online":
        from prefopt.loops.online import run_online

        return run_online(cfg)
    from prefopt.loops.offline import run_offline

    return run_offline(cfg)
