"""Building objects from the composed config, with errors that name the config key. What each
node may hold is checked before anything is built, by `nnlab.schema.check`."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from nnlab.errors import ConfigError, UserError


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(cfg, **kwargs)`, but a UserError raised by the object's
    constructor comes out as itself, and a bad `_target_` names `key`."""
    kwargs.setdefault("_convert_", "all")  # plain lists/dicts: checkpoints load with weights_only
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UserError):
            if isinstance(cause, InstantiationException):
                cause = cause.__cause__
            else:
                break
        if isinstance(cause, UserError):
            raise cause from None
        if cause is None or "Error locating target" in str(exc):
            raise ConfigError(key, str(exc).splitlines()[0]) from exc
        if isinstance(cause, TypeError | ValueError | RuntimeError | AssertionError):
            # a library's constructor refused a value (torch: "Invalid learning rate"); the
            # schema checks types and bounds, the constructor what only it knows
            raise reported(key, cfg, cause) from exc
        raise


def reported(key: str, cfg: Any, exc: BaseException) -> ConfigError:
    """A third-party constructor's exception while building config node `key`, as a
    ConfigError naming the node and its class."""
    target = cfg.get("_target_", "the object") if hasattr(cfg, "get") else "the object"
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return ConfigError(key, f"{target} refused its settings: {first}; check the values under {key}")


def build_all(group: DictConfig | None, key: str) -> list[Any]:
    """Every entry of a group of named configs (callbacks, loggers) that has a `_target_`."""
    if not group:
        return []
    return [
        build(entry, f"{key}.{name}")
        for name, entry in group.items()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


def optimized_metrics(cfg: DictConfig) -> list[str]:
    """`optimized_metric` as a list: one metric, several (a multi-objective search) or none."""
    optimized = cfg.get("optimized_metric")
    if not optimized:
        return []
    return (
        [str(m) for m in optimized]
        if isinstance(optimized, ListConfig | list)
        else [str(optimized)]
    )
