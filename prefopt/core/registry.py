"""One generic registry for losses, algorithms, reward-model kinds, dataset builders and judges.

Design after verl's decorator registries: registering a name twice raises, and looking up an unknown
name lists the known ones (with a close-match hint).
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from prefopt.core.errors import PrefoptError

T = TypeVar("T")


class RegistryError(PrefoptError, KeyError):
    """Unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A named mapping ``name -> object`` filled by the :meth:`register` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def deco(item: T) -> T:
            self._add(name, item)
            return item

        return deco

    def _add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise RegistryError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise listing the known names."""
        try:
            return self._items[name]
        except KeyError:
            hint = difflib.get_close_matches(name, self._items, n=1)
            msg = f"unknown {self.kind} '{name}'"
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
            msg += f"; known: {', '.join(sorted(self._items)) or '(none)'}"
            raise RegistryError(msg) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


_ALL: dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    """Return the process-wide registry for ``kind`` (created on first use)."""
    if kind not in _ALL:
        _ALL[kind] = Registry(kind)
    return _ALL[kind]


# The well-known registries. Modules register into these at import time.
LOSSES = registry("loss")                # offline pairwise/listwise losses (prefopt.losses)
GROUP_LOSSES = registry("group_loss")    # online policy-gradient surrogates
ADVANTAGES = registry("advantage")       # advantage estimators
ALGORITHMS = registry("algorithm")       # AlgorithmSpec objects
OFFLINE_HOOKS = registry("offline_hook")  # offline-loop hook factories (prefopt.loops.hooks)
RM_KINDS = registry("reward_model")      # reward-model kinds (bt, gpm, polar, ensemble)
RM_LOSSES = registry("rm_loss")          # reward-model losses
DATASETS = registry("dataset")           # dataset adapters/builders
JUDGES = registry("judge")               # evaluation judges
REWARD_FNS = registry("reward_fn")       # rule-based reward functions
CONFIG_KINDS = registry("config_kind")   # top-level YAML schemas by their `kind:` key
