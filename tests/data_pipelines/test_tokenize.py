"""Chat-template encoding (real SmolLM2 tokenizer) and the over-length policy (pure integer lists)."""
from __future__ import annotations

import copy
import re

import pytest

from data_pipelines.schemas import GroupExample, PairwiseExample, RankedExample
from data_pipelines.tokenize import (
    LengthPolicy,
    TokenizedList,
    TokenizedPair,
    TokenizeStats,
    apply_length_policy,
    encode_completion,
    encode_prompt,
    tokenize_examples,
    tokenize_group,
    tokenize_pairwise,
    tokenize_ranked,
)
from prefopt.core.errors import DataError

MSGS = [{"role": "user", "content": "What is 2+2?"}]
EOS = 2  # SmolLM2 <|im_end|>


def test_prompt_is_chat_template_with_generation_header(tiny_tokenizer):
    ids = encode_prompt(tiny_tokenizer, MSGS)
    expected = tiny_tokenizer.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert ids == list(expected)
    assert tiny_tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_completion_is_reply_plus_eos_without_template_trailer(tiny_tokenizer):
    """Full conversation = prompt + "It is 4." + <|im_end|> + "\\n"; the "\\n" trailer is cut."""
    prompt = encode_prompt(tiny_tokenizer, MSGS)
    ids, fallback = encode_completion(tiny_tokenizer, MSGS, "It is 4.", prompt)
    assert not fallback
    assert tiny_tokenizer.decode(ids) == "It is 4.<|im_end|>"
    full = tiny_tokenizer.apply_chat_template([*MSGS, {"role": "assistant", "content": "It is 4."}],
                                              tokenize=True)["input_ids"]
    assert list(full) == prompt + ids + tiny_tokenizer("\n", add_special_tokens=False)["input_ids"]


def test_completion_falls_back_when_prompt_is_not_a_prefix(tiny_tokenizer):
    """A reply starting with "\\n\\n" merges with the header's "\\n" in BPE -> concatenation fallback."""
    prompt = encode_prompt(tiny_tokenizer, MSGS)
    ids, fallback = encode_completion(tiny_tokenizer, MSGS, "\n\nfour", prompt)
    assert fallback and ids[-1] == EOS
    assert tiny_tokenizer.decode(ids) == "\n\nfour<|im_end|>"
    stats = TokenizeStats()
    tokenize_pairwise(PairwiseExample(MSGS, "\n\nfour", "five"), tiny_tokenizer, LengthPolicy(), stats)
    assert stats.template_fallbacks == 1


def test_tokenizer_without_chat_template_uses_plain_format(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    prompt = encode_prompt(tok, MSGS)
    assert tok.decode(prompt) == "User: What is 2+2?\n\nAssistant: "
    ids, _ = encode_completion(tok, MSGS, "4", prompt)
    assert ids[-1] == EOS and tok.decode(ids[:-1]).strip() == "4"


@pytest.mark.parametrize("example, field", [
    (PairwiseExample(MSGS, "", "no"), "chosen"),
    (PairwiseExample(MSGS, "yes", "   "), "rejected"),
    (PairwiseExample([{"role": "user", "content": ""}], "a", "b"), "prompt[0].content"),
    (RankedExample(MSGS, ["a", "", "c"], [1.0, 2.0, 3.0]), "responses[1]"),
])
def test_empty_text_names_the_field(tiny_tokenizer, example, field):
    with pytest.raises(DataError, match=re.escape(f"field '{field}'")) as exc:
        tokenize_examples([example], tiny_tokenizer, LengthPolicy())
    assert exc.value.field == field


def test_pairwise_ranked_group(tiny_tokenizer):
    pair = tokenize_pairwise(PairwiseExample(MSGS, "Four.", "Five.", margin=0.5, id="p1"), tiny_tokenizer,
                             LengthPolicy())
    assert isinstance(pair, TokenizedPair) and pair.id == "p1" and pair.margin == 0.5
    assert pair.chosen_ids[-1] == EOS and pair.rejected_ids[-1] == EOS
    ranked = tokenize_ranked(RankedExample(MSGS, ["a", "bb", "ccc"], [3, 1, 2], id="r"), tiny_tokenizer,
                             LengthPolicy())
    assert isinstance(ranked, TokenizedList) and len(ranked.completion_ids) == 3 and ranked.scores == (3.0, 1.0, 2.0)
    group = tokenize_group(GroupExample(MSGS, ["x", "y"], [0.0, 1.0]), tiny_tokenizer, LengthPolicy())
    assert group.scores == (0.0, 1.0) and group.prompt_ids == ranked.prompt_ids
    with pytest.raises(DataError, match="scores"):
        tokenize_ranked(RankedExample(MSGS, ["a", "b"], [1.0]), tiny_tokenizer, LengthPolicy())


def test_tokenize_examples_counts_drops(tiny_tokenizer):
    long_reply = "word " * 50
    items, stats = tokenize_examples([PairwiseExample(MSGS, "ok", "fine"), PairwiseExample(MSGS, long_reply, "x")],
                                     tiny_tokenizer, LengthPolicy(max_length=60, max_prompt_length=40))
    assert len(items) == 1
    assert (stats.kept, stats.dropped) == (1, 1)


# ---- length policy on plain lists: prompt P = [1..6] (6 tokens), completions of 3 and 5 tokens ----
P = [1, 2, 3, 4, 5, 6]
C = [[10, 11, 12], [20, 21, 22, 23, 24]]


def fit(policy, prompt=P, comps=C, eos=None):
    stats = TokenizeStats()
    return apply_length_policy(prompt, comps, policy, stats, eos_token_id=eos), stats


def test_fits_untouched():
    out, stats = fit(LengthPolicy(max_length=11, max_prompt_length=6))  # 6 + 5 = 11
    assert out == (P, C) and stats.kept == 1 and stats.truncated == 0


def test_drop_policy():
    out, stats = fit(LengthPolicy(max_length=10, max_prompt_length=6))
    assert out is None and stats.dropped == 1
    out, stats = fit(LengthPolicy(max_length=100, max_prompt_length=5))  # prompt over its own limit
    assert out is None and stats.dropped == 1


def test_truncate_left_cuts_prompt_start():
    """max_length 9, longest completion 5 -> prompt keeps its last 9 - 5 = 4 tokens [3, 4, 5, 6]."""
    out, stats = fit(LengthPolicy(max_length=9, max_prompt_length=6, overlong="truncate_left"))
    assert out == ([3, 4, 5, 6], C)
    assert (stats.truncated, stats.prompt_truncated, stats.completion_truncated) == (1, 1, 0)
    out, _ = fit(LengthPolicy(max_length=None, max_prompt_length=2, overlong="truncate_left"))
    assert out == ([5, 6], C)


def test_truncate_right_cuts_completion_end():
    """max_length 8: prompt (6) kept, completions cut to 8 - 6 = 2 tokens; eos_last overwrites the last."""
    out, stats = fit(LengthPolicy(max_length=8, max_prompt_length=6, overlong="truncate_right"))
    assert out == (P, [[10, 11], [20, 21]])
    assert (stats.prompt_truncated, stats.completion_truncated) == (0, 1)
    out, _ = fit(LengthPolicy(max_length=8, max_prompt_length=6, overlong="truncate_right", eos_last=True), eos=99)
    assert out == (P, [[10, 99], [20, 99]])
    out, stats = fit(LengthPolicy(max_length=6, max_prompt_length=3, overlong="truncate_right"))
    assert out == ([4, 5, 6], [[10, 11, 12], [20, 21, 22]])  # prompt start cut to 3, completions to 3
    assert (stats.prompt_truncated, stats.completion_truncated) == (1, 1)


def test_no_room_drops_or_raises():
    """max_length 6 = prompt length: no completion token fits (truncate_right); truncate_left needs
    6 - 5 = 1 prompt token at least -> with max_length 5 nothing fits either."""
    out, stats = fit(LengthPolicy(max_length=6, max_prompt_length=10, overlong="truncate_right"))
    assert out is None and stats.dropped_no_room == 1
    out, stats = fit(LengthPolicy(max_length=5, max_prompt_length=10, overlong="truncate_left"))
    assert out is None and stats.dropped_no_room == 1
    with pytest.raises(DataError, match="no room"):
        fit(LengthPolicy(max_length=6, max_prompt_length=10, overlong="truncate_right", on_no_room="raise"))


def test_policy_validation():
    with pytest.raises(ValueError):
        LengthPolicy(overlong="truncate")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LengthPolicy(max_length=0)
