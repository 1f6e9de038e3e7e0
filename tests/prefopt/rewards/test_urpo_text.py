"""URPO pure helpers (spec §5 A-U1..A-U3): referee prompts, verdict parsing, rewards."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefopt.losses.advantages import grpo_advantages
from prefopt.rewards import urpo_text as urpo


@pytest.mark.parametrize("text", ["reasoning...\nRANKING: C > A > B",
                                  "ranking:c>a>b", "  Ranking :  c >A>  B.  ",
                                  "**RANKING:** C > A > B", "RANKING: A > B > C\nFinal RANKING: C > A > B"])
def test_a_u1_parser_accepts_noise(text):
    """Case/space/markdown noise and a trailing period are tolerated; the LAST ranking line wins."""
    assert urpo.parse_ranking(text, 3) == [2, 0, 1]


@pytest.mark.parametrize("text", ["RANKING: C > A > A", "RANKING: C > A", "RANKING: C > A > D",
                                  "C > A > B", "", None, "RANKING:", "RANKING: CA > B",
                                  "RANKING: C > A > B > B"])
def test_a_u1_parser_rejects_malformed(text):
    """Duplicates, missing/unknown labels, no RANKING line, empty output → None."""
    assert urpo.parse_ranking(text, 3) is None


def test_a_u1_rewards():
    """Gold order → 1; reversed → 0; one adjacent swap of 3 → 2 of 3 pairs kept = 2/3; swapping
    first and last reverses all three pairs → 0. N = 2: top choice right → 1, wrong → 0."""
    gold = [0, 1, 2]
    assert urpo.pairwise_order_reward([0, 1, 2], gold) == 1.0
    assert urpo.pairwise_order_reward([2, 1, 0], gold) == 0.0
    assert urpo.pairwise_order_reward([1, 0, 2], gold) == pytest.approx(2 / 3)
    assert urpo.pairwise_order_reward([2, 1, 0], gold) == 0.0
    assert urpo.pairwise_order_reward([1, 0], [1, 0]) == 1.0
    assert urpo.pairwise_order_reward([0, 1], [1, 0]) == 0.0
    shown = [2, 0, 1]  # label A shows candidate 2, B shows 0, C shows 1
    assert urpo.referee_reward("RANKING: B > C > A", shown, gold) == 1.0
    assert urpo.referee_reward("I refuse.", shown, gold) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8).flatmap(lambda n: st.tuples(st.permutations(range(n)), st.permutations(range(n)))))
def test_a_u2_shuffle_is_undone(perms):
    """For any shown order and any gold order, a referee that writes the gold order in *labels*
    gets reward 1 and its parsed ranking maps back to the gold candidate indices."""
    shown, gold = list(perms[0]), list(perms[1])
    prompt, shown_out = urpo.format_referee_prompt("Q?", [f"cand{i}" for i in range(len(shown))],
                                                   shown=shown)
    assert shown_out == shown
    for j, i in enumerate(shown):  # label j displays candidate i
        assert f"### Candidate {urpo.labels(len(shown))[j]}\ncand{i}" in prompt
    label_of = {i: j for j, i in enumerate(shown)}
    text = "RANKING: " + " > ".join(urpo.labels(len(shown))[label_of[c]] for c in gold)
    assert urpo.unshuffle(urpo.parse_ranking(text, len(shown)), shown) == gold
    assert urpo.referee_reward(text, shown, gold) == 1.0


def test_random_shuffle_prompt_is_permutation():
    prompt, shown = urpo.format_referee_prompt("Q", ["a", "b", "c", "d"], rng=random.Random(0))
    assert sorted(shown) == [0, 1, 2, 3] and "RANKING: A > B > C > D" in prompt
    with pytest.raises(ValueError, match="permutation"):
        urpo.format_referee_prompt("Q", ["a", "b"], shown=[0, 0])


def test_a_u3_self_rank_rewards_depend_on_ranks_only():
    """G = 4, rank order [2, 0, 3, 1]: rewards (G − rank)/(G − 1) → r2 = 1, r0 = 2/3, r3 = 1/3,
    r1 = 0. Two calls [2, 0, 3, 1] and [0, 2, 3, 1] average to r0 = r2 = 5/6. A failed call is
    ignored; all calls failing → equal rewards → all-zero GRPO advantages."""
    assert urpo.self_rank_rewards([[2, 0, 3, 1]], 4) == pytest.approx([2 / 3, 0, 1, 1 / 3])
    assert urpo.self_rank_rewards([[2, 0, 3, 1], [0, 2, 3, 1]], 4) == pytest.approx([5 / 6, 0, 5 / 6, 1 / 3])
    assert urpo.self_rank_rewards([[2, 0, 3, 1], None], 4) == pytest.approx([2 / 3, 0, 1, 1 / 3])
    flat = urpo.self_rank_rewards([None, [0, 0, 1, 2]], 4)
    assert len(set(flat)) == 1
    adv = grpo_advantages(torch.tensor(flat), torch.zeros(4, dtype=torch.long))
    assert torch.equal(adv, torch.zeros(4))


def test_chunk_indices():
    """G ≤ 8 → one chunk; G = 10 → 5 + 5; G = 17 → 6 + 6 + 5."""
    assert urpo.chunk_indices(8) == [list(range(8))]
    assert [len(c) for c in urpo.chunk_indices(10)] == [5, 5]
    assert [len(c) for c in urpo.chunk_indices(17)] == [6, 6, 5]
    assert sum(urpo.chunk_indices(17), []) == list(range(17))


def test_verifiable_reward():
    """Boxed answers win over 'Answer:' lines; numbers are normalised; missing answer → 0."""
    assert urpo.extract_final_answer("so \\boxed{\\frac{1}{2}} ok") == "\\frac{1}{2}"
    assert urpo.extract_final_answer("work\nAnswer: 42.") == "42"
    assert urpo.verifiable_reward("Answer: 1,000", "1000") == 1.0
    assert urpo.verifiable_reward("Answer: 7.0", "7") == 1.0
    assert urpo.verifiable_reward("Answer: 8", "7", format_bonus=0.1) == pytest.approx(0.1)
    assert urpo.verifiable_reward("no idea", "7", format_bonus=0.1) == 0.0
    assert "Answer:" in urpo.format_player_prompt("1+1?")


def test_old_import_name_still_works():
    """``prefopt.losses.urpo`` re-exports the moved helpers (the same objects)."""
    from prefopt.losses import urpo as old

    assert old.parse_ranking is urpo.parse_ranking and set(old.__all__) == set(urpo.__all__)
    assert old.parse_ranking("RANKING: B > A", 2) == [1, 0]
