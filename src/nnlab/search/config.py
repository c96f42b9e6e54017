"""The sweeper's settings (`hydra/sweeper: nnlab`) and Optuna's samplers as Hydra configs.

Registered in Hydra's ConfigStore by `hydra_plugins.nnlab_search` (Hydra imports every module of
the `hydra_plugins` namespace when it starts), so `hydra/sweeper=nnlab` and
`hydra/sweeper/sampler=tpe|random|grid|cmaes|nsgaii|qmc` are config group options like the
files under conf/.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

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


@dataclass
class NnlabSweeperConf:
    _target_: str = SWEEPER_TARGET
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: SamplerConf = MISSING
    # minimize | maximize, or a list of them for several metrics (optimized_metric a list)
    direction: Any = "minimize"
    # null: SQLite in the sweep directory (<sweep dir>/optuna.db); sqlite:///path.db or any
    # SQLAlchemy URL; journal:<path> for Optuna's journal file (safe on NFS / for SLURM jobs)
    storage: Any = None
    study_name: str | None = "${name}"
    n_trials: int = 20
    # trials running at once; with asynchronous: true the next is asked for as soon as one
    # finishes, otherwise batches of n_jobs wait for their slowest trial
    n_jobs: int = 1
    asynchronous: bool = True
    # stop asking for trials once more than this fraction of the finished ones failed
    max_failure_rate: float = 1.0
    # none | median | percentile | successive_halving | hyperband | threshold, with its
    # keyword arguments in pruner_args (Optuna's names, e.g. {n_warmup_steps: 2})
    pruner: str = "none"
    pruner_args: Any = None
    # key: search space (interval(a,b), tag(log, interval(a,b)), choice(...), range(a,b,step=s))
    # or a fixed value; command-line overrides add to and replace these
    params: dict[str, Any] | None = None


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="nnlab", node=NnlabSweeperConf, provider="nnlab")
    # configs written for hydra-optuna-sweeper (`override /hydra/sweeper: optuna`) get this one,
    # unless that plugin is still installed (its own config keeps the name)
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        store.store(group="hydra/sweeper", name="optuna", node=NnlabSweeperConf, provider="nnlab")
    for name, node in SAMPLERS.items():
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="nnlab")
