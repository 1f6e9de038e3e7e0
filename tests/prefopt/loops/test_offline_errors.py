"""Clear errors before any training: missing data, data that tokenises to nothing, incompatible
settings (spec section 6: SparsePO + precompute, Curry-DPO iterative + precompute, ranked data +
precompute, Curry iterative under ZeRO-3)."""
from __future__ import annotations

import pytest
from offline_helpers import make_cfg, pair_records, ranked_records, write_set

from prefopt.core.errors import ConfigError, DataError


def test_missing_data_path(tmp_path):
    from prefopt.loops.offline import run_offline

    with pytest.raises(DataError, match="training data not found: .*nope"):
        run_offline(make_cfg(tmp_path / "nope", tmp_path / "run"))
    with pytest.raises(DataError, match="data.path is empty"):
        run_offline(make_cfg("", tmp_path / "run"))


def test_missing_eval_path(tmp_path):
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", pair_records(4))
    with pytest.raises(DataError, match="eval data not found"):
        run_offline(make_cfg(data, tmp_path / "run", data={"path": str(data), "eval_path": str(tmp_path / "x.jsonl")}))


def test_empty_after_tokenisation(tmp_path):
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", pair_records(4))
    cfg = make_cfg(data, tmp_path / "run", data={"max_length": 12, "max_prompt_length": 8, "overlong": "drop"})
    with pytest.raises(DataError, match=r"no usable examples left \(4 valid record\(s\); tokenisation: dropped=4\)"):
        run_offline(cfg)


def test_too_few_examples_for_one_batch(tmp_path):
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", pair_records(1))
    with pytest.raises(DataError, match="not enough examples for one batch: 1 usable item"):
        run_offline(make_cfg(data, tmp_path / "run"))


def test_sparsepo_with_precompute_rejected(tmp_path):
    with pytest.raises(ConfigError, match="sparsepo needs a live reference forward; reference.mode=precompute"):
        make_cfg(tmp_path, tmp_path / "run", algorithm="sparsepo", reference={"mode": "precompute"})


def test_curry_iterative_with_precompute_rejected(tmp_path):
    with pytest.raises(ConfigError, match="Curry-DPO iterative refreshes the reference each stage"):
        make_cfg(tmp_path, tmp_path / "run", algorithm="curry_dpo", reference={"mode": "precompute"})
    make_cfg(tmp_path, tmp_path / "run", algorithm="curry_dpo", curriculum="ordered",
             reference={"mode": "precompute"})  # fixed reference: allowed


def test_ranked_data_with_precompute_rejected(tmp_path):
    with pytest.raises(ConfigError, match="irpo \\(ranked data\\) needs reference.mode=auto or copy"):
        make_cfg(tmp_path, tmp_path / "run", algorithm="irpo", reference={"mode": "precompute"})


def test_adapter_disabled_without_lora_rejected(tmp_path):
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", pair_records(4))
    with pytest.raises(ConfigError, match="adapter_disabled needs LoRA"):
        run_offline(make_cfg(data, tmp_path / "run", reference={"mode": "adapter_disabled"}))


def test_wrong_schema_for_algorithm(tmp_path):
    from prefopt.loops.offline import run_offline

    data = write_set(tmp_path / "data", ranked_records(4))
    with pytest.raises(DataError):
        run_offline(make_cfg(data, tmp_path / "run", algorithm="dpo"))


def test_curry_iterative_under_zero3_rejected(tmp_path):
    from prefopt.algorithms import get_algorithm
    from prefopt.loops.offline import check_runtime

    class Zero3:
        zero_stage = 3

    cfg = make_cfg(tmp_path, tmp_path / "run", algorithm="curry_dpo")
    with pytest.raises(ConfigError, match="ZeRO-3 partitions"):
        check_runtime(cfg, get_algorithm("curry_dpo"), Zero3())
