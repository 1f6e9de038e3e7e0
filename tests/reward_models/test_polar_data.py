"""POLAR template (P1), truncation (P2) and deterministic triple builders (spec section 3)."""
from __future__ import annotations

import pytest

from data_pipelines.schemas import RankedExample
from prefopt.core.errors import DataError
from reward_models import polar_data as P

SPLIT, REWARD = "<|split|>", "<|reward|>"


class CharTok:
    """One token per character (ids = code points)."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_p1_template_sft_and_pretrain():
    assert P.polar_text("Q", "R", "C", split_token=SPLIT, reward_token=REWARD) == "Q\nR" + SPLIT + "Q\nC" + REWARD
    assert P.polar_text("Q", "R", "C", wrapper="pretrain", split_token=SPLIT,
                        reward_token=REWARD) == "QR" + SPLIT + "QC" + REWARD
    # the sft separator is inserted even for an empty candidate (released-client behaviour)
    assert P.polar_text("Q", "R", "", split_token=SPLIT, reward_token=REWARD).endswith("Q\n" + REWARD)
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert P.flatten(msgs) == "a\nb"
    with pytest.raises(ValueError, match="wrapper"):
        P.polar_text("Q", "R", "C", wrapper="chat")


def test_p2_truncation_arithmetic():
    """max_len 20, max_response_len 5: ref 8 -> first 5, cand 3 stays; prompt budget
    floor((20 - 4 - 5 - 3) / 2) = 4 -> the last 4 of 10 prompt tokens."""
    prompt, ref, cand = list(range(10)), list(range(100, 108)), [200, 201, 202]
    p, r, c = P.polar_truncate(prompt, ref, cand, max_len=20, max_response_len=5)
    assert r == [100, 101, 102, 103, 104] and c == cand and p == [6, 7, 8, 9]
    # odd remainder floors: (21 - 4 - 5 - 3) / 2 = 4.5 -> 4
    assert P.polar_truncate(prompt, ref, cand, max_len=21, max_response_len=5)[0] == [6, 7, 8, 9]
    # budget 0 (or negative) keeps no prompt tokens, unlike the released client's [-0:] slice
    assert P.polar_truncate(prompt, ref, cand, max_len=12, max_response_len=5)[0] == []
    assert P.polar_truncate(prompt, ref, cand, max_len=5, max_response_len=5)[0] == []
    # a large budget keeps the whole prompt
    assert P.polar_truncate(prompt, ref, cand, max_len=1000)[0] == prompt


def test_encode_polar_with_truncation():
    ids = P.encode_polar(CharTok(), "abcdefghij", "RRRRRRRR", "CCC", max_len=20, max_response_len=5,
                         split_token=SPLIT, reward_token=REWARD)
    assert CharTok().decode(ids) == "ghij\nRRRRR" + SPLIT + "ghij\nCCC" + REWARD


def fake_policy(name):
    def generate(prompt, n, seed):
        return [f"{name}:{prompt}:{seed}:{i}" for i in range(n)]
    return generate


def test_pretrain_triples_deterministic_and_valid():
    samples = P.sample_policy_responses(["p1", "p2", "p3"], {"A": fake_policy("A"), "B": fake_policy("B"),
                                                             "C": fake_policy("C")}, n_per_policy=2, seed=1)
    assert len(samples) == 18 and {s["policy"] for s in samples} == {"A", "B", "C"}
    t1 = P.build_pretrain_triples(samples, seed=3, triples_per_prompt=2)
    t2 = P.build_pretrain_triples(list(samples), seed=3, triples_per_prompt=2)
    assert t1 == t2 and len(t1) == 6
    assert t1 != P.build_pretrain_triples(samples, seed=4, triples_per_prompt=2)
    for row in t1:
        a, b = row["policy_a"], row["policy_b"]
        assert a != b
        assert row["reference"].startswith(f"{a}:") and row["chosen"].startswith(f"{a}:")
        assert row["rejected"].startswith(f"{b}:") and row["reference"] != row["chosen"]
        assert row["reference"].split(":")[1] == row["prompt"] == row["rejected"].split(":")[1]
        assert row["wrapper"] == "pretrain"


def test_pretrain_triples_skip_and_errors():
    one_policy = [{"prompt": "p", "policy": "A", "response": r} for r in ("x", "y")]
    assert P.build_pretrain_triples(one_policy) == []
    singletons = [{"prompt": "p", "policy": "A", "response": "x"}, {"prompt": "p", "policy": "B", "response": "y"}]
    assert P.build_pretrain_triples(singletons) == []
    with pytest.raises(DataError, match="line 2, field 'policy': missing field"):
        P.build_pretrain_triples([one_policy[0], {"prompt": "p", "response": "z"}])


def test_sft_triples_best_is_reference():
    """A > B > C -> (ref A, chosen B, rejected C); 4 ranked -> pairs among the rest, seeded."""
    rec = {"prompt": "q", "responses": ["C", "A", "B"], "scores": [1.0, 9.0, 5.0]}
    assert P.build_sft_triples([rec]) == [{"prompt": "q", "reference": "A", "chosen": "B", "rejected": "C",
                                           "wrapper": "sft"}]
    ex = RankedExample(prompt=[{"role": "user", "content": "q"}], responses=["A", "B", "C", "D"],
                       scores=[4.0, 3.0, 2.0, 1.0])
    all_pairs = P.build_sft_triples([ex], max_per_prompt=None)
    assert [(r["chosen"], r["rejected"]) for r in all_pairs] == [("B", "C"), ("B", "D"), ("C", "D")]
    assert all(r["reference"] == "A" for r in all_pairs)
    two = P.build_sft_triples([ex], max_per_prompt=2, seed=5)
    assert two == P.build_sft_triples([ex], max_per_prompt=2, seed=5) and len(two) == 2
    assert (two[0]["chosen"], two[0]["rejected"]) == ("B", "C")
    # tie at the top or fewer than 3 responses -> skipped
    assert P.build_sft_triples([{"prompt": "q", "responses": ["a", "b", "c"], "scores": [2, 2, 1]}]) == []
    assert P.build_sft_triples([{"prompt": "q", "responses": ["a", "b"], "scores": [2, 1]}]) == []
    with pytest.raises(DataError, match="field 'scores'"):
        P.build_sft_triples([{"prompt": "q", "responses": ["a", "b", "c"], "scores": [1]}])


def _policy_tokens(policy, n, length, g):
    """Toy policy p: uniform over its own 4-token support {4p+2, ..., 4p+5} (vocab 32)."""
    import torch

    return torch.randint(0, 4, (n, length), generator=g) + 4 * policy + 2


@pytest.mark.slow
def test_p4_synthetic_policy_discrimination():
    """P4: pre-train a tiny POLAR model on (ref ~ A, pos ~ A, neg ~ B != A) triples of 4 toy policies;
    held-out accuracy of r(ref, pos) > r(ref, neg) >= 95%, and r(ref, ref-copy) ranks first among the
    reference copy and one sample of each other policy in >= 95% of held-out cases."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from reward_models.losses import polar_loss
    from reward_models.models import RewardModel

    split, reward, length = 30, 31, 8

    def seq(ref, cand):
        n = ref.shape[0]
        return torch.cat([ref, torch.full((n, 1), split), cand, torch.full((n, 1), reward)], 1)

    def triples(n, g):
        a = torch.randint(0, 4, (n,), generator=g)
        b = (a + torch.randint(1, 4, (n,), generator=g)) % 4
        draw = lambda pol: torch.cat([_policy_tokens(int(p), 1, length, g) for p in pol])  # noqa: E731
        ref, pos, neg = draw(a), draw(a), draw(b)
        return seq(ref, pos), seq(ref, neg), ref, a

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=64, pad_token_id=0))
    rm = RewardModel(lm, "polar", seed=0, reward_token_id=reward)
    opt = torch.optim.Adam(rm.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        pos, neg, _, _ = triples(32, g)
        out = rm(torch.cat([pos, neg]))
        opt.zero_grad()
        polar_loss(out.rewards[:32], out.rewards[32:]).loss.mean().backward()
        opt.step()
    rm.eval()
    gt = torch.Generator().manual_seed(123)
    pos, neg, ref, a = triples(200, gt)
    with torch.no_grad():
        r = rm(torch.cat([pos, neg])).rewards
        assert (r[:200] > r[200:]).float().mean().item() >= 0.95
        cands = [seq(ref, ref)] + [seq(ref, torch.cat([_policy_tokens(int((p + k) % 4), 1, length, gt) for p in a]))
                                   for k in (1, 2, 3)]
        scores = torch.stack([rm(c).rewards for c in cands])  # [4, 200]
    assert (scores.argmax(0) == 0).float().mean().item() >= 0.95
