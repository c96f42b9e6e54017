"""The sweeper's settings (`hydra/sweeper: nnlab`) and Optuna's samplers as Hydra configs.

Registered in Hydra's ConfigStore by `hydra_plugins.nnlab_search` (Hydra imports every module of
the `hydra_plugins` namespace when it starts), so `hydra/sweeper=nnlab` and
`hydra/sweeper/sampler=tpe|random|grid|cmaes|nsgaii|qmc` are config group options like the
files under conf/.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from omegaconf import MISSING
from pydantic import Field

SWEEPER_TARGET = "hydra_plugins.nnlab_search.NnlabSweeper"
# the name nnlab's presets used before the sweeper was nnlab's own: still accepted
COMPAT_TARGET = "hydra_plugins.nnlab_plugins.OptunaSweeper"


@dataclass
class SamplerConf:
    _target_: str = MISSING


@dataclass
class TPESamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    constant_liar: bool = False  # with n_jobs > 1: running trials count as bad guesses


@dataclass
class RandomSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class GridSamplerConf(SamplerConf):
    # the grid is the search space (choice / range / a list of values); set by the sweeper
    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True
    seed: int | None = None


@dataclass
class CmaEsSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    n_startup_trials: int = 1
    consider_pruned_trials: bool = False
    use_separable_cma: bool = False


@dataclass
class NSGAIISamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class QMCSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = None
    qmc_type: str = "sobol"
    scramble: bool = True


SAMPLERS = {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "grid": GridSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "nsgaii": NSGAIISamplerConf,
    "qmc": QMCSamplerConf,
}


# Optuna's pruners by the names hydra.sweeper.pruner takes (nnlab/search/pruning.py builds them)
PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",
}
Direction = Literal["minimize", "maximize"]


def sweeper_settings(
    *,
    direction: Annotated[
        Direction | list[Direction],
        Field(description="minimize or maximize, or a list of them for several optimized metrics"),
    ] = "minimize",
    storage: Annotated[
        str | None,
        Field(
            description="null: SQLite in the sweep directory (<sweep dir>/optuna.db); "
            "sqlite:///path.db or any SQLAlchemy URL; journal:<path> for Optuna's journal file "
            "(safe on NFS and for SLURM jobs)"
        ),
    ] = None,
    study_name: Annotated[
        str | None,
        Field(description="the study's name in its storage (the same name continues it)"),
    ] = "${name}",
    n_trials: Annotated[int, Field(ge=1, description="trials this command asks for")] = 20,
    n_jobs: Annotated[
        int,
        Field(
            ge=1,
            description="trials running at once; with asynchronous: true the next is asked for as "
            "soon as one finishes, otherwise batches of n_jobs wait for their slowest trial",
        ),
    ] = 1,
    asynchronous: Annotated[
        bool, Field(description="ask for the next trial as soon as one finishes")
    ] = True,
    max_failure_rate: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="stop asking for trials once more than this fraction of the finished "
            "ones failed",
        ),
    ] = 1.0,
    pruner: Annotated[
        Literal[tuple(PRUNERS)],  # type: ignore[valid-type]
        Field(
            description="stops unpromising trials after a validation (its settings: pruner_args)"
        ),
    ] = "none",
    pruner_args: Annotated[
        dict[str, Any] | None,
        Field(
            description="the pruner's keyword arguments, Optuna's names, e.g. {n_warmup_steps: 2}"
        ),
    ] = None,
    params: Annotated[
        dict[str, Any] | None,
        Field(
            description="key: search space (interval(a,b), tag(log, interval(a,b)), choice(...), "
            "range(a,b,step=s)) or a fixed value; command-line overrides add to and replace these"
        ),
    ] = None,
    sampler: Annotated[
        Any, Field(description="Optuna's sampler (hydra/sweeper/sampler=tpe|random|grid|...)")
    ] = None,
) -> dict[str, Any]:
    """hydra.sweeper's settings with `hydra/sweeper=nnlab`, declared once: their types, bounds
    and choices (what nnlab's schema checks before a search starts: NnlabSweeper's
    `schema_declared_by`), defaults (the config node registered below) and meanings (the
    generated reference)."""
    return dict(locals())


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    node = sweeper_node()
    store.store(group="hydra/sweeper", name="nnlab", node=node, provider="nnlab")
    # configs written for hydra-optuna-sweeper (`override /hydra/sweeper: optuna`) get this one,
    # unless that plugin is still installed (its own config keeps the name)
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        store.store(group="hydra/sweeper", name="optuna", node=node, provider="nnlab")
    for name, conf in SAMPLERS.items():
        # a plain mapping, not the typed dataclass: nnlab's schema checks it against the
        # sampler's own signature and names the key (OmegaConf would refuse a value first)
        node = {f.name: getattr(conf(), f.name) for f in dataclasses.fields(conf)}
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="nnlab")


def sweeper_node() -> dict[str, Any]:
    """The `hydra/sweeper=nnlab` config: `sweeper_settings`'s defaults (its sampler from the
    sampler group, TPE by default)."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(sweeper_settings).parameters.items()
        if name != "sampler"
    }
    return {"_target_": SWEEPER_TARGET, "defaults": [{"sampler": "tpe"}], **defaults}
