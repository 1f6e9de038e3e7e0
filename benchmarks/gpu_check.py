"""``scripts/gpu_check.sh [--dry-run] [--out FILE.json]``: the GPU check, one JSON of results.

On a CUDA machine (sized for <= 8 minutes on one H200 with a stock torch/transformers image):

1. **equality** - CUDA vs CPU at fp32 (TF32 off) for one DPO, reward-model (Bradley-Terry) and GRPO
   step, on the tiny random model and on SmolLM2-135M (embedded weights if this machine has them
   converted, else random weights of its shape): two optimizer steps per side, the losses (abs diff)
   and grad norms before clipping (relative diff) of both steps. Layout ``shared_prompt`` (the default).
2. **block_mask** - the shared-prompt block mask through CUDA sdpa: sequence log-probs of pairs and of
   groups, ``shared_prompt`` vs ``padded`` on the device (fp32: must agree; bf16: recorded) and device
   ``shared_prompt`` vs CPU.
3. **lm_head** - the chunked completion-only LM head under CUDA bf16 autocast vs the model's full
   logits (sequence log-probs within bf16 rounding, 0.1 nats, as ``tests/prefopt/test_lm_head.py``;
   gradient cosine recorded).
4. **tiled_mlp** - the sequence-tiled MLP (``model.tiled_mlp_tokens``) vs the plain MLP under activation
   checkpointing on shared-prompt pairs: sequence log-probs (fp32: 1e-4; bf16 autocast: 0.1 nats) and the
   gradient cosine.
5. **throughput** - bf16 autocast (over fp32 weights, the project's ``precision: bf16``) DPO, RM and
   GRPO steps in ``shared_prompt`` and ``padded`` on a ~0.58B random Llama built from a config:
   tokens/s (padded-layout real tokens), MFU = 6 N x tokens fed to the model / s over a bf16 matmul
   peak measured in the same run (best of 8192^3 GEMMs), peak CUDA memory (``max_memory_allocated``).
   TRL is not run: its trainers import ``datasets`` (pyarrow), which the stock image lacks.

``--dry-run`` runs the same code on CPU with tiny sizes (CPU vs CPU "equality", which must be exact);
``tests/benchmarks/test_gpu_check.py`` runs it and checks the JSON. The JSON is rewritten after every
section, so a run cut short still leaves the sections it finished.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Sequence

import torch

from benchmarks import gpu_check_steps as S
from benchmarks.common import write_json

FORBIDDEN = ("trl", "datasets", "deepspeed", "vllm")
KINDS = ("dpo", "rm", "grpo")
LOSS_TOL, GRAD_REL_TOL, BLOCK_TOL, HEAD_TOL = 1e-4, 1e-3, 1e-4, 0.1
EQ_SIZES = {False: S.Sizes(n=4, g=4, prompt=(16, 48), completion=(8, 32)),
            True: S.Sizes(n=2, g=3, prompt=(6, 14), completion=(3, 8))}
SIZES = {False: {"tput": {"dpo": S.Sizes(8, 2, (256, 512), (128, 256)), "rm": S.Sizes(8, 2, (256, 512), (128, 256)),
                          "grpo": S.Sizes(4, 8, (128, 384), (128, 256))}, "warmup": 2, "steps": 5, "gemm": 8192},
         True: {"tput": {k: S.Sizes(2, 4, (8, 16), (4, 8)) for k in KINDS}, "warmup": 1, "steps": 2, "gemm": 256}}
DRY_TPUT_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5, max_position_embeddings=512)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, same code paths")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_check[_dry_run].json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=",".join(("equality", "block_mask", "lm_head", "tiled_mlp", "throughput")),
                   help="comma-separated sections to run")
    return p


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "device": str(device), "cpu_count": os.cpu_count(),
           "load_avg": os.getloadavg(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   allow_tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- equality

def _two_steps(kind: str, base: Any, data: dict, device: torch.device, ref: dict | None, seed: int) -> list[dict]:
    model = S.clone_to(base, device)
    step = S.make_step(kind, model, data, device, "shared_prompt", "fp32", ref, seed)
    out = [step(), step()]
    del model, step
    return out


def _compare(a: list[dict], b: list[dict]) -> dict[str, Any]:
    loss = max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in x if k != "grad_norm")
    grad = max(abs(x["grad_norm"] - y["grad_norm"]) / max(abs(x["grad_norm"]), 1e-12) for x, y in zip(a, b, strict=True))
    # loss_abs_diff covers the loss and GRPO's mean completion log-prob
    return {"cpu": a, "device": b, "loss_abs_diff": loss, "grad_norm_rel_diff": grad,
            "passed": bool(loss <= LOSS_TOL and grad <= GRAD_REL_TOL)}


def equality(device: torch.device, dry: bool, seed: int) -> dict[str, Any]:
    """CPU vs ``device`` at fp32 for each step kind on the tiny model and on SmolLM2-135M."""
    data = S.synthetic(EQ_SIZES[dry], seed)
    out: dict[str, Any] = {"tolerance": {"loss_abs": LOSS_TOL, "grad_norm_rel": GRAD_REL_TOL}}
    for name in ("tiny", "smollm2_135m"):
        base, what = (S.tiny(seed), "tiny-smollm2 random") if name == "tiny" else S.smollm2(seed, dry)
        ref = S.dpo_ref_cache(base, data, seed)
        res: dict[str, Any] = {"weights": what, "n_params": S.count_params(base)}
        for kind in KINDS:
            cpu = _two_steps(kind, base, data, torch.device("cpu"), ref, seed)
            dev = _two_steps(kind, base, data, device, ref, seed)
            res[kind] = _compare(cpu, dev)
        out[name] = res
        del base
    out["passed"] = all(out[m][k]["passed"] for m in ("tiny", "smollm2_135m") for k in KINDS)
    return out


# ----------------------------------------------------------------------------------------------- numerics

def _seq_logps(model: Any, batch: Any, precision: str, device: torch.device, **kw: Any) -> torch.Tensor:
    from prefopt.logprobs import forward_token_logps
    from prefopt.loops.common import autocast
    from prefopt.losses.base import seq_logps

    with autocast(precision, device):
        out = forward_token_logps(model, batch, **kw)
    return seq_logps(out.token_logps.float(), out.completion_mask)


def _batches(data: dict, layout: str) -> dict[str, Any]:
    from prefopt.loops.offline_data import Item
    from prefopt.loops.offline_step import collate
    from prefopt.loops.online_algos import make_batch

    ctx = S._ctx(layout, "fp32", torch.device("cpu"))
    rows = [(p, c) for p, cs in data["groups"] for c in cs]
    groups = make_batch([p for p, _ in rows], [c for _, c in rows], S.EOS).for_forward(layout, S.EOS)
    return {"pairs": collate([Item(tp, i) for i, tp in enumerate(data["pairs"])], ctx), "groups": groups}


def block_mask(device: torch.device, dry: bool, seed: int) -> dict[str, Any]:
    """``shared_prompt`` vs ``padded`` sequence log-probs on ``device`` (fp32 and bf16), and vs CPU."""
    data = S.synthetic(EQ_SIZES[dry], seed)
    base, what = S.smollm2(seed, dry)
    model = S.clone_to(base, device)
    out: dict[str, Any] = {"weights": what, "tolerance_fp32": BLOCK_TOL}
    shared, padded = _batches(data, "shared_prompt"), _batches(data, "padded")
    with torch.no_grad():
        for part in ("pairs", "groups"):
            cpu = _seq_logps(base, shared[part], "fp32", torch.device("cpu"))
            res = {}
            for prec in ("fp32", "bf16"):
                s = _seq_logps(model, shared[part], prec, device).cpu()
                p = _seq_logps(model, padded[part], prec, device).cpu()
                res[f"shared_vs_padded_{prec}_max_abs"] = float((s - p).abs().max())
                if prec == "fp32":
                    res["device_vs_cpu_fp32_max_abs"] = float((s - cpu).abs().max())
            res["passed"] = bool(max(res["shared_vs_padded_fp32_max_abs"], res["device_vs_cpu_fp32_max_abs"])
                                 <= BLOCK_TOL * max(1.0, float(cpu.abs().max())))
            out[part] = res
    out["passed"] = out["pairs"]["passed"] and out["groups"]["passed"]
    return out


def lm_head(device: torch.device, dry: bool, seed: int) -> dict[str, Any]:
    """Completion-only chunked head vs full logits under bf16 autocast on ``device``: log-probs, grads."""
    data = S.synthetic(EQ_SIZES[dry], seed)
    base, what = S.smollm2(seed, dry)
    model = S.clone_to(base, device)
    batch = _batches(data, "padded")["pairs"]
    seqs, grads = [], []
    for full in (False, True):
        model.zero_grad(set_to_none=True)
        s = _seq_logps(model, batch, "bf16", device, full_logits=full)
        s.sum().backward()
        seqs.append(s.detach().cpu())
        grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]))
    diff = float((seqs[0] - seqs[1]).abs().max())
    cos = float(torch.nn.functional.cosine_similarity(grads[0].double(), grads[1].double(), dim=0))
    return {"weights": what, "precision": "bf16 autocast", "seq_logp_max_abs_diff": diff, "tolerance": HEAD_TOL,
            "grad_cosine": cos, "passed": bool(diff <= HEAD_TOL and cos > 0.99)}


def tiled_mlp(device: torch.device, dry: bool, seed: int) -> dict[str, Any]:
    """Sequence-tiled MLP (tiles of 16 tokens) vs the plain MLP on ``device``, activation checkpointing on,
    shared-prompt pairs: sequence log-probs and gradient cosine at fp32 and under bf16 autocast."""
    from prefopt.core.tiled_mlp import enable_tiled_mlp

    data = S.synthetic(EQ_SIZES[dry], seed)
    base, what = S.smollm2(seed, dry)
    batch = _batches(data, "shared_prompt")["pairs"]
    out: dict[str, Any] = {"weights": what, "tile_tokens": 16}
    for prec, tol, min_cos in (("fp32", BLOCK_TOL, 0.9999), ("bf16", HEAD_TOL, 0.99)):
        seqs, grads = [], []
        for tiled in (False, True):
            model = S.clone_to(base, device)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()
            if tiled:
                enable_tiled_mlp(model, 16)
            s = _seq_logps(model, batch, prec, device)
            s.sum().backward()
            seqs.append(s.detach().cpu())
            grads.append(torch.cat([p.grad.flatten().double().cpu() for p in model.parameters() if p.grad is not None]))
        diff = float((seqs[0] - seqs[1]).abs().max())
        cos = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
        out[prec] = {"seq_logp_max_abs_diff": diff, "grad_cosine": cos,
                     "passed": bool(diff <= tol * max(1.0, float(seqs[0].abs().max())) and cos > min_cos)}
    out["passed"] = out["fp32"]["passed"] and out["bf16"]["passed"]
    return out


# ----------------------------------------------------------------------------------------------- throughput

def matmul_peak(device: torch.device, size: int, reps: int = 10) -> float:
    """Best bf16 ``size``^3 GEMM throughput on ``device`` in GFLOP/s (5 GEMMs per timing)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    torch.matmul(a, b)
    _sync(device)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(5):
            torch.matmul(a, b)
        _sync(device)
        best = max(best, 5 * 2 * size ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def _timed(step: Callable[[], dict], device: torch.device, warmup: int, steps: int) -> tuple[list[float], list[dict]]:
    logs, times = [], []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        logs.append(step())
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, logs


def _one_throughput(kind: str, layout: str, base: Any, device: torch.device, cfg: dict, seed: int,
                    peak: float) -> dict[str, Any]:
    data = S.synthetic(cfg["tput"][kind], seed)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    model = S.clone_to(base, device)
    ref = S.dpo_ref_cache(model, data, seed) if kind == "dpo" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = S.make_step(kind, model, data, device, layout, "bf16", ref, seed)
    setup_mb = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    times, logs = _timed(step, device, cfg["warmup"], cfg["steps"])
    med = statistics.median(times)
    tokens, fed = S.padded_tokens(kind, data), S.model_tokens(kind, layout, data)
    flops = 6 * step.n_params * fed / med
    res = {"s_per_step": med, "s_per_step_all": times, "tokens_per_step": tokens, "model_tokens_per_step": fed,
           "tokens_per_s": tokens / med, "model_tflops_per_s": flops / 1e12, "mfu": flops / 1e9 / peak,
           "n_params": step.n_params, "losses": [x["loss"] for x in logs]}
    if device.type == "cuda":
        res.update(setup_allocated_mb=setup_mb, peak_allocated_mb=torch.cuda.max_memory_allocated(device) / 2**20)
    del model, step
    return res


def throughput(device: torch.device, dry: bool, seed: int) -> dict[str, Any]:
    cfg = SIZES[dry]
    base = S.random_llama(DRY_TPUT_SHAPE if dry else S.LLAMA_0P6B, seed)
    peak0 = matmul_peak(device, cfg["gemm"])
    out: dict[str, Any] = {"model": {"shape": DRY_TPUT_SHAPE if dry else S.LLAMA_0P6B,
                                     "n_params": S.count_params(base), "weights": "random"},
                           "precision": "bf16 autocast over fp32 weights", "warmup": cfg["warmup"],
                           "steps": cfg["steps"], "sizes": {k: vars(v) for k, v in cfg["tput"].items()},
                           "trl": "skipped: TRL's trainers import datasets (pyarrow), not in the stock image"}
    for kind in KINDS:
        for layout in ("shared_prompt", "padded"):
            out[f"{kind}[{layout}]"] = _one_throughput(kind, layout, base, device, cfg, seed, peak0)
    peak1 = matmul_peak(device, cfg["gemm"])
    out["matmul_peak_bf16_gflops"] = {"start": peak0, "end": peak1, "gemm_size": cfg["gemm"]}
    used = max(peak0, peak1)
    for res in out.values():  # MFU against the higher of the two peaks
        if isinstance(res, dict) and "mfu" in res:
            res["mfu"] = res["model_tflops_per_s"] * 1e3 / used
    return out


# ----------------------------------------------------------------------------------------------- main

SECTIONS: dict[str, Callable[[torch.device, bool, int], dict[str, Any]]] = {
    "equality": equality, "block_mask": block_mask, "lm_head": lm_head, "tiled_mlp": tiled_mlp,
    "throughput": throughput}


def run(argv: Sequence[str]) -> dict[str, Any]:
    args = parser().parse_args(list(argv))
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 equality means fp32 matmuls
        torch.backends.cudnn.allow_tf32 = False
    else:
        raise SystemExit("gpu_check: no CUDA device here; use --dry-run to run the same code on CPU")
    out_path = args.out or f"benchmarks/results/gpu_check{'_dry_run' if args.dry_run else ''}.json"
    payload: dict[str, Any] = {"command": "scripts/gpu_check.sh " + " ".join(argv), "dry_run": args.dry_run,
                               "environment": environment(device), "sections": {}}
    t_all = time.perf_counter()
    for name in [s for s in args.only.split(",") if s]:
        if name not in SECTIONS:
            raise SystemExit(f"gpu_check: unknown section {name!r}; known: {', '.join(SECTIONS)}")
        t0 = time.perf_counter()
        print(f"gpu_check: {name} ...", flush=True)
        try:
            res = SECTIONS[name](device, args.dry_run, args.seed)
        except Exception as exc:  # keep the other sections' results; the error is in the JSON
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:],
                   "passed": False}
        res["seconds"] = time.perf_counter() - t0
        payload["sections"][name] = res
        print(f"gpu_check: {name} done in {res['seconds']:.1f} s (passed: {res.get('passed', '-')})", flush=True)
        _finish(payload, t_all)
        write_json(out_path, payload)
    return payload


def _finish(payload: dict[str, Any], t0: float) -> None:
    secs = payload["sections"]
    payload["seconds"] = time.perf_counter() - t0
    payload["forbidden_modules_imported"] = [m for m in FORBIDDEN if m in sys.modules]
    payload["passed"] = (all(s.get("passed", "error" not in s) for s in secs.values())
                         and not payload["forbidden_modules_imported"])
    if payload["environment"]["device"].startswith("cuda"):
        payload["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20


def main(argv: Sequence[str] | None = None) -> int:
    payload = run(sys.argv[1:] if argv is None else argv)
    return 0 if payload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
