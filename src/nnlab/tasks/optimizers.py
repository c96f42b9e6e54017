"""The optimizer a task's config names, built with the fastest implementation of its math.

On a CPU, torch's default for Adam, AdamW, SGD and Adagrad is the `for`-loop implementation:
a handful of small kernels per parameter tensor, each a dispatcher round trip. Their `fused`
implementation does one pass over all parameters (how much faster: docs/benchmarks.md).
nnlab asks for it on a CPU whenever the config names no implementation (`fused` /
`foreach`); on a GPU torch's own default (`foreach`) stands. The implementation is this
process's choice, not a checkpoint's: a run resumed on another device gets that device's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate

log = logging.getLogger(__name__)

IMPLEMENTATION_KEYS = ("fused", "foreach")
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


def build_optimizer(
    cfg: Mapping[str, Any] | None, params: Iterable[torch.nn.Parameter], device: torch.device
) -> torch.optim.Optimizer:
    """`cfg` (a partial optimizer config) applied to `params`, fused on a CPU when it can be."""
    cfg = dict(cfg or DEFAULT_OPTIMIZER)
    params = list(params)
    factory = instantiate(cfg)
    if device.type == "cpu" and not any(key in cfg for key in IMPLEMENTATION_KEYS):
        try:
            return factory(params=params, fused=True)
        except (TypeError, ValueError, RuntimeError) as exc:  # no fused kernel for this one
            log.debug("%s: no fused implementation on the CPU (%s)", cfg.get("_target_"), exc)
    try:
        return factory(params=params)
    except (TypeError, ValueError, RuntimeError) as exc:  # torch refused a value
        from nnlab.config import reported

        raise reported("task.optimizer", cfg, exc) from exc


def implementation(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's implementation flags, to put back after a checkpoint's (`restore`)."""
    return [{k: g[k] for k in IMPLEMENTATION_KEYS if k in g} for g in optimizer.param_groups]


def restore(optimizer: torch.optim.Optimizer, flags: list[dict[str, Any]]) -> None:
    """Loading an optimizer's state also loads the saving process's implementation flags."""
    for group, chosen in zip(optimizer.param_groups, flags, strict=False):
        group.update(chosen)
