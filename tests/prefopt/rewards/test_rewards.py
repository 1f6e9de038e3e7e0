"""Rule-based rewards (golden values), their weighted combination, and the RewardSource interface."""
from __future__ import annotations

import math

import pytest
import torch

from prefopt.core.registry import REWARD_FNS
from prefopt.rewards import (
    CombinedReward,
    PolicyReferee,
    RewardSource,
    contains,
    extract_number,
    format_regex,
    length_penalty,
    math_exact,
    max_length,
    urpo_referee,
    urpo_verifiable,
)


def test_reward_functions_are_registered():
    for name in ("math_exact", "format_regex", "max_length", "length_penalty", "contains",
                 "urpo_verifiable", "urpo_referee"):
        assert name in REWARD_FNS


def test_golden_math_exact():
    """answer 7: "The sum is 7." → 1 (last number); "7.0" → 1 (numeric equality); "3 + 4 = 8" → 0;
    no number → 0; "Answer: 7" beats a later stray number; answer None → None (not applicable)."""
    texts = ["The sum is 7.", "7.0", "3 + 4 = 8", "seven", "Answer: 7\nsee 3 and 4", "7"]
    got = math_exact(None, texts, answer=["7", "7", "7", "7", "7", None])
    assert got == [1.0, 1.0, 0.0, 0.0, 1.0, None]
    # first_number mode reads "3 + 4 = 7" as 3
    assert math_exact(None, ["3 + 4 = 7"], answer=["7"], mode="first_number") == [0.0]
    assert extract_number("3 + 4 = 7", "last_number") == "7"
    assert extract_number("x \\boxed{12} y 5") == "12"


def test_golden_format_regex():
    """Default pattern (bare integer): "7" → 1, " 12 " → 1, "It is 7" → 0; custom pattern with full match."""
    assert format_regex(None, ["7", " 12 ", "It is 7"]) == [1.0, 1.0, 0.0]
    assert format_regex(None, ["Answer: 3", "answer 3"], pattern=r"Answer: \d+", full=True) == [1.0, 0.0]


def test_golden_length_rewards():
    """max_length(4) on token counts (1, 4, 5) → (1, 1, 0); length_penalty(max 64, coef 0.01) on
    n = (10, 64, 70) → (0, 0, −0.06); without ids words are counted."""
    ids = [[1], [1, 2, 3, 4], [1, 2, 3, 4, 5]]
    assert max_length(None, ["", "", ""], max_tokens=4, completion_ids=ids) == [1.0, 1.0, 0.0]
    pen = length_penalty(None, [""] * 3, max_tokens=64, coef=0.01, completion_ids=[[0] * 10, [0] * 64, [0] * 70])
    assert pen[:2] == [0.0, 0.0] and pen[2] == pytest.approx(-0.06)
    assert max_length(None, ["a b c", "a b c d e"], max_tokens=4) == [1.0, 0.0]
    assert contains(None, ["Hello World", "bye"], text="world") == [1.0, 0.0]


def test_golden_combined_reward_weights():
    """0.7·math_exact + 0.3·format_regex: "7" (answer 7) → 0.7 + 0.3 = 1.0; "It is 7" → 0.7;
    "8" → 0.3; math_exact None (no answer) + format 1 → 0.3; every function None → NaN."""
    comb = CombinedReward([("math_exact", 0.7, {}), ("format_regex", 0.3, {})])
    got = comb(None, ["7", "It is 7", "8", "5"], answer=["7", "7", "7", None])
    assert got == pytest.approx([1.0, 0.7, 0.3, 0.3])
    only = CombinedReward([("math_exact", 2.0, {})])
    assert math.isnan(only(None, ["7"], answer=[None])[0])
    totals, parts = comb.with_components(None, ["7", "It is 7", "8", "5"], answer=["7", "7", "7", None])
    assert totals == pytest.approx([1.0, 0.7, 0.3, 0.3])
    assert parts == {"math_exact": [1.0, 1.0, 0.0, None], "format_regex": [1.0, 0.0, 1.0, 1.0]}


def test_golden_urpo_rewards():
    """Player: "Answer: 7" on a verifiable row → 1, None on other tasks. Referee: shown [1, 0], gold
    [0, 1] (candidate 0 best): "RANKING: B > A" names shown[1] = 0 first → 1; "A > B" → 0; junk → 0."""
    assert urpo_verifiable(None, ["Answer: 7", "Answer: 7"], answer=["7", None],
                           task=["verifiable", "open"]) == [1.0, None]
    meta = [{"shown": [1, 0], "gold_order": [0, 1]}] * 3 + [{}]
    got = urpo_referee(None, ["ok\nRANKING: B > A", "RANKING: A > B", "no idea", "x"], meta=meta,
                       task=["pref_rank"] * 3 + ["verifiable"])
    assert got == [1.0, 0.0, 0.0, None]


def test_reward_source_bt_oracle_and_nan():
    """Rewards (1, 0) for short/long → P(short ≻ long) = σ((1 − 0)/T): T = 1 → 0.7311, T = 0.5 → 0.8808."""
    fns = CombinedReward([("max_length", 1.0, {"max_tokens": 2})])
    src = RewardSource(fns)
    r = src.rewards(["p", "p"], ["a b", "a b c"])
    assert r.tolist() == [1.0, 0.0]
    assert src.preference(["p"], ["a b"], ["a b c"]).item() == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-6)
    src.temperature = 0.5
    assert src.preference(["p"], ["a b"], ["a b c"]).item() == pytest.approx(1 / (1 + math.exp(-2)), abs=1e-6)
    assert torch.isnan(RewardSource(CombinedReward([("math_exact", 1.0, {})])).rewards(["p"], ["1"], answer=[None]))[0]


class _Const:
    """Stub member scorer: score = fixed value per response text."""

    def __init__(self, table):
        self.table = table

    def score(self, prompts, responses, references=None):
        return torch.tensor([self.table[r] for r in responses], dtype=torch.float32)


@pytest.mark.parametrize("method,expected", [("mean", [1.5, 0.0]), ("wco", [0.5, -1.0]),
                                             ("uwo", [1.5 - 0.5 * 7 / 6, 0.0 - 0.5 * 2 / 3])])
def test_reward_source_with_ensemble_scorer(method, expected):
    """Members score y1 as (0.5, 1.0, 3.0) and y2 as (−1, 0, 1): mean (1.5, 0), WCO (0.5, −1),
    UWO λ = 0.5 with population variance (7/6, 2/3) → (0.9167, −0.3333); model_weight 2 doubles them."""
    from reward_models.scorer import EnsembleScorer

    members = [_Const({"y1": a, "y2": b}) for a, b in ((0.5, -1.0), (1.0, 0.0), (3.0, 1.0))]
    src = RewardSource(None, EnsembleScorer(members, method, lam=0.5))
    assert src.rewards(["p", "p"], ["y1", "y2"]).tolist() == pytest.approx(expected, abs=1e-5)
    src2 = RewardSource(CombinedReward([("contains", 1.0, {"text": "y1"})]), EnsembleScorer(members, method),
                        scorer_weight=2.0)
    mean = EnsembleScorer(members, method).score(["p", "p"], ["y1", "y2"])
    assert src2.rewards(["p", "p"], ["y1", "y2"]).tolist() == pytest.approx((2 * mean + torch.tensor([1.0, 0.0])).tolist())
    parts = src2.score(["p", "p"], ["y1", "y2"]).components  # what the loop logs (no state on the source)
    assert sorted(parts) == ["contains", "functions", "model", "model_members", "model_variance"]
    assert parts["contains"].tolist() == [1.0, 0.0] and parts["model"].tolist() == pytest.approx(mean.tolist())
    torch.testing.assert_close(parts["model_members"], torch.tensor([[0.5, 1.0, 3.0], [-1.0, 0.0, 1.0]]))
    assert parts["model_variance"].tolist() == pytest.approx([7 / 6, 2 / 3], abs=1e-5)


class _GPMStub:
    """Stub GPM scorer: s(i > j) = u_i − u_j for response utilities u (antisymmetric)."""

    kind = "gpm"

    def __init__(self, u):
        self.u = u

    def group_scores(self, prompt, responses):
        u = torch.tensor([self.u[r] for r in responses])
        s = u[:, None] - u[None, :]
        return s.sum(1) / (len(responses) - 1)

    def preference(self, prompts, a, b):
        return torch.sigmoid(torch.tensor([self.u[x] - self.u[y] for x, y in zip(a, b, strict=False)]))


def test_reward_source_gpm_group_scores_and_native_preference():
    """u = (a: 2, b: 0, c: 1), one group: r_a = ((2−0) + (2−1))/2 = 1.5, r_b = −1.5, r_c = 0;
    groups are scored separately; the oracle is the GPM's own σ(s(a > b)) = σ(2)."""
    src = RewardSource(None, _GPMStub({"a": 2.0, "b": 0.0, "c": 1.0}))
    r = src.rewards(["p"] * 5, ["a", "b", "c", "a", "b"], group=[0, 0, 0, 1, 1])
    assert r.tolist() == pytest.approx([1.5, -1.5, 0.0, 2.0, -2.0])
    assert src.preference(["p"], ["a"], ["b"]).item() == pytest.approx(1 / (1 + math.exp(-2)), abs=1e-6)


def test_gpm_oracle_temperature():
    """T = 0.5 doubles the GPM score: σ(s / T) = σ(4) for s(a > b) = 2, σ(−2) for s(b > c) = −1."""
    src = RewardSource(None, _GPMStub({"a": 2.0, "b": 0.0, "c": 1.0}), temperature=0.5)
    p = src.preference(["p", "p"], ["a", "b"], ["b", "c"])
    assert p.tolist() == pytest.approx([1 / (1 + math.exp(-4)), 1 / (1 + math.exp(2))], abs=1e-6)


class _FixedGenerator:
    """Stub generator returning scripted referee outputs (one per prompt) and recording the prompts."""

    def __init__(self, texts):
        self.texts, self.prompts = list(texts), []

    def generate(self, prompts, params):
        from prefopt.generation.base import Completion

        self.prompts += prompts
        return [[Completion([1], self.texts.pop(0), [0.0])] for _ in prompts]


def test_policy_referee_self_rank_rewards_undo_shuffle():
    """Two shuffled calls over 2 candidates: the referee always prefers the text "good". Whatever the
    label order, reward(good) = 1 and reward(bad) = 0; a parse failure in both calls → ½, ½."""
    import random

    ref = PolicyReferee(_FixedGenerator([]), seed=3)
    rng = random.Random(3)
    texts = []
    for _ in range(2):  # replay the referee's shuffles to script its answers
        shown = [0, 1]
        rng.shuffle(shown)
        texts.append("RANKING: A > B" if shown[0] == 0 else "RANKING: B > A")
    ref.generator = _FixedGenerator(texts + ["???", "???"])
    r = ref.rewards(["q"] * 4, ["good", "bad", "x", "y"], [0, 0, 1, 1], ["open", "open", "open", "open"])
    assert r.tolist() == [1.0, 0.0, 0.5, 0.5]
    assert ref.metrics()["urpo/referee_parse_failure"] == pytest.approx(0.5)
    other = ref.rewards(["q"], ["a"], [0], ["verifiable"])
    assert torch.isnan(other[0])


class _GPMMatrixStub(_GPMStub):
    """Adds the embed-once path: ``score_matrix`` (S[i, j] = u_i − u_j) and ``model.config.beta``."""

    class model:  # noqa: N801 - mimics ModelScorer.model.config
        class config:  # noqa: N801
            beta = 1.0

    def __init__(self, u):
        super().__init__(u)
        self.matrix_calls = 0

    def score_matrix(self, prompt, responses):
        self.matrix_calls += 1
        u = torch.tensor([self.u[r] for r in responses])
        return u[:, None] - u[None, :]


def test_preference_matrix_gpm_embed_once_equals_pairwise():
    """P[i, j] = σ(u_i − u_j) from one score matrix, equal to asking every ordered pair; diagonal 0.5."""
    u = {"a": 2.0, "b": 0.0, "c": 1.0}
    fast = RewardSource(None, _GPMMatrixStub(u), temperature=0.5)
    slow = RewardSource(None, _GPMStub(u), temperature=0.5)
    pf, ps = fast.preference_matrix("p", ["a", "b", "c"]), slow.preference_matrix("p", ["a", "b", "c"])
    assert fast.scorer.matrix_calls == 1
    torch.testing.assert_close(pf, ps)
    assert pf[0, 1].item() == pytest.approx(1 / (1 + math.exp(-4)), abs=1e-6) and pf.diagonal().tolist() == [0.5] * 3
    torch.testing.assert_close(pf + pf.T, torch.ones(3, 3))
