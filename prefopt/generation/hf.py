"""Default generation backend: transformers ``generate``, batched with left padding, on any device.

Log-probs of the sampled tokens are ``log_softmax`` of the *processed* scores ``generate`` sampled from
(temperature, top-k and top-p applied); for greedy decoding these are the model's own log-probs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from prefopt.generation.base import Completion, Prompt, SamplingParams, StateDict, cut_at_stop

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedTokenizerBase


def encode_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Token ids of one prompt: message lists through the chat template (with the assistant header),
    strings as they are (no special tokens added)."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    from data_pipelines.tokenize import encode_prompt

    return encode_prompt(tokenizer, [dict(m) for m in prompt])


class HFGenerator:
    """:class:`~prefopt.generation.base.Generator` over a transformers causal LM.

    Args:
        model: a causal LM (or PEFT wrapper); used in eval mode under ``torch.no_grad``.
        tokenizer: its tokenizer (pad token required; ``prefopt.core.models`` tokenizers have one).
        batch_size: prompts per ``generate`` call (each expands to ``n`` rows).
        max_prompt_length: keep at most this many trailing prompt tokens (None = all).
        prefill_once: with ``n > 1`` samples per prompt, encode each prompt once and share its KV cache.
        decode: ``"hf"`` (transformers ``generate``) or ``"loop"`` (:func:`prefopt.generation.decode.decode_loop`:
            the same sampling, the same tokens for the same seed and rows; stop strings fall back to ``hf``).
        kv_cache: ``"dynamic"`` (transformers' concatenating cache), ``"prealloc"`` (buffers sized once for
            prompt + ``max_new_tokens``: :class:`prefopt.generation.decode.PreallocLayer`) or ``"static"``
            (``decode="hf"`` only: transformers' ``cache_implementation="static"``; every prompt is then
            encoded ``n`` times, as a static cache cannot be passed in prefilled).
        compile: (``kv_cache="static"``) ``torch.compile`` of the decode step through transformers'
            ``CompileConfig``, on any device (transformers compiles on accelerators only by default).
        drop_finished: (``decode="loop"``) remove rows that produced EOS from the decode batch; the random
            stream is kept, so every row draws what it would have drawn in the full batch.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 8,
                 max_prompt_length: int | None = None,
                 prefill_once: bool = True, decode: str = "hf", kv_cache: str = "dynamic",
                 drop_finished: bool = False, compile: bool = False):
        if decode not in ("hf", "loop") or kv_cache not in ("dynamic", "prealloc", "static"):
            raise ValueError(f"HFGenerator: decode must be hf|loop and kv_cache dynamic|prealloc|static, got "
                             f"{decode!r}, {kv_cache!r}")
        if drop_finished and decode != "loop":
            raise ValueError("HFGenerator: drop_finished needs decode='loop'")
        if (kv_cache == "static" and decode != "hf") or (compile and kv_cache != "static"):
            raise ValueError("HFGenerator: kv_cache='static' needs decode='hf', and compile needs kv_cache='static'")
        self.compile = compile
        self.model, self.tok = model, tokenizer
        self.prefill_once = prefill_once
        self.decode, self.kv_cache, self.drop_finished = decode, kv_cache, drop_finished
        self.batch_size, self.max_prompt_length = batch_size, max_prompt_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: str = "float32", device: torch.device | str | None = None,
                        trust_remote_code: bool = False, **kwargs: Any) -> "HFGenerator":
        """Load a model with :func:`prefopt.core.models.load_causal_lm` (ModelLoadError if missing)."""
        from prefopt.core.models import load_causal_lm

        model, tok = load_causal_lm(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
        if device is not None:
            model = model.to(device)
        return cls(model, tok, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sync_weights(self, model_or_state_dict: torch.nn.Module | StateDict) -> None:
        """Copy new weights in (a no-op when the policy object itself is passed)."""
        if model_or_state_dict is self.model:
            return
        state = model_or_state_dict
        if hasattr(state, "state_dict"):
            state = state.state_dict()
        self.model.load_state_dict(dict(state))

    def _config(self, params: SamplingParams, n: int | None = None) -> GenerationConfig:
        from transformers import GenerationConfig

        n = params.n if n is None else n
        kw: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, num_return_sequences=n,
                                  pad_token_id=self.pad_id, eos_token_id=self.eos_id,
                                  return_dict_in_generate=True, output_scores=True)
        if params.greedy:
            kw.update(do_sample=False)
        else:
            kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        if params.stop:
            kw["stop_strings"] = list(params.stop)
        if self.kv_cache == "static":
            from transformers import CompileConfig

            kw["cache_implementation"] = "static"
            kw["disable_compile"] = not self.compile
            if self.compile:
                kw["compile_config"] = CompileConfig()
                kw["compile_config"]._compile_all_devices = True  # transformers' switch for CPU compilation
        return GenerationConfig(**kw)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.as_tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Encode all but the last prompt token into a KV cache and return the ``[B * n]`` rows with it.

        With ``prefill_once`` each prompt is encoded once and its cache repeated ``n`` times, instead of
        ``generate`` encoding every prompt ``n`` times (``num_return_sequences``). Same sampled tokens: the
        cache holds the same keys/values, and generation runs on the same ``[B * n]`` rows."""
        from transformers import DynamicCache

        if not self.prefill_once:
            ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        cache = DynamicCache()
        if ids.shape[1] > 1:
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            # only the cache is needed, not [B, L, V] logits
            cache = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                               cache=cache, use_cache=True, logits_to_keep=1).cache
        if self.prefill_once:
            cache.batch_repeat_interleave(n)
            ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        return ids, mask, cache

    def _cache(self, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams) -> tuple:
        ids, mask, cache = self._prefill(ids, mask, params.n)
        if self.kv_cache == "prealloc":
            from prefopt.generation.decode import preallocate

            preallocate(cache, ids.shape[1] + params.max_new_tokens)
        return ids, mask, cache

    def _hf_generate(self, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams) -> tuple:
        """transformers ``generate``: ``(new tokens [rows, steps], log-probs [rows, steps])``."""
        extra: dict[str, Any] = {"tokenizer": self.tok} if params.stop else {}
        shared = ids.shape[1] > 1 and self.kv_cache != "static" and (
            (params.n > 1 and self.prefill_once) or self.kv_cache == "prealloc")
        if shared:
            ids, mask, extra["cache"] = self._cache(ids, mask, params)
        config = self._config(params, n=1 if shared else params.n)
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **extra)
        gen = out.sequences[:, ids.shape[1]:]
        logps = torch.zeros(gen.shape, dtype=torch.float32, device=gen.device)
        for t in range(len(out.scores)):  # log-softmax one step at a time: [rows, vocab] at most in memory
            logps[:, t] = torch.log_softmax(out.scores[t].float(), -1).gather(-1, gen[:, t:t + 1]).squeeze(-1)
        return gen, logps

    def _loop_generate(self, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams) -> tuple:
        from prefopt.generation.decode import decode_loop, hf_warpers

        ids, mask, cache = self._cache(ids, mask, params)
        warpers = [] if params.greedy else hf_warpers(params.temperature, params.top_k, params.top_p)
        out = decode_loop(self.model, ids, mask, cache, max_new_tokens=params.max_new_tokens, eos_id=self.eos_id,
                          pad_id=self.pad_id, warpers=warpers, sample=not params.greedy,
                          drop_finished=self.drop_finished)
        return out.tokens, out.logprobs

    @torch.no_grad()
    def _generate_batch(self, prompt_rows: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        ids, mask = self._left_pad(prompt_rows)
        run = self._loop_generate if self.decode == "loop" and not params.stop else self._hf_generate
        gen, logps = run(ids, mask, params)
        result: list[list[Completion]] = []
        for i, row in enumerate(gen.tolist()):
            p = i // params.n
            if i % params.n == 0:
                result.append([])
            result[-1].append(self._finish(row, logps[i].tolist(), params, prompt_rows[p]))
        return result

    def _finish(self, row: list[int], logps: list[float], params: SamplingParams, prompt: list[int]) -> Completion:
        """Trim padding after EOS, cut at stop strings, decode."""
        n, reason = len(row), "length"
        if self.eos_id is not None and self.eos_id in row:
            n, reason = row.index(self.eos_id) + 1, "stop"
        if params.stop:
            for k in range(1, n + 1):  # first token whose prefix text contains a stop string
                text, hit = cut_at_stop(self.tok.decode(row[:k], skip_special_tokens=True), params.stop)
                if hit:
                    return Completion(row[:k], text, logps[:k], "stop", list(prompt))
        text = self.tok.decode(row[:n], skip_special_tokens=True)
        return Completion(row[:n], text, logps[:n], reason, list(prompt))

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt, seeded with ``params.seed`` (same call -> same samples)."""
        rows = [encode_prompt_ids(self.tok, p) for p in prompts]
        if self.max_prompt_length is not None:
            rows = [r[-self.max_prompt_length:] for r in rows]
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        out: list[list[Completion]] = []
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(params.seed)
            for s in range(0, len(rows), self.batch_size):
                out.extend(self._generate_batch(rows[s:s + self.batch_size], params))
        if was_training:
            self.model.train()
        return out
