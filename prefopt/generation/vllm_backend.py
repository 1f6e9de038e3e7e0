"""vLLM generation backend (GPU): an in-process ``vllm.LLM`` with weight sync and optional LoRA.

Imported only when the ``vllm`` backend is selected (``make_generator("vllm", ...)``); CPU machines
without vLLM never import this module.

Log-probs: vLLM returns one log-prob per sampled token (``SamplingParams(logprobs=0)``). By default
these come from the raw model distribution; with vLLM >= 0.10 pass ``logprobs_mode="processed_logprobs"``
in ``llm_kwargs`` to get the temperature/top-p processed distribution (what the HF backend returns).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from prefopt.core.errors import ConfigError
from prefopt.generation.base import Completion, Prompt, SamplingParams, StateDict

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest

try:
    import vllm
except ImportError as exc:  # pragma: no cover - depends on the machine
    raise ConfigError("the 'vllm' generation backend needs the vllm package (GPU only): "
                      "pip install -e .[vllm], or use the default 'hf' backend") from exc


class VLLMGenerator:
    """:class:`~prefopt.generation.base.Generator` over ``vllm.LLM``.

    Args:
        model: hub name or local directory (the policy's initial weights).
        tokenizer: tokenizer path (default: ``model``).
        lora_path: serve this LoRA adapter with every request (``enable_lora`` is set).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (leave room for training).
        dtype: ``"bfloat16"`` | ``"float16"`` | ``"float32"`` | ``"auto"``.
        seed: engine seed.
        **llm_kwargs: passed to ``vllm.LLM``.
    """

    def __init__(self, model: str, *, tokenizer: str | None = None, lora_path: str | None = None,
                 gpu_memory_utilization: float = 0.4, dtype: str = "auto", seed: int = 0,
                 max_lora_rank: int = 64, **llm_kwargs: Any):
        if lora_path is not None:
            llm_kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
        self.llm = vllm.LLM(model=model, tokenizer=tokenizer or model, dtype=dtype, seed=seed,
                            gpu_memory_utilization=gpu_memory_utilization, **llm_kwargs)
        self.tok = self.llm.get_tokenizer()
        self.lora_path, self._lora_id = lora_path, 1

    def set_lora(self, path: str | None) -> None:
        """Serve a (new) LoRA adapter directory from now on (a fresh id makes vLLM reload it)."""
        self.lora_path, self._lora_id = path, self._lora_id + 1

    def _lora_request(self) -> LoRARequest | None:
        if self.lora_path is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"policy-{self._lora_id}", self._lora_id, self.lora_path)

    def _sampling(self, params: SamplingParams) -> vllm.SamplingParams:
        return vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                   top_k=params.top_k if params.top_k > 0 else -1,
                                   max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
                                   seed=params.seed, logprobs=0)

    def _prompt(self, prompt: Prompt) -> dict[str, list[int]]:
        from prefopt.generation.hf import encode_prompt_ids

        return {"prompt_token_ids": encode_prompt_ids(self.tok, prompt)}

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt (chat template applied to message lists)."""
        outs = self.llm.generate([self._prompt(p) for p in prompts], self._sampling(params),
                                 lora_request=self._lora_request(), use_tqdm=False)
        result = []
        for o in outs:
            samples = []
            for c in o.outputs:
                ids = list(c.token_ids)
                lps = [float(step[t].logprob) for step, t in zip(c.logprobs or [], ids, strict=False)]
                reason = "length" if c.finish_reason == "length" else "stop"
                samples.append(Completion(ids, c.text, lps, reason, list(o.prompt_token_ids)))
            result.append(samples)
        return result

    def sync_weights(self, model_or_state_dict: torch.nn.Module | StateDict) -> None:
        """Push new policy weights into the engine (``load_weights``), then drop the prefix cache.

        Accepts a module (its ``state_dict``; PEFT models should be merged first) or a state dict whose
        names match the HF checkpoint.
        """
        state = model_or_state_dict.state_dict() if hasattr(model_or_state_dict, "state_dict") else model_or_state_dict
        weights = list(state.items())
        engine = self.llm.llm_engine
        executor = getattr(engine, "model_executor", None)
        worker = getattr(executor, "driver_worker", None)
        runner = getattr(getattr(worker, "worker", worker), "model_runner", None)
        if runner is not None:
            runner.model.load_weights(weights=weights)
        else:  # vLLM v1 engine: run in the worker(s); in-process needs VLLM_ENABLE_V1_MULTIPROCESSING=0
            self.llm.collective_rpc(_load_weights_in_worker, args=(weights,))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()


def _load_weights_in_worker(worker: Any, weights: list) -> None:
    """Run inside a vLLM worker: ``model.load_weights`` on its model runner."""
    worker.model_runner.model.load_weights(weights=weights)
