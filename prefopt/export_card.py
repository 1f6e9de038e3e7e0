"""The model card (``README.md``) of an exported folder, rendered by ``huggingface_hub.ModelCard``.

Sections: method, data (with the data's licence where prefopt knows the source), key metrics, how to
load it (and, for reward models, the input convention), the resolved training config.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

# Licences of the datasets prefopt's adapters read (as their hub dataset cards state them).
DATA_LICENCES = {
    "hh_rlhf": "MIT (Anthropic/hh-rlhf)",
    "helpsteer": "CC-BY-4.0 (nvidia/HelpSteer2)",
    "stack_exchange": "CC-BY-SA-4.0 (HuggingFaceH4/stack-exchange-preferences)",
    "rewardbench": "ODC-BY (allenai/reward-bench)",
    "alpacaeval": "CC-BY-NC-4.0 (tatsu-lab/alpaca_eval)",
}
KEY_METRICS = ("eval/accuracy", "eval/margin", "eval/reward_mean", "eval/win_rate_vs_ref", "eval/reward",
               "loss/total", "loss", "rewards/accuracies", "rewards/margins")

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Method

{{ method }}

## Data

{{ data }}

## Key metrics

{{ metrics }}

## How to load

```python
{{ usage }}
```
{{ convention }}
## Training config

```yaml
{{ config }}
```

Trained and exported with [prefopt](https://github.com/prefopt/prefopt) (`prefopt export`).
"""


def data_sources(config: dict[str, Any]) -> tuple[str, list[str]]:
    """``(data path, adapter names)``: reads the built data folder's own ``config.yaml`` when present."""
    path = str((config.get("data") or {}).get("path") or "")
    built = Path(path) / "config.yaml"
    adapters: list[str] = []
    if path and built.is_file():
        data_cfg = yaml.safe_load(built.read_text(encoding="utf-8")) or {}
        adapters = [str(s.get("adapter", "")) for s in data_cfg.get("sources") or []]
    return path, adapters


def _licences(adapters: list[str]) -> list[str]:
    return [DATA_LICENCES.get(a, f"see the source dataset of adapter '{a}'") for a in adapters]


def _metrics_table(metrics: dict[str, float]) -> str:
    rows = [(k, metrics[k]) for k in KEY_METRICS if isinstance(metrics.get(k), (int, float))]
    if not rows:
        return "No held-out metrics were logged."
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| `{k}` | {v:.4g} |" for k, v in rows)


def _usage(reward_model: bool, adapter: bool, base: str) -> str:
    if reward_model and adapter:
        return ("from peft import AutoPeftModelForSequenceClassification\n"
                "model = AutoPeftModelForSequenceClassification.from_pretrained(\"THIS_FOLDER\", num_labels=1)\n"
                "reward = model(**tokenizer(text, return_tensors=\"pt\")).logits[0, 0]")
    if reward_model:
        return ("from transformers import AutoModelForSequenceClassification\n"
                "model = AutoModelForSequenceClassification.from_pretrained(\"THIS_FOLDER\")\n"
                "reward = model(**tokenizer(text, return_tensors=\"pt\")).logits[0, 0]")
    if adapter:
        return ("from peft import AutoPeftModelForCausalLM\n"
                f"model = AutoPeftModelForCausalLM.from_pretrained(\"THIS_FOLDER\")  # base: {base}")
    return ("from transformers import AutoModelForCausalLM\n"
            "model = AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER\")")


def write_card(out: Path, info: dict[str, Any], *, merged: bool) -> Path:
    """Render ``out/README.md`` from the run ``info`` (see :func:`prefopt.export.run_info`)."""
    from huggingface_hub import ModelCard, ModelCardData

    config = info["config"]
    reward_model = info["reward_model"]
    adapter = (out / "adapter_config.json").is_file()
    base = ""
    if adapter:
        base = json.loads((out / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path", "")
    method = (f"Reward model, kind `{(config.get('rm') or {}).get('kind', 'bt')}`" if reward_model
              else f"Policy trained with `{config.get('algorithm', 'unknown')}`")
    method += f" on `{(config.get('model') or {}).get('name', base)}`"
    method += ", LoRA adapter" if adapter else (", LoRA merged into full weights" if merged else "")
    method += f"; {info['steps']} optimizer steps."
    path, adapters = data_sources(config)
    licences = _licences(adapters)
    data = f"Training data: `{path or 'unknown'}`"
    data += f" built from adapter(s) {', '.join(f'`{a}`' for a in adapters)}." if adapters else "."
    data += ("\n\nData licence: " + "; ".join(licences)) if licences else "\n\nData licence: unknown."
    convention = ""
    if reward_model:
        conv = (info.get("reward_config") or {}).get("input_convention", "")
        convention = f"\n**Input convention.** Score {conv}.\n" if conv else ""
    tags = ["prefopt", "reward-model" if reward_model else str(config.get("algorithm", "preference"))]
    card_data = ModelCardData(library_name="peft" if adapter else "transformers", base_model=base or None,
                              tags=tags, pipeline_tag="text-classification" if reward_model else "text-generation")
    card = ModelCard.from_template(
        card_data, template_str=TEMPLATE, title=f"{out.name} (prefopt export)",
        summary="A " + ("reward model" if reward_model else "preference-optimised policy") + " trained with prefopt.",
        method=method, data=data, metrics=_metrics_table(info["metrics"]),
        usage=_usage(reward_model, adapter, base), convention=convention,
        config=yaml.safe_dump(config, sort_keys=False).strip())
    card.save(str(out / "README.md"))
    return out / "README.md"
