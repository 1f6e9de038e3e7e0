"""``prefopt data label``: sampling, scoring with every scorer kind, drops by reason, resume, refusals."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from prefopt.core.config import load_config
from prefopt.core.errors import ConfigError, DataError
from prefopt.data.label_scorers import JudgeMatrix, copeland_scores


def save_tiny_rm(path: Path, tokenizer, kind: str = "bt", seed: int = 0) -> Path:
    """A tiny-llama backbone + ``kind`` head, saved with its tokenizer."""
    from prefopt.core.models import make_tiny_model
    from reward_models.models import RewardModel

    RewardModel(make_tiny_model("tiny-llama", seed=seed), kind, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

HH_TRAIN = "hh-rlhf/helpful-base.train.sample.jsonl.gz"
AE_DEV = "alpaca-eval/eval_set_ref_text_davinci_003.dev50.jsonl"


def _config(tmp_path: Path, shared_data: Path, body: str, *overrides: str):
    text = (f"kind: label\noutput_dir: {tmp_path / 'out'}\n"
            f"prompts: {{kind: hh_rlhf, path: {shared_data / HH_TRAIN}, max_prompts: 5}}\n" + body)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "label.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, list(overrides), expect="label")


@pytest.fixture(scope="module")
def rms(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("label_rms")
    return {"bt": save_tiny_rm(root / "bt", tiny_tokenizer, seed=0),
            "bt2": save_tiny_rm(root / "bt2", tiny_tokenizer, seed=1),
            "gpm": save_tiny_rm(root / "gpm", tiny_tokenizer, kind="gpm", seed=2)}


TINY_POLICY = "policy: {name: tiny-llama, num_samples: 3, max_new_tokens: 6, batch_size: 2}\n"


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_copeland_golden():
    """Answer 0 beats both (2 wins); 1 and 2 tie each other (1/2 each) and lose to 0."""
    p = torch.tensor([[0.5, 0.9, 0.6], [0.1, 0.5, 0.5], [0.4, 0.5, 0.5]])
    assert copeland_scores(p) == [2.0, 0.5, 0.5]


def test_bt_label_end_to_end_best_vs_worst(tmp_path, shared_data, rms):
    from prefopt.data.label import run_label

    cfg = _config(tmp_path, shared_data, TINY_POLICY + f"scorer: {{kind: reward, reward: {{models: [{rms['bt']}]}}}}\n")
    assert run_label(cfg) == 0
    out = tmp_path / "out"
    ranked, train = _read(out / "ranked.jsonl"), _read(out / "train.jsonl")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["prompts"] == 5 and len(ranked) == 5 and len(train) == 5  # one best-vs-worst pair each
    for r, pair in zip(ranked, train, strict=True):
        best, worst = max(range(3), key=lambda i: r["scores"][i]), min(range(3), key=lambda i: r["scores"][i])
        assert pair["chosen"] == r["responses"][best] and pair["rejected"] == r["responses"][worst]
        assert pair["margin"] == pytest.approx(r["scores"][best] - r["scores"][worst])
        assert r["meta"]["policy"] == "tiny-llama" and r["meta"]["decoding"]["num_samples"] == 3
        assert r["meta"]["scorer"]["kind"] == "reward"
    assert stats["samples_per_second"] > 0 and stats["train"] == 5


def test_shared_prompt_scores_equal_padded(tiny_tokenizer, rms):
    """Scoring K answers of one prompt in one shared-prompt row gives the padded rows' scores."""
    from prefopt.rewards.sources import load_scorer

    prompt = [{"role": "user", "content": "Name a fruit."}]
    answers = ["An apple.", "Pear", "A banana, which is yellow and long."]
    padded = load_scorer([str(rms["bt"])], layout="padded").score([prompt] * 3, answers)
    shared = load_scorer([str(rms["bt"])], layout="shared_prompt").score([prompt] * 3, answers)
    torch.testing.assert_close(shared, padded, atol=1e-5, rtol=0)


def test_deterministic_and_resumes_after_a_kill(tmp_path, shared_data, rms, monkeypatch):
    """A run killed after its first sampling chunk continues with no duplicates or gaps, and ends with
    the same files as a run that was never interrupted (same seed -> same answers)."""
    import prefopt.data.label as label

    body = TINY_POLICY + f"scorer: {{kind: reward, reward: {{models: [{rms['bt']}]}}}}\n"
    clean = _config(tmp_path / "clean", shared_data, body)
    label.run_label(clean)
    real = label._generator

    class Dies:
        def __init__(self, cfg):
            self.inner, self.calls = real(cfg), 0

        def generate(self, prompts, params):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt("killed")
            return self.inner.generate(prompts, params)

    killed = _config(tmp_path / "killed", shared_data, body)
    monkeypatch.setattr(label, "_generator", Dies)
    with pytest.raises(KeyboardInterrupt):
        label.run_label(killed)
    assert len(_read(tmp_path / "killed" / "out" / "samples.jsonl")) == 2  # the first chunk (batch_size 2)
    monkeypatch.setattr(label, "_generator", real)
    label.run_label(killed)
    for name in ("samples.jsonl", "ranked.jsonl", "train.jsonl"):
        a = _read(tmp_path / "clean" / "out" / name)
        b = _read(tmp_path / "killed" / "out" / name)
        assert a == b, name


class _FixedGenerator:
    """Returns the given answers for every prompt (to script empty and identical answers)."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, params):
        from prefopt.generation import Completion

        return [[Completion([1], t, [0.0]) for t in self.answers] for _ in prompts]


def test_empty_and_identical_answers_counted(tmp_path, shared_data, rms, monkeypatch):
    import prefopt.data.label as label

    monkeypatch.setattr(label, "_generator", lambda cfg: _FixedGenerator(["", "same", "same", "other"]))
    cfg = _config(tmp_path, shared_data, "policy: {num_samples: 4}\n"
                  f"scorer: {{kind: reward, reward: {{models: [{rms['bt']}]}}}}\n")
    label.run_label(cfg)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["dropped"]["empty_answer"] == 5 and stats["dropped"]["identical_answer"] == 5
    ranked = _read(tmp_path / "out" / "ranked.jsonl")
    assert all(sorted(r["responses"]) == ["other", "same"] for r in ranked)


def test_all_equal_scores_refused_with_counts(tmp_path, shared_data, monkeypatch):
    """A rule reward that gives every answer 0: no pair can be made; refused, counts in the message."""
    import prefopt.data.label as label

    monkeypatch.setattr(label, "_generator", lambda cfg: _FixedGenerator(["a", "b", "c"]))
    cfg = _config(tmp_path, shared_data, "policy: {num_samples: 3}\n"
                  "scorer: {kind: reward, reward: {functions: [{name: contains, kwargs: {text: zzz}}]}}\n")
    with pytest.raises(DataError, match=r"no training records .*prompts_without_pairs=5.*tie_pairs_dropped=5"):
        label.run_label(cfg)
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_min_margin_drops_pairs(tmp_path, shared_data, monkeypatch):
    """contains('a') scores 'a'=1, 'b'=0: margin 1 passes min_margin 0.5; with 2 it is dropped (refused)."""
    import prefopt.data.label as label

    monkeypatch.setattr(label, "_generator", lambda cfg: _FixedGenerator(["a", "b"]))
    body = ("policy: {num_samples: 2}\n"
            "scorer: {kind: reward, reward: {functions: [{name: contains, kwargs: {text: a}}]}}\n")
    label.run_label(_config(tmp_path, shared_data, body, "output.min_margin=0.5"))
    train = _read(tmp_path / "out" / "train.jsonl")
    assert [(t["chosen"], t["rejected"], t["margin"]) for t in train] == [("a", "b", 1.0)] * 5
    with pytest.raises(DataError, match="pair_margin_below_min=5"):
        label.run_label(_config(tmp_path / "m2", shared_data, body, "output.min_margin=2"))


def test_ensemble_keeps_members_and_variance_filter(tmp_path, shared_data, rms, monkeypatch):
    import prefopt.data.label as label

    monkeypatch.setattr(label, "_generator", lambda cfg: _FixedGenerator(["x y", "hello there", "no"]))
    body = ("policy: {num_samples: 3}\n"
            f"scorer: {{kind: reward, reward: {{models: [{rms['bt']}, {rms['bt2']}], ensemble_method: uwo}}}}\n")
    label.run_label(_config(tmp_path, shared_data, body))
    r = _read(tmp_path / "out" / "ranked.jsonl")[0]
    members, var = torch.tensor(r["meta"]["members"]), torch.tensor(r["meta"]["variance"])
    assert members.shape == (3, 2)
    torch.testing.assert_close(var, members.var(1, unbiased=False))
    torch.testing.assert_close(torch.tensor(r["scores"]), members.mean(1) - 0.5 * var)  # UWO, lam 0.5
    cut = float(var.sort().values[1])  # keep the two answers with the lowest variance
    label.run_label(_config(tmp_path / "v", shared_data, body, f"output.max_variance={cut}"))
    stats = json.loads((tmp_path / "v" / "out" / "stats.json").read_text())
    assert stats["dropped"]["answer_variance_above_max"] >= 1


def test_gpm_matrix_copeland(tmp_path, shared_data, rms, monkeypatch):
    import prefopt.data.label as label

    monkeypatch.setattr(label, "_generator", lambda cfg: _FixedGenerator(["one", "two two", "three 3 3"]))
    label.run_label(_config(tmp_path, shared_data, "policy: {num_samples: 3}\n"
                            f"scorer: {{kind: gpm, reward: {{models: [{rms['gpm']}]}}}}\n"))
    r = _read(tmp_path / "out" / "ranked.jsonl")[0]
    p = torch.tensor(r["meta"]["matrix"])
    torch.testing.assert_close(p + p.T, torch.ones(3, 3), atol=1e-5, rtol=0)  # skew-symmetric preferences
    assert r["scores"] == copeland_scores(p) and sorted(r["scores"]) == [0.0, 1.0, 2.0]


def test_polar_needs_a_reference(tmp_path, tiny_tokenizer, monkeypatch):
    import prefopt.data.label as label

    polar = save_tiny_rm(tmp_path / "polar", tiny_tokenizer, kind="polar")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n", encoding="utf-8")
    monkeypatch.setattr(label, "_generator", lambda cfg: _FixedGenerator(["hi", "hello"]))
    (tmp_path / "l.yaml").write_text(
        f"kind: label\noutput_dir: {tmp_path / 'out'}\nprompts: {{kind: jsonl, path: {prompts}}}\n"
        f"policy: {{num_samples: 2}}\nscorer: {{kind: reward, reward: {{models: [{polar}]}}}}\n")
    with pytest.raises(ValueError, match="POLAR .* reference answer"):
        label.run_label(load_config(tmp_path / "l.yaml", expect="label"))


def test_eval_overlap_refused(tmp_path, shared_data):
    from prefopt.data.label import select_prompts

    cfg = _config(tmp_path, shared_data, f"eval_prompts: [{{kind: hh_rlhf, path: {shared_data / HH_TRAIN}}}]\n")
    with pytest.raises(ConfigError, match=r"eval_prompts\[0\] .* shares 5 prompt\(s\)"):
        select_prompts(cfg)
    ok = _config(tmp_path, shared_data, f"eval_prompts: [{{kind: alpaca_eval, path: {shared_data / AE_DEV}}}]\n")
    assert len(select_prompts(ok)) == 5


def test_seeded_selection_is_distinct_and_reproducible(tmp_path, shared_data):
    from prefopt.data.label import select_prompts

    a = [p.id for p in select_prompts(_config(tmp_path, shared_data, "", "prompts.max_prompts=20"))]
    b = [p.id for p in select_prompts(_config(tmp_path, shared_data, "", "prompts.max_prompts=20"))]
    c = [p.id for p in select_prompts(_config(tmp_path, shared_data, "", "prompts.max_prompts=20",
                                              "prompts.seed=1"))]
    assert a == b and len(set(a)) == 20 and a != c
    d = [p.id for p in select_prompts(_config(tmp_path, shared_data, "", "prompts.max_prompts=10",
                                              "prompts.offset=10"))]
    assert d == a[10:20]  # round 2 of iterative DPO: the next disjoint slice
    with pytest.raises(ConfigError, match="no prompts to label .*offset=100000"):
        select_prompts(_config(tmp_path, shared_data, "", "prompts.offset=100000"))


@pytest.mark.parametrize("override, message", [
    ("policy.num_samples=1", "num_samples must be >= 2"),
    ("policy.temperature=0", "temperature must be > 0"),
    ("prompts.max_prompts=0", "max_prompts must be >= 1"),
    ("output.min_margin=-1", "min_margin must be >= 0"),
    ("scorer.kind=nope", "nope"),
])
def test_bad_settings_refused(tmp_path, shared_data, override, message):
    with pytest.raises(ConfigError, match=message):
        cfg = _config(tmp_path, shared_data, "", override)
        cfg.validate()


def test_reward_scorer_needs_a_source(tmp_path, shared_data):
    with pytest.raises(ConfigError, match="needs scorer.reward.models"):
        _config(tmp_path, shared_data, "").validate()


class _CountingJudge:
    name = "fake"

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def annotate(self, instructions, references, outputs, *, keys=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ConnectionError("server went away")
        return [{"preference": 2.0 if len(o) > len(r) else 1.0} for o, r in zip(outputs, references, strict=True)]


def test_judge_failure_mid_prompt_pays_for_nothing_twice(tmp_path):
    """3 answers = 3 pairwise questions; the judge dies on the 3rd. A rerun asks only that one."""
    from data_pipelines.schemas import PromptExample

    prompt = PromptExample([{"role": "user", "content": "q"}], id="p0")
    answers = ["a", "bb", "ccc"]
    first = _CountingJudge(fail_after=2)
    with pytest.raises(ConnectionError):
        JudgeMatrix(first, tmp_path / "j.jsonl")(prompt, answers)
    second = _CountingJudge()
    g = JudgeMatrix(second, tmp_path / "j.jsonl")(prompt, answers)
    assert second.calls == 1 and len(_read(tmp_path / "j.jsonl")) == 3
    assert g.scores == [0.0, 1.0, 2.0]  # longer wins under this fake judge: Copeland 0, 1, 2


def test_unparsable_judgement_not_cached(tmp_path):
    from data_pipelines.schemas import PromptExample

    class Unparsable(_CountingJudge):
        def annotate(self, instructions, references, outputs, *, keys=None):
            return [{"preference": None}]

    prompt = PromptExample([{"role": "user", "content": "q"}], id="p0")
    with pytest.raises(DataError, match="no usable preference; rerun"):
        JudgeMatrix(Unparsable(), tmp_path / "j.jsonl")(prompt, ["a", "b"])
    assert not (tmp_path / "j.jsonl").exists() or _read(tmp_path / "j.jsonl") == []
    assert JudgeMatrix(_CountingJudge(), tmp_path / "j.jsonl")(prompt, ["a", "bb"]).scores == [0.0, 1.0]


def test_label_counts_are_counter_friendly():
    from prefopt.data.label import clean_answers

    c = Counter()
    assert clean_answers(["x", " ", "x ", "y"], True, c) == [0, 3]
    assert c == Counter(empty_answer=1, identical_answer=1)


def test_prompt_files_counts_and_answers(shared_data):
    """helpful-base test has 2219 transcripts, one with an empty turn (skipped): 2218 prompts, each with
    the chosen final reply as its answer; AlpacaEval dev: 50 instructions with their reference outputs."""
    from prefopt.data.prompts import read_prompt_file

    hh = read_prompt_file("hh_rlhf", str(shared_data / "hh-rlhf/helpful-base.test.jsonl.gz"))
    assert len(hh) == 2218 and all(m["content"].strip() for p in hh for m in p.prompt)
    assert all(p.prompt[-1]["role"] == "user" and p.answer for p in hh)
    ae = read_prompt_file("alpaca_eval", str(shared_data / AE_DEV))
    assert len(ae) == 50 and ae[0].id == "ae-0" and ae[0].answer.startswith("Some cool music from the 1920s")
    with pytest.raises(ConfigError, match="prompt file not found"):
        read_prompt_file("jsonl", "nope.jsonl")


def test_missing_reward_model_named_when_run(tmp_path, shared_data):
    from prefopt.data.label import run_label

    cfg = _config(tmp_path, shared_data, TINY_POLICY + "scorer: {kind: reward, reward: {models: [nope/rm]}}\n")
    cfg.validate()  # validation runs before earlier pipeline stages have written the folder
    with pytest.raises(ConfigError, match="reward model folder not found: nope/rm"):
        run_label(cfg)
