"""Building objects from the composed config, with errors that name the config key."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

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
        if isinstance(cause, TypeError):  # a key the class does not take, or a missing one
            raise ConfigError(key, f"{cause}; check the keys under `{key}`") from exc
        raise


def build_all(group: DictConfig | None, key: str) -> list[Any]:
    """Every entry of a group of named configs (callbacks, loggers) that has a `_target_`."""
    if not group:
        return []
    return [
        build(entry, f"{key}.{name}")
        for name, entry in group.items()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]
