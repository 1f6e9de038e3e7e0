"""Buffer.split: minibatches of rows of different lengths keep per-token tensors aligned with the
trimmed batch (a DNO run on hh-rlhf prompts crashed with 288 vs 170 columns before this)."""
from __future__ import annotations

import torch

from prefopt.loops.online_algos import Buffer, make_batch


def test_split_trims_token_tensors_with_the_batch():
    # Pairs (paired buffer: rows [pos; neg]); pair 0 is long, pair 1 short.
    prompts = [[1, 2, 3, 4, 5, 6], [7], [1, 2, 3, 4, 5, 6], [7]]
    comps = [[8, 9, 10], [11], [12, 13], [14, 15]]
    batch = make_batch(prompts, comps, pad_id=0)
    width = batch.input_ids.shape[1]
    assert width == 9
    prev = torch.arange(4 * width, dtype=torch.float32).reshape(4, width)
    buf = Buffer(batch, {"prev_token_logps": prev, "target": torch.tensor([1.0, 2.0])}, paired=True)
    first, second = buf.split(2)
    assert first.batch.input_ids.shape == (2, 9) and first.tensors["prev_token_logps"].shape == (2, 9)
    assert second.batch.input_ids.shape == (2, 3)  # rows [7, 11] and [7, 14, 15]
    assert torch.equal(second.tensors["prev_token_logps"], prev[[1, 3], :3])
    assert second.tensors["target"].tolist() == [2.0]
    assert torch.equal(second.batch.completion_mask, batch.completion_mask[[1, 3], :3])
