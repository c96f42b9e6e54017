"""A configurable CNN, and its depthwise-separable twin.

  blocks: [{channels: 32, kernel: 3, stride: 1, padding: same, pool: 2}, ...]

Each block is conv -> [batch norm] -> activation -> [pool] -> [dropout]. `padding` is `same`
(P = (F - 1) / 2, odd kernels), `valid` (P = 0) or a number; `pool` is a window (stride = window)
or null, of `pool_type` max or avg. `dims: 2` reads images (B, C, H, W); `dims: 1` reads each
image row as one step of a sequence (B, C*W, H), with Conv1d and 1D pooling, or with
`layout: sequence` a series' windows channels last as Keras' Conv1D: (B, steps, features) or
(B, steps), `in_channels` features over `in_size` steps. After the blocks, `head: flatten` or
`gap` (global average pooling), then dense layers and the output layer: `num_classes` logits,
or `output_size` values of a regression (a forecaster's horizon x targets).

SeparableCNN replaces each conv by a depthwise-separable one (a per-channel FxF conv, then a 1x1
conv that mixes channels): far fewer weights and multiply-adds for the same receptive field.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nnlab.errors import ConfigError
from nnlab.models.init import Initializer, init_module
from nnlab.models.layers import ActivationName, InputAdapter, dense_stack, trace_shapes
from nnlab.models.layers import activation as make_activation
from nnlab.schema import NonNegativeInt, PositiveInt, Rate


class ConvBlock(BaseModel):
    """One entry of `blocks` (checked by nnlab.schema)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    channels: PositiveInt
    kernel: PositiveInt = 3
    stride: PositiveInt = 1
    padding: Literal["same", "valid"] | NonNegativeInt = "same"
    pool: PositiveInt | None = None


BLOCK_KEYS = set(ConvBlock.model_fields)
HEADS = ("flatten", "gap")
LAYOUTS = ("image", "sequence")


class SeparableConv(nn.Module):
    """Depthwise (groups = in_channels) FxF conv, then a pointwise 1x1 conv."""

    def __init__(
        self,
        conv,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride,
        padding,
        depth_multiplier: int = 1,
    ):
        super().__init__()
        # depth_multiplier: maps per input channel in the depthwise step (Keras' argument)
        depth = in_channels * depth_multiplier
        self.depthwise = conv(
            in_channels, depth, kernel, stride, padding, groups=in_channels, bias=False
        )
        self.pointwise = conv(depth, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class CNN(nn.Module):
    separable = False

    def __init__(
        self,
        num_classes: PositiveInt | None = None,
        blocks: Annotated[Sequence[ConvBlock], Field(min_length=1)] = (),
        in_channels: PositiveInt = 1,
        in_size: PositiveInt = 28,
        dims: Literal[1, 2] = 2,
        pool_type: Literal["max", "avg"] = "max",
        batch_norm: bool = False,
        dropout: Rate = 0.0,
        head: Literal["flatten", "gap"] = "flatten",
        dense: Sequence[PositiveInt] = (),
        dense_dropout: Rate = 0.0,
        activation: ActivationName = "relu",
        output_size: PositiveInt | None = None,
        layout: Literal["image", "sequence"] = "image",
        init: Initializer = "torch",
    ):
        super().__init__()
        if (num_classes is None) == (output_size is None):
            raise ConfigError(
                "model.output_size",
                "give either model.num_classes (a classifier) or model.output_size (a "
                f"regressor), not {'both' if num_classes else 'neither'}",
            )
        if layout == "sequence" and dims != 1:
            raise ConfigError(
                "model.layout", f"image, or sequence with dims 1; got {layout!r} with dims {dims}"
            )
        self.dims, self.layout = dims, layout
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        pool = {
            ("max", 1): nn.MaxPool1d,
            ("max", 2): nn.MaxPool2d,
            ("avg", 1): nn.AvgPool1d,
            ("avg", 2): nn.AvgPool2d,
        }[pool_type, dims]

        layers: dict[str, nn.Module] = {}
        if dims == 2:
            layers["input"] = InputAdapter(in_channels, in_size, in_channels, in_size)
            channels = in_channels
        elif layout == "sequence":  # the series' features are the channels
            channels = in_channels
        else:  # rows as steps: C*W features per step
            channels = in_channels * in_size
        first_channels = channels
        for i, block in enumerate(blocks, start=1):
            key = f"model.blocks[{i - 1}]"
            out = block.get("channels")
            kernel, stride = block.get("kernel", 3), block.get("stride", 1)
            padding = _padding(f"{key}.padding", block.get("padding", "same"), kernel)
            if self.separable:
                layers[f"conv{i}"] = SeparableConv(conv, channels, out, kernel, stride, padding)
            else:
                layers[f"conv{i}"] = conv(
                    channels, out, kernel, stride, padding, bias=not batch_norm
                )
            if batch_norm:
                layers[f"norm{i}"] = norm(out)
            layers[f"act{i}"] = make_activation(activation)
            if block.get("pool"):
                layers[f"pool{i}"] = pool(block["pool"], block["pool"])
            if dropout:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            channels = out
        if head == "gap":
            layers["gap"] = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool1d(1)
        layers["flatten"] = nn.Flatten()
        self.features = nn.Sequential(OrderedDict(layers))
        self.shapes = trace_shapes(
            self.features,
            channels=first_channels,
            size=in_size,
            dims=dims,
            key=lambda name: (
                f"model.blocks[{int(name.split('.')[0][4:]) - 1}]"
                if name.startswith(("conv", "pool"))
                else "model.in_size"
            ),
        )

        head_layers, width = dense_stack(
            self.shapes[-1][1][0], dense, activation, dense_dropout, "model.dense"
        )
        head_layers.append(nn.Linear(width, num_classes or output_size))
        self.classifier = nn.Sequential(*head_layers)
        init_module(self, init)  # Keras' initialiser of every conv and dense layer; biases zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "sequence":  # (B, steps[, features]) -> (B, features, steps)
            x = x.unsqueeze(1) if x.dim() == 2 else x.transpose(1, 2)
        elif self.dims == 1 and x.dim() == 4:  # (B, C, H, W) -> (B, C*W, H): rows are steps
            b, c, h, w = x.shape
            x = x.permute(0, 1, 3, 2).reshape(b, c * w, h)
        return self.classifier(self.features(x))


class SeparableCNN(CNN):
    """The same configuration, every conv depthwise-separable."""

    separable = True


def _padding(key: str, padding, kernel: int) -> int:
    if padding == "valid":
        return 0
    if padding == "same":
        if kernel % 2 == 0:
            raise ConfigError(key, f"same padding needs an odd kernel, got {kernel}")
        return (kernel - 1) // 2
    if isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        return padding
    raise ConfigError(key, f"must be same, valid or a number >= 0, got {padding!r}")
