"""Reference log-probs computed once and cached on disk (``reference.mode: precompute``).

The cache file ``ref_logps.safetensors`` holds a (N, 2) tensor of summed reference log-probs
(chosen, rejected) for the N training pairs, with a fingerprint of the token ids and the model name;
a cache whose fingerprint does not match is recomputed, never reused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from prefopt.core.logging import progress
from prefopt.logprobs import forward_token_logps
from prefopt.loops.common import autocast
from prefopt.losses.base import seq_logps


def fingerprint(items: list, model_name: str) -> str:
    h = hashlib.sha256(model_name.encode())
    for it in items:
        h.update(repr((it.index, it.tok.prompt_ids, it.tok.chosen_ids, it.tok.rejected_ids)).encode())
    return h.hexdigest()[:32]


def precompute_reference(ctx: Any, model: Any, items: list, cfg: Any, run_dir: Path,
                         name: str = "ref_logps", is_main: bool = True) -> dict[int, torch.Tensor]:
    """Return ``{item index: tensor([ref_chosen_logp, ref_rejected_logp])}``, from cache when valid.

    ``name`` names the cache file (``ref_logps`` for training pairs, ``ref_logps_eval`` for held-out
    pairs). Every rank computes the (deterministic) table; only the main rank writes it.
    """
    from safetensors.torch import load_file, save_file

    from prefopt.loops.offline_step import collate

    folder = Path(cfg.reference.cache_dir or run_dir / "ref_cache")
    path = folder / f"{name}.safetensors"
    fp = fingerprint(items, cfg.model.name)
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            if (fh.metadata() or {}).get("fingerprint") == fp:
                table = load_file(str(path))["ref_logps"]
                return {it.index: table[it.index] for it in items}
    if not items:
        return {}
    table = torch.zeros(len(items), 2)
    bs = max(1, cfg.batch_size * 2)
    with torch.no_grad():
        for i in progress(range(0, len(items), bs), desc="reference log-probs"):
            chunk = items[i:i + bs]
            batch = collate(chunk, ctx)
            with autocast(ctx.precision, ctx.device):
                out = ctx.reference.run(model, lambda m, batch=batch: forward_token_logps(m, batch))
            s = seq_logps(out.token_logps.float(), out.completion_mask)
            c, r = s.chunk(2)
            for j, it in enumerate(chunk):
                table[it.index] = torch.stack([c[j], r[j]]).cpu()
    if is_main:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"ref_logps": table}, str(tmp), metadata={"fingerprint": fp})
        tmp.replace(path)
    return {it.index: table[it.index] for it in items}
