"""Markdown tables for ``benchmarks/README.md`` from the JSON files ``prefopt bench ... --out`` writes.

``python -m benchmarks.report benchmarks/results/dpo_fp32.json benchmarks/results/rm_fp32.json ...``
prints one summary table, then a full table per run, so the numbers in the README are copied from
the measurement rather than typed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NAMES = {"dpo": "DPO", "rm": "RM (BT)", "grpo": "GRPO", "online": "GRPO round (online)"}


def _mem(r: dict[str, Any], key: str) -> str:
    v = r.get("memory", {}).get(key)
    return "-" if v is None else f"{v:.0f}"


def _ours(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name = next(n for n in payload["results"] if n != "trl")
    return name, payload["results"][name]


def summary_row(payload: dict[str, Any]) -> str:
    name, ours = _ours(payload)
    trl = payload["results"]["trl"]
    spd, target = ours["speedup_vs_trl"], payload["target_speedup"]
    mem_ratio = ours.get("memory_ratio_vs_trl")
    mem = "-" if mem_ratio is None else f"{_mem(ours, 'peak_step_mb')} / {_mem(trl, 'peak_step_mb')} ({mem_ratio:.2f}x)"
    second = abs(ours["losses"][1] - trl["losses"][1]) if len(ours["losses"]) > 1 else float("nan")
    return (f"| {NAMES[payload['bench']]} (`{ours.get('layout', name)}`) | {ours['s_per_step']:.2f} | "
            f"{trl['s_per_step']:.2f} | **{spd:.2f}x** / {ours['speedup_per_round_median']:.2f}x "
            f"(>= {target}x: {'met' if spd >= target else 'missed'}) | {ours['first_batch_loss']:.6f} / "
            f"{trl['first_batch_loss']:.6f} ({ours['first_loss_abs_diff']:.1e}) | {second:.1e} | "
            f"{100 * ours['mfu']:.1f} % / {100 * trl['mfu']:.1f} % | {mem} |")


def summary(payloads: list[dict[str, Any]]) -> str:
    head = ("| benchmark | ours s/step | TRL s/step | speed-up: ratio of medians / median per round (target) "
            "| first-batch loss ours / TRL (diff) | 2nd-batch loss diff | MFU ours / TRL "
            "| peak step MB ours / TRL |\n|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(summary_row(p) for p in payloads)])


def full_table(payload: dict[str, Any]) -> str:
    peak = payload["matmul_peak_gflops"]
    m = payload["machine"]
    lines = [f"**{payload['command']}**: tokens/step {payload['tokens_per_step']}, matmul peak "
             f"{peak['used']:.1f} GFLOP/s (start {peak['start']:.1f}, end {peak['end']:.1f}), load avg start "
             f"{m['load_avg_start'][0]:.1f} end {m['load_avg_end'][0]:.1f}, {m['utc']}", "",
             "| side | s/step (median) | s/step (all) | x TRL (medians / per round) | tokens/s | MFU "
             "| peak step MB | peak total MB | first-batch loss | 2nd-batch loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in payload["results"].items():
        alls = ", ".join(f"{t:.2f}" for t in r["s_per_step_all"])
        second = f"{r['losses'][1]:.6f}" if len(r["losses"]) > 1 else "-"
        spd = (f"{r['speedup_vs_trl']:.2f}x / {r['speedup_per_round_median']:.2f}x"
               if "speedup_vs_trl" in r else "1.00x")
        lines.append(f"| {name} | {r['s_per_step']:.2f} | {alls} | {spd} | {r['tokens_per_s']:.1f} | {100 * r['mfu']:.1f}% | "
                     f"{_mem(r, 'peak_step_mb')} | {_mem(r, 'peak_total_mb')} | {r['first_batch_loss']:.6f} | "
                     f"{second} |")
    extra = payload["results"]["trl"].get("first_batch_logp_max_abs_diff")
    if extra is not None:
        lines += ["", f"max |log-prob diff| ours vs TRL on the first batch's completion tokens: {extra:.2e}"]
    if payload.get("load_avg_per_round"):
        lines += ["", "1-minute load average before each round: "
                  + ", ".join(f"{x:.1f}" for x in payload["load_avg_per_round"])]
    if payload.get("round_split_s"):
        lines += ["", round_split(payload)]
    return "\n".join(lines)


def round_split(payload: dict[str, Any]) -> str:
    """``bench online``: median seconds of each part of a round per side, completion lengths, and the
    update on identical samples."""
    lines = ["| side | round s | generate s | score s | advantages/batching s | update s | mean completion tokens |",
             "|---|---|---|---|---|---|---|"]
    for name, s in payload["round_split_s"].items():
        lens = payload.get("completion_length_mean", {}).get(name) or []
        mean_len = f"{sum(lens) / len(lens):.1f}" if lens else "-"
        lines.append(f"| {name} | {s['total']:.2f} | {s['generate']:.2f} | {s['score']:.3f} | "
                     f"{s['collect_other']:.3f} | {s['update']:.2f} | {mean_len} |")
    same = payload.get("update_on_identical_samples") or {}
    if "loss_ours" in same:
        lines += ["", f"update on identical samples ({same['samples']}, {same['precision']}): loss ours "
                  f"{same['loss_ours']:.6f}, TRL {same['loss_trl']:.6f} (diff {same['loss_abs_diff']:.1e}); "
                  f"max |completion log-prob diff| {same['logp_max_abs_diff']:.2e}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print(__doc__)
        return 2
    payloads = [json.loads(Path(p).read_text()) for p in paths]
    print(summary(payloads))
    for p in payloads:
        print("\n" + full_table(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
