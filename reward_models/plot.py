"""Accuracy curve of ``rm train`` runs: ``python -m reward_models.plot RUN_DIR [RUN_DIR ...] OUT.png``.

Plots the training accuracy (running mean over the logged steps), the training loss and the held-out
``eval/accuracy`` points of one or more runs from their ``metrics.jsonl``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from prefopt.core.logging import read_metrics


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write a two-panel PNG (accuracy, loss) for ``run_dirs``; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for run in run_dirs:
        rows = read_metrics(Path(run) / "metrics.jsonl")
        name = Path(run).name
        train = [r for r in rows if "loss" in r]
        if train:
            steps = [r["step"] for r in train]
            acc = [r["accuracy"] for r in train]
            running = [sum(acc[: i + 1]) / (i + 1) for i in range(len(acc))]
            ax_acc.plot(steps, running, label=f"{name} train (running mean)")
            ax_loss.plot(steps, [r["loss"] for r in train], label=name)
        ev = [r for r in rows if "eval/accuracy" in r]
        if ev:
            ax_acc.plot([r["step"] for r in ev], [r["eval/accuracy"] for r in ev], "o--",
                        label=f"{name} held-out ({int(ev[-1].get('eval/items', 0))} items)")
    ax_acc.axhline(0.58, color="grey", lw=0.8, ls=":", label="target 0.58")
    ax_acc.set(xlabel="optimizer step", ylabel="pairwise accuracy", ylim=(0.3, 1.0))
    ax_loss.set(xlabel="optimizer step", ylabel="loss")
    ax_acc.legend(fontsize=7)
    ax_loss.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


if __name__ == "__main__":  # pragma: no cover - thin CLI
    if len(sys.argv) < 3:
        sys.exit("usage: python -m reward_models.plot RUN_DIR [RUN_DIR ...] OUT.png")
    print(plot_runs(sys.argv[1:-1], sys.argv[-1]))
