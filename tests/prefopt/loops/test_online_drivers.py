"""The online drivers are a registry (prefopt/loops/online_drivers.py): every online algorithm's driver is
registered, round/step drivers match the spec's ``rollout_every_step``, and the reference rule is the
driver's (no driver-name table in the loop)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from prefopt.algorithms import OnlineAlgorithmSpec
from prefopt.core.registry import ALGORITHMS, RegistryError
from prefopt.loops.online_drivers import ONLINE_DRIVERS, OnlineDriver, get_driver


def test_every_online_algorithm_has_a_registered_driver_of_the_right_shape():
    online = [ALGORITHMS.get(n) for n in ALGORITHMS.names() if isinstance(ALGORITHMS.get(n), OnlineAlgorithmSpec)]
    assert len(online) >= 9
    for spec in online:
        driver = get_driver(spec.driver)
        assert (driver.update is not None) == spec.rollout_every_step, spec.name
    assert sorted(ONLINE_DRIVERS.names()) == ["dno", "egpo", "group", "online_ipo", "p3o"]


def test_reference_rule_is_the_drivers():
    """GRPO-style losses need π_ref only with a KL term (β > 0), DNO only with τ > 0; the others always."""
    group, dno = get_driver("group"), get_driver("dno")
    assert (group.needs_reference(SimpleNamespace(beta=0.0)), group.needs_reference(SimpleNamespace(beta=0.04))) \
        == (False, True)
    assert (dno.needs_reference(SimpleNamespace(tau=0.0)), dno.needs_reference(SimpleNamespace(tau=0.1))) \
        == (False, True)
    assert get_driver("p3o").needs_reference(SimpleNamespace(beta=0.0)) is True
    assert get_driver("egpo").needs_reference(SimpleNamespace(beta=0.1)) is True


def test_driver_shape_and_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="exactly one of collect"):
        OnlineDriver()
    with pytest.raises(RegistryError, match="dno.*egpo.*group"):
        get_driver("ppo")


def test_prefopt_ls_lists_the_drivers_and_rollout_generators(capsys):
    from prefopt.cli import main

    assert main(["ls", "online_drivers"]) == 0 and main(["ls", "rollout_generators"]) == 0
    out = capsys.readouterr().out
    assert out == "online_drivers:\n  dno\n  egpo\n  group\n  online_ipo\n  p3o\nrollout_generators:\n  hf\n  vllm\n"
