"""Sequence-tiled MLP: each decoder layer's MLP runs over the tokens in tiles, and keeps only its input.

The MLP of a transformer layer acts on each position alone, so it can run tile by tile along the
sequence (TiledMLP in Bekman et al., 2025, "Arctic Long Sequence Training: Scalable and Efficient
Training for Multi-Million Token Sequences", arXiv:2506.13996). The forward keeps no intermediate (a
gated MLP's gate, up, activation and product are four ``intermediate_size``-wide tensors per token,
more than its ``hidden_size`` input); the backward recomputes one tile at a time and backpropagates it,
so at most one tile's intermediates exist. The outputs are equal, and the gradients equal up to the
order of the per-tile sums.

Under activation checkpointing a layer's activations live only while that layer is recomputed in the
backward; then the MLP's intermediates are most of the recomputed layer, and tiling removes them.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch

__all__ = ["TiledMLPFunction", "check_tiled_mlp_backend", "enable_tiled_mlp", "tiled_mlp_modules"]


class TiledMLPFunction(torch.autograd.Function):
    """``fn`` over the rows of ``x`` (``(..., H)``) in tiles of ``tile`` rows, saving only ``x``.

    ``params`` are the trainable parameters ``fn`` uses: they are inputs, so their gradients (summed over
    the tiles) flow through autograd like any other, with no side effects on ``.grad``."""

    @staticmethod
    def forward(ctx: Any, fn: Callable[[torch.Tensor], torch.Tensor], tile: int, x: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        ctx.fn, ctx.tile = fn, tile
        ctx.autocast = (x.device.type, torch.is_autocast_enabled(x.device.type),
                        torch.get_autocast_dtype(x.device.type))
        ctx.save_for_backward(x, *params)
        rows = x.reshape(-1, x.shape[-1])
        with torch.no_grad():
            outs = [fn(part) for part in rows.split(tile)]
        return torch.cat(outs).reshape(*x.shape[:-1], outs[0].shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        x, *params = ctx.saved_tensors
        device, autocast_on, autocast_dtype = ctx.autocast
        need_x = ctx.needs_input_grad[2]
        rows, grads = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = torch.empty_like(rows) if need_x else None
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        for start in range(0, rows.shape[0], ctx.tile):
            tile = slice(start, start + ctx.tile)
            part = rows[tile].detach().requires_grad_(need_x)
            with torch.enable_grad(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
                out = ctx.fn(part)
            got = torch.autograd.grad(out, [part] * need_x + params, grads[tile], allow_unused=True)
            if grad_x is not None:
                grad_x[tile] = got[0]
            for i, g in enumerate(got[need_x:]):
                if g is not None:
                    grad_params[i] = g if grad_params[i] is None else grad_params[i].add_(g)
        return (None, None, None if grad_x is None else grad_x.reshape(x.shape), *grad_params)

def _tiled_forward(module: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], tile: int,
                   x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled() or x.shape[:-1].numel() <= tile:
        return forward(x)
    params = [p for p in module.parameters() if p.requires_grad]
    return TiledMLPFunction.apply(forward, tile, x, *params)


def tiled_mlp_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``mlp`` of every decoder layer (a child named ``mlp`` of a module whose class name ends in
    ``DecoderLayer``, as in Llama, Qwen, Mistral and Gemma)."""
    return [m.mlp for m in model.modules()
            if type(m).__name__.endswith("DecoderLayer") and isinstance(getattr(m, "mlp", None), torch.nn.Module)]


def enable_tiled_mlp(model: torch.nn.Module, tile_tokens: int) -> torch.nn.Module:
    """Run every decoder layer's MLP in tiles of ``tile_tokens`` tokens when gradients are on (the
    instance's ``forward`` is wrapped, so parameter names and saved weights are unchanged)."""
    if tile_tokens < 1:
        raise ValueError(f"model.tiled_mlp_tokens must be >= 1, got {tile_tokens}")
    mlps = tiled_mlp_modules(model)
    if not mlps:
        raise ValueError(f"model.tiled_mlp_tokens: {type(model).__name__} has no decoder layer with an `mlp` "
                         "(a child named mlp of a *DecoderLayer module); unset it for this model")
    for mlp in mlps:
        forward = getattr(mlp, "_untiled_forward", mlp.forward)
        mlp._untiled_forward = forward
        mlp.forward = functools.partial(_tiled_forward, mlp, forward, tile_tokens)
    return model


def check_tiled_mlp_backend(model_cfg: Any, backend_cfg: Any) -> None:
    """A run's config check: ZeRO-3 partitions the MLP's parameters, which the tiled backward takes as
    inputs, so the two are not combined."""
    if model_cfg.tiled_mlp_tokens is not None and backend_cfg.kind != "single" and backend_cfg.zero_stage == 3:
        raise ValueError("model.tiled_mlp_tokens cannot be combined with backend.zero_stage 3 (ZeRO-3 partitions "
                         "the MLP's parameters, which the tiled backward takes as inputs); use zero_stage 2 or "
                         "unset model.tiled_mlp_tokens")
