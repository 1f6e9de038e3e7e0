"""Reward and preference sources for online training (one interface: :class:`RewardSource`).

Importing this package registers the rule-based reward functions in ``REWARD_FNS``:
``math_exact``, ``format_regex``, ``max_length``, ``length_penalty``, ``contains``,
``urpo_verifiable``, ``urpo_referee``.
"""
from __future__ import annotations

from prefopt.rewards.functions import (
                                       CombinedReward,
                                       contains,
                                       extract_number,
                                       format_regex,
                                       length_penalty,
                                       math_exact,
                                       max_length,
)
from prefopt.rewards.referee import PolicyReferee, urpo_referee, urpo_verifiable
from prefopt.rewards.sources import RewardSource, build_reward_source, load_scorer

__all__ = ["CombinedReward", "PolicyReferee", "RewardSource", "build_reward_source", "contains",
           "extract_number", "format_regex", "length_penalty", "load_scorer", "math_exact",
           "max_length", "urpo_referee", "urpo_verifiable"]
