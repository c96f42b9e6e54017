"""Building objects from the composed config, with errors that name the config key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _limit(v: Any) -> bool:  # Lightning's limit_*_batches: a count or a fraction
    return v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


PRECISIONS = {
    "64",
    "64-true",
    "32",
    "32-true",
    "16",
    "16-mixed",
    "bf16",
    "bf16-mixed",
    "bf16-true",
    "16-true",
    "transformer-engine",
    "transformer-engine-float16",
}

_ABSENT = object()

# key -> (is it acceptable, what it should be). Checked before anything is built or trained.
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: v is None or _is_int(v), "a whole number or null"),
    "trainer.max_epochs": (
        lambda v: v is None or (_is_int(v) and v >= -1),
        "a whole number >= 1 (-1: no limit)",
    ),
    "trainer.min_epochs": (lambda v: v is None or (_is_int(v) and v >= 0), "a whole number >= 0"),
    "trainer.max_steps": (lambda v: _is_int(v) and v >= -1, "a whole number (-1: no limit)"),
    "trainer.num_nodes": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "trainer.devices": (
        lambda v: (_is_int(v) and v >= -1 and v != 0) or isinstance(v, str | list),
        "a count (-1: all), a list of ids, or 'auto'",
    ),
    "trainer.accelerator": (
        lambda v: isinstance(v, str) and v in {"auto", "cpu", "gpu", "cuda", "mps", "tpu"},
        "one of auto, cpu, gpu, cuda, mps, tpu",
    ),
    "trainer.precision": (
        lambda v: str(v) in PRECISIONS,
        "one of " + ", ".join(sorted(PRECISIONS)),
    ),
    "trainer.log_every_n_steps": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "trainer.check_val_every_n_epoch": (
        lambda v: v is None or (_is_int(v) and v >= 1),
        "a whole number >= 1",
    ),
    "trainer.accumulate_grad_batches": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "trainer.gradient_clip_val": (
        lambda v: v is None or (_is_number(v) and v >= 0),
        "a number >= 0 or null",
    ),
    "trainer.limit_train_batches": (_limit, "a count of batches or a fraction in [0, 1]"),
    "trainer.limit_val_batches": (_limit, "a count of batches or a fraction in [0, 1]"),
    "trainer.limit_test_batches": (_limit, "a count of batches or a fraction in [0, 1]"),
    "trainer.deterministic": (lambda v: isinstance(v, bool) or v == "warn", "true, false or warn"),
    "checkpoint.every_n_minutes": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0: off)"),
    "checkpoint.every_n_train_steps": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "checkpoint.save_top_k": (lambda v: _is_int(v) and v >= -1, "a whole number (-1: all)"),
    "task.optimizer.lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "task.optimizer.weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "task.loop": (
        lambda v: v in ("lightning", "fused", "cuda_graph", "auto"),
        "one of lightning, fused, cuda_graph, auto",
    ),
    "task.micro_batches": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "task.compile": (
        lambda v: isinstance(v, bool | DictConfig | dict),
        "true, false or a mapping of torch.compile options",
    ),
    "data.batch_size": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "data.num_workers": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "monitor_mode": (lambda v: v in ("min", "max"), "min or max"),
    "test_on": (lambda v: v in ("best", "last"), "best or last"),
    # Spawned/forked ranks hand only rank 0's weights back through a queue: the run's epochs,
    # metrics and checkpoints would not be this run's. Subprocess DDP (trainer=ddp_cpu) works.
    "trainer.strategy": (
        lambda v: not isinstance(v, str) or not any(w in v for w in ("spawn", "fork", "notebook")),
        "a strategy whose ranks run this command (ddp, auto; use trainer=ddp_cpu or trainer=ddp), "
        "not a spawned/forked one",
    ),
}


def validate(cfg: DictConfig) -> None:
    """Up-front checks of the keys every run has, so a typo fails in a second with the key named,
    not minutes later inside Lightning or torch."""
    for key in sorted(OmegaConf.missing_keys(cfg)):
        raise ConfigError(
            key, f"must be set (it is ??? in the config); add {key}=VALUE to the command"
        )
    for key, (ok, expected) in CHECKS.items():
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        except Exception as exc:  # a missing value (???) or an interpolation that cannot resolve
            raise ConfigError(key, f"{exc}".splitlines()[0]) from None
        if value is not _ABSENT and not ok(value):
            raise ConfigError(key, f"expected {expected}, got {value!r}")
