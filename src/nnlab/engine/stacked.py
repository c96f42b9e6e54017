"""Optimizer steps on stacked (trials, n) parameters with each trial's own hyperparameters, by
torch.optim's single-tensor arithmetic: (parameters, gradient, moments, {name: (trials,)
hyperparameter}, (trials,) step counts) -> (new parameters, new moments)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch


def bcast(h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-trial (trials,) tensor broadcast against a stacked (trials, ...) tensor."""
    return h.reshape(-1, *([1] * (like.dim() - 1)))


# Each step: p, g (trials, n); hp {name: (trials, 1)}; step (trials, 1).
def adam_step(p, g, state, hp, step, decoupled: bool = False):
    lr, wd, beta1, beta2, eps = (hp[k] for k in ("lr", "weight_decay", "beta1", "beta2", "eps"))
    if decoupled:
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    m = state.get("exp_avg", torch.zeros_like(p))
    v = state.get("exp_avg_sq", torch.zeros_like(p))
    m = m + (g - m) * (1 - beta1)
    v = v * beta2 + (1 - beta2) * g * g
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    denom = v.sqrt() / bias2.sqrt() + eps
    return p - (lr / bias1) * m / denom, {"exp_avg": m, "exp_avg_sq": v}


def sgd_step(p, g, state, hp, step):
    lr, wd, momentum, dampening = (hp[k] for k in ("lr", "weight_decay", "momentum", "dampening"))
    g = g + wd * p
    new_state = {}
    if bool((momentum != 0).any()):
        previous = state.get("momentum_buffer")
        later = momentum * previous + (1 - dampening) * g if previous is not None else g
        buf = torch.where(step == 1, g, later)  # the first step starts the buffer at g
        new_state["momentum_buffer"] = buf
        with_momentum = torch.where(hp["nesterov"] > 0, g + momentum * buf, buf)
        g = torch.where(momentum != 0, with_momentum, g)
    return p - lr * g, new_state


def rmsprop_step(p, g, state, hp, step):
    lr, wd, alpha, eps = (hp[k] for k in ("lr", "weight_decay", "alpha", "eps"))
    momentum, centered = hp["momentum"], hp["centered"] > 0
    g = g + wd * p
    sq = state.get("square_avg", torch.zeros_like(p))
    sq = sq * alpha + (1 - alpha) * g * g
    new_state = {"square_avg": sq}
    avg = sq.sqrt() + eps
    if bool(centered.any()):
        ga = state.get("grad_avg", torch.zeros_like(p))
        ga = ga + (g - ga) * (1 - alpha)
        new_state["grad_avg"] = ga
        avg = torch.where(centered, (sq - ga * ga).sqrt() + eps, avg)
    update = g / avg
    if bool((momentum > 0).any()):
        buf = state.get("momentum_buffer", torch.zeros_like(p))
        buf = buf * momentum + g / avg
        new_state["momentum_buffer"] = buf
        update = torch.where(momentum > 0, buf, update)
    return p - lr * update, new_state


# optimizer class -> (step function, its hyperparameters, unsupported options that must be off)
ADAM = ("lr", "beta1", "beta2", "eps", "weight_decay")
OPTIMIZERS: dict[str, tuple[Callable, tuple[str, ...], tuple[str, ...]]] = {
    "Adam": (adam_step, ADAM, ("amsgrad",)),
    "AdamW": (functools.partial(adam_step, decoupled=True), ADAM, ("amsgrad",)),
    "SGD": (sgd_step, ("lr", "momentum", "dampening", "weight_decay", "nesterov"), ()),
    "RMSprop": (rmsprop_step, ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"), ()),
}
