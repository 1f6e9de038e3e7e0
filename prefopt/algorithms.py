"""Algorithms as declarative, registered specs (not trainer subclasses).

An :class:`AlgorithmSpec` names its loop (offline/online), the batch schema it consumes, the
registered loss it calls and what extra inputs the loop must supply. Adding a DPO variant is one
loss function, one spec line here, one YAML and one golden test.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prefopt.core.config import from_dict, to_dict
from prefopt.core.errors import ConfigError
from prefopt.core.registry import ALGORITHMS, LOSSES

if TYPE_CHECKING:
    from prefopt.configs import TrainConfig
    from prefopt.losses.base import LossSpec

# Keys of a ``kind: train`` config that only some algorithms read (:meth:`AlgorithmSpec.reads`); a run's
# config.yaml leaves out the ones its algorithm does not read (prefopt.core.sections.resolve_sections).
OPTIONAL_SECTIONS = ("data", "epochs", "max_steps", "curriculum", "reference", "sparsepo", "online",
                     "online.dno", "online.egpo")


@dataclass(frozen=True)
class AlgorithmSpec:
    """What an algorithm needs from the loop.

    Attributes:
        name: registry name (the YAML ``algorithm:`` value).
        loss: name in :data:`prefopt.core.registry.LOSSES` (offline) or ``GROUP_LOSSES`` (online).
        loop: ``offline`` (fixed preference data) or ``online`` (rollouts each step).
        schema: ``pairwise`` ([chosen; rejected] batches) or ``ranked`` (K responses per prompt).
        extras: traits the settings checks read: ``token_kl`` (full-vocab KL per token, needs a live
            reference forward and padded rows), ``sparse_mask`` (reads the ``sparsepo:`` mask section).
        hooks: offline-loop hooks the algorithm always uses, by name in
            :data:`prefopt.core.registry.OFFLINE_HOOKS` (:mod:`prefopt.loops.hooks`): state, extra loss
            inputs or its own input builder, extra optimizer groups, per-stage reference.
        curriculum: train stage by stage on ``meta.stage`` (Curry-DPO).
        paper: citation shown by ``prefopt ls algorithms`` and the docs.
        sections: optional config sections (:data:`OPTIONAL_SECTIONS`) it reads beyond those its traits
            imply (:meth:`reads`); e.g. ``online.dno``.
    """

    name: str
    loss: str
    loop: Literal["offline", "online"] = "offline"
    schema: Literal["pairwise", "ranked"] = "pairwise"
    extras: frozenset[str] = field(default_factory=frozenset)
    hooks: tuple[str, ...] = ()
    curriculum: bool = False
    paper: str = ""
    sections: frozenset[str] = field(default_factory=frozenset)

    def loss_spec(self) -> LossSpec:
        import prefopt.losses  # noqa: F401  (registration)

        return LOSSES.get(self.loss)

    def build_hparams(self, values: Any) -> Any:
        """Typed loss hyper-parameters from the YAML ``loss:`` mapping (None = all defaults; unknown keys
        fail); an instance of the loss's dataclass is returned as it is."""
        cls = self.loss_spec().hparams_cls
        if isinstance(values, cls):
            return values
        if dataclasses.is_dataclass(values):  # another algorithm's section (e.g. a replaced config)
            values = to_dict(values)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"loss: expected a mapping of {self.name} hyper-parameters, got "
                              f"{type(values).__name__} {values!r}")
        return from_dict(cls, dict(values), "loss")

    @property
    def needs_ref(self) -> bool:
        return bool(self.loss_spec().needs_ref)

    def reads(self, hparams: Any = None) -> frozenset[str]:
        """The optional sections a run of this algorithm reads: ``data``, ``reference`` when its loss needs
        one, ``sparsepo`` for SparsePO masks, ``curriculum`` for Curry-DPO, plus :attr:`sections`. The
        others are left out of the run's config.yaml and must keep their defaults."""
        traits = {"reference": self.needs_ref, "sparsepo": "sparse_mask" in self.extras,
                  "curriculum": self.curriculum}
        return frozenset({"data", "epochs", "max_steps", *self.sections, *(k for k, on in traits.items() if on)})

    def check(self, cfg: TrainConfig) -> None:
        """Reject incompatible settings (spec offline_losses.md section 6)."""
        mode = cfg.reference.mode
        if "token_kl" in self.extras and mode == "precompute":
            raise ConfigError(f"{self.name} needs a live reference forward; reference.mode=precompute "
                              "cannot serve it")
        if self.schema != "pairwise" and mode == "precompute":
            raise ConfigError(f"reference.mode=precompute caches pair log-probs; {self.name} ({self.schema} "
                              "data) needs reference.mode=auto or copy")
        if self.curriculum and cfg.curriculum == "iterative" and mode == "precompute":
            raise ConfigError("Curry-DPO iterative refreshes the reference each stage; "
                              "use reference.mode auto/copy, not precompute")


def get_algorithm(name: str) -> AlgorithmSpec:
    import prefopt.losses  # noqa: F401

    return ALGORITHMS.get(name)


def _offline(name: str, loss: str | None = None, paper: str = "", **kw: Any) -> None:
    ALGORITHMS.register(name, AlgorithmSpec(name=name, loss=loss or name, paper=paper, **kw))


_offline("dpo", paper="Rafailov et al. 2023, Direct Preference Optimization, eq. 7")
_offline("ipo", paper="Azar et al. 2023, A General Theoretical Paradigm (IPO), eq. 17")
_offline("hinge", paper="Zhao et al. 2023, SLiC-HF")
_offline("cdpo", paper="Mitchell 2023, conservative DPO note (label smoothing)")
_offline("robust", paper="Chowdhury et al. 2024, Provably Robust DPO, eq. 8")
_offline("sigmoid_norm", paper="length-normalised DPO")
_offline("simpo", paper="Meng et al. 2024, SimPO, eq. 6")
_offline("cpo", paper="Xu et al. 2024, Contrastive Preference Optimization, eq. 11")
_offline("orpo", paper="Hong et al. 2024, ORPO, eq. 6")
_offline("sparsepo", extras=frozenset({"token_kl", "sparse_mask"}), hooks=("sparsepo_masks",),
         paper="Christopoulou et al. 2024, SparsePO, eq. 10")
_offline("lcpo", hooks=("lcpo_eta",),
         paper="Latent-collective preference optimisation / RE-PO (EM over label noise)")
_offline("irpo", schema="ranked", paper="In-context Ranking Preference Optimization (IRPO), eq. 9")
_offline("curry_dpo", loss="dpo", curriculum=True, hooks=("stage_reference",),
         paper="Pattnaik et al. 2024, Curry-DPO: curriculum learning with ranked preferences")


# --------------------------------------------------------------------------- online algorithms
@dataclass(frozen=True)
class OnlineAlgorithmSpec(AlgorithmSpec):
    """An online algorithm: ``loss`` names a ``GROUP_LOSSES`` entry; ``driver`` picks how the online
    loop turns rollouts into loss inputs (an ``ONLINE_DRIVERS`` entry: group | p3o | dno | egpo | online_ipo;
    prefopt.loops.online_drivers)."""

    driver: str = "group"
    # Rollouts are drawn between optimizer steps (once per minibatch), not once per round: EGPO (also at
    # the half step) and online IPO. A generator holding its own weights is synced after every step.
    rollout_every_step: bool = False
    # The update restores the optimizer state mid-step (EGPO's extragradient), so it needs a single process.
    restores_optimizer: bool = False
    # Responses per prompt the driver needs (P3O compares exactly two); None = any online.num_generations.
    generations: int | None = None
    # The policy is also its own referee (URPO): player + referee reward defaults when none are given.
    self_referee: bool = False
    # The advantage estimator (ADVANTAGES) the method is defined by (RLOO: the leave-one-out baseline);
    # online.advantage must name it. None = any estimator.
    advantage: str | None = None

    def check(self, cfg: TrainConfig) -> None:
        super().check(cfg)
        from prefopt.core.registry import ADVANTAGES
        from prefopt.loops.online_config import OnlineConfig
        from prefopt.losses.advantages import unread_options

        oc = getattr(cfg, "online", None) or OnlineConfig()
        ADVANTAGES.get(oc.advantage)  # an unknown estimator fails here, naming the registered ones
        for name, readers in unread_options(oc.advantage, oc, OnlineConfig()).items():
            raise ConfigError(f"online.{name}={getattr(oc, name)!r} is read only by the {', '.join(readers)} "
                              f"advantage estimator; online.advantage={oc.advantage} would ignore it: remove "
                              f"online.{name} or use an estimator that reads it")
        if self.advantage is not None and oc.advantage != self.advantage:
            raise ConfigError(f"{self.name} is defined by the {self.advantage!r} advantage estimator: set "
                              f"online.advantage: {self.advantage} (got {oc.advantage!r})")

    def reads(self, hparams: Any = None) -> frozenset[str]:
        """``online``, :attr:`sections` (``online.dno``, ``online.egpo``) and ``reference`` when the driver's
        reference rule needs one at these loss hyper-parameters (GRPO with beta 0, DNO with tau 0: none)."""
        from prefopt.loops.online_drivers import get_driver

        ref = hparams is None or get_driver(self.driver).needs_reference(hparams)
        return frozenset({"online", *self.sections, *(("reference",) if ref else ())})

    def loss_spec(self) -> LossSpec:
        import prefopt.losses  # noqa: F401  (registration)
        from prefopt.core.registry import GROUP_LOSSES

        return GROUP_LOSSES.get(self.loss)


def _online(name: str, loss: str, driver: str, paper: str = "", **traits: Any) -> None:
    ALGORITHMS.register(name, OnlineAlgorithmSpec(name=name, loss=loss, loop="online", schema="ranked",
                                                  driver=driver, paper=paper, **traits))


_online("grpo", "grpo", "group", "Shao et al. 2024, DeepSeekMath (GRPO), eq. 3")
_online("gspo", "gspo", "group", "Zheng et al. 2025, Group Sequence Policy Optimization, eq. 7")
_online("urpo", "grpo", "group", "URPO: one model as player and referee in one GRPO loop (docs/online.md)",
        self_referee=True)
_online("rloo", "rloo", "group", "Ahmadian et al. 2024, Back to Basics (REINFORCE leave-one-out), arXiv 2402.14740",
        advantage="rloo")
_online("dno", "dno", "dno", "Rosset et al. 2024, Direct Nash Optimization, Algorithm 2 (DNO-Prct)",
        sections=frozenset({"online.dno"}))
_online("egpo", "egpo", "egpo", "Zhou, Fazel, Du 2025, Extragradient Preference Optimization",
        rollout_every_step=True, restores_optimizer=True, sections=frozenset({"online.egpo"}))
_online("online_ipo", "online_ipo", "online_ipo", "Calandriello et al. 2024, online IPO (naive self-play)",
        rollout_every_step=True, sections=frozenset({"online.egpo"}))
_online("p3o", "p3o_joint", "p3o", "Wu et al. 2023, Pairwise Proximal Policy Optimization (joint clip)",
        generations=2)
_online("p3o_separate", "p3o_separate", "p3o", "Wu et al. 2023, P3O (separate, per-token clip)", generations=2)
