"""Models, synthetic batches and training steps for ``benchmarks.gpu_check`` (device-agnostic).

Only torch, transformers and the project's own modules are imported here (no TRL, ``datasets``,
DeepSpeed or vLLM), so the check runs on a stock CUDA image. Token ids are synthetic (seeded draws
from the SmolLM2 vocabulary, completions end with EOS): no tokenizer or data file is needed.

Each step is the project's own training path, as in ``prefopt bench`` (``benchmarks/dpo.py``,
``rm.py``, ``grpo.py``): DPO ``pairwise_loss`` with cached reference log-probs, the Bradley-Terry
reward-model step (``collate_rm`` + ``RewardModel`` + ``bt_loss``), the GRPO update
(``forward_token_logps`` + the registered ``grpo`` loss, mu = 1); then ``SingleBackend``'s backward,
clip to 1.0 and AdamW.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch

VOCAB, BOS, EOS = 49152, 1, 2
# SmolLM2-135M's shape (its config.json); used with random weights when the embedded weights are absent.
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=8192)
# A ~0.58B Llama (20 layers, 1536 wide, GQA 12/4 heads, tied 49k embeddings) for the bf16 throughput.
LLAMA_0P6B = dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=20, num_attention_heads=12,
                  num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=8192)
ROPE_THETA = 100000.0
LR, BETA = 1e-6, 0.1


def random_llama(shape: dict[str, Any], seed: int) -> Any:
    """A seeded random ``LlamaForCausalLM`` of ``shape`` (fp32, sdpa attention, SmolLM2 vocab/ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
                      tie_word_embeddings=True, **shape)
    if getattr(cfg, "rope_parameters", None) is not None:
        cfg.rope_parameters = {"rope_theta": ROPE_THETA, "rope_type": "default"}
    else:  # transformers 4.x
        cfg.rope_theta = ROPE_THETA
    cfg._attn_implementation = "sdpa"
    cfg.use_cache = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.float().eval()


def smollm2(seed: int, dry_run: bool) -> tuple[Any, str]:
    """SmolLM2-135M: the embedded weights when converted in this machine's cache, else random weights
    of its shape (a dry run uses 2 of its 30 layers). Returns ``(model, what)``."""
    from prefopt.core.models import EMBEDDED_NAME, cache_root, load_causal_lm

    if not dry_run and (cache_root() / "models" / EMBEDDED_NAME / "config.json").is_file():
        model, _ = load_causal_lm(EMBEDDED_NAME, dtype="float32", attn_implementation="sdpa")
        model.config.use_cache = False
        return model.eval(), "embedded weights"
    shape = {**SMOLLM2_135M, "num_hidden_layers": 2} if dry_run else SMOLLM2_135M
    what = "random weights, 2 of 30 layers (dry run)" if dry_run else "random weights (embedded ones not cached here)"
    return random_llama(shape, seed), what


def tiny(seed: int) -> Any:
    from prefopt.core.models import make_tiny_model

    model = make_tiny_model("tiny-smollm2", seed=seed, attn_implementation="sdpa")
    model.config.use_cache = False
    return model


# ----------------------------------------------------------------------------------------------- data

@dataclass(frozen=True)
class Sizes:
    """Synthetic batch shape: ``n`` pairs (DPO/RM) or prompts (GRPO, ``g`` completions each)."""

    n: int
    g: int
    prompt: tuple[int, int]       # prompt length range (inclusive)
    completion: tuple[int, int]   # completion length range (inclusive, EOS included)


def _ids(gen: torch.Generator, lo_hi: tuple[int, int]) -> tuple[int, ...]:
    n = int(torch.randint(lo_hi[0], lo_hi[1] + 1, (1,), generator=gen))
    return tuple(int(t) for t in torch.randint(3, VOCAB, (n,), generator=gen))


def synthetic(sizes: Sizes, seed: int) -> dict[str, Any]:
    """Pairs (``TokenizedPair``) and groups (prompt, ``g`` completions) of seeded random token ids."""
    from data_pipelines.tokenize import TokenizedPair

    gen = torch.Generator().manual_seed(seed)
    comp = lambda: _ids(gen, (sizes.completion[0] - 1, sizes.completion[1] - 1)) + (EOS,)  # noqa: E731
    pairs = [TokenizedPair(_ids(gen, sizes.prompt), comp(), comp(), id=str(i)) for i in range(sizes.n)]
    groups = [(_ids(gen, sizes.prompt), [comp() for _ in range(sizes.g)]) for _ in range(sizes.n)]
    adv = torch.randn(sizes.n, sizes.g, generator=gen)
    adv = ((adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-4)).reshape(-1)
    return {"pairs": pairs, "groups": groups, "advantages": adv}


def padded_tokens(kind: str, data: dict[str, Any]) -> int:
    """Real tokens of the batch in the padded layout (prompt repeated per sequence)."""
    if kind == "grpo":
        return sum(len(p) * len(cs) + sum(len(c) for c in cs) for p, cs in data["groups"])
    return sum(2 * len(t.prompt_ids) + len(t.chosen_ids) + len(t.rejected_ids) for t in data["pairs"])


def model_tokens(kind: str, layout: str, data: dict[str, Any]) -> int:
    """Tokens the layout runs through the model (``shared_prompt``: each prompt once)."""
    if layout != "shared_prompt":
        return padded_tokens(kind, data)
    if kind == "grpo":
        return sum(len(p) + sum(len(c) for c in cs) for p, cs in data["groups"])
    return sum(len(t.prompt_ids) + len(t.chosen_ids) + len(t.rejected_ids) for t in data["pairs"])


# ----------------------------------------------------------------------------------------------- steps

def _backend(model: Any, device: torch.device) -> Any:
    from prefopt.core.backend import OptimConfig, SingleBackend

    backend = SingleBackend(device, OptimConfig(lr=LR, warmup_ratio=0.0, scheduler="constant", max_grad_norm=1.0))
    backend.prepare(model, 1000)
    return backend


def dpo_ref_cache(policy: Any, data: dict[str, Any], seed: int) -> dict[int, torch.Tensor]:
    """Reference sequence log-probs ``{pair index: (chosen, rejected)}`` (fp32, CPU): the starting
    policy's own plus seeded N(0, 4^2) offsets, so the DPO loss is not ln 2 and its gradient is not
    zero at the first step (a second model on the device is not needed)."""
    from prefopt.logprobs import forward_token_logps
    from prefopt.loops.offline_step import collate
    from prefopt.losses.base import seq_logps

    items = _items(data)
    dev = next(policy.parameters()).device
    with torch.no_grad():
        out = forward_token_logps(policy, collate(items, _ctx("padded", "fp32", dev)))
    seqs = seq_logps(out.token_logps.float(), out.completion_mask).cpu()
    c, r = seqs.chunk(2)
    noise = 4.0 * torch.randn(len(items), 2, generator=torch.Generator().manual_seed(seed))
    return {it.index: torch.stack([c[k], r[k]]) + noise[k] for k, it in enumerate(items)}


def _items(data: dict[str, Any]) -> list:
    from prefopt.loops.offline_data import Item

    return [Item(tp, i) for i, tp in enumerate(data["pairs"])]


def _ctx(layout: str, precision: str, device: torch.device) -> Any:
    from prefopt.algorithms import get_algorithm
    from prefopt.loops.offline_step import StepContext

    spec = get_algorithm("dpo")
    return StepContext(spec=spec, loss_spec=spec.loss_spec(), hparams=spec.build_hparams({"beta": BETA}),
                       pad_id=EOS, precision=precision, device=device, layout=layout)


def make_step(kind: str, model: Any, data: dict[str, Any], device: torch.device, layout: str, precision: str,
              ref_cache: dict | None = None, seed: int = 0) -> Callable[[], dict[str, float]]:
    """One optimizer step of ``kind`` (dpo | rm | grpo) on ``model`` moved to ``device``; the closure
    returns ``{"loss", "grad_norm"}`` (the norm before clipping)."""
    return {"dpo": _dpo_step, "rm": _rm_step, "grpo": _grpo_step}[kind](model, data, device, layout, precision,
                                                                          ref_cache, seed)


def _dpo_step(model, data, device, layout, precision, ref_cache, seed):
    from prefopt.loops.offline_step import pairwise_loss

    ctx = _ctx(layout, precision, device)
    ctx.ref_cache = ref_cache
    backend = _backend(model, device)
    items = _items(data)
    model.train()

    def step() -> dict[str, float]:
        loss = pairwise_loss(ctx, model, items).loss.mean()
        backend.backward(loss)
        return {"loss": float(loss.detach()), "grad_norm": backend.step()["optim/grad_norm"]}

    step.n_params = count_params(model)
    return step


def _rm_step(model, data, device, layout, precision, ref_cache, seed):
    from prefopt.loops.common import autocast
    from reward_models.data import RMItem, collate_rm
    from reward_models.losses import bt_loss
    from reward_models.models import RewardModel
    from reward_models.train_step import to_device

    rm = RewardModel(model, kind="bt", seed=seed).float()
    backend = _backend(rm, device)
    items = [RMItem((t.prompt_ids + t.chosen_ids, t.prompt_ids + t.rejected_ids),
                    (len(t.prompt_ids), len(t.prompt_ids))) for t in data["pairs"]]
    batch = to_device(collate_rm(items, EOS, layout), device)
    rm.train()

    def step() -> dict[str, float]:
        with autocast(precision, device):
            r = rm(batch.input_ids, batch.attention_mask, rows=batch.rows).rewards.float()
        loss = bt_loss(r[batch.slot[:, 0]], r[batch.slot[:, 1]]).loss.mean()
        backend.backward(loss)
        return {"loss": float(loss.detach()), "grad_norm": backend.step()["optim/grad_norm"]}

    step.n_params = count_params(rm)
    return step


def _grpo_step(model, data, device, layout, precision, ref_cache, seed):
    from prefopt.core.registry import GROUP_LOSSES
    from prefopt.logprobs import forward_token_logps
    from prefopt.loops.common import autocast
    from prefopt.loops.online_algos import make_batch
    from prefopt.losses.group import GRPOParams

    rows = [(p, c) for p, cs in data["groups"] for c in cs]
    batch = make_batch([p for p, _ in rows], [c for _, c in rows], EOS).for_forward(layout, EOS)
    spec, hp = GROUP_LOSSES.get("grpo"), GRPOParams()
    adv = data["advantages"].to(device)
    backend = _backend(model, device)
    model.train()

    def step() -> dict[str, float]:
        with autocast(precision, device):
            out = forward_token_logps(model, batch)
        pol, mask = out.token_logps.float(), out.completion_mask
        inputs = {"policy_token_logps": pol, "old_token_logps": pol.detach(), "advantages": adv,
                  "completion_mask": mask, "num_tokens": mask.float().sum()}
        loss = spec(inputs, hp).loss.mean()
        backend.backward(loss)
        # at mu = 1 the ratio is 1, so the loss value depends only on the advantages; the mean
        # completion-token log-prob is the number that checks the forward
        logp = float((pol.detach() * mask).sum() / mask.sum())
        return {"loss": float(loss.detach()), "grad_norm": backend.step()["optim/grad_norm"], "logp_mean": logp}

    step.n_params = count_params(model)
    return step


def clone_to(model: Any, device: torch.device) -> Any:
    return copy.deepcopy(model).to(device)


def count_params(model: Any) -> int:
    """Distinct parameters (tied embeddings once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
