"""The `${nnlab.*:}` interpolations the configs use; registered once, on import of nnlab, so they
resolve wherever a config is composed (nnlab-train, the other commands, tests, notebooks)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def group_choice(group: str, *, _root_: Any) -> Any:
    """`${nnlab.choice:experiment}`: the option chosen for a config group. Unlike
    `${hydra:runtime.choices.experiment}` it also resolves where HydraConfig is not set yet: in
    a multirun's sweeper and launcher, which name the sweep directory before any job runs."""
    if "hydra" in _root_:  # the whole config, as sweepers and launchers see it
        return OmegaConf.select(_root_, f"hydra.runtime.choices.{group}")
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def sqlite_url(path: str) -> str:
    """`${nnlab.sqlite:outputs/optuna/study.db}`: an SQLAlchemy URL for a SQLite file (an Optuna
    study's storage), absolute. Its folder is made when the study opens it (search/storage.py),
    not here: a check of the config (check=true, a refusal) creates nothing."""
    return f"sqlite:///{Path(path).expanduser().absolute()}"


def target_features(targets: Any, features: Any) -> list[int] | None:
    """`${nnlab.target_features:${.targets},${.features}}`: each target's index among the
    features (a seq2seq decoder starts from their last values), None if one is no feature."""
    if targets is None:  # one column: the feature and the target
        return [0]
    features = list(features if features is not None else targets)
    return [features.index(t) for t in targets] if set(targets) <= set(features) else None


def tabular_size(name: str, *, _parent_: Any) -> Any:
    """`${nnlab.tabular:input_size}`: a size of a table's encoding (conf/data/tabular.yaml),
    read from the data node's file (nnlab/data/tabular.py)."""
    from nnlab.data.tabular import table_size

    return table_size(name, _parent_=_parent_)


RESOLVERS = {
    # a short random tag, fixed for the process: run directories started in the same second
    # (Hydra's `now` has 1 s resolution) stay distinct
    "nnlab.uid": (lambda: secrets.token_hex(3), True),
    "nnlab.abspath": (lambda p: str(Path(p).expanduser().absolute()), False),
    # hydra.run.dir: the run being resumed, else a new directory
    "nnlab.resume_or": (lambda resume, fresh: resume or fresh, False),
    # hydra.output_subdir: a resumed run keeps the .hydra/ of its first start
    "nnlab.unless_resume": (lambda resume, v: None if resume else v, False),
    "nnlab.sqlite": (sqlite_url, False),
    "nnlab.choice": (group_choice, False),
    # sizes of the series data (conf/data/csv.yaml): the number of feature / target columns
    # (features default to the targets; neither named: one column), horizon x targets, and
    # where the targets sit among the features
    "nnlab.len": (lambda items, default=None: len(items or default or [None]), False),
    "nnlab.product": (lambda a, b: int(a) * int(b), False),
    "nnlab.target_features": (target_features, False),
    # sizes of a table of rows (conf/data/tabular.yaml): read from the file's encoding
    "nnlab.tabular": (tabular_size, False),
}


def register_resolvers() -> None:
    from nnlab.data.views import mnist_shape
    from nnlab.models import MODEL_RESOLVERS  # model=sequential's sizes, from data and task

    extra = {"nnlab.mnist_shape": (mnist_shape, False)}
    extra.update({name: (fn, False) for name, fn in MODEL_RESOLVERS.items()})
    for name, (fn, cache) in {**RESOLVERS, **extra}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)
