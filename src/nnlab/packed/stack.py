"""Many copies of one network as one: parameters stacked on a leading trial axis (their
optimizer steps: engine/stacked.py).

A private copy of the network (the functional "base") gets two module swaps: `nn.Dropout` ->
`TrialDropout` (its rate a buffer, so each trial keeps its own) and `nn.RNN/LSTM/GRU` ->
`TrialRNN` (recurrent.py: torch's fused kernels have no vmap rule; it runs all trials'
recurrence with one batched product per step and a hand-written backward).
"""

from __future__ import annotations

import copy
import re

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
