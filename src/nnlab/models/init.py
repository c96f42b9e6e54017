"""Keras' weight initialisers for dense, convolutional and recurrent layers.

| name | weights (fan_in / fan_out as Keras counts them) |
|------|--------------------------------------------------|
| `torch` (`default`) | torch's own start, left as the layer made it (biases too) |
| `glorot_uniform` | U(-l, l), l = sqrt(6 / (fan_in + fan_out)): Keras' Dense, Conv and LSTM input kernels |
| `glorot_normal` | truncated normal, std sqrt(2 / (fan_in + fan_out)) / .8796 |
| `he_uniform` | U(-l, l), l = sqrt(6 / fan_in) |
| `he_normal` | truncated normal, std sqrt(2 / fan_in) / .8796 |
| `lecun_uniform` | U(-l, l), l = sqrt(3 / fan_in) |
| `lecun_normal` | truncated normal, std sqrt(1 / fan_in) / .8796 |
| `orthogonal` | an orthogonal matrix (rows or columns orthonormal; conv kernels flattened) |
| `zeros` | all zeros |

The normal ones are Keras 2's `VarianceScaling(distribution="truncated_normal")`: a normal cut at
two standard deviations, its std divided by .87962566103423978 so that the cut one has the
variance asked for. fan_in is the inputs a unit reads (in_channels x kernel for a conv), fan_out
the outputs (out_channels x kernel). A recurrent layer's gates are initialised block by block,
as Keras' separate W_i, W_f, ... matrices. Whenever an initialiser other than `torch` is chosen,
the layer's biases start at zero, as Keras' do.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from nnlab.errors import ConfigError

Initializer = Literal[
    "torch",
    "default",
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "orthogonal",
    "zeros",
]
INITIALIZERS: tuple[str, ...] = Initializer.__args__  # type: ignore[attr-defined]
TRUNCATED = 0.87962566103423978  # std of a unit normal cut at +-2


def check(name: str | None, key: str) -> str:
    """`name` if it is an initialiser (None: torch's), else a ConfigError naming `key`."""
    if name is None:
        return "torch"
    if name not in INITIALIZERS:
        raise ConfigError(
            key, f"unknown initialiser {name!r}; choose one of {', '.join(INITIALIZERS)}"
        )
    return "torch" if name == "default" else name


def fill(tensor: torch.Tensor, name: str, fan_in: int, fan_out: int) -> None:
    """Initialise `tensor` in place by `name` with the given fans (never `torch`)."""
    with torch.no_grad():
        if name == "zeros":
            tensor.zero_()
        elif name == "orthogonal":
            nn.init.orthogonal_(tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 2 else tensor)
        elif name.endswith("_uniform"):
            scale = {"glorot": 6 / (fan_in + fan_out), "he": 6 / fan_in, "lecun": 3 / fan_in}
            limit = math.sqrt(scale[name.split("_")[0]])
            tensor.uniform_(-limit, limit)
        else:
            variance = {"glorot": 2 / (fan_in + fan_out), "he": 2 / fan_in, "lecun": 1 / fan_in}
            std = math.sqrt(variance[name.split("_")[0]]) / TRUNCATED
            nn.init.trunc_normal_(tensor, 0.0, std, -2 * std, 2 * std)


def init_module(
    module: nn.Module, kernel: str = "torch", recurrent: str | None = None, key: str = "model.init"
) -> None:
    """Keras initialisers for every dense, conv and recurrent layer inside `module`: `kernel`
    for Linear and conv weights and recurrent input weights, `recurrent` (default: orthogonal
    when `kernel` is set, as Keras' inner_init) for recurrent weights; zero biases."""
    from nnlab.models.cells import RecurrentCell

    kernel = check(kernel, key)
    if recurrent is not None:
        recurrent = check(recurrent, key.replace("init", "inner_init"))
    if kernel == "torch" and recurrent in (None, "torch"):
        return
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and kernel != "torch":
            fill(layer.weight, kernel, layer.in_features, layer.out_features)
            zero_bias(layer)
        elif isinstance(layer, nn.modules.conv._ConvNd) and kernel != "torch":
            field = math.prod(layer.kernel_size)
            in_ch, out_ch = layer.in_channels // layer.groups, layer.out_channels
            if layer.transposed:  # torch stores (in, out / groups, *k)
                in_ch, out_ch = layer.in_channels, layer.out_channels // layer.groups
            fill(layer.weight, kernel, in_ch * field, out_ch * field)
            zero_bias(layer)
        elif isinstance(layer, nn.RNNBase):
            init_torch_rnn(layer, kernel, recurrent or "orthogonal")
        elif isinstance(layer, RecurrentCell):
            init_cell(layer, kernel, recurrent or "orthogonal")


def zero_bias(layer: nn.Module) -> None:
    if getattr(layer, "bias", None) is not None:
        with torch.no_grad():
            layer.bias.zero_()


def init_torch_rnn(rnn: nn.RNNBase, kernel: str, recurrent: str) -> None:
    """torch's nn.RNN / LSTM / GRU: each gate's block of rows on its own (torch stacks them)."""
    H = rnn.hidden_size
    for name, param in rnn.named_parameters():
        if name.startswith("weight_ih") and kernel != "torch":
            for block in param.split(H, dim=0):  # (H, inputs)
                fill(block, kernel, block.shape[1], H)
        elif name.startswith("weight_hh") and recurrent != "torch":
            for block in param.split(H, dim=0):
                fill(block, recurrent, H, H)
        elif name.startswith("bias"):
            with torch.no_grad():
                param.zero_()


def init_cell(cell: nn.Module, kernel: str, recurrent: str) -> None:
    """nnlab's cells (models/cells.py): `W*` input weights (inputs, gates x H), `U*` recurrent
    ones (H, ...), `b*` biases; old Keras' projection P keeps its start."""
    H = cell.hidden_size
    for name, param in cell.named_parameters():
        if name.startswith("W") and kernel != "torch":
            for block in param.split(H, dim=-1):
                fill(block, kernel, block.shape[0], H)
        elif name.startswith("U") and recurrent != "torch":
            for block in param.split(H, dim=-1):
                fill(block, recurrent, H, H)
        elif name.startswith("b"):
            with torch.no_grad():
                param.zero_()
