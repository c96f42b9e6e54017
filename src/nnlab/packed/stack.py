"""Many copies of one network as one: parameters stacked on a leading trial axis, and optimizer
steps that apply each trial's own hyperparameters to the stacked tensors.

A private copy of the network (the functional "base") gets two module swaps: `nn.Dropout` ->
`TrialDropout` (its rate a buffer, so each trial keeps its own) and `nn.RNN/LSTM/GRU` ->
`TrialRNN` (recurrent.py: torch's fused kernels have no vmap rule; it runs all trials'
recurrence with one batched product per step and a hand-written backward).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import torch
from torch import nn

from nnlab.packed.recurrent import DROPOUT_RATE, TrialRNN, trial_dropout


class TrialDropout(nn.Module):
    """nn.Dropout with its rate as a buffer: stacked, every trial has its own."""

    def __init__(self, p: float):
        super().__init__()
        self.register_buffer(DROPOUT_RATE, torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return trial_dropout(x, getattr(self, DROPOUT_RATE), self.training)


def functional_copy(module: nn.Module, recurrent: str = "auto") -> nn.Module:
    """A copy of `module` with dropout rates as buffers and recurrent layers batched over
    trials (TrialRNN, with the `recurrent` kernel: recurrent.KERNELS)."""
    base = copy.deepcopy(module)
    for name, child in list(base.named_modules()):
        replacement = None
        if type(child) is nn.Dropout:
            replacement = TrialDropout(child.p)
        elif type(child) in (nn.RNN, nn.LSTM, nn.GRU):
            replacement = TrialRNN(child, recurrent)
        if replacement is not None:
            parent_name, _, attr = name.rpartition(".")
            setattr(base.get_submodule(parent_name) if parent_name else base, attr, replacement)
    return base


def architecture(module: nn.Module) -> str:
    """What must be equal for two networks to be stacked: the module tree and every parameter's
    and buffer's name and shape. Dropout rates may differ (they become per-trial buffers)."""
    text = re.sub(r"\b(p|dropout)=[0-9.e-]+", "", repr(module))
    shapes = [(n, tuple(t.shape), str(t.dtype)) for n, t in module.state_dict().items()]
    return f"{text}\n{shapes}"


def stack_states(modules: list[nn.Module], device: torch.device):
    """({name: (trials, ...) parameter}, {name: (trials, ...) buffer}) of the functional copies
    of `modules`; the parameters are leaves that take gradients."""
    return torch.func.stack_module_state([functional_copy(m).to(device) for m in modules])


class Flat:
    """Where each stacked parameter (trials, *shape) lies in one (trials, n) tensor: the
    optimizer step, the clipping norm and the best-weights copy each run once over all of a
    network's parameters instead of once per parameter tensor (for a small network that is
    most of a step's kernels)."""

    def __init__(self, params: dict[str, torch.Tensor]):
        self.layout, offset = [], 0
        for name, p in params.items():
            n = p[0].numel()
            self.layout.append((name, tuple(p.shape[1:]), offset, offset + n))
            offset += n

    def join(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """(trials, n): the named stacked tensors side by side."""
        return torch.cat([tensors[name].flatten(1) for name, *_ in self.layout], dim=1)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: (trials, *shape)} views of `flat` (they share its memory and its gradient)."""
        t = flat.shape[0]
        return {name: flat[:, a:b].view(t, *shape) for name, shape, a, b in self.layout}


# -- optimizer steps on stacked tensors, per-trial hyperparameters ------------------------------
# (parameters, gradient, moments, {name: (trials,) hyperparameter}, (trials,) step counts) ->
# (new parameters, new moments), by torch.optim's single-tensor arithmetic.


def _b(h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-trial (trials,) tensor broadcast against a stacked (trials, ...) tensor."""
    return h.reshape(-1, *([1] * (like.dim() - 1)))


def adam_step(p, g, state, hp, step, decoupled: bool):
    lr, wd = _b(hp["lr"], p), _b(hp["weight_decay"], p)
    beta1, beta2, eps = _b(hp["beta1"], p), _b(hp["beta2"], p), _b(hp["eps"], p)
    if decoupled:
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    m = state.get("exp_avg", torch.zeros_like(p))
    v = state.get("exp_avg_sq", torch.zeros_like(p))
    m = m + (g - m) * (1 - beta1)
    v = v * beta2 + (1 - beta2) * g * g
    s = _b(step, p)
    bias1, bias2 = 1 - beta1**s, 1 - beta2**s
    denom = v.sqrt() / bias2.sqrt() + eps
    return p - (lr / bias1) * m / denom, {"exp_avg": m, "exp_avg_sq": v}


def sgd_step(p, g, state, hp, step, decoupled: bool = False):
    lr, wd = _b(hp["lr"], p), _b(hp["weight_decay"], p)
    momentum, dampening = _b(hp["momentum"], p), _b(hp["dampening"], p)
    g = g + wd * p
    new_state = {}
    if bool((hp["momentum"] != 0).any()):
        previous = state.get("momentum_buffer")
        later = momentum * previous + (1 - dampening) * g if previous is not None else g
        buf = torch.where(_b(step == 1, p), g, later)  # the first step starts the buffer at g
        new_state["momentum_buffer"] = buf
        with_momentum = torch.where(_b(hp["nesterov"] > 0, p), g + momentum * buf, buf)
        g = torch.where(_b(hp["momentum"] != 0, p), with_momentum, g)
    return p - lr * g, new_state


def rmsprop_step(p, g, state, hp, step, decoupled: bool = False):
    lr, wd, alpha, eps = (_b(hp[k], p) for k in ("lr", "weight_decay", "alpha", "eps"))
    momentum = _b(hp["momentum"], p)
    g = g + wd * p
    sq = state.get("square_avg", torch.zeros_like(p))
    sq = sq * alpha + (1 - alpha) * g * g
    new_state = {"square_avg": sq}
    if bool((hp["centered"] > 0).any()):
        ga = state.get("grad_avg", torch.zeros_like(p))
        ga = ga + (g - ga) * (1 - alpha)
        new_state["grad_avg"] = ga
        avg = torch.where(_b(hp["centered"] > 0, p), (sq - ga * ga).sqrt(), sq.sqrt()) + eps
    else:
        avg = sq.sqrt() + eps
    if bool((hp["momentum"] > 0).any()):
        buf = state.get("momentum_buffer", torch.zeros_like(p))
        buf = buf * momentum + g / avg
        new_state["momentum_buffer"] = buf
        update = torch.where(_b(hp["momentum"] > 0, p), buf, g / avg)
    else:
        update = g / avg
    return p - lr * update, new_state


# optimizer class -> (step function, decoupled weight decay, its hyperparameters, unsupported
# options that must be off)
OPTIMIZERS: dict[str, tuple[Callable, bool, tuple[str, ...], tuple[str, ...]]] = {
    "Adam": (adam_step, False, ("lr", "beta1", "beta2", "eps", "weight_decay"), ("amsgrad",)),
    "AdamW": (adam_step, True, ("lr", "beta1", "beta2", "eps", "weight_decay"), ("amsgrad",)),
    "SGD": (sgd_step, False, ("lr", "momentum", "dampening", "weight_decay", "nesterov"), ()),
    "RMSprop": (
        rmsprop_step,
        False,
        ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"),
        (),
    ),
}
