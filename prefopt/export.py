"""``prefopt export RUN_DIR --out DIR [--merge] [--push-to-hub REPO_ID]``: a standalone Hugging Face folder.

The folder holds the trained model as other tools load it (policy: a peft adapter or, with ``--merge``,
merged safetensors weights for ``AutoModelForCausalLM``; BT reward model: the SEQ_CLS adapter or, with
``--merge``, an ``AutoModelForSequenceClassification`` checkpoint), the tokenizer with its chat template,
the generation config and a model card (``README.md``: method, data, key metrics, config, data licence)
written with ``huggingface_hub.ModelCard``. ``--push-to-hub`` uploads the folder with ``huggingface_hub``
(``HF_ENDPOINT`` / ``--endpoint`` choose the server; a token comes from ``HF_TOKEN`` or ``hf auth login``).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from prefopt.core.errors import ModelLoadError
from prefopt.core.logging import read_metrics
from prefopt.export_card import write_card

COPY_SKIP = {"prefopt.json", "reward_config.json"}  # prefopt-only metadata stays in the run folder


def find_final(run_dir: Path) -> Path:
    """The trained model folder of a run: ``RUN_DIR/final`` or RUN_DIR itself."""
    for cand in (run_dir / "final", run_dir):
        if (cand / "adapter_config.json").is_file() or (cand / "config.json").is_file():
            return cand
    raise ModelLoadError(f"{run_dir}: no trained model found (expected final/ with adapter_config.json "
                         "or config.json)")


def run_info(run_dir: Path, final: Path) -> dict[str, Any]:
    """What the model card needs: the resolved config, the last metrics and the model's kind."""
    cfg_file = next((p for p in (run_dir / "config.yaml", final.parent / "config.yaml") if p.is_file()), None)
    config = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) if cfg_file else {}
    rows = read_metrics(run_dir / "metrics.jsonl")
    last: dict[str, float] = {}
    for row in rows:
        last.update({k: v for k, v in row.items() if k not in ("step", "time_s") and v is not None})
    return {"config": config or {}, "metrics": last, "steps": rows[-1]["step"] if rows else 0,
            "reward_model": (final / "reward_config.json").is_file()}


def _copy_files(final: Path, out: Path) -> None:
    for f in final.iterdir():
        if f.is_file() and f.name not in COPY_SKIP:
            shutil.copy2(f, out / f.name)


def _merge_reward_model(final: Path, out: Path) -> None:
    from reward_models.kinds import get_kind
    from reward_models.models import RewardModel

    rm = RewardModel.load(final)
    if not get_kind(rm.config.kind).hf_seq_cls:
        raise ModelLoadError(f"{final}: only BT reward models merge into AutoModelForSequenceClassification "
                             f"(this one is {rm.config.kind}); export it without --merge")
    if hasattr(rm.model, "merge_and_unload"):
        rm.model = rm.model.merge_and_unload()
        rm.config.lora = False
    rm.save_pretrained(out)
    (out / "reward_config.json").unlink()


def _merge_policy(final: Path, out: Path) -> None:
    from prefopt.eval.scorers import load_policy

    model, _, is_lora = load_policy(str(final), dtype="float32")
    if is_lora:
        model = model.merge_and_unload()
    model.save_pretrained(str(out), safe_serialization=True)


def _tokenizer_and_generation(final: Path, out: Path, base: str) -> None:
    """Tokenizer (with its chat template) and, for policies, a generation config stopping at EOS."""
    from prefopt.core.models import load_tokenizer

    src = str(final) if (final / "tokenizer_config.json").is_file() else base
    tok = load_tokenizer(src)
    if not (out / "tokenizer_config.json").is_file():
        tok.save_pretrained(str(out))
    if not (out / "generation_config.json").is_file() and not (final / "reward_config.json").is_file():
        from transformers import GenerationConfig

        GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id).save_pretrained(str(out))


def _public_adapter_base(final: Path, out: Path) -> None:
    """Name a policy adapter's base by its public name in ``out/adapter_config.json``."""
    from prefopt.core.adapters import adapter_base, publish_adapter_base

    publish_adapter_base(out, adapter_base(final))


def base_model_name(final: Path) -> str:
    """The public base model name (adapter config) or the checkpoint's own ``_name_or_path``."""
    for name in ("adapter_config.json", "config.json"):
        f = final / name
        if f.is_file():
            data = json.loads(f.read_text(encoding="utf-8"))
            found = data.get("base_model_name_or_path") or data.get("_name_or_path")
            if found:
                return str(found)
    return ""


def export_run(run_dir: Path, out: Path, *, merge: bool = False) -> Path:
    """Write the standalone folder ``out`` for the run in ``run_dir``; returns ``out``."""
    final = find_final(run_dir)
    info = run_info(run_dir, final)
    base = base_model_name(final)
    if (final / "reward_config.json").is_file():
        base = json.loads((final / "reward_config.json").read_text(encoding="utf-8")).get("base_model") or base
    out.mkdir(parents=True, exist_ok=True)
    if merge and (final / "adapter_config.json").is_file():
        (_merge_reward_model if info["reward_model"] else _merge_policy)(final, out)
        for f in final.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
                shutil.copy2(f, out / f.name)
    else:
        _copy_files(final, out)
        if (out / "adapter_config.json").is_file() and not info["reward_model"]:
            _public_adapter_base(final, out)
    if info["reward_model"]:
        info["reward_config"] = json.loads((final / "reward_config.json").read_text(encoding="utf-8"))
    _tokenizer_and_generation(final, out, base)
    write_card(out, info, merged=merge)
    return out


def push_to_hub(folder: Path, repo_id: str, *, endpoint: str | None = None, private: bool = False,
                token: str | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                             commit_message="Upload model exported by prefopt")
    return str(getattr(info, "commit_url", info))


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="prefopt export", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a training run folder (with final/) or a final/ folder")
    p.add_argument("--out", required=True, help="the standalone Hugging Face folder to write")
    p.add_argument("--merge", action="store_true", help="merge a LoRA adapter into full weights")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the folder to this repo")
    p.add_argument("--endpoint", default=None, help="hub URL (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--private", action="store_true", help="create the hub repo private")
    args = p.parse_args(argv)
    out = export_run(Path(args.run_dir), Path(args.out), merge=args.merge)
    print(f"done: prefopt export -> {out}", flush=True)
    if args.push_to_hub:
        print(f"pushed: {push_to_hub(out, args.push_to_hub, endpoint=args.endpoint, private=args.private)}")
    return 0
