"""Old import name: URPO's referee prompts, verdict parsing and rule rewards live in
:mod:`prefopt.rewards.urpo_text` (they are reward plumbing, not a loss). Kept so
``from prefopt.losses.urpo import parse_ranking`` and friends keep working."""
from __future__ import annotations

from prefopt.rewards.urpo_text import *  # noqa: F403
from prefopt.rewards.urpo_text import __all__  # noqa: F401
