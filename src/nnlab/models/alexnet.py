"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012), as published, and a small variant.

  full (227x227x3 input, MNIST resized and its channel repeated on the device):
  conv1 96@11x11 /4 -> 96x55x55 -> ReLU, LRN -> max pool 3/2 -> 27x27
  conv2 256@5x5 p2 -> 27x27 -> ReLU, LRN -> max pool 3/2 -> 13x13
  conv3 384@3x3 p1, conv4 384@3x3 p1, conv5 256@3x3 p1 (ReLU) -> 13x13 -> max pool 3/2 -> 6x6
  dropout, dense 4096, ReLU, dropout, dense 4096, ReLU, dense classes (logits; softmax is in the
  loss).  groups=2 splits conv2/4/5 in two halves as on the paper's two GPUs.

  small (28x28x1, zero-padded to 31x31 so that every overlapping 3/2 pooling divides exactly):
  conv1 5x5 p2 -> 31 -> pool 15 -> conv2 5x5 p2 -> 15 -> pool 7 -> conv3-5 3x3 p1 -> 7 -> pool 3
  with narrower layers (`channels`, `hidden`).

`input_size` changes the size conv1 sees (the input adapter brings the data to it): with 224,
as often misquoted, (224 - 11)/4 + 1 = 54.25 and the model refuses to build.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from nnlab.errors import ConfigError
from nnlab.models.init import Initializer, init_module
from nnlab.models.layers import InputAdapter, trace_shapes
from nnlab.schema import PositiveInt, Rate

# variant: (input channels, input size, adapter mode, conv1 (kernel, stride, padding), conv2 padding)
VARIANTS = {
    "full": (3, 227, "resize", (11, 4, 0), 2),
    "small": (1, 31, "pad", (5, 1, 2), 2),
}
FULL_CHANNELS = (96, 256, 384, 384, 256)


class LocalResponseNorm(nn.LocalResponseNorm):
    """The paper's LRN, b = a / (k + alpha * sum_{n neighbours} a^2)^beta. torch's module divides
    alpha by n, so it gets alpha * n to compute the published formula."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__(size, alpha=alpha * size, beta=beta, k=k)
        self.paper_alpha = alpha

    def extra_repr(self) -> str:
        return f"n={self.size}, alpha={self.paper_alpha}, beta={self.beta}, k={self.k}"


class AlexNet(nn.Module):
    def __init__(
        self,
        num_classes: PositiveInt = 1000,
        variant: Literal["full", "small"] = "full",
        in_channels: PositiveInt = 1,
        in_size: PositiveInt = 28,
        channels: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt, PositiveInt] = (
            FULL_CHANNELS
        ),
        hidden: PositiveInt = 4096,
        dropout: Rate = 0.5,
        groups: Literal[1, 2] = 1,
        lrn: bool = True,
        input_size: PositiveInt | None = None,
        init: Initializer = "torch",
    ):
        super().__init__()
        if groups == 2 and any(c % 2 for c in channels):
            raise ConfigError("model.channels", f"groups=2 needs even widths, got {list(channels)}")
        net_channels, size, mode, (k1, s1, p1), p2 = VARIANTS[variant]
        size = input_size or size  # what conv1 sees; 227 as published (224 does not divide)
        c1, c2, c3, c4, c5 = channels

        def norm() -> nn.Module:
            return LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0) if lrn else nn.Identity()

        self.features = nn.Sequential(
            OrderedDict(
                input=InputAdapter(in_channels, in_size, net_channels, size, mode=mode),
                conv1=nn.Conv2d(net_channels, c1, kernel_size=k1, stride=s1, padding=p1),
                relu1=nn.ReLU(inplace=True),
                lrn1=norm(),
                pool1=nn.MaxPool2d(kernel_size=3, stride=2),
                conv2=nn.Conv2d(c1, c2, kernel_size=5, padding=p2, groups=groups),
                relu2=nn.ReLU(inplace=True),
                lrn2=norm(),
                pool2=nn.MaxPool2d(kernel_size=3, stride=2),
                conv3=nn.Conv2d(c2, c3, kernel_size=3, padding=1),
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(c3, c4, kernel_size=3, padding=1, groups=groups),
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(c4, c5, kernel_size=3, padding=1, groups=groups),
                relu5=nn.ReLU(inplace=True),
                pool5=nn.MaxPool2d(kernel_size=3, stride=2),
                flatten=nn.Flatten(),
            )
        )
        self.shapes = trace_shapes(
            self.features, in_channels, in_size, key=lambda layer: "model.input_size"
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.shapes[-1][1][0], hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        init_module(self, init)  # Keras' initialiser of every conv and dense layer; biases zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
