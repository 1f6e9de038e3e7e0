"""LoRA adapters through PEFT: a small frozen settings dataclass and ``apply_lora``.

PEFT is imported inside the functions (``prefopt.core`` imports only stdlib/torch at module level).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (Hu et al. 2021, "LoRA", eq. 3: ``h = W0 x + (alpha / r) B A x``)."""

    # Rank r of the update B A.
    r: int = 16
    # Scale numerator: the update is multiplied by alpha / r.
    alpha: float = 32.0
    # Dropout on the adapter input.
    dropout: float = 0.05
    # "all-linear" (every linear layer except the output head) or an explicit list of module names.
    target_modules: str | list[str] = "all-linear"
    # Extra modules trained in full and saved with the adapter (e.g. ["score"] for reward heads).
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"lora.r must be > 0, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("lora.target_modules must not be an empty list")


def apply_lora(model: Any, r: int = 16, alpha: float = 32.0, dropout: float = 0.05,
               target_modules: str | list[str] = "all-linear",
               modules_to_save: list[str] | None = None) -> Any:
    """Wrap ``model`` with fresh LoRA adapters (only adapter + ``modules_to_save`` weights train).

    Args:
        model: a transformers causal LM (or any PEFT-supported module).
        r: adapter rank.
        alpha: LoRA scale numerator.
        dropout: adapter dropout.
        target_modules: ``"all-linear"`` or a list of module names (e.g. ``["q_proj", "v_proj"]``).
        modules_to_save: modules trained in full and saved with the adapter.

    Returns:
        A ``peft.PeftModel``; ``model.disable_adapter()`` gives the frozen base (a free reference model).
    """
    from peft import LoraConfig, get_peft_model

    settings = LoraSettings(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
                            modules_to_save=modules_to_save)
    cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                     target_modules=settings.target_modules,
                     modules_to_save=list(settings.modules_to_save) if settings.modules_to_save else None,
                     task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, cfg)


def apply_lora_settings(model: Any, settings: LoraSettings) -> Any:
    """:func:`apply_lora` from a :class:`LoraSettings`."""
    return apply_lora(model, r=settings.r, alpha=settings.alpha, dropout=settings.dropout,
                      target_modules=settings.target_modules, modules_to_save=settings.modules_to_save)
