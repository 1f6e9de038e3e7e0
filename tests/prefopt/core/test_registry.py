import pytest

from prefopt.core.registry import Registry, RegistryError


def test_register_get_and_names():
    reg = Registry("widget")
    reg.register("b", 2)

    @reg.register("a")
    def a():
        return 1

    assert reg.get("a") is a and reg.get("b") == 2
    assert reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2


def test_duplicate_name_raises():
    reg = Registry("widget")
    reg.register("x", 1)
    with pytest.raises(RegistryError, match="widget 'x' is already registered"):
        reg.register("x", 2)


def test_unknown_name_lists_known_and_hints():
    reg = Registry("loss")
    reg.register("sigmoid", 1)
    reg.register("hinge", 2)
    with pytest.raises(RegistryError) as info:
        reg.get("sigmod")
    assert str(info.value) == "unknown loss 'sigmod' (did you mean 'sigmoid'?); known: hinge, sigmoid"
