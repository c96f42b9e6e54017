"""Small building blocks shared by the model families."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nnlab.errors import ConfigError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "leaky_relu": nn.LeakyReLU,
    "linear": nn.Identity,
}


ActivationName = Literal[tuple(ACTIVATIONS)]  # the names a config may give (nnlab.schema)


def activation(name: str, key: str = "model.activation") -> nn.Module:
    """An activation layer by its Keras-style name."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            key, f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}"
        ) from None


# --- Convolutional geometry ---------------------------------------------------------------------

CONVS = (nn.Conv1d, nn.Conv2d)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)


def _first(value) -> int:
    return value[0] if isinstance(value, tuple | list) else value


def output_size(
    key: str, layer: str, size: int, kernel: int, stride: int, padding: int, floor: bool = False
) -> int:
    """`(W - F + 2P) / S + 1`, exactly: a layer whose window does not fit, or whose stride does
    not divide the span, is a ConfigError naming the layer and the sizes (never rounded).
    `floor=True` is Keras' `valid`: a last window that does not fit is dropped."""
    span = size - kernel + 2 * padding
    formula = f"(W - F + 2P)/S + 1 = ({size} - {kernel} + 2*{padding})/{stride} + 1"
    if span < 0:
        raise ConfigError(
            key,
            f"layer {layer}: {formula} shrinks to nothing (the {size}x{size} input is smaller "
            f"than the {kernel}x{kernel} window); use a larger input, more padding or fewer "
            "downsampling layers",
        )
    if span % stride and not floor:
        raise ConfigError(
            key,
            f"layer {layer}: {formula} = {span / stride + 1:g} is not a whole number; change "
            "the kernel, stride or padding (or the input size) so that the stride divides",
        )
    return span // stride + 1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras' `same`: the zeros (before, after) that give ceil(W / S) outputs; the odd one goes
    after, as in TensorFlow."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def transposed_padding(key: str, kernel: int, stride: int, same: bool) -> tuple[int, int]:
    """(padding, output_padding) of a transposed conv whose output is W * S (`same`) or
    (W - 1) * S + F (`valid`), as Keras' Conv2DTranspose."""
    if not same:
        return 0, 0
    excess = kernel - stride
    if excess < 0:
        return 0, -excess
    padding = -(-excess // 2)
    if 2 * padding - excess >= stride:
        raise ConfigError(
            key,
            f"same padding cannot be had for kernel {kernel} with stride {stride}; use an odd "
            "kernel or valid padding",
        )
    return padding, 2 * padding - excess


def trace_shapes(
    features: nn.Module, channels: int, size: int, dims: int = 2, key=lambda layer: "model"
) -> list[tuple[str, tuple[int, ...]]]:
    """Walk `features` (leaf layers in order) and compute each layer's output shape (without the
    batch) before any data flows: InputAdapter, Conv, pooling, global pooling and Flatten change
    it, the rest keep it. `key(layer_name)` is the config key an error names."""
    shapes = []
    flat = None
    for name, layer in features.named_modules():
        if any(True for _ in layer.children()):
            continue
        if isinstance(layer, InputAdapter):
            channels, size = layer.channels, layer.size
        elif isinstance(layer, CONVS + POOLS):
            dilation = _first(getattr(layer, "dilation", 1))
            kernel = dilation * (_first(layer.kernel_size) - 1) + 1
            stride, padding = _first(layer.stride), _first(layer.padding)
            size = output_size(key(name), name, size, kernel, stride, padding)
            channels = layer.out_channels if isinstance(layer, CONVS) else channels
        elif isinstance(layer, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            size = _first(layer.output_size)
        elif isinstance(layer, nn.Flatten):
            flat = channels * size**dims
        if flat is not None:
            shapes.append((name, (flat,)))
        else:
            shapes.append((name, (channels,) + (size,) * dims))
    return shapes


class InputAdapter(nn.Module):
    """The front of `features`: brings the data's images (in_channels x in_size^2, e.g. MNIST's
    1x28x28) to what the network expects (channels x size^2), on the device, so the data stays
    small. `mode` pad: zero-pad around the image (28 -> 32 for LeNet-5); resize: bilinear
    (28 -> 227 for AlexNet). One channel is repeated when the network wants three."""

    MODES = ("pad", "resize")

    def __init__(self, in_channels: int, in_size: int, channels: int, size: int, mode: str = "pad"):
        super().__init__()
        if mode not in self.MODES:
            raise ConfigError("model.input_mode", f"must be pad or resize, got {mode!r}")
        if in_channels != channels and in_channels != 1:
            raise ConfigError(
                "model.in_channels",
                f"the network expects {channels} channel(s); {in_channels} cannot be adapted "
                "(only 1 channel is repeated)",
            )
        if mode == "pad" and in_size > size:
            raise ConfigError(
                "model.in_size",
                f"{in_size}x{in_size} images cannot be padded to the network's {size}x{size}; "
                "use input_mode resize",
            )
        self.in_channels, self.in_size, self.channels, self.size = (
            in_channels,
            in_size,
            channels,
            size,
        )
        self.mode = mode

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}x{self.in_size}x{self.in_size} -> "
            f"{self.channels}x{self.size}x{self.size}, mode={self.mode}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size != self.in_size:
            if self.mode == "pad":
                before = (self.size - self.in_size) // 2
                after = self.size - self.in_size - before
                x = F.pad(x, (before, after, before, after))
            else:
                x = F.interpolate(
                    x, size=(self.size, self.size), mode="bilinear", align_corners=False
                )
        if self.channels != self.in_channels:
            x = x.repeat(1, self.channels, 1, 1)
        return x


def dense_stack(
    width: int, sizes, activation_name: str, dropout: float, key: str
) -> tuple[list[nn.Module], int]:
    """[Linear -> activation (-> Dropout)] for each size in `sizes` (config key `key`), starting
    from `width` inputs; returns the layers and the width they end with."""
    from nnlab.errors import require_positive

    layers: list[nn.Module] = []
    for i, size in enumerate(sizes):
        require_positive(f"{key}[{i}]", size)
        layers += dense(width, size, activation_name)
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    return layers, width


def dense(
    width: int,
    units: int,
    activation_name: str | None,
    bias: bool = True,
    key: str = "model.activation",
) -> list[nn.Module]:
    """Keras' Dense: Linear (on the last axis), then its activation (none for None)."""
    layers: list[nn.Module] = [nn.Linear(width, units, bias=bias)]
    if activation_name is not None:
        layers.append(activation(activation_name, key))
    return layers
