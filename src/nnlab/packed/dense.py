"""Dense networks of many trials at once, without vmap: every layer runs on a leading trial axis
((trials, batch, ...) in, (trials, batch, ...) out), a Linear layer as one `baddbmm` over the
trials' stacked weights with the bias added in the same product.

Under `torch.vmap` (how the packed group runs any other network) each layer is a handful of
batching rules, and `functional_call` re-binds every parameter at every step; for a small MLP
that overhead is most of a step. `TrialNetwork` is used when the task's network is made only of
layers it knows (`trial_network`); the task's own code (its outputs, loss and metrics) still runs
per trial under vmap, around the network's outputs (`Outputs` stands in for the network there).
"""

from __future__ import annotations

import torch
from torch import nn

from nnlab.packed.recurrent import DROPOUT_RATE, trial_dropout

# layers that act on every value alone: the trial axis in front changes nothing
ELEMENTWISE = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.ELU,
    nn.SELU,
    nn.LeakyReLU,
    nn.SiLU,
    nn.Softplus,
    nn.Identity,
)


def _trial_axis(h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-trial (trials,) tensor broadcast against a (trials, ...) tensor."""
    return h.reshape(-1, *([1] * (like.dim() - 1)))


class TrialLinear(nn.Module):
    """nn.Linear of a stack of trials: x (trials, ..., in) -> (trials, ..., out) as one
    `baddbmm(bias, x, weight^T)` over the trial axis. `weight` (trials, out, in) and `bias`
    (trials, out) are the stacked tensors, bound before each call (`TrialNetwork`)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trials, *inner, width = x.shape
        rows = x.reshape(trials, -1, width)
        weight_t = self.weight.transpose(1, 2)
        if self.bias is None:
            out = torch.bmm(rows, weight_t)
        else:
            out = torch.baddbmm(self.bias.unsqueeze(1), rows, weight_t)
        return out.view(trials, *inner, self.out_features)


class TrialFlatten(nn.Module):
    """nn.Flatten with the trial axis in front (its dims counted from the sample's)."""

    def __init__(self, flatten: nn.Flatten):
        super().__init__()
        self.start = flatten.start_dim + 1 if flatten.start_dim >= 0 else flatten.start_dim
        self.end = flatten.end_dim + 1 if flatten.end_dim >= 0 else flatten.end_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(self.start, self.end)


class TrialDropoutLayer(nn.Module):
    """The functional copy's TrialDropout with the trial axis in front: each trial's rate (a
    (trials,) tensor, bound before each call); training or not as that module is."""

    def __init__(self, dropout: nn.Module):
        super().__init__()
        object.__setattr__(self, "source", dropout)  # not a child: its mode, not its state
        self.rate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return trial_dropout(x, _trial_axis(self.rate, x), self.source.training)


class TrialNetwork(nn.Module):
    """A network of known layers for a stack of trials. `forward(params, buffers, x)`: the
    trials' stacked tensors by the network's own names (as the packed group holds them) and
    x (trials, batch, ...)."""

    def __init__(self, layers: nn.Module, slots: dict[str, tuple[nn.Module, str]]):
        super().__init__()
        self.layers = layers
        self.slots = slots  # tensor name -> (layer, attribute) it is bound to

    def forward(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        for tensors in (params, buffers):
            for name, value in tensors.items():
                layer, attr = self.slots[name]
                setattr(layer, attr, value)
        return self.layers(x)


def _convert(module: nn.Module, path: str, slots: dict) -> nn.Module | None:
    """The trial-axis version of `module` (None: a layer this module does not know), with the
    names of its parameters and buffers added to `slots`."""
    from nnlab.models.mlp import MLP

    kind = type(module)
    if kind is nn.Sequential:
        children = [_convert(c, f"{path}{name}.", slots) for name, c in module.named_children()]
        return None if any(c is None for c in children) else nn.Sequential(*children)
    if kind is MLP:  # its forward is `self.layers(x)`
        return _convert(module.layers, f"{path}layers.", slots)
    if kind is nn.Linear:
        layer = TrialLinear(module)
        slots[f"{path}weight"] = (layer, "weight")
        if module.bias is not None:
            slots[f"{path}bias"] = (layer, "bias")
        return layer
    if kind is nn.Flatten:
        return TrialFlatten(module)
    if kind.__name__ == "TrialDropout":  # packed/stack.py's nn.Dropout with its rate a buffer
        layer = TrialDropoutLayer(module)
        slots[f"{path}{DROPOUT_RATE}"] = (layer, "rate")
        return layer
    if kind in ELEMENTWISE:
        return module
    return None


def trial_network(net: nn.Module, prefix: str = "") -> TrialNetwork | None:
    """`net` (a functional copy's network: packed/stack.py) for a stack of trials, its tensors
    named with `prefix` as the group names them; None when it has a layer not known here."""
    slots: dict[str, tuple[nn.Module, str]] = {}
    layers = _convert(net, prefix, slots)
    if layers is None:
        return None
    names = [prefix + n for n, _ in [*net.named_parameters(), *net.named_buffers()]]
    if sorted(names) != sorted(slots):  # a tensor no layer here reads: not this network
        return None
    return TrialNetwork(layers, slots)


class NotNative(Exception):
    """The task calls its network otherwise than `net(inputs)` (the packed group vmaps it)."""


class Outputs(nn.Module):
    """Stands in for the task's network while the task's own code runs under vmap around a
    TrialNetwork's outputs: returns this trial's outputs when called with the batch's inputs
    themselves, and refuses anything else (targets for teacher forcing, lengths, changed
    inputs), so that what it returns is what the network would have computed."""

    def __init__(self):
        super().__init__()
        self.value: torch.Tensor | None = None
        self.inputs: torch.Tensor | None = None

    def forward(self, x, *extra, **options):
        if x is not self.inputs or extra or options:
            raise NotNative("the task calls its network with more than the batch's inputs")
        return self.value
