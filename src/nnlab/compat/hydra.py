"""Hydra's private API that the packed launcher relies on, in one place.

The packed launcher composes a sweep's jobs faster than Hydra does (one composition per set of
config-group choices, values applied to a copy as Hydra applies them), writes each packed trial's
`.hydra/` files as `run_job` would, and points `HydraConfig` at the job it is building. None of
these is Hydra's public API: each function below is tested against the installed hydra-core
(tests/test_compat.py), and an untested version is named in a warning when nnlab starts.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

# The hydra-core minor versions these functions were tested with (pyproject.toml's pin).
TESTED = ((1, 3), (1, 3))


def version_problem(version: str = hydra.__version__) -> str | None:
    """Why `version` is not one these functions were tested with (None: it is)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return f"hydra-core {version}: not a version number nnlab can read"
    minor = (int(match.group(1)), int(match.group(2)))
    low, high = TESTED
    if low <= minor <= high:
        return None
    return (
        f"hydra-core {version} is outside the versions nnlab's packed launcher was tested with "
        f"({low[0]}.{low[1]} to {high[0]}.{high[1]}): use hydra/launcher=basic, or install "
        "a tested hydra-core"
    )


def apply_overrides(overrides: Sequence[Any], cfg: DictConfig) -> None:
    """Apply parsed value overrides (`seed=2`) to a composed config, as Hydra's loader does."""
    ConfigLoaderImpl._apply_overrides_to_config(list(overrides), cfg)


def overrides_dirname(overrides: Sequence[Any], naming: DictConfig) -> str:
    """`hydra.job.override_dirname` of a job with these parsed overrides, under
    `hydra.job.config.override_dirname`'s naming settings."""
    return get_overrides_dirname(
        overrides=list(overrides),
        kv_sep=naming.kv_sep,
        item_sep=naming.item_sep,
        exclude_keys=naming.exclude_keys,
    )


def group_exists(config_loader: Any, name: str) -> bool:
    """Whether `name` is a config group (`optimizer=sgd`) rather than a key (`seed=2`)."""
    return bool(config_loader.repository.group_exists(name))


def save_config(cfg: Any, filename: str, directory: Path) -> None:
    """Write one of a job's `.hydra/` files (config.yaml, hydra.yaml, overrides.yaml) as
    `run_job` writes them (`hydra.core.utils._save_config`: the text of `OmegaConf.to_yaml`,
    here from nnlab's faster writer of the same text)."""
    from nnlab.runs import yaml_text

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / filename, "w", encoding="utf-8") as file:
        file.write(yaml_text(cfg))


def hydra_config() -> DictConfig | None:
    """The config `HydraConfig` holds now (the whole job config, or None before Hydra set one)."""
    return HydraConfig.instance().cfg


def point_hydra_config(cfg: DictConfig | None) -> None:
    """Make `${hydra:...}` and `HydraConfig.get()` read `cfg` as it is (`set_config` would store
    a read-only copy without the job's own keys; restoring a saved one needs the object)."""
    HydraConfig.instance().cfg = cfg


def intercept_sweep_loads(
    config_loader: Any, load: Callable[[Callable, DictConfig, list[str]], DictConfig]
) -> Callable[[DictConfig, list[str]], DictConfig]:
    """Route the loader's `load_sweep_config(master, overrides)` through
    `load(original, master, overrides)` (the sweeper's checks then share the launcher's
    compositions); returns the original."""
    original = config_loader.load_sweep_config

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        return load(original, master_config, sweep_overrides)

    config_loader.load_sweep_config = load_sweep_config
    return original


def split_sweep_arguments(parsed: Sequence[Any]) -> list[list[str]]:
    """Every job's overrides of a basic-sweeper multirun, as Hydra's BasicSweeper expands them."""
    return [
        list(job) for batch in BasicSweeper.split_arguments(list(parsed), None) for job in batch
    ]


def compose_job(
    config_loader: Any,
    master: DictConfig,
    overrides: list[str],
    cache: dict,
    load: Callable[[DictConfig, list[str]], DictConfig] | None = None,
) -> DictConfig:
    """A job's config as `load_sweep_config(master, overrides)` composes it (or `load`), once per
    distinct set of config-group choices and overridden keys: the jobs of a grid that differ
    only in values (seed=1 vs seed=2) share the defaults list, so a copy of the first one's
    config gets the others' values the way Hydra applies them (a composition is a large part of
    a small trial's cost: docs/performance.md). `cache` keeps the compositions between calls."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    values, shape = [], []
    for o in parsed:
        plain = (
            not o.is_hydra_override()
            and o.type == OverrideType.CHANGE
            and o.package is None
            and not o.is_sweep_override()
            and not group_exists(config_loader, o.key_or_group)
        )
        shape.append(o.key_or_group if plain else o.input_line)
        if plain:
            values.append(o)
    if tuple(shape) not in cache:
        cfg = (load or config_loader.load_sweep_config)(master, list(overrides))
        cache[tuple(shape)] = copy.deepcopy(cfg)
        return cfg
    cfg = copy.deepcopy(cache[tuple(shape)])
    apply_overrides(values, cfg)
    task = [o for o in parsed if not o.is_hydra_override()]
    naming = cfg.hydra.job.config.override_dirname
    with open_dict(cfg.hydra):
        cfg.hydra.overrides.task = [o.input_line for o in task]
        cfg.hydra.job.override_dirname = overrides_dirname(task, naming)
    OmegaConf.copy_cache(from_config=master, to_config=cfg)
    return cfg


if (problem := version_problem()) is not None:
    log.warning(problem)


def omegaconf_dumper() -> type | None:
    """OmegaConf's YAML Dumper class (the representers behind `OmegaConf.to_yaml`), from its
    private module; None where another OmegaConf moved it."""
    try:
        from omegaconf._utils import get_omega_conf_dumper
    except ImportError:
        return None
    return get_omega_conf_dumper()
