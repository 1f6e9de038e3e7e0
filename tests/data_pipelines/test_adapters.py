"""Adapters turn each source format into schema records (happy paths; bad inputs live in test_bad_inputs)."""
from __future__ import annotations

import json

import pytest

from data_pipelines.adapters import adapt, adapter_names
from data_pipelines.adapters.ranked import html_to_text
from data_pipelines.errors import Issues
from data_pipelines.schemas import PairwiseExample, PromptExample, RankedExample
from data_pipelines.sources import RawRecord, read_records
from prefopt.core.registry import DATASETS


def _recs(*rows):
    return [RawRecord(r, "mem.jsonl", i) for i, r in enumerate(rows, start=1)]


def _one(adapter, row, options=None):
    (ex,) = list(adapt(adapter, _recs(row), options, source="src"))
    return ex


def test_registered_names():
    assert set(adapter_names()) == {"hh_rlhf", "helpsteer", "stack_exchange", "rewardbench", "alpacaeval",
                                    "trl_standard", "trl_conversational", "pairwise", "ranked", "group", "prompt"}
    import data_pipelines.builders  # noqa: F401  (registers the builders)

    assert {"builder.ranked_to_pairs", "builder.curriculum", "builder.group"} <= set(DATASETS.names())


def test_hh_rlhf_multi_turn():
    prefix = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke."
    ex = _one("hh_rlhf", {"chosen": prefix + "\n\nAssistant: Why did... ", "rejected": prefix + "\n\nAssistant: No."})
    assert ex == PairwiseExample(prompt=[{"role": "user", "content": "Hi there"},
                                         {"role": "assistant", "content": "Hello!"},
                                         {"role": "user", "content": "Tell me a joke."}],
                                 chosen="Why did...", rejected="No.", id="src:1", source="src")


def test_helpsteer_groups_by_prompt_in_first_seen_order_and_keeps_ties():
    rows = [{"prompt": "B", "response": "b1", "helpfulness": 2, "correctness": 4},
            {"prompt": "A", "response": "a1", "helpfulness": 3, "correctness": 0},
            {"prompt": "B", "response": "b2", "helpfulness": 2, "correctness": 1}]
    out = list(adapt("helpsteer", _recs(*rows), issues=Issues("skip"), source="hs"))  # "A" has one response
    assert out == [RankedExample(prompt=[{"role": "user", "content": "B"}], responses=["b1", "b2"],
                                 scores=[2.0, 2.0], id="hs:1", source="hs", meta={"lines": [1, 3]})]


def test_helpsteer_weighted_score():
    """score = 1 * helpfulness + 0.5 * correctness: (2 + 2, 2 + 0.5) = (4, 2.5)."""
    rows = [{"prompt": "B", "response": "b1", "helpfulness": 2, "correctness": 4},
            {"prompt": "B", "response": "b2", "helpfulness": 2, "correctness": 1}]
    (ex,) = adapt("helpsteer", _recs(*rows), {"weights": {"helpfulness": 1, "correctness": 0.5}})
    assert ex.scores == [4.0, 2.5]


def test_stack_exchange_strips_html_by_default():
    row = {"qid": 5, "question": "<p>How &amp; why?</p>", "metadata": ["u", "https://x.stackexchange.com", "a"],
           "answers": [{"answer_id": 1, "text": "<p>Because<br>so</p><ul><li>one</li></ul>", "pm_score": 3,
                        "selected": True},
                       {"answer_id": 2, "text": "<p>No</p>", "pm_score": -1, "selected": False}]}
    ex = _one("stack_exchange", row)
    assert ex.prompt == [{"role": "user", "content": "How & why?"}]
    assert ex.responses == ["Because\nso\n\n- one", "No"] and ex.scores == [3.0, -1.0]
    assert ex.id == "x.stackexchange.com/5"
    assert ex.meta == {"qid": "5", "site": "x.stackexchange.com", "answer_ids": [1, 2], "selected": 0}
    kept = _one("stack_exchange", row, {"html": "keep"})
    assert kept.responses[1] == "<p>No</p>"


def test_html_to_text_keeps_pre_spacing():
    assert html_to_text("<p>a  b\n c</p><pre><code>x = 1\n    y</code></pre>") == "a b c\n\nx = 1\n    y"


def test_rewardbench_and_alpacaeval_on_real_slices(shared_data):
    rb = list(adapt("rewardbench", read_records(str(shared_data / "reward-bench/reward_bench_filtered.dev10per_subset.jsonl"))))
    assert len(rb) == 230 and len({e.meta["subset"] for e in rb}) == 23
    assert all(isinstance(e, PairwiseExample) and e.id == f"{e.meta['subset']}:{e.meta['id']}" for e in rb)
    assert rb[0].meta["section"] == "Chat"
    path = shared_data / "alpaca-eval/eval_set_ref_text_davinci_003.dev50.jsonl"
    ae = list(adapt("alpacaeval", read_records(str(path))))
    first = json.loads(path.read_text().splitlines()[0])
    assert len(ae) == 50 and isinstance(ae[0], PromptExample)
    assert ae[0].prompt == [{"role": "user", "content": first["instruction"]}] and ae[0].answer == first["output"]
    assert ae[0].meta == {"generator": "text_davinci_003", "dataset": first["dataset"]}


def test_trl_standard_explicit_and_implicit_prompt():
    ex = _one("trl_standard", {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 2})
    assert (ex.prompt, ex.chosen, ex.rejected, ex.margin) == ([{"role": "user", "content": "The sky is"}],
                                                              " blue.", " green.", 2.0)
    imp = _one("trl_standard", {"chosen": "The sky is blue.", "rejected": "The sky is green."})
    assert (imp.prompt[0]["content"], imp.chosen, imp.rejected) == ("The sky is ", "blue.", "green.")


def test_trl_conversational_explicit_and_implicit_prompt():
    user = [{"role": "user", "content": "What color is the sky?"}]
    ex = _one("trl_conversational", {"prompt": user, "chosen": [{"role": "assistant", "content": "Blue."}],
                                     "rejected": [{"role": "assistant", "content": "Green."}]})
    assert (ex.prompt, ex.chosen, ex.rejected) == (user, "Blue.", "Green.")
    imp = _one("trl_conversational", {"chosen": user + [{"role": "assistant", "content": "Blue."}],
                                      "rejected": user + [{"role": "assistant", "content": "Green."}]})
    assert (imp.prompt, imp.chosen, imp.rejected) == (user, "Blue.", "Green.")


def test_trl_conversational_rejects_multi_message_completion():
    from prefopt.core.errors import DataError

    two = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(DataError, match=r"mem.jsonl, line 1, field 'chosen': completion must be exactly one "
                                        r"assistant message"):
        _one("trl_conversational", {"prompt": "q", "chosen": two, "rejected": [{"role": "assistant", "content": "c"}]})


def test_generic_records_round_trip():
    pair = PairwiseExample(prompt=[{"role": "user", "content": "q"}], chosen="a", rejected="b", margin=0.5,
                           id="7", source="src", meta={"k": 1})
    assert _one("pairwise", pair.to_record()) == pair
    ranked = _one("ranked", {"prompt": "q", "responses": ["a", "b", "c"], "scores": [1, 3, 2], "id": 3})
    assert (ranked.scores, ranked.id) == ([1.0, 3.0, 2.0], "3")
    group = _one("group", {"prompt": "q", "responses": ["a", "b"], "rewards": [0, 1]})
    assert (group.rewards, group.id) == ([0.0, 1.0], "src:1")
    prompt = _one("prompt", {"prompt": "q", "answer": "ref"})
    assert (prompt.answer, prompt.prompt) == ("ref", [{"role": "user", "content": "q"}])
