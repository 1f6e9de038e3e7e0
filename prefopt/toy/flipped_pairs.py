"""Synthetic pairwise data with labels flipped at a known rate, for LCPO / RE-PO noise recovery.

The true preference is learnable: ``yes <3 words>`` beats ``no <3 words>``. Each pair has an
``annotator_id`` (``meta.annotator_id``); annotator ``k`` flips the label with probability
``flip_rates[k]``. With one clean annotator beside a noisy one (the multi-annotator setting of
RE-PO, Cao et al. 2025, §3) the noisy annotator's reliability ``eta_k`` is identifiable and LCPO's EM
update should converge to ``1 - flip_rate``; with a single noisy annotator and pairs that are
indistinguishable apart from the flip, the EM has a spurious fixed point near ``eta_0`` (see
docs/offline.md).

    python -m prefopt.toy.flipped_pairs OUT_DIR [--n 400] [--flip-rates 0.0 0.3] [--seed 0]

writes ``OUT_DIR/train.jsonl`` (TRL-style explicit-prompt pairs) and ``OUT_DIR/stats.json`` with the
realised flip rate per annotator.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from prefopt.core.io import atomic_write_text

WORDS = ("apple river stone cloud green quiet seven light paper north house table water music "
         "field").split()


def make_rows(n: int, flip_rates: list[float], seed: int = 0) -> list[dict]:
    """``n`` pairs, annotators assigned round-robin; each row's ``meta`` records the flip."""
    if n < 1 or not flip_rates:
        raise ValueError("need n >= 1 and at least one flip rate")
    if any(not 0.0 <= r < 0.5 for r in flip_rates):
        raise ValueError(f"flip rates must be in [0, 0.5), got {flip_rates}")
    rng, rows = random.Random(seed), []
    for i in range(n):
        k = i % len(flip_rates)
        words = " ".join(rng.choice(WORDS) for _ in range(3))
        chosen, rejected = f"yes {words}", f"no {words}"
        flipped = rng.random() < flip_rates[k]
        if flipped:
            chosen, rejected = rejected, chosen
        rows.append({"id": f"flip{i}", "prompt": [{"role": "user", "content": f"answer {words}"}],
                     "chosen": chosen, "rejected": rejected,
                     "meta": {"annotator_id": k, "flipped": flipped}})
    return rows


def realised_flip_rates(rows: list[dict]) -> dict[int, float]:
    """Fraction of flipped rows per annotator id."""
    out: dict[int, list[bool]] = {}
    for r in rows:
        out.setdefault(r["meta"]["annotator_id"], []).append(r["meta"]["flipped"])
    return {k: sum(v) / len(v) for k, v in sorted(out.items())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--flip-rates", type=float, nargs="+", default=[0.0, 0.3])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rows = make_rows(a.n, a.flip_rates, a.seed)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    stats = {"n": len(rows), "flip_rates": a.flip_rates, "realised": realised_flip_rates(rows)}
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2))
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
