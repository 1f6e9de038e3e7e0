"""Build the scorer of each kind from CLI arguments, and score preference pairs with it.

Kinds (``--kind``): ``bt`` (scalar reward), ``gpm`` (native pairwise), ``polar`` (reward against a
reference), ``ensemble`` (several BT members aggregated with ``--reduce``), ``dpo`` (implicit reward
``beta * sum_t [log pi(y_t) - log pi_ref(y_t)]`` over response tokens), ``judge`` (generative LM
judge, both orders). ``auto`` reads the kind from ``reward_config.json`` (several paths -> ensemble).

Each pair scorer returns, per pair, the fields :func:`prefopt.eval.rewardbench_metrics.example_correct`
reads (``chosen_score``/``rejected_score``, ``pref_logit``, or ``pref_prob``/``pref_prob_swapped``/
``correct``).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import torch

from prefopt.core.errors import ConfigError, ModelLoadError
from reward_models.kinds import get_kind, kind_names

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from prefopt.eval.judges.lm import LMPairJudge
    from reward_models.scorer import ModelScorer, RewardScorer

# --kind choices: "auto", every registered reward-model kind (reward_models.kinds), then the policy-based
# scorers ("dpo": implicit reward of a policy; "judge": an LM judge).
KINDS = ("auto", *kind_names(), "dpo", "judge")
POLICY_KINDS = ("dpo", "judge")


class PairScorer(Protocol):
    """What RewardBench / BoN / AlpacaEval call: one dict of scores per (prompt, chosen, rejected) pair, with
    the fields :func:`prefopt.eval.rewardbench_metrics.example_correct` reads (module docstring)."""

    def __call__(self, prompts: list, chosen: list[str], rejected: list[str], rows: list[dict]) -> list[dict]: ...


def _dtype(bf16: bool) -> torch.dtype:
    return torch.bfloat16 if bf16 else torch.float32


def is_member_dir(path: Path) -> bool:
    return (path / "reward_config.json").is_file() or (path / "config.json").is_file()


def expand_members(paths: Sequence[str]) -> list[Path]:
    """Model paths; a folder that is not itself a model stands for its member sub-folders (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ModelLoadError(f"model path does not exist: {p}")
        if p.is_dir() and not is_member_dir(p):
            members = sorted(d for d in p.iterdir() if d.is_dir() and is_member_dir(d))
            if not members:
                raise ModelLoadError(f"{p}: neither a reward model nor a folder of ensemble members")
            out.extend(members)
        else:
            out.append(p)
    return out


def checkpoint_kind(path: Path) -> str:
    """``bt``/``gpm``/``polar`` from ``reward_config.json`` (a plain HF classifier is ``bt``)."""
    cfg = path / "reward_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text(encoding="utf-8")).get("kind", "bt")
    return "bt"


def load_model_scorer(path: Path, *, batch_size: int, bf16: bool, max_length: int,
                      device: torch.device | str | None = None) -> ModelScorer:
    """A :class:`reward_models.scorer.ModelScorer` over one reward-model directory (weights in bf16 or fp32)."""
    from reward_models.scorer import load_model_scorer as load

    return load(path, device=device, torch_dtype=_dtype(bf16), batch_size=batch_size, max_length=max_length,
                polar_max_len=max_length)


def resolve_kind(kind: str, paths: Sequence[str]) -> tuple[str, list[Path]]:
    """Final kind and model paths (folders of members expanded for RM kinds)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown --kind '{kind}'; use one of {', '.join(KINDS)}")
    if kind in POLICY_KINDS:
        return kind, [Path(p) for p in paths]
    members = [m for m in expand_members(paths)] if all(Path(p).exists() for p in paths) else None
    if members is None:
        missing = next(p for p in paths if not Path(p).exists())
        raise ModelLoadError(f"model path does not exist: {missing}")
    if kind == "auto":
        kind = "ensemble" if len(members) > 1 else checkpoint_kind(members[0])
    if get_kind(kind).members and len(members) < 2:
        raise ConfigError(f"--kind {kind} needs >= 2 members, found {len(members)} in {list(paths)}")
    if not get_kind(kind).members and len(members) > 1:
        raise ConfigError(f"{len(members)} models given for --kind {kind}; use --kind ensemble")
    return kind, members


# ----------------------------------------------------------------------------------------------- pair scorers


class ScorePairs:
    """BT / ensemble / POLAR: one score per response; POLAR also needs a reference per pair."""

    def __init__(self, scorer: RewardScorer, references: Callable[[dict], str] | None = None):
        self.scorer, self.references = scorer, references

    def __call__(self, prompts: list, chosen: list[str], rejected: list[str], rows: list[dict]) -> list[dict]:
        kw = {}
        if self.references is not None:
            refs = [self.references(r) for r in rows]
            kw = {"references": refs + refs}
        s = self.scorer.score(prompts + prompts, chosen + rejected, **kw).float().tolist()
        n = len(prompts)
        return [{"chosen_score": s[i], "rejected_score": s[n + i]} for i in range(n)]


class GPMPairs:
    """GPM: ``pref_logit = s(chosen > rejected | x)`` (antisymmetric, one embedding per response)."""

    def __init__(self, scorer: ModelScorer):
        self.scorer = scorer

    def __call__(self, prompts: list, chosen: list[str], rejected: list[str], rows: list[dict]) -> list[dict]:
        from reward_models.models import RewardModel

        s = RewardModel.gpm_score(self.scorer.embed(prompts, chosen), self.scorer.embed(prompts, rejected))
        return [{"pref_logit": float(v)} for v in s.float().tolist()]


class JudgePairs:
    """Generative judge, both orders: ``correct`` = 1/0, or 0.5 when the averaged probability is 0.5."""

    def __init__(self, pair_judge: LMPairJudge):
        self.judge = pair_judge

    def __call__(self, prompts: list, chosen: list[str], rejected: list[str], rows: list[dict]) -> list[dict]:
        pc, pr = self.judge.both_orders(prompts, chosen, rejected)
        out = []
        for a, b in zip(pc.tolist(), pr.tolist(), strict=False):
            p = (a + 1.0 - b) / 2
            out.append({"pref_prob": a, "pref_prob_swapped": b, "correct": 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5})
        return out


class DPOPairs:
    """Implicit DPO reward ``beta * sum over response tokens of (log pi - log pi_ref)``.

    Args:
        policy: causal LM (a PEFT model when ``ref`` is None: its adapters are disabled for the reference).
        ref: reference causal LM, ``"disable_adapter"`` or None (reference-free: ``log pi_ref = 0``).
        tokenizer: chat-template tokenizer.
        beta: the DPO beta (scales scores; does not change accuracy).
        max_length: prompt tokens are cut from the left to fit; then the response from the right.
    """

    def __init__(self, policy: torch.nn.Module, ref: torch.nn.Module | str | None, tokenizer: PreTrainedTokenizerBase,
                 *, beta: float = 0.1, max_length: int = 2048,
                 bf16: bool = False):
        self.policy, self.ref, self.tok = policy.eval(), ref, tokenizer
        self.beta, self.max_length, self.bf16 = beta, max_length, bf16

    def _rows(self, prompt: Any, response: str) -> tuple[list[int], int]:
        from data_pipelines.schemas import as_messages
        from data_pipelines.tokenize import encode_completion, encode_prompt

        msgs = as_messages(prompt)
        p = encode_prompt(self.tok, msgs)
        c, _ = encode_completion(self.tok, msgs, response, p)
        c = c[: self.max_length - 1]
        p = p[-(self.max_length - len(c)):]
        return p + c, len(p)

    @torch.no_grad()
    def _sum_logps(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        from prefopt.logprobs import token_logps

        device = next(model.parameters()).device
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        return (token_logps(logits.float(), ids.to(device)) * comp.to(device)).sum(-1).cpu()

    def rewards(self, prompts: list, responses: list[str]) -> torch.Tensor:
        enc = [self._rows(p, r) for p, r in zip(prompts, responses, strict=False)]
        width = max(len(e[0]) for e in enc)
        pad = self.tok.pad_token_id or 0
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        mask, comp = torch.zeros_like(ids), torch.zeros(len(enc), width)
        for i, (row, n_p) in enumerate(enc):
            ids[i, : len(row)] = torch.as_tensor(row)
            mask[i, : len(row)] = 1
            comp[i, n_p: len(row)] = 1.0
        pol = self._sum_logps(self.policy, ids, mask, comp)
        if self.ref is None:
            ref = torch.zeros_like(pol)
        elif isinstance(self.ref, str):  # "disable_adapter": the LoRA base is the reference
            with self.policy.disable_adapter():
                ref = self._sum_logps(self.policy, ids, mask, comp)
        else:
            ref = self._sum_logps(self.ref, ids, mask, comp)
        return self.beta * (pol - ref)

    def __call__(self, prompts: list, chosen: list[str], rejected: list[str], rows: list[dict]) -> list[dict]:
        s = self.rewards(prompts + prompts, chosen + rejected).tolist()
        n = len(prompts)
        return [{"chosen_score": s[i], "rejected_score": s[n + i]} for i in range(n)]


def load_policy(path: str, *, dtype: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, bool]:
    """``(model, tokenizer, is_lora)``; a LoRA adapter folder is put on its base model."""
    from prefopt.core.adapters import adapter_base
    from prefopt.core.models import load_causal_lm, load_tokenizer, refuse_pickled_weights

    p = Path(path)
    refuse_pickled_weights(p)
    if (p / "adapter_config.json").is_file():
        import peft

        model, tok = load_causal_lm(adapter_base(p), dtype=dtype)
        if (p / "tokenizer_config.json").is_file():
            tok = load_tokenizer(str(p))
        return peft.PeftModel.from_pretrained(model, str(p)).eval(), tok, True
    model, tok = load_causal_lm(path, dtype=dtype)
    return model, tok, False


def _dpo_pairs(members: list[Path], o: dict) -> DPOPairs:
    """Implicit DPO reward ``beta * (log pi - log ref)`` of a policy (a LoRA folder's base is its reference)."""
    policy, tok, is_lora = load_policy(str(members[0]), dtype=o["dtype"])
    ref_model = o["ref_model"]
    if ref_model and ref_model != "none":
        from prefopt.core.models import load_causal_lm

        ref = load_causal_lm(ref_model, dtype=o["dtype"])[0]
    elif ref_model == "none":
        ref = None
    elif is_lora:
        ref = "disable_adapter"
    else:
        raise ConfigError("--kind dpo with a full-weight policy needs --ref-model PATH (or 'none' for "
                          "reference-free log-probs); a LoRA adapter folder defaults to its base model")
    return DPOPairs(policy, ref, tok, beta=o["beta"], max_length=o["max_length"], bf16=o["bf16"])


def _judge_pairs(members: list[Path], o: dict) -> JudgePairs:
    from prefopt.core.models import load_causal_lm
    from prefopt.eval.judges.lm import LMPairJudge

    model, tok = load_causal_lm(str(members[0]), dtype=o["dtype"])
    return JudgePairs(LMPairJudge(model, tok, labels=o["judge_labels"], batch_size=o["batch_size"],
                                  max_length=o["max_length"], bf16=o["bf16"]))


_POLICY_PAIRS = {"dpo": _dpo_pairs, "judge": _judge_pairs}


def _reward_model_pairs(kind: str, members: list[Path], o: dict) -> PairScorer:
    """Pair scorer of a reward-model kind, chosen by its registered traits (members, pairwise, reference)."""
    spec = get_kind(kind)
    opts = {k: o[k] for k in ("batch_size", "bf16", "max_length", "device")}
    if spec.members:
        from reward_models.scorer import EnsembleScorer

        return ScorePairs(EnsembleScorer([load_model_scorer(m, **opts) for m in members], method=o["reduce"]))
    scorer = load_model_scorer(members[0], **opts)
    if scorer.kind != kind:
        raise ConfigError(f"{members[0]} is a '{scorer.kind}' reward model, not '{kind}' (use --kind auto)")
    if spec.pairwise:
        return GPMPairs(scorer)
    if spec.needs_reference:
        if o["polar_reference"] is None:
            raise ConfigError(f"--kind {kind} needs --polar-reference FILE.jsonl | field:NAME | generate:MODEL")
        return ScorePairs(scorer, o["polar_reference"])
    return ScorePairs(scorer)


def build_pair_scorer(kind: str, paths: Sequence[str], *, batch_size: int = 8, bf16: bool = False,
                      max_length: int = 2048, reduce: str = "mean", ref_model: str | None = None,
                      beta: float = 0.1, polar_reference: Callable[[dict], str] | None = None,
                      judge_labels: tuple[str, str] = ("A", "B"),
                      device: torch.device | str | None = None) -> tuple[str, PairScorer]:
    """``(resolved kind, callable(prompts, chosen, rejected, rows) -> list[dict])`` for RewardBench."""
    kind, members = resolve_kind(kind, paths)
    opts = dict(batch_size=batch_size, bf16=bf16, max_length=max_length, device=device, reduce=reduce,
                ref_model=ref_model, beta=beta, polar_reference=polar_reference, judge_labels=judge_labels,
                dtype="bfloat16" if bf16 else "float32")
    if kind in _POLICY_PAIRS:
        return kind, _POLICY_PAIRS[kind](members, opts)
    return kind, _reward_model_pairs(kind, members, opts)
